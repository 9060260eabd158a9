//! buildx's docker-container driver through buildbroker (design.md §2, §4): builders are
//! **created and used through the broker**, with the test bed's stand-in BuildKit image
//! (tests/testbed/setup.sh: its `buildctl dial-stdio` reaches the engine's own BuildKit). The
//! Control API then rides inside the exec stream, and buildbroker intercepts its sessions.
//! Every builder and container a test creates is removed when the test ends, pass or fail.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::harness::*;
use crate::sshbed::*;

/// The stand-in BuildKit image the test bed imports.
pub const BUILDKIT_IMAGE: &str = "buildbroker-test/buildkit:latest";

fn docker(host: &str) -> Command {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_HOST", host);
    cmd
}

/// A docker-container builder created through a broker; removed (with its container) on drop.
pub struct ContainerBuilder {
    pub name: String,
    docker_host: String,
}

impl ContainerBuilder {
    pub fn create(broker: &Broker) -> ContainerBuilder {
        let image = docker(engine())
            .args(["image", "inspect", BUILDKIT_IMAGE])
            .output()
            .unwrap();
        assert!(
            image.status.success(),
            "the test bed has no {BUILDKIT_IMAGE} image; run tests/testbed/setup.sh"
        );
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "bbtest_{}_{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let builder = ContainerBuilder {
            name,
            docker_host: broker.docker_host(),
        };
        let mut cmd = docker(&builder.docker_host);
        cmd.args(["buildx", "create", "--name", &builder.name])
            .args(["--driver", "docker-container", "--bootstrap"])
            .arg(format!("--driver-opt=image={BUILDKIT_IMAGE},network=host"));
        let out = run_with_timeout(cmd, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "buildx create through the broker failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        builder
    }

    /// buildx names the builder's only node's container `buildx_buildkit_<builder>0`.
    pub fn container(&self) -> String {
        format!("buildx_buildkit_{}0", self.name)
    }

    /// Runs `build` on this builder, through the broker.
    pub fn build(&self, build: Build<'_>) -> BuildResult {
        build
            .arg(format!("--builder={}", self.name))
            .run_against(&self.docker_host)
    }
}

