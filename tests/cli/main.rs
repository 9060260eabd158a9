//! The command line, run as the real binary: `check`, `resolve`, and `serve` on the embedded
//! default policy. None of these need the Docker test bed.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_buildbroker"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn check_reports_unknown_key_and_wrong_type_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, "[server]\nunknown_secrets = \"deny\"\n\n[secrets.pypi_token]\nsources = [\"env:PYPI_TOKEN\"]\nrequird = true\n").unwrap();
    let out = bin().arg("check").arg("--config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let expected = format!(
        "{}:6:1: unknown key `requird`, expected one of `sources`, `required`",
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
            "tok: resolved from file:{} (15 bytes, sha256:",
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
#[test]
fn serve_runs_on_the_embedded_default_as_a_normal_user() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let mut cmd = if is_root {
        // Run as nobody, so the test exercises the non-root defaults and never touches /run.
        // The binary lives under target/, which nobody may not reach: run a copy.
        let copy = dir.path().join("buildbroker");
        std::fs::copy(env!("CARGO_BIN_EXE_buildbroker"), &copy).unwrap();
        Command::new("chmod")
            .arg("755")
            .arg(dir.path())
            .arg(&copy)
            .status()
            .unwrap();
        Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(dir.path())
            .status()
            .unwrap();
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(&copy);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_buildbroker"))
    };
    let mut child = cmd
        .arg("serve")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("XDG_RUNTIME_DIR", &runtime)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let sock = runtime.join("buildbroker/docker.sock");
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
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
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
    let mode = std::fs::metadata(runtime.join("buildbroker")).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.unwrap(), 0o750, "the socket directory is created 0750");
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
