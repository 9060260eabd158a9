//! The Docker endpoint over tcp with mutual TLS, in front of the test bed's engine reached over
//! tcp+TLS (its loopback port, as GitLab's dind on 2376): real `docker buildx build` with
//! DOCKER_TLS_VERIFY/DOCKER_CERT_PATH, certificates made by tests/support/mkcerts.sh (openssl).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

struct TlsBed {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    port: u16,
    broker: Broker,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn engine_tls() -> (String, PathBuf) {
    let env = std::fs::read_to_string("/run/buildbroker-testbed/env")
        .expect("the test bed is not set up: run tests/testbed/setup.sh");
    let var = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing from the test bed env: re-run setup.sh"))
            .to_string()
    };
    (
        var("TESTBED_DOCKER_TLS_HOST"),
        PathBuf::from(var("TESTBED_DOCKER_CERT_PATH")),
    )
}

fn make_certs(dir: &Path, clients: &[&str]) -> PathBuf {
    let certs = dir.join("certs");
    let status = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/mkcerts.sh"
        ))
        .arg(&certs)
        .args(clients)
        .status()
        .unwrap();
    assert!(status.success(), "mkcerts.sh failed");
    certs
}

/// A broker on tcp+mTLS (clients ci-a and ci-b allowed; ci-c has a valid certificate but is
/// not listed), upstream the engine's TLS port, with `policy` appended.
fn start(policy: &str, env: Vec<(&str, &str)>) -> TlsBed {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["ci-a", "ci-b", "ci-c"]);
    let (engine_host, engine_certs) = engine_tls();
    let port = free_port();
    let preamble = format!(
        "[upstream_tls]\nca = \"{e}/ca.pem\"\ncert = \"{e}/cert.pem\"\nkey = \"{e}/key.pem\"\n\
         [access]\nclients = [\"ci-a\", \"ci-b\"]\n",
        e = engine_certs.display()
    );
    let server = format!(
        "[server.tls]\ncert = \"{c}/server.pem\"\nkey = \"{c}/server-key.pem\"\nclient_ca = \"{c}/ca.pem\"\n",
        c = certs.display()
    );
    let broker = Broker::start(BrokerOptions {
        preamble: &preamble,
        server: &server,
        policy,
        env,
        extra_listen: vec![format!("tcp://127.0.0.1:{port}")],
        upstream: Some(engine_host),
        ..Default::default()
    });
    TlsBed {
        _dir: dir,
        certs,
        port,
        broker,
    }
}

