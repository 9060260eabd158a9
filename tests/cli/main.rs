//! The command line, run as the real binary: `check`, `resolve`, and `serve` on the embedded
//! default policy. None of these need the Docker test bed.

#[path = "../support/nobody.rs"]
mod nobody;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_buildbroker"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("STATE_DIRECTORY", state_dir());
    c
}

/// The state directory (fingerprint key) of every command here: never the machine's own.
fn state_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The daemon's binary behind `wrapper` (a program and its arguments, may be empty). As root it
/// runs as nobody (setpriv) from a copy in `dir`, since nobody may not reach target/; `dir` and
/// everything in it is handed to nobody. As another user it runs as that user.
fn as_nobody_when_root(dir: &Path, wrapper: &[&str]) -> Command {
    let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let mut line: Vec<std::ffi::OsString> = wrapper.iter().map(Into::into).collect();
    if is_root {
        let copy = dir.join("buildbroker");
        std::fs::copy(env!("CARGO_BIN_EXE_buildbroker"), &copy).unwrap();
        let run = |tool: &str, args: &[&str], target: &Path| {
            let ok = Command::new(tool).args(args).arg(target).status().unwrap();
            assert!(ok.success(), "{tool} {args:?} {}", target.display());
        };
        run("chmod", &["755"], dir);
        run("chmod", &["755"], &copy);
        run("chown", &["-R", "65534:65534"], dir);
        line.extend(nobody::AS_NOBODY.map(Into::into));
        line.push(copy.into());
    } else {
        line.push(env!("CARGO_BIN_EXE_buildbroker").into());
    }
    let mut cmd = Command::new(&line[0]);
    cmd.args(&line[1..]);
    cmd
}

#[test]
fn check_reports_unknown_key_and_wrong_type_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, "[server]\nunknown_secrets = \"deny\"\n\n[secrets.pypi_token]\nsources = [\"env:PYPI_TOKEN\"]\nrequird = true\n").unwrap();
    let out = bin().arg("check").arg("--config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let expected = format!(
        "{}:6:1: unknown key `requird`, expected one of `sources`, `template`, `required`",
        p.display()
    );
    assert!(text(&out).contains(&expected), "{}", text(&out));

    std::fs::write(&p, "[secrets.pypi_token]\nsources = \"env:PYPI_TOKEN\"\n").unwrap();
    let out = bin().arg("check").arg("--config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let expected = format!(
        "{}:2:11: wrong type: string \"env:PYPI_TOKEN\", expected an array",
        p.display()
    );
    assert!(text(&out).contains(&expected), "{}", text(&out));
}

#[test]
fn check_lists_every_semantic_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(
        &p,
        "[secrets.a]\nsources = [\"vault:a\"]\n[secrets.b]\nsources = [\"env:\"]\nmode = 0o7777\n",
    )
    .unwrap();
    let out = bin().arg("check").arg("--config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    for loc in [":2:12:", ":4:12:", ":5:8:"] {
        assert!(
            t.contains(&format!("{}{loc}", p.display())),
            "missing {loc} in {t}"
        );
    }
}

#[test]
fn check_dockerfiles_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, "[server]\nunknown_secrets = \"deny\"\n[secrets.pypi_token]\nsources = [\"env:T\"]\nmode = 0o400\nuid = 1000\n").unwrap();
    let good = dir.path().join("Dockerfile.good");
    std::fs::write(
        &good,
        "FROM x\nRUN --mount=type=secret,id=pypi_token,mode=0400,uid=1000 true\n",
    )
    .unwrap();
    let bad = dir.path().join("Dockerfile.bad");
    std::fs::write(
        &bad,
        "FROM x\nRUN --mount=type=secret,id=pypi_token,mode=0644,uid=1000 true\n",
    )
    .unwrap();

    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&p)
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&p)
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "{}:2:5: violation: secret \"pypi_token\" mounts it with mode=0644, wider than 0400, against the policy rule [secrets.pypi_token] mode = 0o400",
            bad.display()
        )),
        "{}",
        text(&out)
    );
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(&p)
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn resolve_prints_source_length_and_hash_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    let f = dir.path().join("tok");
    std::fs::write(&f, "file-value-4242").unwrap();
    std::fs::write(
        &p,
        format!(
            "[secrets.tok]\nsources = [\"env:TOK\", \"file:{}\"]\nrequired = true\n",
            f.display()
        ),
    )
    .unwrap();
    let out = bin()
        .args(["resolve", "--config"])
        .arg(&p)
        .arg("tok")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("env:TOK") && t.contains("missing: not set"),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "tok: resolved from file:{} (15 bytes, fingerprint hmac-sha256:",
            f.display()
        )),
        "{t}"
    );
    assert!(
        !t.contains("file-value-4242"),
        "the value must never be printed: {t}"
    );

    let out = bin()
        .args(["resolve", "--config"])
        .arg(&p)
        .arg("tok")
        .env("TOK", "env-value-77")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(t.contains("tok: resolved from env:TOK (12 bytes"), "{t}");
    assert!(!t.contains("env-value-77"), "{t}");

    std::fs::remove_file(&f).unwrap();
    let out = bin()
        .args(["resolve", "--config"])
        .arg(&p)
        .arg("tok")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(
        t.contains("tok: not resolved: buildbroker: secret \"tok\" is required by policy")
            && t.contains(&f.display().to_string()),
        "the operator sees the whole story: {t}"
    );
    assert!(
        t.contains(
            "tok: builds fail with: buildbroker: secret \"tok\" is required by policy but no source has it; tried env (not found), file (not found)"
        ),
        "the build sees kinds and reasons only: {t}"
    );
}

