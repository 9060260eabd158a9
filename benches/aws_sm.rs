//! `aws-sm:` lookups against a real moto_server on loopback: what one resolve costs through the
//! daemon's shared SDK client (SigV4 signing, one HTTP/1.1 request on a pooled connection, JSON
//! decoding), with moto's own Python request handling included — AWS's latency replaces it in
//! production, so these numbers bound buildbroker's overhead rather than predict a real call.
//!
//! The bench starts moto itself (from tests/testbed/setup.sh, as the aws tests do) and seeds it.
//! Run: `cargo bench --bench aws_sm` (criterion medians, then p50/p99 over 500 sequential
//! resolves and the cold first resolve, on stdout).

use std::time::{Duration, Instant};

use buildbroker::config::{HostEnv, Policy, PolicyOrigin};
use buildbroker::source::{Lookup, ResolveContext, SourceRuntime, SourceSpec, lookup};
use criterion::{Criterion, criterion_group};

// moto's start-up and seeding, shared with tests/aws; the bench needs only part of it.
#[allow(dead_code)]
#[path = "../tests/aws/moto.rs"]
mod moto;

const SOURCES: [&str; 2] = ["aws-sm:bench/token", "aws-sm:bench/db#password"];

fn seed(moto: &moto::Moto) {
    moto.create_string(
        "bench/token",
        "pypi-AgEIcHlwaS5vcmcCJGE0ZjY1YzQ1LTk5NjAtNDk0Yy1hMzE4",
    );
    moto.create_string(
        "bench/db",
        r#"{"username": "app", "password": "correct horse battery staple", "port": 5432}"#,
    );
}

/// A fresh runtime per policy, as the daemon makes one per policy load.
fn source_runtime(moto: &moto::Moto) -> SourceRuntime {
    let text = format!(
        "[aws]\nendpoint_url = \"{}\"\nregion = \"{}\"\n",
        moto.endpoint(),
        moto::REGION
    );
    let env = HostEnv::default();
    let policy = Policy::parse(&text, PolicyOrigin::Embedded, &env).expect("bench policy");
    SourceRuntime::new(policy.sources)
}

async fn resolve(runtime: &SourceRuntime, spec: &SourceSpec) {
    let ctx = ResolveContext::without_client(runtime);
    match lookup(spec, "bench", ctx).await {
        Ok(Lookup::Found(value)) => assert!(!value.is_empty()),
        Ok(Lookup::Missing(why)) => panic!("{spec}: missing: {why}"),
        Err(e) => panic!("{spec}: {e}"),
    }
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn specs() -> Vec<SourceSpec> {
    SOURCES
        .iter()
        .map(|s| SourceSpec::parse(s, None).unwrap())
        .collect()
}

fn bench_aws_sm(c: &mut Criterion) {
    let moto = moto::Moto::start();
    seed(&moto);
    let rt = tokio_runtime();
    let runtime = source_runtime(&moto);
    let mut group = c.benchmark_group("aws_sm_lookup");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    for spec in specs() {
        rt.block_on(resolve(&runtime, &spec));
        group.bench_function(spec.to_string(), |b| {
            b.to_async(&rt).iter(|| resolve(&runtime, &spec))
        });
    }
    group.finish();
}

/// p50/p99 of sequential resolves on a warm client, and the first resolve of a fresh
/// policy (SDK configuration, credentials, connection), printed for docs/benchmarks.md.
fn summary() {
    let moto = moto::Moto::start();
    seed(&moto);
    let rt = tokio_runtime();
    println!("\naws-sm: lookup against moto_server on loopback (2 tokio workers):");
    let runtime = source_runtime(&moto);
    for spec in specs() {
        let mut samples: Vec<Duration> = rt.block_on(async {
            for _ in 0..50 {
                resolve(&runtime, &spec).await;
            }
            let mut s = Vec::with_capacity(500);
            for _ in 0..500 {
                let t = Instant::now();
                resolve(&runtime, &spec).await;
                s.push(t.elapsed());
            }
            s
        });
        samples.sort();
        let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "  {:<28} p50 {:>6.2} ms   p99 {:>6.2} ms   (500 sequential, warm client)",
            spec.to_string(),
            p(0.50).as_secs_f64() * 1e3,
            p(0.99).as_secs_f64() * 1e3,
        );
    }
    let spec = &specs()[0];
    let mut cold: Vec<Duration> = (0..20)
        .map(|_| {
            let fresh = source_runtime(&moto);
            let t = Instant::now();
            rt.block_on(resolve(&fresh, spec));
            t.elapsed()
        })
        .collect();
    cold.sort();
    println!(
        "  first resolve of a fresh policy: median {:.2} ms, max {:.2} ms (20 policies)",
        cold[cold.len() / 2].as_secs_f64() * 1e3,
        cold[cold.len() - 1].as_secs_f64() * 1e3,
    );
}

/// GetSecret-level answers for one id, 100 at once, with and without `cache_ttl`: how many
/// GetSecretValue calls reach AWS (counted in moto's access log).
fn calls_saved_by_the_cache() {
    use buildbroker::broker::Generation;
    use buildbroker::resolver::{Answer, answer};
    use std::sync::Arc;
    let moto = moto::Moto::start();
    seed(&moto);
    let rt = tokio_runtime();
    println!(
        "
aws-sm: 100 concurrent requests for one id:"
    );
    for (label, cache) in [
        ("no cache", ""),
        ("cache_ttl = \"1m\"", "cache_ttl = \"1m\"\n"),
    ] {
        let text = format!(
            "[aws]\nendpoint_url = \"{}\"\nregion = \"{}\"\n[secrets.tok]\nsources = [\"aws-sm:bench/token\"]\n{cache}",
            moto.endpoint(),
            moto::REGION
        );
        let policy = Policy::parse(&text, PolicyOrigin::Embedded, &HostEnv::default())
            .expect("bench policy");
        let generation = Arc::new(Generation::new(policy));
        let before = moto.requests();
        let started = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..100)
                .map(|_| {
                    let generation = generation.clone();
                    tokio::spawn(async move {
                        assert!(matches!(
                            answer(&generation, "tok", None).await,
                            Answer::Value { .. }
                        ));
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let elapsed = started.elapsed();
        // moto writes its access log line after answering; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        println!(
            "  {label:<18} {:>3} GetSecretValue calls for 100 answers, all answered in {:.1} ms",
            moto.requests() - before,
            elapsed.as_secs_f64() * 1e3
        );
    }
}

criterion_group!(benches, bench_aws_sm);

fn main() {
    // The SDK takes credentials from the environment, and the crate forbids the unsafe
    // `set_var`: run this bench again as a child with moto's fake credentials.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .status()
            .expect("run the bench with moto's credentials");
        std::process::exit(status.code().unwrap_or(1));
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
    calls_saved_by_the_cache();
}
