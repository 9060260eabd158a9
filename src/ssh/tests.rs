//! Golden agent-protocol fixtures and table tests.
//!
//! `testdata/openssh_capture.txt` is real traffic: OpenSSH 9.2's `ssh` and `ssh-add` talking to
//! OpenSSH's `ssh-agent` holding `testdata/golden_ed25519`, recorded by
//! `testdata/capture_agent.py` (a logging proxy between them). Ed25519 signatures are
//! deterministic, so buildbroker holding the same key must answer list and sign byte for byte
//! as OpenSSH's agent did; where buildbroker must differ (add, remove, lock, unlock) the
//! expected answer is `SSH_AGENT_FAILURE`, written out below.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ssh_agent_lib::proto::extension::SessionBind;
use ssh_agent_lib::ssh_encoding::Encode;
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{Algorithm, Signature};

use super::destination::{BindRefused, Bindings, SignRefused, permit_listing, permit_sign};
use super::hosts::{AllowedHosts, HostsError};
use super::{AgentConnection, HeldKeys, KeyLoadError, KeyParseError, Origin};
use crate::access::PeerInfo;
use crate::broker::Broker;
use crate::config::{HostEnv, HostRule, Policy, PolicyOrigin};
use crate::source::SourceSpec;

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ssh/testdata");
const CAPTURE: &str = include_str!("testdata/openssh_capture.txt");
/// `ssh-keygen -lf testdata/golden_host.pub`: the host key of the captured connection.
const GOLDEN_HOST: &str = "SHA256:SZjPLR5J7ZAvcDVHHNdBJmrg+pXR3GtWq9fgIlM2rm0";
/// Another host's key (`other-host`), for "not this host".
const OTHER_HOST: &str = "SHA256:Lug5z896SmwqP0c/e6EpyL+8qBEu2ExDOwYPpdyoq0o";

const FAILURE: &[u8] = &[0, 0, 0, 1, 5];
const SUCCESS: &[u8] = &[0, 0, 0, 1, 6];
const EXTENSION_FAILURE: &[u8] = &[0, 0, 0, 1, 28];
/// `SSH_AGENT_IDENTITIES_ANSWER` with no keys.
const NO_KEYS: &[u8] = &[0, 0, 0, 5, 12, 0, 0, 0, 0];

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// (request, OpenSSH's response) for one captured exchange, both with length prefixes.
fn captured(name: &str) -> (Vec<u8>, Vec<u8>) {
    let line = CAPTURE
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no capture {name}"));
    let mut parts = line.split(' ').skip(1);
    (hex(parts.next().unwrap()), hex(parts.next().unwrap()))
}

fn broker(rule: &str) -> Arc<Broker> {
    let text = format!(
        "[ssh.golden]\nprivate_keys = [\"file:{TESTDATA}/golden_ed25519\"]\n{rule}\n\
         [ssh.other]\nagent = \"/nonexistent/agent.sock\"\nkeys = [\"{OTHER_HOST}\"]\n"
    );
    let env = HostEnv::default();
    let policy = Policy::parse(&text, PolicyOrigin::Embedded, &env).expect("test policy");
    Arc::new(Broker::new(policy, env).expect("broker"))
}

fn connection(broker: &Arc<Broker>) -> AgentConnection {
    let peer = PeerInfo {
        uid: 0,
        gid: 0,
        pid: None,
        client: crate::access::ClientId::Uid(0),
    };
    AgentConnection::new(broker.clone(), "golden", Origin::Socket { peer })
}

/// Sends one length-prefixed request through the connection; returns the length-prefixed
/// answer, as it goes on the wire.
async fn exchange(conn: &mut AgentConnection, request: &[u8]) -> Vec<u8> {
    let len = u32::from_be_bytes(request[..4].try_into().unwrap()) as usize;
    assert_eq!(len, request.len() - 4, "fixture frame length");
    super::wire::with_length(conn.respond(&request[4..]).await).to_vec()
}

#[tokio::test]
async fn list_is_byte_identical_to_openssh() {
    let b = broker("");
    let mut conn = connection(&b);
    let (request, openssh) = captured("list");
    assert_eq!(exchange(&mut conn, &request).await, openssh);
}

#[tokio::test]
async fn bound_sign_is_byte_identical_to_openssh() {
    let b = broker("");
    let mut conn = connection(&b);
    for name in ["bind", "list_bound", "sign_bound"] {
        let (request, openssh) = captured(name);
        assert_eq!(exchange(&mut conn, &request).await, openssh, "{name}");
    }
}

#[tokio::test]
async fn constrained_key_signs_for_the_allowed_bound_host() {
    let b = broker(&format!("hosts = [\"{GOLDEN_HOST}\"]"));
    let mut conn = connection(&b);
    for name in ["bind", "list_bound", "sign_bound"] {
        let (request, openssh) = captured(name);
        assert_eq!(exchange(&mut conn, &request).await, openssh, "{name}");
    }
}

#[tokio::test]
async fn constrained_key_is_hidden_and_refused_for_another_host() {
    let b = broker(&format!("hosts = [\"{OTHER_HOST}\"]"));
    let mut conn = connection(&b);
    assert_eq!(exchange(&mut conn, &captured("bind").0).await, SUCCESS);
    assert_eq!(
        exchange(&mut conn, &captured("list_bound").0).await,
        NO_KEYS
    );
    assert_eq!(
        exchange(&mut conn, &captured("sign_bound").0).await,
        FAILURE
    );
}