impl Drop for ContainerBuilder {
    fn drop(&mut self) {
        let _ = docker(&self.docker_host)
            .args(["buildx", "rm", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // If the broker was already gone: the container directly, then buildx's record.
        let _ = docker(engine())
            .args(["rm", "-f", &self.container()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = docker(engine())
            .args(["buildx", "rm", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough for hundreds of MB.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn policy_secrets_ssh_keys_and_client_secrets_reach_a_container_builder() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new(dir.path(), "deploy", "");
    let policy_value = unique_secret("container-policy");
    let client_value = unique_secret("container-client");
    let client_file = write_file(dir.path(), "extra", client_value.as_bytes());
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[secrets.pypi_token]\nsources = [\"env:PYPI_TOKEN\"]\nrequired = true\n\
             [ssh.deploy]\nprivate_keys = [\"file:{}\"]\n",
            key.path.display()
        ),
        env: vec![("PYPI_TOKEN", &policy_value)],
        ..Default::default()
    });
    let builder = ContainerBuilder::create(&broker);
    let build = builder.build(
        Build::new(format!(
            "FROM {SSH_IMAGE}\n\
             RUN --mount=type=secret,id=pypi_token,required=true,mode=0400,uid=1000 \
                 --mount=type=secret,id=extra,required=true \
                 --mount=type=ssh,id=deploy,required=true \
                 mkdir /o && stat -c '%a %u' /run/secrets/pypi_token > /o/meta \
                 && cat /run/secrets/pypi_token > /o/policy && cat /run/secrets/extra > /o/client \
                 && ssh-add -l > /o/keys\n\
             FROM scratch\nCOPY --from=0 /o /\n"
        ))
        .arg(format!("--secret=id=extra,src={}", client_file.display())),
    );
    build.assert_ok();
    assert_eq!(build.text("policy"), policy_value, "the policy's secret");
    assert_eq!(build.text("meta"), "400 1000\n");
    assert_eq!(
        build.text("client"),
        client_value,
        "the build's own --secret"
    );
    assert!(
        build.text("keys").contains(&key.fingerprint),
        "the policy's ssh key: {}",
        build.text("keys")
    );
    let log = broker.log();
    assert!(
        log.contains("buildctl dial-stdio exec started")
            && log.contains("session opened (Control API)"),
        "the session came through the exec stream:\n{log}"
    );
    let audit = broker.audit();
    assert!(
        audit.contains("\"id\":\"pypi_token\"") && audit.contains("\"decision\":\"served\""),
        "audit: {audit}"
    );
}

#[test]
fn local_and_tar_exports_come_back_intact_through_the_exec_stream() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions::default());
    let builder = ContainerBuilder::create(&broker);
    // Context → build (FileSync) and build → client (the local exporter), a few MB each way.
    let input = noise(3 * 1024 * 1024 + 17, 7);
    let dockerfile = format!(
        "FROM {BASE_IMAGE}\nCOPY input /o/input\n\
         RUN head -c 5000000 /dev/urandom > /o/made && sha256sum /o/made | cut -d' ' -f1 > /o/made.sha256\n\
         FROM scratch\nCOPY --from=0 /o /\n"
    );
    let build = builder.build(Build::new(dockerfile.clone()).file("input", input.clone()));
    build.assert_ok();
    assert!(
        build.file("input") == input,
        "the context file came back changed"
    );
    let made = build.file("made");
    assert_eq!(made.len(), 5_000_000);
    assert_eq!(build.text("made.sha256").trim(), sha256_hex(&made));

    // `--load` would stream a docker tarball out of the session for `docker load`; the test
    // bed's BuildKit (the engine's own) has no `docker` exporter (nor `oci`), direct or not,
    // so the same session stream is exercised with the `tar` exporter.
    let dirs = tempfile::tempdir().unwrap();
    let ctx = dirs.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {BASE_IMAGE}\nARG NONCE\nCOPY input /o/input\nRUN echo $NONCE > /o/nonce\n\
             FROM scratch\nCOPY --from=0 /o /\n"
        ),
    )
    .unwrap();
    std::fs::write(ctx.join("input"), &input).unwrap();
    let tarball = dirs.path().join("out.tar");
    let mut cmd = docker(&broker.docker_host());
    cmd.args([
        "buildx",
        "build",
        "--no-cache",
        "--progress=plain",
        "--network=none",
    ])
    .arg(format!("--builder={}", builder.name))
    .arg(format!("--build-arg=NONCE={}", unique_secret("tar")))
    .arg(format!("--output=type=tar,dest={}", tarball.display()))
    .arg(&ctx);
    let out = run_with_timeout(cmd, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "tar export failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unpacked = dirs.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(untar.success());
    assert!(
        std::fs::read(unpacked.join("input")).unwrap() == input,
        "the tarball's copy of the context file differs"
    );
}

#[test]
fn a_big_context_streams_through_the_exec_stream() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        rust_log: "info",
        ..Default::default()
    });
    let builder = ContainerBuilder::create(&broker);
    let size = 256 * 1024 * 1024;
    let big = noise(size, 42);
    let expected = sha256_hex(&big);
    // A bind mount reads the context in place: no layer copy of it on vfs.
    let build = builder.build(
        Build::new(format!(
            "FROM {BASE_IMAGE}\n\
             RUN --mount=type=bind,target=/ctx mkdir /o && sha256sum /ctx/big | cut -d' ' -f1 > /o/sum\n\
             FROM scratch\nCOPY --from=0 /o /\n"
        ))
        .file("big", big),
    );
    let _ = docker(&broker.docker_host())
        .args(["buildx", "prune", "-af", "--builder", &builder.name])
        .output();
    build.assert_ok();
    assert_eq!(build.text("sum").trim(), expected);
}

