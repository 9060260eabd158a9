//! The session relay in isolation (issue 14): the real `buildbroker` binary relays one
//! FileSync/DiffCopy stream of 256 MiB between a stand-in engine and a stand-in build client
//! (the same stand-ins as tests/relay_backpressure.rs), and this reports what the broker
//! process spent per MiB: CPU time and context switches of all its threads (from /proc), and
//! with `perf` (Debian's linux-perf) on the PATH, its syscalls counted by `perf stat -p`:
//! all of them, socket reads (`recvfrom`), writes (`write`/`writev`), `epoll_wait` and `futex`.
//! Those counts do not move with the machine's load, unlike wall time, which is also shown.
//!
//! Variants are sets of environment variables for the daemon, run interleaved:
//! `RELAY_VARIANTS="base;NAME=VALUE,NAME2=VALUE2"` (`base`: none). A daemon binary other than
//! this build's can be given as `RELAY_BIN=PATH`.
//! Run: `cargo bench --bench relay` (`RELAY_ROUNDS=5`, `RELAY_MIB=256`).

use std::convert::Infallible;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const CHUNK: usize = 64 * 1024;
const DIFFCOPY: &str = "/moby.filesync.v1.FileSync/DiffCopy";
type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn read_head(s: &mut UnixStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.expect("read head"), 1, "peer closed");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn start_broker(
    dir: &Path,
    engine: &Path,
    env: &[(String, String)],
) -> (Daemon, std::path::PathBuf) {
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
    let bin =
        std::env::var("RELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_buildbroker").into());
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&policy)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
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

/// What the broker process has spent so far: CPU ticks and context switches.
#[derive(Default, Clone, Copy)]
struct Spent {
    cpu_ticks: u64,
    switches: u64,
}

fn spent(pid: u32) -> Spent {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `after` starts at field 3.
    let cpu_ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for l in s.lines() {
                if let Some(v) = l
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Spent {
        cpu_ticks,
        switches,
    }
}

/// One run: wall seconds, the perf counts in PERF_EVENTS order (empty without perf), spent.
type Run = (f64, Vec<f64>, Spent);

const PERF_EVENTS: &str = "raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex";
const PERF_NAMES: [&str; 7] = [
    "syscalls",
    "recvfrom",
    "write",
    "writev",
    "sendto",
    "epoll_wait",
    "futex",
];

/// Relays `mib` MiB through a fresh broker started with `env`; returns (seconds, perf
/// counts in PERF_EVENTS order, spent).
async fn one_run(env: &[(String, String)], mib: u64) -> Run {
    let total = mib * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let engine_path = dir.path().join("engine.sock");
    let engine = UnixListener::bind(&engine_path).unwrap();
    let (broker, broker_sock) = start_broker(dir.path(), &engine_path, env);
    let pid = broker.0.id();
    let mut client = UnixStream::connect(&broker_sock).await.unwrap();
    client
        .write_all(
            format!(
                "POST /session HTTP/1.1\r\nHost: \r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
                 Content-Length: 0\r\nX-Docker-Expose-Session-Uuid: relay-bench\r\n\
                 X-Docker-Expose-Session-Grpc-Method: {DIFFCOPY}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (mut upstream, _) = engine.accept().await.unwrap();
    read_head(&mut upstream).await;
    upstream
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        )
        .await
        .unwrap();
    read_head(&mut client).await;
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
            let chunk = Bytes::from(vec![0x5a; CHUNK]);
            let mut left = total;
            let stream = futures_util::stream::poll_fn(move |_| {
                if left == 0 {
                    return Poll::Ready(None);
                }
                left -= CHUNK as u64;
                Poll::Ready(Some(Ok::<_, Infallible>(Frame::data(chunk.clone()))))
            });
            async move {
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(StreamBody::new(stream).boxed())
                        .unwrap(),
                )
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(client), svc)
            .await;
    });
    // The stand-in daemon reads with the windows BuildKit's grpc-go client would grow to.
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, Body>(TokioIo::new(upstream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let perf_out = dir.path().join("perf.csv");
    let perf = Command::new("perf")
        .args(["stat", "-x,", "-e", PERF_EVENTS, "-o"])
        .arg(&perf_out)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok();
    if perf.is_some() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = spent(pid);
    let t0 = Instant::now();
    let req = http::Request::post(format!("http://session{DIFFCOPY}"))
        .header("content-type", "application/grpc")
        .header("dir-name", "context")
        .body(http_body_util::Empty::new().boxed())
        .unwrap();
    let mut body = send.send_request(req).await.unwrap().into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            received += d.len() as u64;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(received, total);
    let after = spent(pid);
    let mut counts = Vec::new();
    if let Some(mut perf) = perf {
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
        for line in std::fs::read_to_string(&perf_out)
            .unwrap_or_default()
            .lines()
        {
            let f: Vec<&str> = line.split(',').collect();
            if let (true, Ok(v)) = (f.len() > 2 && !line.starts_with('#'), f[0].parse::<f64>()) {
                counts.push(v);
            }
        }
    }
    drop(broker);
    (
        secs,
        counts,
        Spent {
            cpu_ticks: after.cpu_ticks - before.cpu_ticks,
            switches: after.switches - before.switches,
        },
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("RELAY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mib: u64 = std::env::var("RELAY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let variants: Vec<(String, Vec<(String, String)>)> = std::env::var("RELAY_VARIANTS")
        .unwrap_or_else(|_| "base".into())
        .split(';')
        .map(|v| {
            let env = v
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, val)| (k.to_string(), val.to_string()))
                .collect();
            (v.to_string(), env)
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ticks = 100.0; // USER_HZ
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for k in 0..variants.len() {
            let v = (k + round) % variants.len();
            results[v].push(rt.block_on(one_run(&variants[v].1, mib)));
        }
    }
    println!(
        "session relay, {mib} MiB per run, {rounds} interleaved rounds; load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("per MiB relayed, medians (broker process only):");
    for (v, (name, _)) in variants.iter().enumerate() {
        let r = &results[v];
        let m = mib as f64;
        let col = |f: &dyn Fn(&Run) -> f64| median(r.iter().map(f).collect());
        let mut line = format!(
            "  {name:<28} {:6.1} MiB/s  cpu {:5.2} ms  switches {:6.1}",
            col(&|x| m / x.0),
            col(&|x| x.2.cpu_ticks as f64 / ticks * 1000.0 / m),
            col(&|x| x.2.switches as f64 / m),
        );
        for (i, ev) in PERF_NAMES.iter().enumerate() {
            if r.iter().all(|x| x.1.len() == PERF_NAMES.len()) {
                line += &format!("  {ev} {:.1}", col(&|x| x.1[i] / m));
            }
        }
        println!("{line}");
    }
}