#[tokio::test]
async fn constrained_key_refuses_unbound_signing_but_lists_for_local_use() {
    let b = broker(&format!("hosts = [\"{GOLDEN_HOST}\"]"));
    let mut conn = connection(&b);
    let (list, openssh_list) = captured("list");
    assert_eq!(exchange(&mut conn, &list).await, openssh_list);
    assert_eq!(
        exchange(&mut conn, &captured("sign_bound").0).await,
        FAILURE
    );

    // Unconstrained, the same unbound request signs (as OpenSSH's agent does).
    let free = broker("");
    let mut conn = connection(&free);
    let (sign, openssh_sign) = captured("sign_bound");
    assert_eq!(exchange(&mut conn, &sign).await, openssh_sign);
}

#[tokio::test]
async fn forged_bind_gets_extension_failure_and_blocks_constrained_keys() {
    let b = broker(&format!("hosts = [\"{GOLDEN_HOST}\"]"));
    let mut conn = connection(&b);
    let (mut bind, _) = captured("bind");
    // The last 5 bytes are the end of the host's signature and the is_forwarding flag.
    let at = bind.len() - 3;
    bind[at] ^= 0x01;
    assert_eq!(exchange(&mut conn, &bind).await, EXTENSION_FAILURE);
    assert_eq!(
        exchange(&mut conn, &captured("list_bound").0).await,
        NO_KEYS
    );
    assert_eq!(
        exchange(&mut conn, &captured("sign_bound").0).await,
        FAILURE
    );
}

#[tokio::test]
async fn every_other_request_gets_ssh_agent_failure_and_changes_nothing() {
    let b = broker("");
    let mut conn = connection(&b);
    // Captured from ssh-add -x, -X, `ssh-add KEY`, -d, -D (which also sends the protocol-1
    // remove-all, type 9).
    for name in [
        "lock",
        "unlock",
        "add",
        "remove",
        "remove_all",
        "remove_all_rsa_v1",
    ] {
        let (request, openssh) = captured(name);
        assert_eq!(openssh, SUCCESS, "OpenSSH's agent accepted {name}");
        assert_eq!(exchange(&mut conn, &request).await, FAILURE, "{name}");
    }
    // Written by hand: SSH_AGENTC_EXTENSION "query" and "foo@example.com", an unknown
    // message type (200), and a sign request cut short.
    let unknown: [&[u8]; 4] = [
        b"\x00\x00\x00\x0a\x1b\x00\x00\x00\x05query",
        b"\x00\x00\x00\x14\x1b\x00\x00\x00\x0ffoo@example.com",
        b"\x00\x00\x00\x01\xc8",
        b"\x00\x00\x00\x05\x0d\x00\x00\x00\x33",
    ];
    for request in unknown {
        assert_eq!(exchange(&mut conn, request).await, FAILURE, "{request:?}");
    }
    let (list, openssh_list) = captured("list");
    assert_eq!(
        exchange(&mut conn, &list).await,
        openssh_list,
        "the key is still there, unlocked"
    );
}

#[tokio::test]
async fn sign_with_a_key_the_id_does_not_hold_is_refused() {
    let b = broker("");
    let mut conn = connection(&b);
    // The captured sign request, with the public key swapped for another ed25519 key.
    let (mut sign, _) = captured("sign_bound");
    let golden_pub = hex("7d5839e8213ac4de4e5e0bc107eed98ff99197cbbdf19abe6518772d0a733a0e");
    let at = sign
        .windows(32)
        .position(|w| w == golden_pub.as_slice())
        .unwrap();
    sign[at..at + 32].copy_from_slice(&[9u8; 32]);
    assert_eq!(exchange(&mut conn, &sign).await, FAILURE);
}

#[tokio::test]
async fn an_id_whose_upstream_is_missing_refuses_and_check_names_the_socket() {
    let b = broker("");
    let peer = PeerInfo {
        uid: 0,
        gid: 0,
        pid: None,
        client: crate::access::ClientId::Uid(0),
    };
    let mut conn = AgentConnection::new(b.clone(), "other", Origin::Socket { peer });
    assert_eq!(exchange(&mut conn, &captured("list").0).await, FAILURE);
    let err = b.ssh().managed("other").unwrap().check().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/nonexistent/agent.sock"), "{text}");
}

// ---- destination constraints -------------------------------------------------------------

/// A host with a deterministic key, able to sign session identifiers as sshd does at kex.
struct Host(ed25519_dalek::SigningKey);

