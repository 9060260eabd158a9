//! Flow control bounds the relay's memory (issue 14): the real `buildbroker` binary relays a
//! FileSync stream whose receiver stalls while the sender offers 256 MiB; the broker's
//! resident memory must stay below a fixed cap and the sender must be held back, then every
//! byte must arrive once the receiver reads again.
//!
//! The two peers are stand-ins, because a real dockerd cannot be told to stop reading a
//! session: the "engine" answers `POST /session` with the 101 the real one sends (design.md §4)
//! and then calls FileSync/DiffCopy as BuildKit does; the "build client" opens the session as
//! buildx does and serves DiffCopy with an endless stream of DATA. Everything between them is
//! the daemon as shipped. No test bed needed.

use std::convert::Infallible;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const OFFERED: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// The broker's resident memory must stay below this while 256 MiB are offered. Its windows
/// (4 MiB per stream, 16 MiB per connection) bound what it may hold; the rest is the binary
/// itself (about 10 MiB release, 25 MiB debug).
const RSS_CAP_KIB: u64 = 64 * 1024;
/// What the sender may get rid of while the receiver stalls: the windows and socket buffers
/// along the way, nowhere near the 256 MiB offered.
const SENT_CAP: u64 = 48 * 1024 * 1024;
const DIFFCOPY: &str = "/moby.filesync.v1.FileSync/DiffCopy";

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads an HTTP/1.1 head byte by byte, so nothing after it (the h2 preface) is consumed.
async fn read_head(s: &mut UnixStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.expect("read head"), 1, "peer closed");
        head.push(b[0]);
        assert!(head.len() < 16 * 1024, "head too long");
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn kib_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc status")
}

fn start_broker(dir: &Path, engine: &Path) -> (Daemon, std::path::PathBuf) {
    let sock = dir.join("broker.sock");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[server]\nlisten = [\"unix://{}\"]\nupstream = \"unix://{}\"\n",
            sock.display(),
            engine.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("broker.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["serve", "--config"])
        .arg(&policy)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start buildbroker");
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(dir.join("broker.log"))
        .unwrap_or_default()
        .contains("buildbroker ready")
    {
        assert!(Instant::now() < deadline, "buildbroker not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    (daemon, sock)
}

/// The build client's DiffCopy: an endless stream of 64 KiB DATA frames, counting what hyper
/// took from it (hyper pulls the next chunk only when the peer's window has room).
fn endless_body(sent: Arc<AtomicU64>) -> Body {
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    let stream = futures_util::stream::poll_fn(move |_| {
        let before = sent.fetch_add(CHUNK as u64, Ordering::Relaxed);
        if before >= OFFERED {
            sent.fetch_sub(CHUNK as u64, Ordering::Relaxed);
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok::<_, Infallible>(Frame::data(chunk.clone()))))
    });
    StreamBody::new(stream).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_receiver_holds_the_sender_back_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let engine_path = dir.path().join("engine.sock");
    let engine = UnixListener::bind(&engine_path).unwrap();
    let (broker, broker_sock) = start_broker(dir.path(), &engine_path);
    let pid = broker.0.id();
    let rss_idle = kib_field(pid, "VmRSS:");

    // The stand-in build client opens the session and serves DiffCopy.
    let sent = Arc::new(AtomicU64::new(0));
    let mut client = UnixStream::connect(&broker_sock).await.unwrap();
    client
        .write_all(
            format!(
                "POST /session HTTP/1.1\r\nHost: \r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
                 Content-Length: 0\r\nX-Docker-Expose-Session-Uuid: stall-test\r\n\
                 X-Docker-Expose-Session-Sharedkey: k\r\n\
                 X-Docker-Expose-Session-Grpc-Method: {DIFFCOPY}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    // The stand-in engine takes the upstream /session request and switches protocols.
    let (mut upstream, _) = tokio::time::timeout(Duration::from_secs(10), engine.accept())
        .await
        .expect("the broker opens the upstream session")
        .unwrap();
    let head = read_head(&mut upstream).await;
    assert!(
        head.starts_with("POST /session"),
        "upstream request: {head}"
    );
    upstream
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "session answer: {head}");

    let body_sent = sent.clone();
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let sent = body_sent.clone();
            async move {
                assert_eq!(req.uri().path(), DIFFCOPY);
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(endless_body(sent))
                        .unwrap(),
                )
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(client), svc)
            .await;
    });

    // The stand-in daemon calls DiffCopy through the session, then does not read.
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(1 << 20)
        .handshake::<_, Body>(TokioIo::new(upstream))
        .await
        .expect("h2 towards the broker");
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://session{DIFFCOPY}"))
        .header("content-type", "application/grpc")
        .header("dir-name", "context")
        .body(http_body_util::Empty::new().boxed())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("DiffCopy answered")
        .expect("DiffCopy relayed");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();

    // Stalled: wait until the sender stops making progress (or has got rid of everything).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent.load(Ordering::Relaxed);
        if now == last || now >= OFFERED || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let stalled_at = sent.load(Ordering::Relaxed);
    let rss = kib_field(pid, "VmRSS:");
    let hwm = kib_field(pid, "VmHWM:");
    eprintln!(
        "sender stalled after {} KiB of {} KiB offered; broker RSS {rss} KiB (idle {rss_idle} KiB, peak {hwm} KiB)",
        stalled_at / 1024,
        OFFERED / 1024
    );
    assert!(
        stalled_at < SENT_CAP,
        "the relay took {stalled_at} bytes from the sender while the receiver read nothing: flow control does not reach the sender"
    );
    assert!(
        hwm < RSS_CAP_KIB,
        "broker peak RSS {hwm} KiB while the receiver stalled (cap {RSS_CAP_KIB} KiB)"
    );

    // The receiver reads again: every offered byte arrives, and memory stays bounded while it
    // flows.
    let mut received = 0u64;
    let drain = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("relayed frame").into_data() {
                received += data.len() as u64;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), drain)
        .await
        .expect("the relay resumes once the receiver reads");
    assert_eq!(received, OFFERED, "every offered byte relayed");
    let hwm = kib_field(pid, "VmHWM:");
    eprintln!("after 256 MiB relayed: broker peak RSS {hwm} KiB");
    assert!(
        hwm < RSS_CAP_KIB,
        "broker peak RSS {hwm} KiB while 256 MiB crossed it (cap {RSS_CAP_KIB} KiB)"
    );
    drop(broker);
}
