//! Secure by default (issue 13): one build never gets another build's value, a client that
//! never answers holds up nobody else, the embedded default serves only what was stored for
//! builds, and a build's output shows what its author needs and no more.

use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use crate::harness::*;

const BASE: &str = BASE_IMAGE;

/// Prints each id's value, or `none` when the optional mount was skipped (NotFound).
fn print_ids(ids: &[&str]) -> String {
    let mounts: String = ids
        .iter()
        .map(|id| format!("--mount=type=secret,id={id} "))
        .collect();
    let reads: Vec<String> = ids
        .iter()
        .map(|id| format!("(cat /run/secrets/{id} 2>/dev/null || printf none) > /{id}"))
        .collect();
    let files: Vec<String> = ids.iter().map(|id| format!("/{id}")).collect();
    format!(
        "FROM {BASE}\nRUN {mounts}{}\nFROM scratch\nCOPY --from=0 {} /\n",
        reads.join(" && "),
        files.join(" ")
    )
}

/// `--secret id=ID,src=FILE` with `value` written to a fresh file in `dir`.
fn secret_flag(dir: &std::path::Path, id: &str, value: &str) -> String {
    let path = write_file(
        dir,
        &format!("{id}-{}", unique_secret("f")),
        value.as_bytes(),
    );
    format!("--secret=id={id},src={}", path.display())
}

#[test]
fn client_values_never_cross_builds_in_either_order_or_concurrently() {
    if skip() {
        return;
    }
    let shared = unique_secret("shared");
    let broker = Broker::start(BrokerOptions {
        // The reviewer's reproduction: a client value with a cache_ttl. And a chain that asks
        // the build first and falls back to a shared, cached broker value.
        policy: "[secrets.tok]\nsources = [\"client\"]\ncache_ttl = \"5m\"\n\
                 [secrets.mixed]\nsources = [\"client\", \"env:SHARED\"]\ncache_ttl = \"5m\"\n",
        env: vec![("SHARED", &shared)],
        ..Default::default()
    });
    let files = tempfile::tempdir().unwrap();
    let dockerfile = print_ids(&["tok", "mixed"]);
    let with_flags = |tok: &str, mixed: &str| {
        Build::new(dockerfile.clone())
            .arg(secret_flag(files.path(), "tok", tok))
            .arg(secret_flag(files.path(), "mixed", mixed))
    };
    let without_flags = || Build::new(dockerfile.clone());
    let check = |b: &BuildResult, tok: &str, mixed: &str, who: &str| {
        b.assert_ok();
        assert_eq!(b.text("tok"), tok, "{who}: tok\n{}", b.log());
        assert_eq!(b.text("mixed"), mixed, "{who}: mixed\n{}", b.log());
    };

    // A then B: B, with no --secret flag, gets nothing of A's.
    let a = unique_secret("a");
    let am = unique_secret("am");
    check(&with_flags(&a, &am).run(&broker), &a, &am, "A");
    check(&without_flags().run(&broker), "none", &shared, "B after A");

    // B then A: the shared value B caused to be cached does not shadow A's own flag.
    let a2 = unique_secret("a2");
    let am2 = unique_secret("am2");
    check(&without_flags().run(&broker), "none", &shared, "B");
    check(&with_flags(&a2, &am2).run(&broker), &a2, &am2, "A after B");

    // Concurrently: each gets its own value, the flagless one none of theirs.
    let (x, xm, y, ym) = (
        unique_secret("x"),
        unique_secret("xm"),
        unique_secret("y"),
        unique_secret("ym"),
    );
    std::thread::scope(|s| {
        let bx = s.spawn(|| with_flags(&x, &xm).run(&broker));
        let by = s.spawn(|| with_flags(&y, &ym).run(&broker));
        let bz = s.spawn(|| without_flags().run(&broker));
        check(&bx.join().unwrap(), &x, &xm, "X");
        check(&by.join().unwrap(), &y, &ym, "Y");
        check(&bz.join().unwrap(), "none", &shared, "Z");
    });

    // The audit says whose value each answer was.
    let audit = broker.audit();
    let served: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["decision"] == "served")
        .collect();
    assert!(
        served
            .iter()
            .filter(|v| v["source"] == "client")
            .all(|v| v["value_owner"] == "session"),
        "{audit}"
    );
    assert!(
        served
            .iter()
            .filter(|v| v["source"] == "env")
            .all(|v| v["value_owner"] == "broker"),
        "{audit}"
    );
    assert!(served.iter().any(|v| v["source"] == "env"), "{audit}");
}