impl Host {
    fn new(seed: u8) -> Host {
        Host(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    fn key(&self) -> KeyData {
        KeyData::Ed25519(Ed25519PublicKey(self.0.verifying_key().to_bytes()))
    }

    fn fingerprint(&self) -> String {
        self.key().fingerprint(ssh_key::HashAlg::Sha256).to_string()
    }

    fn bind(&self, session_id: &[u8], forwarding: bool) -> SessionBind {
        use ed25519_dalek::Signer;
        let signature = self.0.sign(session_id).to_bytes().to_vec();
        SessionBind {
            host_key: self.key(),
            session_id: session_id.to_vec(),
            signature: Signature::new(Algorithm::Ed25519, signature).unwrap(),
            is_forwarding: forwarding,
        }
    }
}

fn user_key() -> KeyData {
    Host::new(42).key()
}

/// A public-key user-authentication request as OpenSSH's ssh signs it (RFC 4252 §7).
fn userauth(session_id: &[u8], key: &KeyData, host: Option<&KeyData>) -> Vec<u8> {
    let mut out = Vec::new();
    session_id.encode(&mut out).unwrap();
    50u8.encode(&mut out).unwrap();
    "root".encode(&mut out).unwrap();
    "ssh-connection".encode(&mut out).unwrap();
    let method = match host {
        Some(_) => "publickey-hostbound-v00@openssh.com",
        None => "publickey",
    };
    method.encode(&mut out).unwrap();
    1u8.encode(&mut out).unwrap();
    "ssh-ed25519".encode(&mut out).unwrap();
    key.encode_prefixed(&mut out).unwrap();
    if let Some(h) = host {
        h.encode_prefixed(&mut out).unwrap();
    }
    out
}

fn allowed(hosts: &[&Host]) -> AllowedHosts {
    let rules: Vec<HostRule> = hosts
        .iter()
        .map(|h| crate::config::parse_host_rule(&h.fingerprint()).unwrap())
        .collect();
    AllowedHosts::resolve(&rules, None).unwrap()
}

#[test]
fn sign_permission_table() {
    let (a, b, c) = (Host::new(1), Host::new(2), Host::new(3));
    let key = user_key();
    let bound = |hops: &[(&Host, &[u8], bool)]| {
        let mut bindings = Bindings::default();
        for (host, sid, fwd) in hops {
            bindings.bind(&host.bind(sid, *fwd)).unwrap();
        }
        bindings
    };
    let ab = allowed(&[&a, &b]);
    let only_b = allowed(&[&b]);
    // (case, bindings, allowed hosts, data, expected)
    type Case<'a> = (
        &'a str,
        Bindings,
        &'a AllowedHosts,
        Vec<u8>,
        Result<(), SignRefused>,
    );
    let table: Vec<Case> = vec![
        (
            "unbound",
            Bindings::default(),
            &ab,
            userauth(b"s1", &key, None),
            Err(SignRefused::Unbound),
        ),
        (
            "bound to an allowed host, its session",
            bound(&[(&a, b"s1", false)]),
            &ab,
            userauth(b"s1", &key, None),
            Ok(()),
        ),
        (
            "hostbound method names the bound host",
            bound(&[(&a, b"s1", false)]),
            &ab,
            userauth(b"s1", &key, Some(&a.key())),
            Ok(()),
        ),
        (
            "bound to a host not allowed",
            bound(&[(&c, b"s1", false)]),
            &ab,
            userauth(b"s1", &key, None),
            Err(SignRefused::HostNotAllowed(c.fingerprint())),
        ),
        (
            "another session's request (replay)",
            bound(&[(&a, b"s1", false)]),
            &ab,
            userauth(b"s2", &key, None),
            Err(SignRefused::SessionMismatch),
        ),
        (
            "hostbound request names another host",
            bound(&[(&a, b"s1", false)]),
            &ab,
            userauth(b"s1", &key, Some(&b.key())),
            Err(SignRefused::HostkeyMismatch),
        ),
        (
            "signing on a forwarding hop",
            bound(&[(&a, b"s1", true)]),
            &ab,
            userauth(b"s1", &key, None),
            Err(SignRefused::SignOnForwardingHop),
        ),
        (
            "through an allowed forwarding hop to an allowed host",
            bound(&[(&a, b"s1", true), (&b, b"s2", false)]),
            &ab,
            userauth(b"s2", &key, Some(&b.key())),
            Ok(()),
        ),
        (
            "through a forwarding hop that is not allowed",
            bound(&[(&a, b"s1", true), (&b, b"s2", false)]),
            &only_b,
            userauth(b"s2", &key, Some(&b.key())),
            Err(SignRefused::HostNotAllowed(a.fingerprint())),
        ),
        (
            "forwarded, but the request names no host key",
            bound(&[(&a, b"s1", true), (&b, b"s2", false)]),
            &ab,
            userauth(b"s2", &key, None),
            Err(SignRefused::NoHostkeyForwarded),
        ),
        (
            "not a user-authentication request",
            bound(&[(&a, b"s1", false)]),
            &ab,
            b"SSHSIG some other signature".to_vec(),
            Err(SignRefused::NotUserauth),
        ),
        (
            "a request for another key",
            bound(&[(&a, b"s1", false)]),
            &ab,
            userauth(b"s1", &Host::new(43).key(), None),
            Err(SignRefused::NotUserauth),
        ),
    ];
    for (case, bindings, hosts, data, expected) in table {
        let got = permit_sign(hosts, &bindings, &key, &data).map(|_| ());
        assert_eq!(got, expected, "{case}");
    }
}

#[test]
fn bind_table() {
    let (a, b) = (Host::new(1), Host::new(2));
    let mut forged = a.bind(b"s1", false);
    forged.signature = b.bind(b"s1", false).signature;

    let mut bindings = Bindings::default();
    assert_eq!(bindings.bind(&forged), Err(BindRefused::BadSignature));
    assert_eq!(
        bindings.bind(&a.bind(&[0; 129], false)),
        Err(BindRefused::SessionIdTooLong)
    );
    let key = user_key();
    assert_eq!(
        permit_sign(
            &allowed(&[&a]),
            &bindings,
            &key,
            &userauth(b"s1", &key, None)
        ),
        Err(SignRefused::BindFailed),
        "a connection whose binds all failed refuses constrained keys"
    );
    assert_eq!(
        permit_listing(&allowed(&[&a]), &bindings),
        Err(SignRefused::BindFailed)
    );

    let mut bindings = Bindings::default();
    bindings.bind(&a.bind(b"s1", true)).unwrap();
    assert_eq!(
        bindings.bind(&a.bind(b"s1", true)),
        Ok(()),
        "the same binding again"
    );
    assert_eq!(
        bindings.bind(&b.bind(b"s1", false)),
        Err(BindRefused::SessionIdReused)
    );
    bindings.bind(&b.bind(b"s2", false)).unwrap();
    assert_eq!(
        bindings.bind(&a.bind(b"s3", false)),
        Err(BindRefused::AfterAuthentication)
    );

    let mut bindings = Bindings::default();
    for i in 0..16u8 {
        bindings.bind(&a.bind(&[i + 1], true)).unwrap();
    }
    assert_eq!(
        bindings.bind(&a.bind(b"x", true)),
        Err(BindRefused::TooMany)
    );
}

// ---- known_hosts ------------------------------------------------------------------------

/// `testdata/golden_host.pub` and `other-host` as known_hosts lines; the hashed line was made
/// by `ssh-keygen -H` from "[127.0.0.1]:2222 <golden host key>".
const KNOWN_HOSTS: &str = "\
# a comment
|1|WpyDFVdYzHOXIgY/sa9MHCYOBS4=|F8O7e/YqRR0rF70hPUdglUl6gbg= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAPj2SlD/p8LgQtXvVhURzht83oZTOVEsEt+1hk9qOEG
git.example.com,*.corp.example,!bad.corp.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH+xkzB9FMtpHL7rtaUD7kVmGvVZZF5XFfxbtUAFJF/v
[127.0.0.1]:3333 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH+xkzB9FMtpHL7rtaUD7kVmGvVZZF5XFfxbtUAFJF/v
";

fn golden_host_key() -> KeyData {
    let text = std::fs::read_to_string(format!("{TESTDATA}/golden_host.pub")).unwrap();
    ssh_key::PublicKey::from_openssh(&text)
        .unwrap()
        .key_data()
        .clone()
}

fn other_host_key() -> KeyData {
    ssh_key::PublicKey::from_openssh(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH+xkzB9FMtpHL7rtaUD7kVmGvVZZF5XFfxbtUAFJF/v",
    )
    .unwrap()
    .key_data()
    .clone()
}

#[test]
fn known_hosts_resolution_table() {
    let path = std::path::Path::new("/kh");
    let golden = golden_host_key();
    let other = other_host_key();
    // (hosts entry, allows golden, allows other)
    let table = [
        ("[127.0.0.1]:2222", Some(true), Some(false)), // hashed line
        ("git.example.com", Some(false), Some(true)),
        ("GIT.example.com", Some(false), Some(true)), // host names are case-insensitive
        ("ci.corp.example", Some(false), Some(true)), // file pattern *.corp.example
        ("*.corp.example", None, None),               // policy pattern, no plain name matches
        ("*.example.com", Some(false), Some(true)),   // policy pattern selects git.example.com
        ("[127.0.0.1]:3333", Some(false), Some(true)),
        ("bad.corp.example", None, None), // negated in the file
        ("127.0.0.1", None, None),        // port 22 is not [127.0.0.1]:2222
        (GOLDEN_HOST, Some(true), Some(false)),
    ];
    for (entry, golden_ok, other_ok) in table {
        let rules = vec![crate::config::parse_host_rule(entry).unwrap()];
        match AllowedHosts::resolve(&rules, Some((path, KNOWN_HOSTS))) {
            Ok(hosts) => {
                assert_eq!(
                    Some(hosts.label_for(&golden).is_some()),
                    golden_ok,
                    "{entry} / golden"
                );
                assert_eq!(
                    Some(hosts.label_for(&other).is_some()),
                    other_ok,
                    "{entry} / other"
                );
            }
            Err(HostsError::NoMatch { name, .. }) => {
                assert_eq!(
                    (golden_ok, other_ok),
                    (None, None),
                    "{entry} resolved nothing"
                );
                assert_eq!(name, entry);
            }
            Err(e) => panic!("{entry}: {e}"),
        }
    }
}

#[test]
fn revoked_keys_are_never_allowed() {
    // The golden host key is @revoked in the file: even its fingerprint entry does not allow it.
    let rules = vec![crate::config::parse_host_rule(GOLDEN_HOST).unwrap()];
    let text = format!(
        "{KNOWN_HOSTS}@revoked revoked.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAPj2SlD/p8LgQtXvVhURzht83oZTOVEsEt+1hk9qOEG\n"
    );
    let hosts = AllowedHosts::resolve(&rules, Some((std::path::Path::new("/kh"), &text))).unwrap();
    assert!(hosts.label_for(&golden_host_key()).is_none());
    let without_file = AllowedHosts::resolve(&rules, None).unwrap();
    assert_eq!(
        without_file.label_for(&golden_host_key()),
        Some(GOLDEN_HOST)
    );
}

// ---- key formats -----------------------------------------------------------------------

/// Makes a key with the real ssh-keygen: `args` are extra flags (type, format, passphrase).
fn keygen(dir: &std::path::Path, name: &str, args: &[&str]) -> (std::path::PathBuf, String) {
    let path = dir.join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-C", name, "-f"])
        .arg(&path)
        .args(args)
        .output()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pubkey = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, pubkey)
}

