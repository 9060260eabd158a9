//! GetSecret answered inside a real intercepted session (design.md §11: p50 ≤ 50 µs,
//! p99 ≤ 250 µs, ≥ 20,000 calls/s on 2 cores).
//!
//! The session code under test is the daemon's own (`session::run`, the router, the Secrets
//! service, the sources); only its two peers are stand-ins: the "daemon" is a tonic client on an
//! HTTP/2 connection, the "build client" a tonic Secrets server, each on an in-memory pipe
//! instead of a unix socket, so the numbers measure buildbroker rather than the kernel.
//!
//! The baseline is the same stand-in daemon calling the same session served by the provider
//! alone (no broker): answering from memory (`provider`, as buildx's `--secret env=` does) and
//! reading a file per call (`provider_file*`, as buildx's `--secret src=` does), the
//! like-for-like baseline of the broker's `file:` rows.
//!
//! Run: `cargo bench --bench get_secret` (criterion medians, then a percentile and throughput
//! summary on stdout). `GET_SECRET_SUMMARY_ONLY=1` prints the summary only;
//! `GET_SECRET_DAEMON_THREAD=1` gives the stand-in daemon a thread of its own, and
//! `GET_SECRET_DAEMON_PROCESS=1` a process of its own, on unix sockets (see [`Bed`]).
//! `GET_SECRET_TRANSPORT=messages` carries both sessions as `Control/Session` messages (the
//! docker-container and remote drivers' transport, `control::message_stream`) instead of byte
//! pipes; in-process only (see [`daemon_pipe`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use buildbroker::access::PeerInfo;
use buildbroker::broker::Broker;
use buildbroker::channel::{ClientChannel, RelayBody, SessionInfo};
use buildbroker::config::{HostEnv, Policy, PolicyOrigin};
use buildbroker::control::message_stream::{self, MessageStream, Outcome, Side};
use buildbroker::proto::secrets::secrets_client::SecretsClient;
use buildbroker::proto::secrets::secrets_server::{Secrets, SecretsServer};
use buildbroker::proto::secrets::{GetSecretRequest, GetSecretResponse};
use buildbroker::session;
use buildbroker::source::{AcceptedAt, ClientProcess};
use criterion::{Criterion, criterion_group};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// The build client's own provider, as buildx's `--secret` provider answers: a fixed value
/// for any id (`--secret id=X,env=Y` and the like), except two ids that read a file on every
/// call, as buildx's `--secret id=X,src=PATH` does (BuildKit's `secretsprovider` store calls
/// `os.ReadFile` per GetSecret, on the calling goroutine): [`PROVIDER_FILE`] the file on disk,
/// [`PROVIDER_FILE_TMPFS`] the same on tmpfs. Those are the like-for-like baselines of the
/// broker's `file:` rows.
struct FakeBuildx {
    /// The files the two file ids read (on disk, on tmpfs); none on the broker's client side.
    files: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The provider's id that reads the file on disk per call.
const PROVIDER_FILE: &str = "provider_file";
/// The provider's id that reads the file on tmpfs per call.
const PROVIDER_FILE_TMPFS: &str = "provider_file_tmpfs";

#[tonic::async_trait]
impl Secrets for FakeBuildx {
    async fn get_secret(
        &self,
        req: tonic::Request<GetSecretRequest>,
    ) -> Result<tonic::Response<GetSecretResponse>, tonic::Status> {
        let path = match (&self.files, req.get_ref().id.as_str()) {
            (Some((disk, _)), PROVIDER_FILE) => Some(disk),
            (Some((_, tmpfs)), PROVIDER_FILE_TMPFS) => Some(tmpfs),
            _ => None,
        };
        let data = match path {
            Some(path) => {
                std::fs::read(path).map_err(|e| tonic::Status::internal(e.to_string()))?
            }
            None => b"value-from-the-client-flag".to_vec(),
        };
        Ok(tonic::Response::new(GetSecretResponse { data }))
    }
}

type Client = SecretsClient<ClientChannel>;

/// The daemon's allocator (src/main.rs), so the numbers include its cost;
/// `BENCH_ZEROIZE_ON_FREE=0` turns its clearing off to measure that cost. Wrapped to count
/// allocations (issue 14: allocations per call, a count that does not move with the load).
#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc(buildbroker::zeroize_alloc::ZeroizeOnFree);

/// Blocks allocated (and reallocated) by the whole process so far.
static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct CountingAlloc(buildbroker::zeroize_alloc::ZeroizeOnFree);

// SAFETY: every call is forwarded unchanged to the daemon's allocator; the only addition is a
// relaxed counter increment.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { self.0.realloc(ptr, layout, new) }
    }
}

