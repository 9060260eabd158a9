//! Resolve latency per source kind (p50/p99), each source asked directly as a GetSecret would
//! ask it. Real stores: a file on disk, a real program for exec:, the kernel keyring (a key
//! added with keyctl), and — when DBUS_SESSION_BUS_ADDRESS points at a session bus with a
//! Secret Service, as `scripts/bench-sources.sh` arranges — GNOME Keyring.
//!
//! Run: `scripts/bench-sources.sh` (or `cargo bench --bench sources` without the Secret Service).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use buildbroker::source::{
    Lookup, ResolveContext, SourceRuntime, SourceSettings, SourceSpec, lookup,
};

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.5), at(0.99))
}

fn measure(
    rt: &tokio::runtime::Runtime,
    runtime: &SourceRuntime,
    label: &str,
    spec: &SourceSpec,
    n: usize,
) {
    let ctx = ResolveContext::without_client(runtime);
    let samples = rt.block_on(async {
        for _ in 0..n / 10 + 1 {
            assert!(
                matches!(lookup(spec, "bench", ctx).await, Ok(Lookup::Found(_))),
                "{label}: warm-up did not find the value"
            );
        }
        let mut s = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let found = lookup(spec, "bench", ctx).await;
            s.push(t.elapsed());
            assert!(matches!(found, Ok(Lookup::Found(_))));
        }
        s
    });
    let (p50, p99) = percentiles(samples);
    println!(
        "  {label:<26} p50 {:>9.1} µs   p99 {:>9.1} µs   ({n} resolves)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, b"file-token-value").unwrap();
    let script = dir.path().join("op");
    std::fs::write(&script, "#!/bin/sh\necho exec-token-value\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let description = format!("keyring:bench{}@buildbroker-bench", std::process::id());
    let key = Command::new("keyctl")
        .args(["add", "user", &description, "kernel-token-value", "@u"])
        .output();
    let key_id = key
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());

    println!("\nResolve latency per source kind (2 tokio workers):");
    let plain = SourceRuntime::default();
    measure(&rt, &plain, "env", &SourceSpec::Env("PATH".into()), 20_000);
    measure(&rt, &plain, "file", &SourceSpec::File(file.clone()), 20_000);
    measure(
        &rt,
        &plain,
        "exec (sh script)",
        &SourceSpec::parse(&format!("exec:{}", script.display()), None).unwrap(),
        500,
    );

    let kernel = SourceRuntime::new(SourceSettings {
        keyring_backend: buildbroker::source::KeyringBackend::Kernel,
        ..SourceSettings::default()
    });
    match &key_id {
        Some(_) => measure(
            &rt,
            &kernel,
            "keyring (kernel)",
            &SourceSpec::parse(
                &format!("keyring:buildbroker-bench/bench{}", std::process::id()),
                None,
            )
            .unwrap(),
            20_000,
        ),
        None => println!("  keyring (kernel)           not measured: keyctl is not installed"),
    }

    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() {
        let ss = SourceRuntime::new(SourceSettings {
            keyring_backend: buildbroker::source::KeyringBackend::SecretService,
            ..SourceSettings::default()
        });
        measure(
            &rt,
            &ss,
            "keyring (Secret Service)",
            &SourceSpec::parse("keyring:buildbroker-bench/token", None).unwrap(),
            2_000,
        );
    } else {
        println!(
            "  keyring (Secret Service)   not measured: no session bus (run scripts/bench-sources.sh)"
        );
    }

    if let Some(id) = key_id {
        let _ = Command::new("keyctl").args(["invalidate", &id]).status();
    }
}