fn file(path: &std::path::Path) -> SourceSpec {
    SourceSpec::File(path.to_path_buf())
}

/// A passphrase file in `dir` holding `passphrase` (and a newline, as an editor leaves it), as
/// the source a policy's `passphrase` names.
fn passphrase_file(dir: &std::path::Path, passphrase: &str) -> SourceSpec {
    let path = dir.join("pass");
    std::fs::write(&path, format!("{passphrase}\n")).unwrap();
    file(&path)
}

#[tokio::test]
async fn held_keys_load_every_supported_format_and_sign_verifiably() {
    use ed25519_dalek::Verifier as _;
    let dir = tempfile::tempdir().unwrap();
    let pass = passphrase_file(dir.path(), "correct horse");
    // (name, ssh-keygen flags, needs the passphrase)
    let formats: [(&str, &[&str], bool); 8] = [
        ("ed25519", &["-t", "ed25519", "-N", ""], false),
        (
            "ed25519_enc",
            &["-t", "ed25519", "-N", "correct horse"],
            true,
        ),
        (
            "rsa_pkcs1",
            &["-t", "rsa", "-b", "2048", "-m", "PEM", "-N", ""],
            false,
        ),
        (
            "rsa_pkcs8",
            &["-t", "rsa", "-b", "2048", "-m", "PKCS8", "-N", ""],
            false,
        ),
        (
            "ecdsa_sec1",
            &["-t", "ecdsa", "-b", "256", "-m", "PEM", "-N", ""],
            false,
        ),
        (
            "ecdsa384_pkcs8",
            &["-t", "ecdsa", "-b", "384", "-m", "PKCS8", "-N", ""],
            false,
        ),
        (
            "ecdsa_pkcs8_enc",
            &["-t", "ecdsa", "-m", "PKCS8", "-N", "correct horse"],
            true,
        ),
        // P-521 as PKCS#8: ssh-key 0.6.7 rejects OpenSSH-format ECDSA keys whose private
        // scalar is shorter than the curve's size (about a quarter of all P-521 keys, 1 in 512
        // for P-256 and P-384).
        (
            "ecdsa521_pkcs8",
            &["-t", "ecdsa", "-b", "521", "-m", "PKCS8", "-N", ""],
            false,
        ),
    ];
    for (name, flags, encrypted) in formats {
        let (path, pubkey) = keygen(dir.path(), name, flags);
        let public = ssh_key::PublicKey::from_openssh(&pubkey).unwrap();
        let passphrase = encrypted.then_some(&pass);
        let keys = load_held("t", &[file(&path)], passphrase)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let key = keys.find(public.key_data()).expect(name);
        assert_eq!(
            key.fingerprint(),
            &public.fingerprint(ssh_key::HashAlg::Sha256),
            "{name}"
        );
        let flags = ssh_agent_lib::proto::signature::RSA_SHA2_512;
        let sig = key.sign(b"data to sign", flags).unwrap();
        public
            .key_data()
            .verify(b"data to sign", &sig)
            .unwrap_or_else(|e| panic!("{name}: signature does not verify: {e}"));
    }
}