fn allocations() -> u64 {
    ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Context switches of every thread of a process so far (voluntary and not), from
/// /proc/PROC/task/*/status (`self` or a pid): a worker parking on a futex is a switch.
fn context_switches(proc: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{proc}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// CPU time (user + system) of a process so far, in nanoseconds, from /proc/PID/stat: clock
/// ticks (10 ms on Linux), fine enough over the thousands of calls a row makes.
fn cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks * 1_000_000_000 / rustix::param::clock_ticks_per_second()
}

/// The per-call counts a summary row prints, which the machine's load does not move: in one
/// process, (allocations, context switches) of the whole process; with the stand-in daemon in
/// a process of its own, (CPU ns, context switches) of the serving process, then the
/// daemon's own context switches.
fn counts(serving_pid: Option<u32>) -> [u64; 3] {
    match serving_pid {
        None => [allocations(), context_switches("self"), 0],
        Some(pid) => [
            cpu_ns(pid),
            context_switches(&pid.to_string()),
            context_switches("self"),
        ],
    }
}

/// `from_cache` is an exec: source (a real program, ~1 ms) behind `cache_ttl`: after the
/// first call every answer is a cache hit. `from_client_env` reads PATH from the environment
/// of `client_pid`, a real process standing in for buildx, as `from_env` reads the daemon's.
async fn start_session(files: &Files, client_pid: u32) -> Box<dyn Pipe> {
    let (daemon_io, broker_daemon_side) = daemon_pipe();
    serve_session(files, client_pid, broker_daemon_side);
    daemon_io
}

/// One end of the stand-in daemon's connection to a session.
trait Pipe: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Pipe for T {}

/// `GET_SECRET_TRANSPORT=messages`: sessions ride `Control/Session` messages.
fn over_messages() -> bool {
    std::env::var("GET_SECRET_TRANSPORT").is_ok_and(|t| t == "messages")
}

/// The stand-in daemon's end and the session's end of one connection: an in-memory byte pipe,
/// or with `GET_SECRET_TRANSPORT=messages`, a pair of [`MessageStream`]s on each other's
/// bodies, as the session's h2 rides `Control/Session` on the docker-container driver (the
/// daemon's end stands in for BuildKit's grpchijack; the Control API connection that carries
/// the messages on the real path is left out).
fn daemon_pipe() -> (Box<dyn Pipe>, Box<dyn Pipe>) {
    if !over_messages() {
        let (a, b) = tokio::io::duplex(1 << 20);
        return (Box::new(a), Box::new(b));
    }
    let outcome = Arc::new(Outcome::default());
    let (to_session, session_in) = message_stream::channel();
    let (to_daemon, daemon_in) = message_stream::channel();
    (
        Box::new(MessageStream::new(
            daemon_in,
            Side::Client,
            to_session,
            outcome.clone(),
        )),
        Box::new(MessageStream::new(
            session_in,
            Side::Daemon,
            to_daemon,
            outcome,
        )),
    )
}

/// The broker's session on `daemon_side`, its end of the connection from the stand-in daemon.
/// `from_file_nowalk` reads a copy of the `from_file` file that `[file] allow_foreign` names,
/// so the root daemon skips its owner walk for it, as a daemon running as a user does.
fn serve_session<I>(files: &Files, client_pid: u32, daemon_side: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let text = format!(
        "[file]\nallow_foreign = [\"{nowalk}\"]\n\
         [secrets.from_env]\nsources = [\"env:PATH\"]\n\
         [secrets.from_file]\nsources = [\"file:{token}\"]\n\
         [secrets.from_file_nowalk]\nsources = [\"file:{nowalk}\"]\n\
         [secrets.from_file_tmpfs]\nsources = [\"file:{tmpfs}\"]\n\
         [secrets.from_client]\nsources = [\"client\"]\n\
         [secrets.from_client_env]\nsources = [\"client-env:PATH\"]\n\
         [secrets.from_cache]\nsources = [\"exec:/bin/cat {token}\"]\ncache_ttl = \"1h\"\n",
        token = files.token.display(),
        nowalk = files.unwalked_token.display(),
        tmpfs = files.tmpfs_token.display(),
    );
    let env = HostEnv {
        euid: 0,
        ..HostEnv::default()
    };
    let policy = Policy::parse(&text, PolicyOrigin::Embedded, &env).expect("bench policy");
    let broker = Arc::new(Broker::new(policy, env).expect("broker"));
    // `GET_SECRET_SIZES=1`: the size of the resolver's future, which hyper's per-call task
    // carries (13 KiB before the slow lookups were boxed; docs/benchmarks.md).
    if std::env::var_os("GET_SECRET_SIZES").is_some() {
        let g = broker.current();
        let f = buildbroker::resolver::answer(&g, "x", None);
        eprintln!("answer future: {} bytes", std::mem::size_of_val(&f));
    }

    let (broker_client_side, buildx_io) = tokio::io::duplex(1 << 20);

    tokio::spawn(serve_fake_buildx(buildx_io, None));
    let peer = PeerInfo {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        pid: Some(client_pid as i32),
        client: buildbroker::access::ClientId::Uid(rustix::process::geteuid().as_raw()),
    };
    let info = SessionInfo {
        uuid: "bench".into(),
        client: Arc::new(ClientProcess::pin(&peer, AcceptedAt::now())),
        peer,
    };
    tokio::spawn(session::run(
        TokioIo::new(daemon_side),
        TokioIo::new(broker_client_side),
        if over_messages() {
            session::Halves::Messages
        } else {
            session::Halves::Sockets
        },
        broker,
        info,
        CancellationToken::new(),
    ));
}

/// The baseline (issue 14): the same stand-in daemon calling GetSecret on a session served by
/// buildx's own kind of provider (the stand-in buildx, answering from memory), with no broker
/// in between: what a build pays for `--secret` without buildbroker.
async fn start_provider_session(files: &Files) -> Box<dyn Pipe> {
    let (daemon_io, buildx_io) = daemon_pipe();
    tokio::spawn(serve_fake_buildx(buildx_io, Some(files.paths())));
    daemon_io
}

/// The stand-in daemon's gRPC client on its end of a session, on the current runtime.
async fn connect_daemon<I>(daemon_io: I) -> Client
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, RelayBody>(TokioIo::new(daemon_io))
        .await
        .expect("h2 handshake with the session");
    tokio::spawn(conn);
    SecretsClient::with_origin(
        ClientChannel::new(send),
        http::Uri::from_static("http://daemon"),
    )
}