#[test]
fn config_is_found_through_buildbroker_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(&p, "[secrets.only_here]\nsources = [\"env:X\"]\n").unwrap();
    let out = bin()
        .arg("check")
        .env("BUILDBROKER_CONFIG", &p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{}: ok (1 secret ids", p.display())),
        "{}",
        text(&out)
    );
}

/// `buildbroker serve` with no policy file at all runs on the embedded default, as a normal
/// user would on a fresh machine: socket under $XDG_RUNTIME_DIR, ready line, SIGTERM → exit 0.
/// Runs `serve` with `args` (as nobody when root, with `dir` as its home and `runtime` as its
/// XDG_RUNTIME_DIR) until `sock` exists, then stops it with SIGTERM; its output.
/// Runs `serve` until its socket exists, then stops it with SIGTERM: its output, and the names
/// of its threads while it served.
fn serve_until_ready(
    dir: &Path,
    runtime: &Path,
    sock: &Path,
    args: &[&str],
) -> (Output, Vec<String>) {
    let mut cmd = as_nobody_when_root(dir, &[]);
    let mut child = cmd
        .arg("serve")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir)
        .env("XDG_RUNTIME_DIR", runtime)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !sock.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no socket at {}",
            sock.display()
        );
        if let Some(s) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("serve exited early ({s}): {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let read = || {
        let mut threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .unwrap()
            // A helper thread may end between the listing and the read.
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_string())
            .collect();
        threads.sort();
        threads
    };
    // A new thread names itself once it first runs, which a loaded machine may delay: read
    // until the connection threads' names are the same twice, 50 ms apart.
    let conn = |threads: &[String]| -> Vec<String> {
        threads
            .iter()
            .filter(|t| t.starts_with("conn-"))
            .cloned()
            .collect()
    };
    let mut threads = read();
    let settle = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let again = read();
        let settled = conn(&again) == conn(&threads);
        threads = again;
        if settled || settle.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    (child.wait_with_output().unwrap(), threads)
}

/// The daemon serves connections on exactly `n` connection threads (`conn-0` …), besides its
/// main thread and helper threads.
fn assert_connection_threads(threads: &[String], n: usize) {
    let mut conn: Vec<&String> = threads.iter().filter(|t| t.starts_with("conn-")).collect();
    conn.sort_by_key(|t| t["conn-".len()..].parse::<usize>().unwrap_or(usize::MAX));
    let expected: Vec<String> = (0..n).map(|i| format!("conn-{i}")).collect();
    assert_eq!(
        conn,
        expected.iter().collect::<Vec<_>>(),
        "threads: {threads:?}"
    );
}

/// The daemon's ready line in `output` reports exactly `n` connection threads (`workers=N`).
fn assert_ready_workers(output: &str, n: usize) {
    let ready = output
        .lines()
        .find(|l| l.contains("buildbroker ready"))
        .unwrap_or_else(|| panic!("no ready line: {output}"));
    let workers = format!("workers={n}");
    assert!(ready.split_whitespace().any(|w| w == workers), "{ready}");
}

#[test]
fn serve_runs_on_the_embedded_default_as_a_normal_user() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    // As root, run as nobody, so the test exercises the non-root defaults and never touches /run.
    let sock = runtime.join("buildbroker/docker.sock");
    let (out, threads) = serve_until_ready(dir.path(), &runtime, &sock, &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!(
            "buildbroker ready: serving the Docker Engine API on unix://{}",
            sock.display()
        )),
        "{t}"
    );
    assert!(t.contains("upstream unix:///var/run/docker.sock"), "{t}");
    assert!(t.contains("policy=<embedded default policy>"), "{t}");
    // One worker per core unless the policy says otherwise.
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_ready_workers(&t, cores);
    assert_connection_threads(&threads, cores);
    let mode = std::fs::metadata(runtime.join("buildbroker")).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.unwrap(), 0o750, "the socket directory is created 0750");
}