/// RSA keys sign rsa-sha2-256/512 as the flags ask, by ring where it takes the key (2048 to
/// 4096 bits) and by the `rsa` crate otherwise (a 1024-bit key here); SHA-1 only through
/// `sign_rsa_sha1`. Every signature is checked with the public key.
#[tokio::test]
async fn rsa_honours_the_sha2_flags_and_refuses_sha1() {
    use ed25519_dalek::Verifier as _;
    let dir = tempfile::tempdir().unwrap();
    for (bits, by_ring) in [("2048", true), ("4096", true), ("1024", false)] {
        let (path, pubkey) = keygen(dir.path(), bits, &["-t", "rsa", "-b", bits, "-N", ""]);
        let public = ssh_key::PublicKey::from_openssh(&pubkey).unwrap();
        let keys = load_held("t", &[file(&path)], None).await.unwrap();
        let key = keys.find(public.key_data()).unwrap();
        assert_eq!(key.signs_rsa_with_ring(), by_ring, "{bits} bits");
        let ssh_key::public::KeyData::Rsa(rsa_public) = public.key_data() else {
            panic!("an rsa key")
        };
        // Checked with the `rsa` crate (ssh-key's own check refuses keys under 2048 bits).
        let big = |m: &ssh_key::Mpint| {
            rsa::BigUint::from_bytes_be(m.as_positive_bytes().expect("positive"))
        };
        let rsa_public = rsa::RsaPublicKey::new(big(&rsa_public.n), big(&rsa_public.e)).unwrap();
        let verifies = |alg: &str, data: &[u8], sig: &[u8]| {
            use rsa::pkcs1v15::VerifyingKey;
            let sig = rsa::pkcs1v15::Signature::try_from(sig).unwrap();
            let key = rsa_public.clone();
            match alg {
                "rsa-sha2-256" => VerifyingKey::<sha2::Sha256>::new(key).verify(data, &sig),
                "rsa-sha2-512" => VerifyingKey::<sha2::Sha512>::new(key).verify(data, &sig),
                _ => VerifyingKey::<sha1::Sha1>::new(key).verify(data, &sig),
            }
            .is_ok()
        };
        for (flags, alg) in [
            (2, "rsa-sha2-256"),
            (4, "rsa-sha2-512"),
            (6, "rsa-sha2-256"),
        ] {
            let sig = key.sign(b"x", flags).unwrap();
            assert_eq!(sig.algorithm().as_str(), alg, "{bits} bits, flags {flags}");
            assert!(verifies(alg, b"x", sig.as_bytes()), "{bits} bits, {alg}");
            assert!(!verifies(alg, b"y", sig.as_bytes()), "{bits} bits, {alg}");
        }
        assert_eq!(
            key.sign(b"x", 0).unwrap_err(),
            super::held::HeldSignError::RsaSha1
        );
        // With allow_sha1, an ssh-rsa signature (PKCS#1 v1.5 over SHA-1) that verifies.
        let sig = key.sign_rsa_sha1(b"x").unwrap();
        assert!(verifies("ssh-rsa", b"x", &sig), "{bits} bits, ssh-rsa");
        assert!(!verifies("ssh-rsa", b"y", &sig), "{bits} bits, ssh-rsa");
    }
}