/// Serves the stand-in buildx's Secrets provider on one h2 connection.
/// `files` (on disk, on tmpfs): the provider's session, whose two file ids read these files.
async fn serve_fake_buildx<I>(io: I, files: Option<(std::path::PathBuf, std::path::PathBuf)>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let server = SecretsServer::new(FakeBuildx { files });
    let svc = hyper::service::service_fn(move |req| {
        let mut server = server.clone();
        async move {
            let resp = server.call(req).await?;
            Ok::<_, Infallible>(
                resp.map(|b| b.map_err(Into::into).boxed_unsync()) as http::Response<RelayBody>
            )
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn get(client: &Client, id: &str) {
    let resp = client
        .clone()
        .get_secret(GetSecretRequest {
            id: id.into(),
            annotations: Default::default(),
        })
        .await
        .expect("GetSecret");
    assert!(!resp.into_inner().data.is_empty());
}

/// A process standing in for buildx: its environment holds PATH, as a shell's would.
fn stand_in_client() -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("3600")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .spawn()
        .expect("start the stand-in build client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The files the policy's `file:` rows read: one on disk, the same on tmpfs (where Docker and
/// Kubernetes mount secrets, read inline).
struct Files {
    token: std::path::PathBuf,
    /// A copy of `token` beside it, named in `[file] allow_foreign`.
    unwalked_token: std::path::PathBuf,
    tmpfs_token: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _tmpfs_dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, b"file-token-value").unwrap();
        let unwalked_token = dir.path().join("token-unwalked");
        std::fs::write(&unwalked_token, b"file-token-value").unwrap();
        let tmpfs_dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let tmpfs_token = tmpfs_dir.path().join("token");
        std::fs::write(&tmpfs_token, b"file-token-value").unwrap();
        Files {
            token,
            unwalked_token,
            tmpfs_token,
            _dir: dir,
            _tmpfs_dir: tmpfs_dir,
        }
    }

    /// The two files (on disk, on tmpfs), for the provider's file ids.
    fn paths(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        (self.token.clone(), self.tmpfs_token.clone())
    }
}

/// The stand-in buildx process, killed on drop.
struct Buildx(std::process::Child);

impl Drop for Buildx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Set by the serving process (`GET_SECRET_DAEMON_PROCESS=1`) for the stand-in daemon it
/// starts: the directory holding the two sessions' sockets.
const DAEMON_PROCESS_DIR: &str = "GET_SECRET_DAEMON_PROCESS_DIR";

/// What every mode sets up: the runtime, the stand-in buildx process and the two sessions, one
/// answered by the broker, one by the provider, and the stand-in daemon's client on each.
///
/// Where the stand-in daemon runs:
/// - by default, on the same two tokio workers as the side under test;
/// - `GET_SECRET_DAEMON_THREAD=1`: on a current-thread runtime of its own (its calls/s then
///   measure that one caller thread as much as the answering side);
/// - `GET_SECRET_DAEMON_PROCESS=1`: in a process of its own with two workers, as the real
///   daemon is, reaching both sessions over unix sockets. This process then serves the
///   sessions and starts itself again as the daemon ([`serve_daemon_process`]), which runs
///   the benchmark and reads the serving process's CPU time and context switches from /proc.
struct Bed {
    broker: Client,
    provider: Client,
    /// The side under test (the broker's session, the provider, the stand-in buildx); in the
    /// daemon process, the daemon's own runtime.
    serving: tokio::runtime::Runtime,
    /// The stand-in daemon's own runtime, in `GET_SECRET_DAEMON_THREAD=1` mode.
    daemon: Option<tokio::runtime::Runtime>,
    /// In the daemon process: the serving process, whose counts /proc gives.
    serving_pid: Option<u32>,
    _buildx: Option<Buildx>,
    _files: Option<Files>,
}

impl Bed {
    fn start() -> Bed {
        if let Some(dir) = std::env::var_os(DAEMON_PROCESS_DIR) {
            let dir = std::path::PathBuf::from(dir);
            let rt = runtime();
            let (broker, provider) = rt.block_on(async {
                let broker = tokio::net::UnixStream::connect(dir.join("broker.sock"))
                    .await
                    .expect("connect to the broker's session");
                let provider = tokio::net::UnixStream::connect(dir.join("provider.sock"))
                    .await
                    .expect("connect to the provider's session");
                (connect_daemon(broker).await, connect_daemon(provider).await)
            });
            return Bed {
                broker,
                provider,
                serving: rt,
                daemon: None,
                serving_pid: Some(std::os::unix::process::parent_id()),
                _buildx: None,
                _files: None,
            };
        }
        let files = Files::new();
        let serving = runtime();
        let daemon = std::env::var_os("GET_SECRET_DAEMON_THREAD").map(|_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        });
        let buildx = Buildx(stand_in_client());
        let broker_io = serving.block_on(start_session(&files, buildx.0.id()));
        let provider_io = serving.block_on(start_provider_session(&files));
        let rt = daemon.as_ref().unwrap_or(&serving);
        let broker = rt.block_on(connect_daemon(broker_io));
        let provider = rt.block_on(connect_daemon(provider_io));
        Bed {
            broker,
            provider,
            serving,
            daemon,
            serving_pid: None,
            _buildx: Some(buildx),
            _files: Some(files),
        }
    }

    /// Where the stand-in daemon's calls run.
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.daemon.as_ref().unwrap_or(&self.serving)
    }
}

/// `GET_SECRET_DAEMON_PROCESS=1`: serves the broker's session and the provider's on two unix
/// sockets, starts this benchmark again as the stand-in daemon (same arguments and
/// environment, plus [`DAEMON_PROCESS_DIR`]), serves it until it exits, and returns its exit
/// code.
fn serve_daemon_process() -> i32 {
    let files = Files::new();
    let sockets = tempfile::tempdir().unwrap();
    let serving = runtime();
    let buildx = Buildx(stand_in_client());
    serving.block_on(async {
        let broker = tokio::net::UnixListener::bind(sockets.path().join("broker.sock")).unwrap();
        let provider =
            tokio::net::UnixListener::bind(sockets.path().join("provider.sock")).unwrap();
        let mut daemon = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(DAEMON_PROCESS_DIR, sockets.path())
            .spawn()
            .expect("start the stand-in daemon process");
        let (io, _) = broker.accept().await.expect("the daemon's broker session");
        serve_session(&files, buildx.0.id(), io);
        let (io, _) = provider
            .accept()
            .await
            .expect("the daemon's provider session");
        tokio::spawn(serve_fake_buildx(io, Some(files.paths())));
        let status = daemon.wait().await.expect("wait for the stand-in daemon");
        status.code().unwrap_or(1)
    })
}

fn bench_get_secret(c: &mut Criterion) {
    let bed = Bed::start();
    let (rt, client) = (bed.rt(), &bed.broker);
    let mut group = c.benchmark_group("get_secret_in_session");
    for id in [
        "from_env",
        "from_client_env",
        "from_file",
        "from_file_nowalk",
        "from_file_tmpfs",
        "from_client",
        "from_cache",
    ] {
        group.bench_function(id, |b| b.to_async(rt).iter(|| get(client, id)));
    }
    group.bench_function("provider", |b| {
        b.to_async(rt).iter(|| get(&bed.provider, "any"))
    });
    for id in [PROVIDER_FILE, PROVIDER_FILE_TMPFS] {
        group.bench_function(id, |b| b.to_async(rt).iter(|| get(&bed.provider, id)));
    }
    group.finish();
}

/// p50/p99 of sequential calls and calls/s with 64 concurrent callers, printed for
/// docs/benchmarks.md. Every row, the provider baseline included, is measured in interleaved
/// rounds, so the machine's drift falls on all of them alike; ratios are broker/provider.
fn summary() {
    const ROUNDS: usize = 10;
    const CALLS: usize = 2_000;
    const CONCURRENT_CALLS: usize = 6_400;
    const TASKS: usize = 64;
    let bed = Bed::start();
    let (rt, broker, provider) = (bed.rt(), &bed.broker, &bed.provider);
    // (label, session, id): the provider rows are answered by the stand-in buildx (from memory,
    // or from a file read per call), the others by the broker.
    let rows: Vec<(&str, &Client, &str)> = vec![
        ("provider", provider, "any"),
        (PROVIDER_FILE, provider, PROVIDER_FILE),
        (PROVIDER_FILE_TMPFS, provider, PROVIDER_FILE_TMPFS),
        ("from_env", broker, "from_env"),
        ("from_cache", broker, "from_cache"),
        ("from_file", broker, "from_file"),
        ("from_file_nowalk", broker, "from_file_nowalk"),
        ("from_file_tmpfs", broker, "from_file_tmpfs"),
        ("from_client_env", broker, "from_client_env"),
        ("from_client", broker, "from_client"),
    ];
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load_before = load();
    println!(
        "sessions carried over: {}",
        if over_messages() {
            "Control/Session messages (GET_SECRET_TRANSPORT=messages)"
        } else {
            "byte pipes"
        }
    );
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); rows.len()];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    // Per row, over the sequential calls: the calls, then the [`counts`].
    let mut totals: Vec<(u64, [u64; 3])> = vec![(0, [0; 3]); rows.len()];
    rt.block_on(async {
        for (_, client, id) in &rows {
            for _ in 0..CALLS {
                get(client, id).await;
            }
        }
    });
    for round in 0..ROUNDS {
        // Rotate the order each round so no row always runs right after the same one.
        for k in 0..rows.len() {
            let r = (k + round) % rows.len();
            let (_, client, id) = rows[r];
            samples[r].reserve(CALLS);
            let before = counts(bed.serving_pid);
            rt.block_on(async {
                for _ in 0..CALLS {
                    let t = Instant::now();
                    get(client, id).await;
                    samples[r].push(t.elapsed());
                }
            });
            let after = counts(bed.serving_pid);
            totals[r].0 += CALLS as u64;
            for i in 0..3 {
                totals[r].1[i] += after[i].saturating_sub(before[i]);
            }
            let rate = rt.block_on(async {
                let start = Instant::now();
                let handles: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let client = client.clone();
                        let id = id.to_string();
                        tokio::spawn(async move {
                            for _ in 0..CONCURRENT_CALLS / TASKS {
                                get(&client, &id).await;
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.await.unwrap();
                }
                (CONCURRENT_CALLS / TASKS * TASKS) as f64 / start.elapsed().as_secs_f64()
            });
            rates[r].push(rate);
        }
    }
    let pct = |s: &mut Vec<Duration>, q: f64| {
        s.sort();
        s[((s.len() as f64 * q) as usize).min(s.len() - 1)].as_secs_f64() * 1e6
    };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "\nGetSecret inside a session (2 tokio workers{}), {ROUNDS} interleaved rounds of {CALLS} sequential calls and {CONCURRENT_CALLS} calls from {TASKS} tasks per row",
        if bed.serving_pid.is_some() {
            "; the stand-in daemon in a process of its own, with two more, on unix sockets"
        } else if bed.daemon.is_some() {
            "; the stand-in daemon on a thread of its own"
        } else {
            ", shared with the stand-in daemon"
        }
    );
    println!("load average before: {}", load_before.trim());
    let figures: Vec<(f64, f64, f64)> = (0..rows.len())
        .map(|r| {
            (
                pct(&mut samples[r], 0.50),
                pct(&mut samples[r], 0.99),
                median(&mut rates[r]),
            )
        })
        .collect();
    let (p50_base, p99_base, rate_base) = figures[0];
    for (r, (label, _, _)) in rows.iter().enumerate() {
        let (p50, p99, rate) = figures[r];
        let (calls, [a, b, c]) = totals[r];
        let per_call = |n: u64| n as f64 / calls as f64;
        let counted = if bed.serving_pid.is_some() {
            format!(
                "serving process {:.1} µs CPU, {:.2} context switches; daemon {:.2} switches",
                per_call(a) / 1e3,
                per_call(b),
                per_call(c)
            )
        } else {
            format!(
                "{:.1} allocations, {:.2} context switches",
                per_call(a),
                per_call(b)
            )
        };
        println!(
            "  {label:<16} p50 {p50:>6.1} µs   p99 {p99:>6.1} µs   {rate:>8.0} calls/s   vs provider: p50 {:.2}x  p99 {:.2}x  calls/s {:.2}x   per call: {counted}",
            p50 / p50_base,
            p99 / p99_base,
            rate / rate_base,
        );
    }
    // The `file:` rows against buildx reading the same file per call (`--secret src=`).
    let row = |label: &str| rows.iter().position(|(l, _, _)| *l == label).unwrap();
    println!(
        "  like for like (the provider reads a file like it on every call, as buildx's src= does):"
    );
    for (broker_row, provider_row) in [
        ("from_file", PROVIDER_FILE),
        ("from_file_nowalk", PROVIDER_FILE),
        ("from_file_tmpfs", PROVIDER_FILE_TMPFS),
    ] {
        let (b, p) = (figures[row(broker_row)], figures[row(provider_row)]);
        println!(
            "  {broker_row:<16} vs {provider_row}: p50 {:.2}x  p99 {:.2}x  calls/s {:.2}x",
            b.0 / p.0,
            b.1 / p.1,
            b.2 / p.2,
        );
    }
    println!("load average after:  {}", load().trim());
}

