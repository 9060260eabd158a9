//! Minted and rendered values through the resolver (policy → cache → source), as GetSecret
//! answers them (issue 11):
//!
//! - `aws-credentials:` with `role_arn`: one STS AssumeRole per answer against a real moto_server
//!   on loopback, then the same id with `cache_ttl` (answers from the cache until
//!   `min_remaining`). moto's Python request handling is most of the uncached time; real STS
//!   latency replaces it in production.
//! - a template of two `env:` ids against answering those two ids on their own, interleaved in
//!   rounds so load drift hits both alike: what rendering adds over its inputs' own latency.
//!
//! Run: `cargo bench --bench minted` (p50/p99 on stdout, with the load average).

use std::time::{Duration, Instant};

use buildbroker::broker::Generation;
use buildbroker::config::{HostEnv, Policy, PolicyOrigin};
use buildbroker::resolver::{Answer, answer};

// moto's start-up, shared with tests/aws; the bench needs only part of it.
#[allow(dead_code)]
#[path = "../tests/aws/moto.rs"]
mod moto;

const ROLE: &str = "arn:aws:iam::123456789012:role/bench";

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn generation(text: &str) -> Generation {
    let policy =
        Policy::parse(text, PolicyOrigin::Embedded, &HostEnv::default()).expect("bench policy");
    Generation::new(policy)
}

async fn answered(generation: &Generation, id: &str) {
    match answer(generation, id, None).await {
        Answer::Value { value, .. } => assert!(!value.is_empty()),
        _ => panic!("{id}: no value"),
    }
}

fn p(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn assume_role(rt: &tokio::runtime::Runtime) {
    let moto = moto::Moto::start();
    let source = format!("aws-credentials:?role_arn={ROLE}&duration=900");
    let g = generation(&format!(
        "[aws]\nendpoint_url = \"{}\"\nregion = \"{}\"\n\
         [secrets.aws]\nsources = [\"{source}\"]\n\
         [secrets.aws_cached]\nsources = [\"{source}\"]\ncache_ttl = \"1h\"\n",
        moto.endpoint(),
        moto::REGION
    ));
    println!(
        "\naws-credentials: AssumeRole against moto_server on loopback (load average {}):",
        load_average()
    );
    for (id, n) in [("aws", 300), ("aws_cached", 20_000)] {
        let mut samples = rt.block_on(async {
            for _ in 0..20 {
                answered(&g, id).await;
            }
            let mut s = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                answered(&g, id).await;
                s.push(t.elapsed());
            }
            s
        });
        let (p50, p99) = (p(&mut samples, 0.50), p(&mut samples, 0.99));
        println!(
            "  {id:<12} p50 {:>9.1} µs   p99 {:>9.1} µs   ({n} sequential answers)",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    println!("  load average after: {}", load_average());
}

fn template(rt: &tokio::runtime::Runtime) {
    let g = generation(
        "[secrets.login]\nsources = [\"env:BENCH_LOGIN\"]\n\
         [secrets.token]\nsources = [\"env:BENCH_TOKEN\"]\n\
         [secrets.netrc]\ntemplate = \"machine git.example.com login {{login}} password {{token}}\\n\"\n",
    );
    let rounds = 200;
    let per_round = 100;
    let (mut rendered, mut inputs) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..1000 {
            answered(&g, "netrc").await;
        }
        for _ in 0..rounds {
            for _ in 0..per_round {
                let t = Instant::now();
                answered(&g, "netrc").await;
                rendered.push(t.elapsed());
            }
            for _ in 0..per_round {
                let t = Instant::now();
                answered(&g, "login").await;
                answered(&g, "token").await;
                inputs.push(t.elapsed());
            }
        }
    });
    println!(
        "\ntemplate of two env: ids vs answering both ids ({} each, interleaved; load average {}):",
        rounds * per_round,
        load_average()
    );
    for (label, samples) in [
        ("rendered netrc", &mut rendered),
        ("login + token", &mut inputs),
    ] {
        println!(
            "  {label:<16} p50 {:>7.2} µs   p99 {:>7.2} µs",
            p(samples, 0.50).as_secs_f64() * 1e6,
            p(samples, 0.99).as_secs_f64() * 1e6
        );
    }
}

fn main() {
    // The SDK and env: sources read the process environment, and the crate forbids the unsafe
    // `set_var`: run this bench again as a child with moto's fake credentials and the inputs.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("BENCH_LOGIN", "ci-bot")
            .env("BENCH_TOKEN", "ghp_0123456789abcdefghijklmnopqrstuvwxyz")
            .status()
            .expect("run the bench with moto's credentials");
        std::process::exit(status.code().unwrap_or(1));
    }
    // `cargo bench` passes --bench; nothing here takes arguments.
    let rt = tokio_runtime();
    template(&rt);
    assume_role(&rt);
}