#[tokio::test]
async fn key_load_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, _) = keygen(dir.path(), "enc", &["-t", "ed25519", "-N", "password1"]);
    let (legacy, _) = keygen(
        dir.path(),
        "legacy",
        &["-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "password1"],
    );
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope").unwrap();
    let not_a_key = dir.path().join("text");
    std::fs::write(&not_a_key, "hello").unwrap();

    let err = |r: Result<HeldKeys, KeyLoadError>| match r {
        Ok(_) => panic!("loaded"),
        Err(e) => e,
    };
    assert!(matches!(
        err(load_held("t", &[file(&enc)], None).await),
        KeyLoadError::NeedsPassphrase { .. }
    ));
    assert!(matches!(
        err(load_held("t", &[file(&enc)], Some(&file(&wrong))).await),
        KeyLoadError::Parse {
            error: KeyParseError::WrongPassphrase,
            ..
        }
    ));
    assert!(matches!(
        err(load_held("t", &[file(&legacy)], Some(&file(&wrong))).await),
        KeyLoadError::Parse {
            error: KeyParseError::LegacyEncryptedPem,
            ..
        }
    ));
    assert!(matches!(
        err(load_held("t", &[file(&not_a_key)], None).await),
        KeyLoadError::Parse {
            error: KeyParseError::NotAKey,
            ..
        }
    ));
    let missing = err(load_held("t", &[file(&dir.path().join("absent"))], None).await);
    assert!(missing.to_string().contains("no such file"), "{missing}");
    // One missing key fails the id, even when another loads.
    let (good, _) = keygen(dir.path(), "good", &["-t", "ed25519", "-N", ""]);
    assert!(
        load_held("t", &[file(&good), file(&dir.path().join("absent"))], None)
            .await
            .is_err()
    );
}

/// An OpenSSH ECDSA key file whose private scalar is not the one behind the public key stored
/// with it (corrupted, or crafted to be listed as one key and sign as another) is refused at
/// load, for each curve; the same halves, matched, load and sign verifiably.
#[tokio::test]
async fn ecdsa_keys_whose_private_half_does_not_match_their_public_half_are_refused() {
    use ssh_key::private::{EcdsaKeypair, KeypairData};
    let dir = tempfile::tempdir().unwrap();
    for bits in ["256", "384"] {
        // (1 in 512 keys of these curves has a scalar too short for ssh-key 0.6 to read: the
        // next one is taken.)
        let halves = |name: &str| {
            (0..20)
                .find_map(|i| {
                    let name = format!("{name}-{i}");
                    let (path, _) =
                        keygen(dir.path(), &name, &["-t", "ecdsa", "-b", bits, "-N", ""]);
                    let key = ssh_key::PrivateKey::read_openssh_file(&path).ok()?;
                    Some(key.key_data().ecdsa().unwrap().clone())
                })
                .expect("a P-256/P-384 key ssh-key can read in 20")
        };
        let (one, other) = (
            halves(&format!("one{bits}")),
            halves(&format!("other{bits}")),
        );
        let mixed = match (&one, &other) {
            (EcdsaKeypair::NistP256 { private, .. }, EcdsaKeypair::NistP256 { public, .. }) => {
                EcdsaKeypair::NistP256 {
                    private: private.clone(),
                    public: *public,
                }
            }
            (EcdsaKeypair::NistP384 { private, .. }, EcdsaKeypair::NistP384 { public, .. }) => {
                EcdsaKeypair::NistP384 {
                    private: private.clone(),
                    public: *public,
                }
            }
            _ => unreachable!("both keys are on one curve"),
        };
        let write = |name: &str, keypair: EcdsaKeypair| {
            let key = ssh_key::PrivateKey::new(KeypairData::Ecdsa(keypair), name).unwrap();
            let path = dir.path().join(name);
            key.write_openssh_file(&path, ssh_key::LineEnding::LF)
                .unwrap();
            path
        };
        let mixed_path = write(&format!("mixed{bits}"), mixed);
        match load_held("t", &[file(&mixed_path)], None).await {
            Ok(_) => panic!("P-{bits}: a key with another key's public half was loaded"),
            Err(e) => assert!(
                matches!(&e, KeyLoadError::Parse { error: KeyParseError::Malformed { message, .. }, .. }
                    if message.contains("does not match the public key stored with it")),
                "P-{bits}: {e}"
            ),
        }
        // The control: the same construction with matching halves loads and signs.
        let public = KeyData::from(ssh_key::public::EcdsaPublicKey::from(&one));
        let matched_path = write(&format!("matched{bits}"), one);
        let keys = Arc::new(load_held("t", &[file(&matched_path)], None).await.unwrap());
        let signature = keys
            .sign_with(&public, |key| key.sign(b"data", 0))
            .await
            .expect("the held key")
            .unwrap();
        use ed25519_dalek::Verifier as _;
        public.verify(b"data", &signature).unwrap();
    }
}