/// `GET_SECRET_PROFILE=ROW` (a summary label) with `GET_SECRET_PROFILE_CALLS=N`: sets up both
/// sessions, warms every row, then makes N sequential calls on ROW only and exits; for
/// `perf stat`/`perf record` (the per-call count is the difference between N and N=0 runs
/// divided by N, so setup and warm-up cancel out).
fn profile(row: &str, calls: usize) {
    let bed = Bed::start();
    let (rt, broker, provider) = (bed.rt(), &bed.broker, &bed.provider);
    let (client, id) = match row {
        "provider" => (&provider, "any"),
        PROVIDER_FILE | PROVIDER_FILE_TMPFS => (&provider, row),
        other => (&broker, other),
    };
    rt.block_on(async {
        for (c, i) in [
            (&provider, "any"),
            (&broker, "from_env"),
            (&broker, "from_cache"),
        ] {
            for _ in 0..2_000 {
                get(c, i).await;
            }
        }
        get(client, id).await;
        for _ in 0..calls {
            get(client, id).await;
        }
    });
}

criterion_group!(benches, bench_get_secret);

fn main() {
    let clearing = std::env::var("BENCH_ZEROIZE_ON_FREE").map_or(true, |v| v != "0");
    if !clearing {
        buildbroker::zeroize_alloc::ZeroizeOnFree::disable_for_benchmark();
    }
    assert!(
        !(over_messages() && std::env::var_os("GET_SECRET_DAEMON_PROCESS").is_some()),
        "GET_SECRET_TRANSPORT=messages runs in one process: unset GET_SECRET_DAEMON_PROCESS"
    );
    // The serving side of `GET_SECRET_DAEMON_PROCESS=1` (see [`Bed`]); the daemon it starts
    // runs what follows.
    if std::env::var_os("GET_SECRET_DAEMON_PROCESS").is_some()
        && std::env::var_os(DAEMON_PROCESS_DIR).is_none()
    {
        std::process::exit(serve_daemon_process());
    }
    println!(
        "zeroize-on-free allocator: {}",
        if clearing { "on" } else { "off" }
    );
    if let Ok(row) = std::env::var("GET_SECRET_PROFILE") {
        let calls = std::env::var("GET_SECRET_PROFILE_CALLS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(100_000);
        profile(&row, calls);
        return;
    }
    // `GET_SECRET_SUMMARY_ONLY=1` skips criterion and prints the interleaved summary only.
    if std::env::var_os("GET_SECRET_SUMMARY_ONLY").is_none() {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    summary();
}
