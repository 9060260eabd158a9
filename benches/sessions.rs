//! Resident memory of the daemon holding 100 concurrent BuildKit sessions (design.md §11:
//! ≤ 60 MiB). Each session is real on the engine's side: a `POST /session` through the broker
//! to the test bed's dockerd, which switches protocols and starts calling Health/Check on it
//! every 5 s through the broker. The build-client side is a stand-in (buildx cannot hold 100
//! idle sessions on this machine): an HTTP/2 server that answers Health/Check as buildx does.
//!
//! Run: `cargo bench --bench sessions` (needs the test bed: tests/testbed/setup.sh);
//! `BENCH_SESSIONS=1000 cargo bench --bench sessions` for the hardening issue's 1,000 sessions
//! (the policy raises `[limits]` to fit).

use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many sessions to hold: `BENCH_SESSIONS`, default 100.
fn sessions() -> usize {
    std::env::var("BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Answers every call as grpc.health.v1.Health/Check would: SERVING.
async fn answer(
    _req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>>, Infallible>
{
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    // HealthCheckResponse { status: SERVING (1) } in a gRPC frame.
    let frame = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
    let body = StreamBody::new(futures_util::stream::iter([
        Ok(Frame::data(frame)),
        Ok(Frame::trailers(trailers)),
    ]));
    Ok(http::Response::builder()
        .header("content-type", "application/grpc")
        .body(body.boxed_unsync())
        .unwrap())
}

async fn open_session(socket: &std::path::Path, n: usize) {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let request = format!(
        "POST /v1.45/session HTTP/1.1\r\nHost: \r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\
         X-Docker-Expose-Session-Uuid: benchsession{n}{pid}\r\nX-Docker-Expose-Session-Name: bench\r\n\
         X-Docker-Expose-Session-Sharedkey: bench{n}\r\nX-Docker-Expose-Session-Grpc-Method: /grpc.health.v1.Health/Check\r\n\r\n",
        pid = std::process::id()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read the 101 response head byte by byte, so nothing of the h2 stream after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tokio::spawn(async move {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
            .await;
    });
}

fn main() {
    let env = std::fs::read_to_string("/run/buildbroker-testbed/env")
        .expect("the test bed is not running: run tests/testbed/setup.sh");
    let engine = env
        .lines()
        .find_map(|l| l.strip_prefix("TESTBED_DOCKER_HOST="))
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[server]\nlisten = [\"unix://{}\"]\nupstream = \"{engine}\"\n\
             [limits]\nsessions_per_uid = {n}\nconnections_per_uid = {n}\n",
            socket.display(),
            n = sessions() + 16
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut broker = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["serve", "--config"])
        .arg(&policy)
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(broker.id());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for n in 0..sessions() {
            open_session(&socket, n).await;
        }
        // Let the engine run two rounds of Health/Check on every session.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        let opened = log.matches("session opened").count();
        let busy = rss_kib(broker.id());
        println!("\nResident memory of the daemon (release build):");
        println!("  idle, no session                       {:>6.1} MiB", idle as f64 / 1024.0);
        println!("  {opened:>4} concurrent sessions held 11 s    {:>6.1} MiB   (engine health-checking each every 5 s)", busy as f64 / 1024.0);
        assert_eq!(opened, sessions(), "every session was opened through the broker");
    });
    drop(rt);
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "  after the sessions closed              {:>6.1} MiB",
        rss_kib(broker.id()) as f64 / 1024.0
    );
    let _ = broker.kill();
    let _ = broker.wait();
}