/// Runs `cmd` with `input` on stdin; returns (stdout, stderr) after checking it succeeded.
fn run_with_stdin(mut cmd: Command, input: &[u8]) -> (Vec<u8>, Vec<u8>) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&input).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.stdout, out.stderr)
}

#[test]
fn plain_exec_and_run_are_untouched() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions::default());
    let builder = ContainerBuilder::create(&broker);
    let input = noise(2 * 1024 * 1024 + 3, 99);
    let script = "cat; printf 'to-stderr\\n' >&2";
    // `buildx create --bootstrap` dialled BuildKit; nothing below may.
    let intercepted = || {
        broker
            .log()
            .matches("buildctl dial-stdio exec started")
            .count()
    };
    let before = intercepted();

    // An exec in the builder's own container that is not dial-stdio: a raw splice.
    let mut exec = docker(&broker.docker_host());
    exec.args(["exec", "-i", &builder.container(), "sh", "-c", script]);
    let (out, err) = run_with_stdin(exec, &input);
    assert!(
        out == input,
        "docker exec -i: stdout differs from stdin ({} bytes)",
        out.len()
    );
    assert_eq!(err, b"to-stderr\n", "docker exec -i: stderr");

    // `docker run -i` (attach): the same.
    let mut run = docker(&broker.docker_host());
    run.args([
        "run",
        "-i",
        "--rm",
        "--network=none",
        BASE_IMAGE,
        "sh",
        "-c",
        script,
    ]);
    let (out, err) = run_with_stdin(run, &input);
    assert!(
        out == input,
        "docker run -i: stdout differs from stdin ({} bytes)",
        out.len()
    );
    assert_eq!(err, b"to-stderr\n", "docker run -i: stderr");
    assert_eq!(intercepted(), before, "no plain exec was intercepted");
}

// ---------------------------------------------------------------- bad input on the new path

/// One HTTP/1.1 request to the broker on a fresh connection; returns status line and body.
async fn http1(broker: &Broker, method: &str, path: &str, body: &str) -> (String, String) {
    let mut s = UnixStream::connect(broker.socket()).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Creates a `buildctl dial-stdio` exec in `container` and starts it; returns the hijacked
/// stream (raw towards the container, stdcopy frames back).
async fn start_dial_stdio(broker: &Broker, container: &str) -> UnixStream {
    let (status, body) = http1(
        broker,
        "POST",
        &format!("/v1.45/containers/{container}/exec"),
        r#"{"AttachStdin":true,"AttachStdout":true,"AttachStderr":true,"Cmd":["buildctl","dial-stdio"]}"#,
    )
    .await;
    assert!(status.contains(" 201 "), "exec create: {status} {body}");
    // The body may be chunked; the id is the only 64-hex-digit word in it.
    let id = body
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.len() == 64)
        .unwrap_or_else(|| panic!("no exec id in {body}"))
        .to_string();
    let mut s = UnixStream::connect(broker.socket()).await.unwrap();
    let start = r#"{"Detach":false,"Tty":false}"#;
    let req = format!(
        "POST /v1.45/exec/{id}/start HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\n\
         Upgrade: tcp\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{start}",
        start.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Byte by byte up to the blank line, so nothing after the 101 is consumed here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "EOF before the 101: {head:?}"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "exec start: {head}");
    s
}

