//! Identity extraction and the acceptor, against certificates the openssl CLI makes
//! (tests/support/mkcerts.sh) and a real rustls client over an in-memory stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn certs() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mkcerts.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .args(["ci-a", "uid:0"])
        .status()
        .expect("bash and openssl run");
    assert!(status.success(), "mkcerts.sh failed");
    let path = dir.path().to_path_buf();
    (dir, path)
}

fn server_files(dir: &Path) -> TlsServerFiles {
    TlsServerFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        client_ca: dir.join("ca.pem"),
    }
}

fn cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

#[test]
fn identity_is_the_first_san_dns_name_else_the_cn() {
    let (_t, dir) = certs();
    assert_eq!(identity_of(&cert(&dir.join("ci-a.pem"))).unwrap(), "ci-a");
    assert_eq!(
        identity_of(&cert(&dir.join("cn-only.pem"))).unwrap(),
        "cn-only-client"
    );
    // "uid:0" is not a DNS name, so its CN is the identity, and that is reserved.
    assert_eq!(
        identity_of(&cert(&dir.join("uid:0.pem"))),
        Err(IdentityError::Reserved("uid:0".into()))
    );
}

#[test]
fn common_name_reads_der_names() {
    // SEQUENCE OF SET { SEQUENCE { O, "Org" } }, SET { SEQUENCE { CN, "host-1" } }, content only.
    let name = [
        0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x03, b'O', b'r', b'g', 0x31,
        0x0f, 0x30, 0x0d, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x06, b'h', b'o', b's', b't', b'-',
        b'1',
    ];
    assert_eq!(common_name(&name).as_deref(), Some("host-1"));
    assert_eq!(common_name(&name[..14]), None);
    assert_eq!(common_name(&name[..20]), None, "truncated");
    assert_eq!(common_name(&[]), None);
    // A BMPString CN is not read as text.
    let bmp = [
        0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x03, 0x1e, 0x02, 0x00, b'a',
    ];
    assert_eq!(common_name(&bmp), None);
}

fn client_config(dir: &Path, who: Option<&str>) -> Arc<ClientConfig> {
    let files = TlsClientFiles {
        ca: dir.join("ca.pem"),
        cert: who.map(|w| dir.join(format!("{w}.pem"))),
        key: who.map(|w| dir.join(format!("{w}-key.pem"))),
        server_name: None,
    };
    TlsConnector::load(&files, "127.0.0.1", Vec::new())
        .unwrap()
        .config
}

/// A handshake between a rustls client presenting `who`'s certificate and `acceptor`.
async fn handshake(
    acceptor: &TlsAcceptor,
    dir: &Path,
    who: Option<&str>,
) -> Result<String, AcceptError> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(client_config(dir, who));
    let client = tokio::spawn(async move {
        let name = ServerName::try_from("127.0.0.1").unwrap();
        if let Ok(mut tls) = connector.connect(name, client_io).await {
            // TLS 1.3: the server checks the client's certificate after the client's
            // handshake is done; a read sees the alert.
            let _ = tls.write_all(b"ping").await;
            let mut buf = [0u8; 4];
            let _ = tls.read_exact(&mut buf).await;
        }
    });
    let result = acceptor.accept(server_io).await;
    match result {
        Ok((mut tls, identity)) => {
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(b"pong").await.unwrap();
            client.await.unwrap();
            Ok(identity)
        }
        Err(e) => {
            client.abort();
            Err(e)
        }
    }
}

#[tokio::test]
async fn verified_clients_get_their_identity_and_others_are_refused() {
    let (_t, dir) = certs();
    let acceptor = TlsAcceptor::load(&server_files(&dir), Vec::new()).unwrap();
    assert_eq!(
        handshake(&acceptor, &dir, Some("ci-a")).await.unwrap(),
        "ci-a"
    );
    for (who, expect) in [
        (None, "peer sent no certificates"),
        (Some("stranger"), "UnknownIssuer"),
        (Some("expired"), "certificate expired"),
    ] {
        let e = handshake(&acceptor, &dir, who).await.unwrap_err();
        assert!(
            matches!(e, AcceptError::Handshake(_)) && format!("{e}").contains(expect),
            "{who:?}: {e}"
        );
    }
    let e = handshake(&acceptor, &dir, Some("uid:0")).await.unwrap_err();
    assert!(
        matches!(e, AcceptError::Identity(IdentityError::Reserved(_))),
        "{e}"
    );
}

#[tokio::test]
async fn garbage_and_stalled_handshakes_end() {
    let (_t, dir) = certs();
    let acceptor = TlsAcceptor::load(&server_files(&dir), Vec::new()).unwrap();
    let (mut client, server) = tokio::io::duplex(4096);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let e = acceptor.accept(server).await.unwrap_err();
    assert!(matches!(e, AcceptError::Handshake(_)), "{e}");

    // Half a ClientHello record header, then nothing.
    let (mut client, server) = tokio::io::duplex(4096);
    client.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let started = std::time::Instant::now();
    let e = acceptor
        .accept_within(server, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(e, AcceptError::Timeout(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn reload_takes_new_files_and_keeps_the_old_on_error() {
    let (_t, dir) = certs();
    let (_t2, other) = certs();
    let acceptor = TlsAcceptor::load(&server_files(&dir), Vec::new()).unwrap();
    let mut broken = server_files(&other);
    broken.key = other.join("missing-key.pem");
    let e = acceptor.reload(&broken).unwrap_err();
    assert!(e.to_string().contains("missing-key.pem"), "{e}");
    assert_eq!(
        handshake(&acceptor, &dir, Some("ci-a")).await.unwrap(),
        "ci-a"
    );

    // A key that is not the certificate's.
    let mut mismatched = server_files(&other);
    mismatched.key = other.join("ci-a-key.pem");
    assert!(acceptor.reload(&mismatched).is_err());
    assert_eq!(
        handshake(&acceptor, &dir, Some("ci-a")).await.unwrap(),
        "ci-a"
    );

    acceptor.reload(&server_files(&other)).unwrap();
    assert_eq!(
        handshake(&acceptor, &other, Some("ci-a")).await.unwrap(),
        "ci-a"
    );
    // The first CA's clients are now strangers.
    assert!(handshake(&acceptor, &dir, Some("ci-a")).await.is_err());
}

#[test]
fn file_errors_name_the_file_and_never_the_content() {
    let (_t, dir) = certs();
    let mut files = server_files(&dir);
    files.key = dir.join("server.pem");
    let e = TlsAcceptor::load(&files, Vec::new())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("server.pem") && e.contains("no PEM private key"),
        "{e}"
    );
    let mut files = server_files(&dir);
    files.client_ca = dir.join("server-key.pem");
    let e = TlsAcceptor::load(&files, Vec::new())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no PEM certificate"), "{e}");
    let key = std::fs::read_to_string(dir.join("server-key.pem")).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(!e.contains(body));
}