#[test]
fn serve_runs_as_many_worker_threads_as_the_policy_says() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let sock = runtime.join("bb.sock");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[server]\nlisten = [\"unix://{}\"]\nworker_threads = 1\n",
            sock.display()
        ),
    )
    .unwrap();
    let (out, threads) = serve_until_ready(
        dir.path(),
        &runtime,
        &sock,
        &["--config", policy.to_str().unwrap()],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert_ready_workers(&t, 1);
    assert_connection_threads(&threads, 1);
}

#[test]
fn docker_host_pointing_at_ourselves_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    let sock = dir.path().join("bb.sock");
    std::fs::write(
        &p,
        format!("[server]\nlisten = [\"unix://{}\"]\n", sock.display()),
    )
    .unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&p)
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("points at buildbroker's own listener"),
        "{}",
        text(&out)
    );
}

#[test]
fn help_teaches_the_quick_start() {
    let out = bin().arg("--help").output().unwrap();
    let t = text(&out);
    for needle in [
        "serve",
        "check",
        "resolve",
        "DOCKER_HOST",
        "BUILDBROKER_CONFIG",
    ] {
        assert!(t.contains(needle), "--help lacks {needle}: {t}");
    }
}

#[test]
fn every_shipped_policy_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = bin()
                .arg("check")
                .arg("--config")
                .arg(&path)
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                text(&out)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "config/ holds the default and the CI example");
}

/// `check --format json` on the Dockerfile corpus (tests/dockerfiles: one file per syntax form)
/// gives exactly the findings recorded beside each file, and exit 1 exactly when one of them
/// is a violation.
#[test]
fn check_corpus_gives_the_recorded_findings() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfiles");
    let mut cases: Vec<(String, Vec<&str>, String)> = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".Dockerfile") {
            cases.push((name.clone(), Vec::new(), format!("{stem}.json")));
        }
    }
    cases.push((
        "args.Dockerfile".into(),
        vec!["--build-arg", "ENVIRONMENT=prod", "--build-arg", "UNSET=x"],
        "args.prod.json".into(),
    ));
    assert!(cases.len() >= 12, "the corpus is missing");
    for (file, args, expected) in cases {
        let out = bin()
            .current_dir(&dir)
            .args(["check", "-c", "policy.toml", "--format", "json"])
            .args(&args)
            .arg(&file)
            .output()
            .unwrap();
        let got: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{file}: not JSON ({e}): {}", text(&out)));
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(&expected)).unwrap()).unwrap();
        assert_eq!(got, want, "{file} {args:?} against {expected}");
        let violations = want
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["severity"] == "violation");
        assert_eq!(
            out.status.code(),
            Some(if violations { 1 } else { 0 }),
            "{file}: {}",
            text(&out)
        );
    }
}

#[test]
fn check_refuses_a_malformed_build_arg() {
    let out = bin()
        .args(["check", "--build-arg", "NOEQUALS"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("expected NAME=VALUE"), "{}", text(&out));
}

/// The fingerprint `resolve` prints on its last line (`… (N bytes, fingerprint F)`).
fn printed_fingerprint(out: &Output) -> String {
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = t.lines().last().unwrap_or_default();
    line.split("fingerprint ")
        .nth(1)
        .unwrap_or_else(|| panic!("no fingerprint in {t:?}"))
        .trim_end_matches(')')
        .to_string()
}

#[test]
fn resolve_fingerprints_are_keyed_stable_and_tell_values_apart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, "[secrets.tok]\nsources = [\"env:TOK\"]\n").unwrap();
    let run = |value: &str, state: &std::path::Path| {
        let out = bin()
            .args(["resolve", "--config"])
            .arg(&p)
            .arg("tok")
            .env("TOK", value)
            .env("STATE_DIRECTORY", state)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        printed_fingerprint(&out)
    };
    let first = run("1234", &state);
    // The key was made on first use: 32 bytes, mode 0600.
    let key_path = state.join("fingerprint.key");
    let key = std::fs::read(&key_path).unwrap();
    assert_eq!(key.len(), 32);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // Stable across runs, different for a different value.
    assert_eq!(run("1234", &state), first);
    assert_ne!(run("1235", &state), first);
    // It is the HMAC under that key, not a plain hash anyone can recompute from guesses.
    assert_eq!(
        first,
        buildbroker::cli::fingerprint::keyed_fingerprint(&key, b"1234")
    );
    use sha2::Digest;
    let plain: String = sha2::Sha256::digest(b"1234")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!plain.contains(first.trim_start_matches("hmac-sha256:")));
    // Another host (another key) prints another fingerprint for the same value.
    assert_ne!(run("1234", &dir.path().join("other-state")), first);

    // A key file anyone else could read is refused, never used or silently replaced.
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = bin()
        .args(["resolve", "--config"])
        .arg(&p)
        .arg("tok")
        .env("TOK", "1234")
        .env("STATE_DIRECTORY", &state)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(
        t.contains("no fingerprint:") && t.contains("mode 0600"),
        "{t}"
    );
    assert!(!t.contains("hmac-sha256:"), "{t}");
}

