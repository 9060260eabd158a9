//! GetSecret answered inside a real intercepted session (design.md §11: p50 ≤ 50 µs,
//! p99 ≤ 250 µs, ≥ 20,000 calls/s on 2 cores).
//!
//! The session code under test is the daemon's own (`session::run`, the router, the Secrets
//! service, the sources); only its two peers are stand-ins: the "daemon" is a tonic client on an
//! HTTP/2 connection, the "build client" a tonic Secrets server, each on an in-memory pipe
//! instead of a unix socket, so the numbers measure buildbroker rather than the kernel.
//!
//! Run: `cargo bench --bench get_secret` (criterion medians, then a percentile and throughput
//! summary on stdout).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use buildbroker::access::PeerInfo;
use buildbroker::broker::Broker;
use buildbroker::channel::{ClientChannel, RelayBody, SessionInfo};
use buildbroker::config::{HostEnv, Policy, PolicyOrigin};
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

/// The build client's own provider: answers every id with a fixed value, as buildx's
/// `--secret` provider would.
struct FakeBuildx;

#[tonic::async_trait]
impl Secrets for FakeBuildx {
    async fn get_secret(
        &self,
        _: tonic::Request<GetSecretRequest>,
    ) -> Result<tonic::Response<GetSecretResponse>, tonic::Status> {
        Ok(tonic::Response::new(GetSecretResponse {
            data: b"value-from-the-client-flag".to_vec(),
        }))
    }
}

type Client = SecretsClient<ClientChannel>;

/// The daemon's allocator (src/main.rs), so the numbers include its cost;
/// `BENCH_ZEROIZE_ON_FREE=0` turns its clearing off to measure that cost.
#[global_allocator]
static ALLOCATOR: buildbroker::zeroize_alloc::ZeroizeOnFree =
    buildbroker::zeroize_alloc::ZeroizeOnFree;

/// `from_cache` is an exec: source (a real program, ~1 ms) behind `cache_ttl`: after the
/// first call every answer is a cache hit. `from_client_env` reads PATH from the environment
/// of `client_pid`, a real process standing in for buildx, as `from_env` reads the daemon's.
async fn start_session(token_file: &std::path::Path, client_pid: u32) -> Client {
    let text = format!(
        "[secrets.from_env]\nsources = [\"env:PATH\"]\n\
         [secrets.from_file]\nsources = [\"file:{}\"]\n\
         [secrets.from_client]\nsources = [\"client\"]\n\
         [secrets.from_client_env]\nsources = [\"client-env:PATH\"]\n\
         [secrets.from_cache]\nsources = [\"exec:/bin/cat {}\"]\ncache_ttl = \"1h\"\n",
        token_file.display(),
        token_file.display()
    );
    let env = HostEnv {
        euid: 0,
        ..HostEnv::default()
    };
    let policy = Policy::parse(&text, PolicyOrigin::Embedded, &env).expect("bench policy");
    let broker = Arc::new(Broker::new(policy, env).expect("broker"));

    let (daemon_io, broker_daemon_side) = tokio::io::duplex(1 << 20);
    let (broker_client_side, buildx_io) = tokio::io::duplex(1 << 20);

    tokio::spawn(async move {
        let server = SecretsServer::new(FakeBuildx);
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
            .serve_connection(TokioIo::new(buildx_io), svc)
            .await;
    });
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
        TokioIo::new(broker_daemon_side),
        TokioIo::new(broker_client_side),
        broker,
        info,
        CancellationToken::new(),
    ));
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

fn bench_get_secret(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, b"file-token-value").unwrap();
    let rt = runtime();
    let mut buildx = stand_in_client();
    let client = rt.block_on(start_session(&token, buildx.id()));
    let mut group = c.benchmark_group("get_secret_in_session");
    for id in [
        "from_env",
        "from_client_env",
        "from_file",
        "from_client",
        "from_cache",
    ] {
        group.bench_function(id, |b| b.to_async(&rt).iter(|| get(&client, id)));
    }
    group.finish();
    let _ = buildx.kill();
    let _ = buildx.wait();
}

/// p50/p99 of sequential calls and calls/s with 64 concurrent callers, printed for
/// docs/benchmarks.md.
fn summary() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, b"file-token-value").unwrap();
    let rt = runtime();
    let mut buildx = stand_in_client();
    let client = rt.block_on(start_session(&token, buildx.id()));
    println!("\nGetSecret inside a session (2 tokio workers):");
    for id in [
        "from_env",
        "from_client_env",
        "from_file",
        "from_client",
        "from_cache",
    ] {
        let mut samples: Vec<Duration> = rt.block_on(async {
            for _ in 0..2_000 {
                get(&client, id).await;
            }
            let mut s = Vec::with_capacity(20_000);
            for _ in 0..20_000 {
                let t = Instant::now();
                get(&client, id).await;
                s.push(t.elapsed());
            }
            s
        });
        samples.sort();
        let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        let throughput = rt.block_on(async {
            let total = 40_000usize;
            let tasks = 64usize;
            let start = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        for _ in 0..total / tasks {
                            get(&client, id).await;
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
            (total / tasks * tasks) as f64 / start.elapsed().as_secs_f64()
        });
        println!(
            "  {id:<16} p50 {:>6.1} µs   p99 {:>6.1} µs   {:>8.0} calls/s (64 concurrent)",
            p(0.50).as_secs_f64() * 1e6,
            p(0.99).as_secs_f64() * 1e6,
            throughput
        );
    }
    let _ = buildx.kill();
    let _ = buildx.wait();
}

criterion_group!(benches, bench_get_secret);

fn main() {
    let clearing = std::env::var("BENCH_ZEROIZE_ON_FREE").map_or(true, |v| v != "0");
    if !clearing {
        buildbroker::zeroize_alloc::ZeroizeOnFree::disable_for_benchmark();
    }
    println!(
        "zeroize-on-free allocator: {}",
        if clearing { "on" } else { "off" }
    );
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