impl TlsBed {
    fn host(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn build(&self, build: Build<'_>, who: &str) -> BuildResult {
        build
            .env("DOCKER_TLS_VERIFY", "1")
            .env(
                "DOCKER_CERT_PATH",
                self.certs.join(who).display().to_string(),
            )
            .run_against(&self.host())
    }

    /// `docker version` as `who` (a DOCKER_CERT_PATH under the certificates directory).
    fn docker_version(&self, cert_path: &Path) -> (bool, String) {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", self.host())
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", cert_path)
            .args(["version", "--format", "{{.Server.Version}}"]);
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

const BOTH: &str = "[secrets.token_a]\nsources = [\"env:TOKEN_A\"]\nclients = [\"ci-a\"]\n\
                    [secrets.token_b]\nsources = [\"env:TOKEN_B\"]\nclients = [\"ci-b\"]\n";

fn both_secrets_build() -> Build<'static> {
    Build::new(format!(
        "FROM {BASE_IMAGE}\n\
         RUN --mount=type=secret,id=token_a --mount=type=secret,id=token_b \
             sh -c 'mkdir /o; cat /run/secrets/token_a > /o/a 2>/dev/null; cat /run/secrets/token_b > /o/b 2>/dev/null; true'\n\
         FROM scratch\nCOPY --from=0 /o /\n"
    ))
}

#[test]
fn docker_endpoint_over_mtls_to_a_tls_engine_serves_each_client_only_its_own_secret() {
    if skip() {
        return;
    }
    let a = unique_secret("token-a");
    let b = unique_secret("token-b");
    let bed = start(BOTH, vec![("TOKEN_A", &a), ("TOKEN_B", &b)]);

    let as_a = bed.build(both_secrets_build(), "ci-a");
    as_a.assert_ok();
    assert_eq!(as_a.text("a"), a);
    assert!(
        !as_a.out_dir.join("b").exists() || as_a.file("b").is_empty(),
        "ci-a got token_b"
    );

    let as_b = bed.build(both_secrets_build(), "ci-b");
    as_b.assert_ok();
    assert_eq!(as_b.text("b"), b);
    assert!(
        !as_b.out_dir.join("a").exists() || as_b.file("a").is_empty(),
        "ci-b got token_a"
    );

    let audit = bed.broker.audit();
    let line = |client: &str, id: &str, decision: &str| {
        audit.lines().any(|l| {
            l.contains(&format!("\"client\":\"{client}\""))
                && l.contains(&format!("\"id\":\"{id}\""))
                && l.contains(&format!("\"decision\":\"{decision}\""))
        })
    };
    assert!(line("ci-a", "token_a", "served"), "audit: {audit}");
    assert!(line("ci-a", "token_b", "denied"), "audit: {audit}");
    assert!(line("ci-b", "token_b", "served"), "audit: {audit}");
    assert!(line("ci-b", "token_a", "denied"), "audit: {audit}");
    assert!(!audit.contains(&a) && !audit.contains(&b));
}

#[test]
fn clients_without_an_allowed_verified_certificate_are_refused_and_told_why() {
    if skip() {
        return;
    }
    let bed = start("", vec![]);
    let (ok, out) = bed.docker_version(&bed.certs.join("ci-a"));
    assert!(ok, "ci-a: {out}");

    // A valid certificate whose identity [access] clients does not list: the Engine API's
    // 403, which the CLI prints.
    let (ok, out) = bed.docker_version(&bed.certs.join("ci-c"));
    assert!(!ok);
    assert!(
        out.contains("client certificate identity \"ci-c\" is not in [access] clients"),
        "ci-c: {out}"
    );

    // The rest fail in the TLS handshake: the CLI shows the alert, the broker's log the cause.
    let no_cert = bed.certs.join("no-cert");
    std::fs::create_dir_all(&no_cert).unwrap();
    std::fs::copy(bed.certs.join("ca.pem"), no_cert.join("ca.pem")).unwrap();
    for (dir, client_sees, broker_logs) in [
        (
            no_cert.clone(),
            "certificate required",
            "peer sent no certificates",
        ),
        (
            bed.certs.join("stranger"),
            "unknown certificate authority",
            "UnknownIssuer",
        ),
        (
            bed.certs.join("expired"),
            "expired certificate",
            "certificate expired",
        ),
    ] {
        let (ok, out) = bed.docker_version(&dir);
        assert!(!ok, "{}: {out}", dir.display());
        assert!(out.contains(client_sees), "{}: {out}", dir.display());
        let log = wait_for_log(&bed.broker, broker_logs);
        assert!(log.contains(broker_logs), "broker log: {log}");
    }
    // And the allowed client still gets through.
    let (ok, out) = bed.docker_version(&bed.certs.join("ci-b"));
    assert!(ok, "ci-b after the refusals: {out}");
}

fn wait_for_log(broker: &Broker, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = broker.log();
        if log.contains(needle) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn garbage_and_a_stalled_handshake_do_not_stop_other_clients() {
    if skip() {
        return;
    }
    let bed = start("", vec![]);
    // Plain HTTP to the TLS port: the handshake fails, the connection closes.
    let mut plain = TcpStream::connect(("127.0.0.1", bed.port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    assert!(wait_for_log(&bed.broker, "TLS handshake failed").contains("TLS handshake failed"));

    // Half a ClientHello, then silence: the broker gives up after its handshake timeout
    // (10 s) while serving others meanwhile.
    let mut stalled = TcpStream::connect(("127.0.0.1", bed.port)).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02]).unwrap();
    let started = Instant::now();
    let (ok, out) = bed.docker_version(&bed.certs.join("ci-a"));
    assert!(ok, "ci-a while another client stalls: {out}");
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(18),
        "the stalled handshake ended after {waited:?}"
    );
    assert!(
        wait_for_log(&bed.broker, "did not complete within").contains("did not complete within")
    );
}

#[test]
fn sighup_picks_up_new_certificates_and_a_broken_file_keeps_the_old() {
    if skip() {
        return;
    }
    let bed = start("", vec![]);
    let (ok, out) = bed.docker_version(&bed.certs.join("ci-a"));
    assert!(ok, "{out}");

    // A broken key file: the reload is refused, the old certificates stay.
    let key = bed.certs.join("server-key.pem");
    let saved = std::fs::read(&key).unwrap();
    std::fs::write(&key, b"not a key\n").unwrap();
    bed.broker.signal("HUP");
    let log = wait_for_log(&bed.broker, "TLS certificates not reloaded");
    assert!(log.contains("TLS certificates not reloaded"), "{log}");
    let (ok, out) = bed.docker_version(&bed.certs.join("ci-a"));
    assert!(ok, "after a broken reload: {out}");
    std::fs::write(&key, saved).unwrap();

    // A new CA, server and client certificates in place of the old files.
    let fresh = make_certs(bed._dir.path().join("fresh").as_path(), &["ci-a"]);
    for f in ["server.pem", "server-key.pem", "ca.pem"] {
        std::fs::copy(fresh.join(f), bed.certs.join(f)).unwrap();
    }
    bed.broker.signal("HUP");
    let log = wait_for_log(&bed.broker, "TLS certificates reloaded");
    assert!(log.contains("TLS certificates reloaded"), "{log}");
    // The old client certificate (old CA) no longer verifies; the new one does.
    let (ok, out) = bed.docker_version(&bed.certs.join("ci-a"));
    assert!(!ok, "old certificate after rotation: {out}");
    let (ok, out) = bed.docker_version(&fresh.join("ci-a"));
    assert!(ok, "new certificate after rotation: {out}");
}

/// A remote-driver builder over tcp with mutual TLS; removed on drop.
struct TlsRemoteBuilder {
    name: String,
}

impl TlsRemoteBuilder {
    fn create(port: u16, certs: &Path, who: &str) -> TlsRemoteBuilder {
        let name = format!("bbtlsremote_{}_{who}", std::process::id());
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", engine())
            .args(["buildx", "create", "--name", &name, "--driver", "remote"])
            .arg("--driver-opt")
            .arg(format!(
                "cacert={c}/ca.pem,cert={c}/{who}.pem,key={c}/{who}-key.pem,servername=localhost",
                c = certs.display()
            ))
            .arg(format!("tcp://127.0.0.1:{port}"));
        let out = run_with_timeout(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "buildx create --driver remote failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        TlsRemoteBuilder { name }
    }

    fn build(&self, build: Build<'_>) -> BuildResult {
        build
            .arg(format!("--builder={}", self.name))
            .run_against(engine())
    }
}

impl Drop for TlsRemoteBuilder {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .env("DOCKER_HOST", engine())
            .args(["buildx", "rm", &self.name])
            .output();
    }
}

#[test]
fn remote_driver_over_mtls_gets_a_policy_secret_and_an_unlisted_client_is_refused() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), &["ci-a", "ci-c"]);
    let port = free_port();
    let server = format!(
        "buildkit_listen = [\"tcp://127.0.0.1:{port}\"]\n\
         [server.tls]\ncert = \"{c}/server.pem\"\nkey = \"{c}/server-key.pem\"\nclient_ca = \"{c}/ca.pem\"\n",
        c = certs.display()
    );
    let value = unique_secret("remote-tls");
    let broker = Broker::start(BrokerOptions {
        preamble: "[access]\nclients = [\"ci-a\"]\n",
        server: &server,
        policy: "[secrets.tok]\nsources = [\"env:TOK\"]\nclients = [\"ci-a\"]\n",
        env: vec![("TOK", &value)],
        ..Default::default()
    });
    let build = || {
        Build::new(format!(
            "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok > /v\n\
             FROM scratch\nCOPY --from=0 /v /\n"
        ))
    };
    let allowed = TlsRemoteBuilder::create(port, &certs, "ci-a");
    let ok = allowed.build(build());
    ok.assert_ok();
    assert_eq!(ok.text("v"), value);
    let audit = broker.audit();
    assert!(
        audit.lines().any(|l| l.contains("\"client\":\"ci-a\"")
            && l.contains("\"id\":\"tok\"")
            && l.contains("\"decision\":\"served\"")),
        "audit: {audit}"
    );

    let refused = TlsRemoteBuilder::create(port, &certs, "ci-c");
    let no = refused.build(build());
    assert!(!no.success(), "ci-c built:\n{}", no.log());
    assert!(
        no.log()
            .contains("client certificate identity \"ci-c\" is not in [access] clients"),
        "{}",
        no.log()
    );
    assert!(!no.log().contains(&value));
}