/// The `Max core file size` line of /proc/PID/limits.
fn core_limit(limits: &str) -> String {
    limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn resolve_and_keyring_run_without_core_dumps() {
    let dir = tempfile::tempdir().unwrap();
    // resolve: an exec: source reads the limits of its parent, the resolve process itself.
    let script = dir.path().join("peek");
    let seen = dir.path().join("limits");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat /proc/$PPID/limits > {}\necho v\n",
            seen.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(
        &p,
        format!("[secrets.t]\nsources = [\"exec:{}\"]\n", script.display()),
    )
    .unwrap();
    let out = bin()
        .args(["resolve", "--config"])
        .arg(&p)
        .arg("t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let limits = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(
        core_limit(&limits),
        "Max core file size 0 0 bytes",
        "{limits}"
    );

    // keyring set: waits for its value on stdin; look at it while it waits.
    let mut child = bin()
        .args(["keyring", "set", "--backend", "kernel", "bbtest-core/none"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let limits_path = format!("/proc/{}/limits", child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = core_limit(&std::fs::read_to_string(&limits_path).unwrap_or_default());
        if last == "Max core file size 0 0 bytes" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Close stdin with nothing written: an empty value is refused, nothing is stored.
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert_eq!(last, "Max core file size 0 0 bytes");
    assert_eq!(status.code(), Some(2));
}

#[test]
fn resolve_shows_which_ids_a_template_used_and_where_each_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        "[secrets.user]\nsources = [\"env:U\"]\n[secrets.pass]\nsources = [\"env:P\", \"env:P2\"]\n\
         [secrets.netrc]\ntemplate = \"machine h login {{user}} password {{pass}}\\n\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["resolve", "--config"])
        .arg(&p)
        .arg("netrc")
        .env("U", "ci")
        .env("P2", "template-secret-77")
        .env("XDG_STATE_HOME", dir.path())
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let len = "machine h login ci password template-secret-77\n".len();
    assert!(
        t.contains(&format!(
            "netrc: resolved from a template of user (from env:U), pass (from env:P2) ({len} bytes"
        )),
        "{t}"
    );
    assert!(!t.contains("template-secret-77"), "{t}");

    let out = bin()
        .args(["resolve", "--config"])
        .arg(&p)
        .arg("netrc")
        .env("U", "ci")
        .env("XDG_STATE_HOME", dir.path())
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("netrc: builds fail with: buildbroker: secret \"netrc\" is rendered from \"pass\", which has no value; tried env (not found), env (not found)"),
        "{t}"
    );
}

/// Where `mlock` is refused (an unprivileged user with `RLIMIT_MEMLOCK` at 0, as some container
/// runtimes set it low), a value is still resolved, and one warning says the pages may reach
/// swap and how to raise the limit. As root the test runs the command as nobody, since root's
/// `CAP_IPC_LOCK` ignores the limit.
#[test]
fn values_resolve_when_secret_pages_cannot_be_locked() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let value = dir.path().join("tok");
    std::fs::write(&value, "unlocked-value-31").unwrap();
    std::fs::write(
        &policy,
        format!(
            "[secrets.tok]\nsources = [\"file:{}\"]\nrequired = true\n",
            value.display()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // Root's CAP_IPC_LOCK ignores the limit: as root, run as nobody.
    let mut cmd = as_nobody_when_root(dir.path(), &["prlimit", "--memlock=0:0", "--"]);
    let out = cmd
        .args(["resolve", "--config"])
        .arg(&policy)
        .arg("tok")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("STATE_DIRECTORY", &state)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("tok: resolved from file:"), "{t}");
    assert!(
        t.contains("cannot lock secret pages in memory") && t.contains("LimitMEMLOCK="),
        "the refused mlock should be reported once: {t}"
    );
    assert_eq!(t.matches("cannot lock secret pages").count(), 1, "{t}");
    assert!(!t.contains("unlocked-value-31"), "{t}");
}