#[tokio::test]
async fn held_keys_are_kept_until_a_reload_and_read_again_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (first, first_pub) = keygen(dir.path(), "first", &["-t", "ed25519", "-N", ""]);
    let (second, second_pub) = keygen(dir.path(), "second", &["-t", "ed25519", "-N", ""]);
    let key_file = dir.path().join("deploy");
    std::fs::copy(&first, &key_file).unwrap();
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(
        &policy_file,
        format!(
            "[ssh.golden]\nprivate_keys = [\"file:{}\"]\n",
            key_file.display()
        ),
    )
    .unwrap();
    let env = HostEnv::default();
    let b = Arc::new(Broker::new(Policy::load_file(&policy_file, &env).unwrap(), env).unwrap());
    let fingerprint = |public: &str| {
        ssh_key::PublicKey::from_openssh(public)
            .unwrap()
            .fingerprint(ssh_key::HashAlg::Sha256)
    };
    let listed = |b: &Arc<Broker>| {
        let b = b.clone();
        async move {
            let keys = b
                .ssh()
                .managed("golden")
                .unwrap()
                .held_keys()
                .await
                .unwrap();
            keys.identities()
                .iter()
                .map(|i| {
                    i.credential
                        .key_data()
                        .fingerprint(ssh_key::HashAlg::Sha256)
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(&b).await, vec![fingerprint(&first_pub)]);
    // The file changes: the loaded key stays in memory (no per-request re-read)…
    std::fs::copy(&second, &key_file).unwrap();
    assert_eq!(listed(&b).await, vec![fingerprint(&first_pub)]);
    // …until a reload drops it and the next request loads the file again.
    let before = b.ssh();
    b.reload().unwrap();
    assert!(
        !Arc::ptr_eq(&before, &b.ssh()),
        "a reload replaces the ssh registry"
    );
    drop(before);
    assert_eq!(listed(&b).await, vec![fingerprint(&second_pub)]);
}

/// Loads held keys with the default source settings, as every test here does.
async fn load_held(
    id: &str,
    keys: &[SourceSpec],
    passphrase: Option<&SourceSpec>,
) -> Result<HeldKeys, KeyLoadError> {
    HeldKeys::load(
        id,
        keys,
        passphrase,
        &crate::source::SourceRuntime::default(),
    )
    .await
}

#[tokio::test]
async fn known_hosts_reads_are_capped_and_regular_files_only() {
    use super::hosts::{self, MAX_KNOWN_HOSTS_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let rules = [HostRule::Name("git.example.com".into())];

    // A file just under the cap (padded with comments) resolves.
    let at_cap = dir.path().join("known_hosts");
    let mut text = KNOWN_HOSTS.to_string();
    let filler = format!("#{}\n", "x".repeat(1023));
    while (text.len() + filler.len()) as u64 <= MAX_KNOWN_HOSTS_BYTES {
        text.push_str(&filler);
    }
    std::fs::write(&at_cap, &text).unwrap();
    let hosts = hosts::load(&rules, Some(&at_cap)).await.unwrap();
    assert!(hosts.label_for(&other_host_key()).is_some());

    // One byte over: a clear error, not a 4 MiB+ read.
    let over = dir.path().join("big");
    let f = std::fs::File::create(&over).unwrap();
    f.set_len(MAX_KNOWN_HOSTS_BYTES + 1).unwrap();
    match hosts::load(&rules, Some(&over)).await {
        Err(HostsError::Read { path, message }) => {
            assert_eq!(path, over);
            assert!(message.contains("4194304-byte limit"), "{message}");
        }
        other => panic!("expected the cap, got {other:?}"),
    }

    // A FIFO nobody writes to: refused at once instead of a read that never ends.
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        hosts::load(&rules, Some(&fifo)),
    )
    .await
    .expect("returns at once");
    match result {
        Err(HostsError::Read { message, .. }) => {
            assert!(message.contains("FIFO"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The longest pause, while `work` runs, of a task that ticks every millisecond on the same
/// (current-thread) runtime, and how long `work` took.
async fn longest_pause_during<T>(
    work: impl std::future::Future<Output = T>,
) -> (T, Duration, Duration) {
    let ticks = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                ticks.lock().unwrap().push(Instant::now());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    tokio::task::yield_now().await;
    let started = Instant::now();
    let out = work.await;
    let took = started.elapsed();
    ticker.abort();
    let mut last = started;
    let mut pause = Duration::ZERO;
    for &t in ticks.lock().unwrap().iter().filter(|&&t| t >= started) {
        pause = pause.max(t - last);
        last = t;
    }
    pause = pause.max(started + took - last);
    (out, took, pause)
}

/// Decrypting a held key (bcrypt-pbkdf, as many rounds as `ssh-keygen -a` asked) and RSA
/// private-key operations run on threads of their own: the other tasks of the connection's
/// thread (other builds' relays) keep running meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn key_decryption_and_rsa_signing_leave_the_connections_thread_free() {
    let dir = tempfile::tempdir().unwrap();
    let pass = passphrase_file(dir.path(), "slow horse");
    let (path, pubkey) = keygen(
        dir.path(),
        "slow",
        &["-t", "rsa", "-b", "2048", "-a", "32", "-N", "slow horse"],
    );
    let public = ssh_key::PublicKey::from_openssh(&pubkey).unwrap();
    let (keys, took, pause) =
        longest_pause_during(load_held("t", &[file(&path)], Some(&pass))).await;
    let keys = Arc::new(keys.unwrap());
    // Every key parsed in this process so far (this one, and other tests') was parsed on a
    // key-work thread: not inline, and not in a pooled thread that keeps its registers.
    assert_eq!(
        *super::held::PARSE_THREADS.lock().unwrap(),
        std::collections::BTreeSet::from([Some("key-work".to_string())])
    );
    assert!(
        took >= Duration::from_millis(100),
        "the decryption is meant to take a while: {took:?}"
    );
    assert!(
        pause < took / 2,
        "the thread stopped for {pause:?} of a {took:?} key load"
    );

    // An RSA signature (ring's: about a millisecond at 2048 bits, tens at 4096 with the `rsa`
    // crate) is made on a thread of its own; an ed25519 one (microseconds) where asked.
    let (thread, signature) = keys
        .sign_with(public.key_data(), |key| {
            let thread = std::thread::current().name().map(str::to_owned);
            key.sign(b"data", 4).map(|signature| (thread, signature))
        })
        .await
        .expect("the held key")
        .unwrap();
    assert_eq!(thread.as_deref(), Some("key-work"));
    {
        use ed25519_dalek::Verifier as _;
        public.key_data().verify(b"data", &signature).unwrap();
    }
    let (path, pubkey) = keygen(dir.path(), "quick", &["-t", "ed25519", "-N", ""]);
    let public = ssh_key::PublicKey::from_openssh(&pubkey).unwrap();
    let keys = Arc::new(load_held("t", &[file(&path)], None).await.unwrap());
    let caller = std::thread::current().id();
    let on = keys
        .sign_with(public.key_data(), |_| Ok(std::thread::current().id()))
        .await;
    assert_eq!(on, Some(Ok(caller)), "ed25519 signs on the caller's thread");
}

/// About a quarter of all OpenSSH-format P-521 keys carry a scalar one byte short of 66 (its
/// top two bits clear: OpenSSH writes it as an mpint without leading zeros), which ssh-key 0.6
/// cannot read (RustCrypto/SSH#350). Such a key, plain or encrypted, fails with an error that
/// says how to convert it (and never "wrong passphrase"); converted to PKCS#8 by the real
/// ssh-keygen, it loads and signs. The other P-521 keys load as they are.
#[tokio::test]
async fn p521_keys_ssh_key_cannot_read_say_how_to_convert_them() {
    use ed25519_dalek::Verifier as _;
    let dir = tempfile::tempdir().unwrap();
    let passphrase = passphrase_file(dir.path(), "p521 pass");
    let signs = |keys: &HeldKeys, public: &ssh_key::PublicKey| {
        let key = keys
            .find(public.key_data())
            .expect("the key it was made with");
        let signature = key.sign(b"p521", 0).unwrap();
        public.key_data().verify(b"p521", &signature).unwrap();
    };
    let refused = |e: KeyLoadError| {
        let message = e.to_string();
        assert!(
            message.contains("ssh-keygen -p -m PKCS8 -f KEY"),
            "{message}"
        );
        assert!(!message.contains("passphrase"), "{message}");
    };
    // Keys from the real ssh-keygen until one of each kind: a short one and a readable one
    // (the chance that 200 keys hold no short one is below 1e-24).
    let (mut short, mut readable) = (None, false);
    for i in 0..200 {
        let (path, pubkey) = keygen(
            dir.path(),
            &format!("p521-{i}"),
            &["-t", "ecdsa", "-b", "521", "-N", ""],
        );
        let public = ssh_key::PublicKey::from_openssh(&pubkey).unwrap();
        match load_held("t", &[file(&path)], None).await {
            Ok(keys) => {
                signs(&keys, &public);
                readable = true;
            }
            Err(e) => {
                refused(e);
                short.get_or_insert((path, public));
            }
        }
        if short.is_some() && readable {
            break;
        }
    }
    let (plain, public) = short.expect("a short P-521 key in 200");
    assert!(readable, "a readable P-521 key in 200");
    // The same short scalar, encrypted: the same advice, not "wrong passphrase".
    let encrypted = dir.path().join("p521-encrypted");
    std::fs::copy(&plain, &encrypted).unwrap();
    let reencrypt = std::process::Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "p521 pass", "-f"])
        .arg(&encrypted)
        .output()
        .unwrap();
    assert!(reencrypt.status.success(), "{reencrypt:?}");
    refused(
        load_held("t", &[file(&encrypted)], Some(&passphrase))
            .await
            .err()
            .expect("the encrypted short key is refused"),
    );
    // Converted as the message says, both load and sign.
    for (path, pass) in [(&plain, ""), (&encrypted, "p521 pass")] {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-p", "-m", "PKCS8", "-P", pass, "-N", pass, "-f"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let keys = load_held(
            "t",
            &[file(path)],
            (!pass.is_empty()).then_some(&passphrase),
        )
        .await
        .unwrap_or_else(|e| panic!("{} converted to PKCS#8: {e}", path.display()));
        signs(&keys, &public);
    }
}