#[test]
fn a_client_that_never_answers_holds_up_only_its_own_build() {
    if skip() {
        return;
    }
    let shared = unique_secret("shared");
    // Long enough that the other build (one to several seconds alone, more on a loaded CI
    // machine) always ends first; short enough that the stuck one ends within the test.
    let broker = Broker::start(BrokerOptions {
        server: "fetch_timeout = \"30s\"",
        policy: "[secrets.tok]\nsources = [\"client\"]\ncache_ttl = \"5m\"\n\
                 [secrets.shared]\nsources = [\"env:SHARED\"]\ncache_ttl = \"5m\"\n",
        env: vec![("SHARED", &shared)],
        ..Default::default()
    });
    let files = tempfile::tempdir().unwrap();
    // buildx reads a --secret file when the daemon asks for it; a FIFO with no writer makes
    // its answer never come.
    let fifo = files.path().join("never");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let dockerfile = print_ids(&["tok", "shared"]);

    std::thread::scope(|s| {
        let stuck = s.spawn(|| {
            let started = Instant::now();
            let b = Build::new(dockerfile.clone())
                .arg(format!("--secret=id=tok,src={}", fifo.display()))
                .run(&broker);
            (b, started.elapsed())
        });
        // Opening the FIFO for writing without blocking succeeds once buildx has it open for
        // reading: the stuck build's GetSecret is now waiting on its client. Keep it open,
        // unwritten, so the read goes on waiting.
        let deadline = Instant::now() + Duration::from_secs(120);
        let _writer = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(O_NONBLOCK)
                .open(&fifo)
            {
                Ok(f) => break f,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("buildx never opened the --secret FIFO: {e}"),
            }
        };
        let b_value = unique_secret("b");
        let other = Build::new(dockerfile.clone())
            .arg(secret_flag(files.path(), "tok", &b_value))
            .run(&broker);
        other.assert_ok();
        assert_eq!(other.text("tok"), b_value);
        assert_eq!(other.text("shared"), shared);
        assert!(
            !stuck.is_finished(),
            "the other build must finish while the stuck one still waits on its client"
        );

        let (stuck, took) = stuck.join().unwrap();
        assert!(!stuck.success(), "{}", stuck.log());
        let log = stuck.log();
        assert!(
            log.contains("secret \\\"tok\\\"") || log.contains("secret \"tok\""),
            "the failure names the id:\n{log}"
        );
        assert!(log.contains("client (unavailable)"), "{log}");
        assert!(
            took < Duration::from_secs(120),
            "the stuck build ended at the fetch_timeout, not never ({took:?})"
        );
    });
}

/// Linux's O_NONBLOCK (asm-generic/fcntl.h), without a libc dependency in the tests.
const O_NONBLOCK: i32 = 0o4000;

#[test]
fn embedded_default_serves_no_general_purpose_credentials_until_a_policy_opts_in() {
    if skip() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let aws = unique_secret("aws");
    let netrc = unique_secret("netrc");
    let gh = unique_secret("gh");
    let pypi = unique_secret("pypi");
    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    write_file(&home.path().join(".aws"), "credentials", aws.as_bytes());
    write_file(home.path(), ".netrc", netrc.as_bytes());
    let home_dir = home.path().to_str().unwrap();
    let env = vec![
        ("HOME", home_dir),
        ("GITHUB_TOKEN", gh.as_str()),
        ("GH_TOKEN", gh.as_str()),
        ("PYPI_TOKEN", pypi.as_str()),
    ];
    let dockerfile = print_ids(&["aws", "netrc", "github_token", "pypi_token"]);

    let body = embedded_default_body();
    let default = Broker::start(BrokerOptions {
        policy: &body,
        env: env.clone(),
        ..Default::default()
    });
    let b = Build::new(dockerfile.clone()).run(&default);
    b.assert_ok();
    for id in ["aws", "netrc", "github_token", "pypi_token"] {
        assert_eq!(b.text(id), "none", "the embedded default served {id}");
    }
    drop(default);

    // The README's opt-in: one line per credential, at the top of a policy file.
    let opted_in = Broker::start(BrokerOptions {
        preamble: "secrets.aws.sources = [\"file:~/.aws/credentials\"]\n\
                   secrets.netrc.sources = [\"file:~/.netrc\"]\n\
                   secrets.github_token.sources = [\"env:GITHUB_TOKEN\"]\n",
        env,
        ..Default::default()
    });
    let b = Build::new(dockerfile).run(&opted_in);
    b.assert_ok();
    assert_eq!(b.text("aws"), aws);
    assert_eq!(b.text("netrc"), netrc);
    assert_eq!(b.text("github_token"), gh);
    assert_eq!(b.text("pypi_token"), "none", "not opted in");
}

#[test]
fn exec_stderr_stays_in_the_daemon_log_unless_detailed_errors_are_asked_for() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = unique_secret("stderr-marker");
    let program = write_file(
        dir.path(),
        "failing.sh",
        format!("#!/bin/sh\necho \"{marker} at /srv/vault/path\" >&2\nexit 1\n").as_bytes(),
    );
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let policy = format!(
        "[secrets.vault_token]\nsources = [\"exec:{}\"]\n",
        program.display()
    );
    let dockerfile =
        format!("FROM {BASE}\nRUN --mount=type=secret,id=vault_token,required=true true\n");

    let brief = Broker::start(BrokerOptions {
        policy: &policy,
        ..Default::default()
    });
    let b = Build::new(dockerfile.clone()).run(&brief);
    assert!(!b.success(), "{}", b.log());
    let out = b.log();
    assert!(
        !out.contains(&marker),
        "exec stderr reached build output:\n{out}"
    );
    assert!(!out.contains(&program.display().to_string()), "{out}");
    assert!(
        out.contains("vault_token") && out.contains("exec (error)"),
        "{out}"
    );
    assert!(
        brief.log().contains(&marker),
        "the daemon log keeps the whole story"
    );
    drop(brief);

    let detailed = Broker::start(BrokerOptions {
        policy: &policy,
        server: "build_errors = \"detailed\"",
        ..Default::default()
    });
    let b = Build::new(dockerfile).run(&detailed);
    assert!(!b.success());
    assert!(b.log().contains(&marker), "detailed: {}", b.log());
}
