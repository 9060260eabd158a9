//! Load (issue 10, item 4): many real builds at once through one broker, each with its own
//! client secret, its own policy secret (`client-env:`, read from that build client's process)
//! and an ssh mount served from a broker-held key. No build may fail, none may see another's
//! values, and the broker must give back every descriptor afterwards.
//!
//! CI runs a bounded count (`BUILDBROKER_LOAD_BUILDS`, default 12); scripts/bench-load.sh runs
//! 100 and docs/benchmarks.md records the result. The test prints one `load:` summary line
//! (wall time, failures, peak RSS, fds, load average) that the script collects.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::sshbed::*;

/// Builds at once when `BUILDBROKER_LOAD_BUILDS` is unset: enough to overlap many sessions on
/// the 2-core CI machine without taking minutes.
const DEFAULT_BUILDS: usize = 12;

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number")),
        Err(_) => default,
    }
}

/// What one build of the load run did.
struct Outcome {
    ok: bool,
    seconds: f64,
    /// Problems with this build: its error output, or what it exported that it should not have.
    problems: Vec<String>,
}

/// The last `lines` lines of a build's output: where buildx prints the error.
fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".to_string())
}

#[test]
fn many_concurrent_builds_with_own_secrets_and_ssh_through_one_broker() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let builds = env_number("BUILDBROKER_LOAD_BUILDS", DEFAULT_BUILDS);
    let timeout = Duration::from_secs(env_number("BUILDBROKER_LOAD_TIMEOUT_SECS", 600) as u64);
    let keys = tempfile::tempdir().unwrap();
    let key = Key::new(keys.path(), "load-deploy", "");
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[secrets.policy_own]\nsources = [\"client-env:BB_LOAD_VALUE\"]\nrequired = true\n\
             [ssh.deploy]\nprivate_keys = [\"file:{}\"]\n",
            key.path.display()
        ),
        // debug would log several lines per RPC: at 100 builds that is the log, not the broker.
        rust_log: "info",
        ..Default::default()
    });
    let host = broker.docker_host();
    // Unique per build: the index and the harness's nonce keep BuildKit from merging steps of
    // different builds (SECURITY.md), so each one asks the broker for its own values.
    let dockerfile = |i: usize| {
        format!(
            "FROM {SSH_IMAGE}\n\
             RUN --mount=type=secret,id=own,required=true \
                 --mount=type=secret,id=policy_own,required=true \
                 --mount=type=ssh,id=deploy,required=true \
                 mkdir /o && cat /run/secrets/own > /o/own && cat /run/secrets/policy_own > /o/policy \
                 && ssh-add -L > /o/keys && echo {i} > /o/index\n\
             FROM scratch\nCOPY --from=0 /o /\n"
        )
    };
    let values: Vec<(String, String)> = (0..builds)
        .map(|i| {
            (
                unique_secret(&format!("own{i}")),
                unique_secret(&format!("policy{i}")),
            )
        })
        .collect();
    let secret_files = tempfile::tempdir().unwrap();
    let run_one = |i: usize, own: &str, policy: &str| {
        let file = write_file(secret_files.path(), &format!("own{i}"), own.as_bytes());
        Build::new(dockerfile(i))
            .arg(format!("--secret=id=own,src={}", file.display()))
            .env("BB_LOAD_VALUE", policy)
            .timeout(timeout)
            .run_against(&host)
    };

    // One build alone first: it proves the set-up (and leaves the audit log open), so the
    // descriptor baseline below is the broker's steady state, not its cold start.
    let (own, policy) = (unique_secret("warm-own"), unique_secret("warm-policy"));
    let warm = run_one(builds, &own, &policy);
    warm.assert_ok();
    assert_eq!(warm.text("own"), own);
    assert_eq!(warm.text("policy"), policy);
    std::thread::sleep(Duration::from_secs(1));
    let fds_before = broker.open_fds();

    // A sampler: the broker's descriptors and the machine's load while the builds run.
    let done = Arc::new(AtomicBool::new(false));
    let fds_peak = Arc::new(AtomicUsize::new(fds_before));
    let sampler = {
        let (done, fds_peak, pid) = (done.clone(), fds_peak.clone(), broker.pid());
        std::thread::spawn(move || {
            let mut load_max = 0.0f64;
            while !done.load(Ordering::Relaxed) {
                let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                fds_peak.fetch_max(fds, Ordering::Relaxed);
                let one_minute = std::fs::read_to_string("/proc/loadavg")
                    .ok()
                    .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
                    .unwrap_or(0.0);
                load_max = load_max.max(one_minute);
                std::thread::sleep(Duration::from_millis(250));
            }
            load_max
        })
    };

    let start = Instant::now();
    let barrier = Barrier::new(builds);
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, (own, policy))| {
                let (barrier, values, key, run_one) = (&barrier, &values, &key, &run_one);
                s.spawn(move || {
                    barrier.wait();
                    let began = Instant::now();
                    let build = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_one(i, own, policy)
                    })) {
                        Ok(b) => b,
                        Err(p) => {
                            return Outcome {
                                ok: false,
                                seconds: began.elapsed().as_secs_f64(),
                                problems: vec![panic_text(p)],
                            };
                        }
                    };
                    let seconds = began.elapsed().as_secs_f64();
                    if !build.success() {
                        return Outcome {
                            ok: false,
                            seconds,
                            problems: vec![last_lines(&build.log(), 12)],
                        };
                    }
                    let read = |name: &str| {
                        std::fs::read_to_string(build.out_dir.join(name)).unwrap_or_default()
                    };
                    let (got_own, got_policy, got_keys) =
                        (read("own"), read("policy"), read("keys"));
                    let mut problems = Vec::new();
                    if got_own != *own {
                        problems.push(format!("client secret: got {got_own:?}, want {own:?}"));
                    }
                    if got_policy != *policy {
                        problems.push(format!(
                            "policy secret: got {got_policy:?}, want {policy:?}"
                        ));
                    }
                    if !got_keys.contains(&key.key_only()) {
                        problems.push(format!(
                            "ssh-add -L: got {got_keys:?}, want {}",
                            key.key_only()
                        ));
                    }
                    if read("index").trim() != i.to_string() {
                        problems.push(format!("exported index {:?}", read("index")));
                    }
                    // Cross-talk: no other build's value anywhere in this one's result or output.
                    let everything = format!("{got_own}{got_policy}{got_keys}{}", build.log());
                    for (j, (other_own, other_policy)) in values.iter().enumerate() {
                        if j != i
                            && (everything.contains(other_own.as_str())
                                || everything.contains(other_policy.as_str()))
                        {
                            problems.push(format!("holds a value of build {j}"));
                        }
                    }
                    Outcome {
                        ok: problems.is_empty(),
                        seconds,
                        problems,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a build thread panicked outside its build"))
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let load_max = sampler.join().unwrap();

    // Sessions and connections of finished builds close asynchronously: give them time.
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.open_fds() > fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let fds_after = broker.open_fds();
    let peak_rss = broker.peak_rss_kib();

    let mut times: Vec<f64> = outcomes.iter().map(|o| o.seconds).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let failed: BTreeMap<usize, &Outcome> =
        outcomes.iter().enumerate().filter(|(_, o)| !o.ok).collect();
    println!(
        "load: builds={builds} wall_s={wall:.1} ok={} failed={} build_p50_s={:.1} build_max_s={:.1} \
         peak_rss_kib={peak_rss} fds_before={fds_before} fds_peak={} fds_after={fds_after} \
         loadavg1_max={load_max:.2} cores={}",
        builds - failed.len(),
        failed.len(),
        times[times.len() / 2],
        times[times.len() - 1],
        fds_peak.load(Ordering::Relaxed),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    for (i, o) in &failed {
        println!(
            "load: build {i} failed after {:.1} s:\n{}",
            o.seconds,
            o.problems.join("\n")
        );
    }
    if !failed.is_empty() {
        // The broker's side of each failure (a refusal names the limit it hit).
        let log = broker.log();
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        println!(
            "load: broker warnings and errors ({} lines, first 20):\n{}",
            notable.len(),
            notable[..notable.len().min(20)].join("\n")
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {builds} concurrent builds failed or crossed (see the `load:` lines above)",
        failed.len()
    );
    assert!(
        fds_after <= fds_before,
        "the broker holds {fds_after} fds after the builds, {fds_before} before: {:?}",
        std::fs::read_dir(format!("/proc/{}/fd", broker.pid()))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .collect::<Vec<_>>()
    );
    let audit = broker.audit();
    let served = audit
        .lines()
        .filter(|l| {
            l.contains("\"id\":\"policy_own\"")
                && l.contains("\"source\":\"client-env\"")
                && l.contains("\"decision\":\"served\"")
        })
        .count();
    assert!(
        served > builds,
        "every build (and the warm-up) got its policy secret from its own client: {served} served"
    );
}

/// buildx holds up to 8 connections to the Engine API during one build (`_ping`, version,
/// `/session`, `/grpc`, image and history calls, measured through the broker), so the old
/// default of 256 connections per uid refused the 33rd concurrent build of one CI runner with
/// `failed to dial gRPC: unable to upgrade to h2c, received 429`. With the default limits, a
/// uid already holding 300 connections (37 builds' worth) still gets its next build through.
#[test]
fn the_default_limits_admit_a_build_beside_three_hundred_open_connections_of_its_uid() {
    use std::io::Write;
    if skip() {
        return;
    }
    let value = unique_secret("beside");
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.tok]\nsources = [\"env:TOK\"]\nrequired = true\n",
        env: vec![("TOK", &value)],
        rust_log: "info",
        ..Default::default()
    });
    let fds = broker.open_fds();
    // Unfinished request headers: the broker keeps each open until its header read timeout
    // (30 s), long enough for the build below.
    let held: Vec<std::os::unix::net::UnixStream> = (0..300)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(broker.socket()).unwrap();
            s.write_all(b"GET /_ping HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.open_fds() < fds + 300 {
        assert!(
            Instant::now() < deadline,
            "the broker accepted {} of the 300 connections",
            broker.open_fds() - fds
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let build = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok > /v\n\
         FROM scratch\nCOPY --from=0 /v /\n"
    ))
    .run(&broker);
    build.assert_ok();
    assert_eq!(build.text("v"), value);
    assert!(
        !broker.log().contains("refused connection"),
        "{}",
        broker.log()
    );
    drop(held);
}
