//! Bad input gets a clear error, loses nothing, and the broker keeps serving the next build.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// Sends raw bytes and returns whatever the broker answered before closing (or 5 s passed).
fn raw_exchange(broker: &Broker, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(broker.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn small_build_works(broker: &Broker) {
    let b = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=tok cat /run/secrets/tok > /v\nFROM scratch\nCOPY --from=0 /v /\n"
    ))
    .run(broker);
    b.assert_ok();
    assert_eq!(b.text("v"), "still-serving");
}

fn broker_with_tok() -> Broker {
    Broker::start(BrokerOptions {
        policy: "[secrets.tok]\nsources = [\"env:TOK\"]\n",
        env: vec![("TOK", "still-serving")],
        ..Default::default()
    })
}

#[test]
fn garbage_and_malformed_http_get_400_and_the_broker_keeps_serving() {
    if skip() {
        return;
    }
    let broker = broker_with_tok();
    let garbage = raw_exchange(&broker, b"\x00\xff\xfe garbage \x01\x02\r\n\r\n");
    assert!(
        garbage.starts_with("HTTP/1.1 400"),
        "garbage got: {garbage:?}"
    );
    let bad_version = raw_exchange(&broker, b"GET /_ping HTTP/7.3\r\nHost: x\r\n\r\n");
    assert!(
        bad_version.starts_with("HTTP/1.1 4") || bad_version.starts_with("HTTP/1.1 505"),
        "got: {bad_version:?}"
    );
    let bad_header = raw_exchange(&broker, b"GET /_ping HTTP/1.1\r\nHost x\r\n\r\n");
    assert!(
        bad_header.starts_with("HTTP/1.1 400"),
        "got: {bad_header:?}"
    );
    // A request cut off mid-headers, then a closed socket.
    drop(raw_exchange(&broker, b"GET /_pi"));
    // A plain request on a raw connection is relayed to the engine.
    let ping = raw_exchange(
        &broker,
        b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n",
    );
    assert!(
        ping.starts_with("HTTP/1.1 200") && ping.ends_with("OK"),
        "got: {ping:?}"
    );
    small_build_works(&broker);
}

#[test]
fn session_without_expose_headers_is_refused_clearly() {
    if skip() {
        return;
    }
    let broker = broker_with_tok();
    let answer = raw_exchange(
        &broker,
        b"POST /v1.45/session HTTP/1.1\r\nHost: \r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "got: {answer:?}");
    assert!(
        answer.contains("X-Docker-Expose-Session-Uuid"),
        "got: {answer:?}"
    );
    small_build_works(&broker);
}

#[test]
fn malformed_h2_inside_a_session_ends_only_that_session() {
    if skip() {
        return;
    }
    let broker = broker_with_tok();
    let mut s = UnixStream::connect(broker.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"POST /session HTTP/1.1\r\nHost: \r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\
          X-Docker-Expose-Session-Uuid: badh2session\r\nX-Docker-Expose-Session-Sharedkey: k\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(
        &head, b"HTTP/1.1 101",
        "the engine switches protocols first"
    );
    // Not an HTTP/2 server preface: the broker's h2 client towards us must give up cleanly.
    let _ = s.write_all(b"this is not http/2 \x00\x00\x00\x04\x00\x00\x00\x00\x00 at all");
    drop(s);
    small_build_works(&broker);
}

#[test]
fn a_refused_uid_gets_a_clear_error_and_a_log_line() {
    if skip() {
        return;
    }
    let broker = broker_with_tok();
    // Let uid 65534 reach the socket file, so it is the broker's check that refuses it.
    std::fs::set_permissions(broker.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(broker.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        .args(["docker", "-H", &broker.docker_host(), "version"])
        .env("HOME", "/tmp")
        .output()
        .expect("setpriv (util-linux) must be installed");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("uid 65534") && err.contains("not allowed"),
        "stderr: {err}"
    );
    assert!(
        broker.log().contains("refused connection"),
        "{}",
        broker.log()
    );
    small_build_works(&broker);
}

#[test]
fn a_dead_upstream_is_a_clear_error() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("b.sock");
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        format!(
            "[server]\nlisten = [\"unix://{}\"]\nupstream = \"unix:///nonexistent/engine.sock\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["serve", "--config"])
        .arg(&policy)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("docker")
        .args(["-H", &format!("unix://{}", sock.display()), "version"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the upstream engine at unix:///nonexistent/engine.sock"),
        "stderr: {err}"
    );
}

#[test]
fn percent_encoded_session_paths_are_intercepted_too() {
    if skip() {
        return;
    }
    let broker = broker_with_tok();
    // The engine decodes the path before routing: each of these opens a session there (checked
    // against the test bed's dockerd), so each must meet the interception, whose refusal of a
    // request without a session UUID is the proof — not the engine's 101 or its own error.
    for path in [
        "/%73ession",
        "/v1.45/%73ession",
        "/v1.45%2Fsession",
        "/v1.45.0/session",
    ] {
        let answer = raw_exchange(
            &broker,
            format!("POST {path} HTTP/1.1\r\nHost: \r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer:?}");
        assert!(
            answer.contains(
                "buildbroker: /session request without the X-Docker-Expose-Session-Uuid header"
            ),
            "{path}: {answer:?}"
        );
    }
    small_build_works(&broker);
}