/// Reads stdcopy frames until EOF (or `limit`): (stdout, stderr).
async fn read_frames(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> (Vec<u8>, Vec<u8>) {
    let mut out = (Vec::new(), Vec::new());
    let _ = tokio::time::timeout(limit, async {
        loop {
            let mut h = [0u8; 8];
            if s.read_exact(&mut h).await.is_err() {
                return;
            }
            let mut p = vec![0u8; u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize];
            if s.read_exact(&mut p).await.is_err() {
                return;
            }
            match h[0] {
                1 => out.0.extend_from_slice(&p),
                _ => out.1.extend_from_slice(&p),
            }
        }
    })
    .await;
    out
}

/// Opens `Control/Session` over a dial-stdio exec with a hand-made client, sends `body`
/// (raw gRPC bytes, then end of stream) and returns the call's final grpc-status and message.
async fn control_session_with(broker: &Broker, container: &str, body: Vec<u8>) -> (String, String) {
    let stream = start_dial_stdio(broker, container).await;
    let (mut read, write) = tokio::io::split(stream);
    // Our own demultiplexer: stdout into a pipe for h2, stderr kept.
    let (mut stdout_in, stdout_out) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        loop {
            let mut h = [0u8; 8];
            if read.read_exact(&mut h).await.is_err() {
                return;
            }
            let mut p = vec![0u8; u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize];
            if read.read_exact(&mut p).await.is_err() {
                return;
            }
            if h[0] == 1 && stdout_in.write_all(&p).await.is_err() {
                return;
            }
        }
    });
    let io = TokioIo::new(tokio::io::join(stdout_out, write));
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let frames = vec![Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(
        body,
    )))];
    let req = http::Request::post("http://buildkit/moby.buildkit.v1.Control/Session")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header(
            "x-docker-expose-session-uuid",
            unique_secret("bad").replace('-', ""),
        )
        .header("x-docker-expose-session-name", "bad-input")
        .header("x-docker-expose-session-sharedkey", "bad-input")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
        .await
        .expect("Control/Session answered within 30 s")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let collected = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("Control/Session ended within 30 s")
        .unwrap();
    let trailers = collected.trailers().cloned().unwrap_or(parts.headers);
    let get = |k: &str| {
        trailers
            .get(k)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    (get("grpc-status"), percent_decode(&get("grpc-message")))
}

/// grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_exec_stream_fails_that_stream_and_the_broker_serves_on() {
    if skip() {
        return;
    }
    let value = unique_secret("after-bad-input");
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.pypi_token]\nsources = [\"env:PYPI_TOKEN\"]\n",
        env: vec![("PYPI_TOKEN", &value)],
        ..Default::default()
    });
    let builder = tokio::task::block_in_place(|| ContainerBuilder::create(&broker));
    let container = builder.container();

    // Garbage after the 101: the client gets a clear error on stderr, then the stream closes.
    let mut s = start_dial_stdio(&broker, &container).await;
    s.write_all(b"this is not HTTP/2 at all, just garbage bytes\r\n\r\n")
        .await
        .unwrap();
    let (_, stderr) = read_frames(&mut s, Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(
        stderr.contains("buildbroker: the build client did not speak the BuildKit Control API"),
        "stderr: {stderr:?}"
    );

    // A Control/Session stream that ends inside a message.
    let mut cut = vec![0u8, 0, 0, 0, 100];
    cut.extend_from_slice(&[0x0a; 10]);
    let (code, message) = control_session_with(&broker, &container, cut).await;
    assert_eq!(code, "3", "InvalidArgument: {message}");
    assert!(message.contains("in the middle of a message"), "{message}");

    // A BytesMessage over the limit: refused from its length prefix.
    let (code, message) = control_session_with(&broker, &container, vec![0u8, 0x02, 0, 0, 0]).await;
    assert_eq!(code, "8", "ResourceExhausted: {message}");
    assert!(
        message.contains("33554432-byte") && message.contains("limit"),
        "{message}"
    );

    // The broker serves on: a following build on the same builder gets the policy's secret.
    let build = tokio::task::block_in_place(|| {
        builder.build(Build::new(format!(
            "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=pypi_token,required=true \
             mkdir /o && cat /run/secrets/pypi_token > /o/v\nFROM scratch\nCOPY --from=0 /o /\n"
        )))
    });
    build.assert_ok();
    assert_eq!(build.text("v"), value);
}
