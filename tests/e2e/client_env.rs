//! `client-env:` (issue 12): a variable exported in the shell that runs buildx reaches the
//! build, read from the build client's own process, never another's.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const BASE: &str = BASE_IMAGE;

fn print_id(id: &str) -> String {
    format!(
        "FROM {BASE}\nRUN --mount=type=secret,id={id} (cat /run/secrets/{id} 2>/dev/null || printf none) > /{id}\n\
         FROM scratch\nCOPY --from=0 /{id} /\n"
    )
}

#[test]
fn a_variable_in_the_build_clients_environment_reaches_its_build_only() {
    if skip() {
        return;
    }
    let fallback = unique_secret("daemon-fallback");
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.pypi_token]\nsources = [\"client-env:PYPI_TOKEN\", \"env:FALLBACK\"]\n",
        // The daemon's own environment has no PYPI_TOKEN: only the client's can supply it.
        env: vec![("FALLBACK", &fallback)],
        ..Default::default()
    });
    let dockerfile = print_id("pypi_token");
    let (x, y) = (unique_secret("x"), unique_secret("y"));
    std::thread::scope(|s| {
        let bx = s.spawn(|| {
            Build::new(dockerfile.clone())
                .env("PYPI_TOKEN", &x)
                .run(&broker)
        });
        let by = s.spawn(|| {
            Build::new(dockerfile.clone())
                .env("PYPI_TOKEN", &y)
                .run(&broker)
        });
        let (bx, by) = (bx.join().unwrap(), by.join().unwrap());
        bx.assert_ok();
        by.assert_ok();
        assert_eq!(bx.text("pypi_token"), x);
        assert_eq!(
            by.text("pypi_token"),
            y,
            "each build gets its own client's value"
        );
    });
    let without = Build::new(dockerfile).run(&broker);
    without.assert_ok();
    assert_eq!(
        without.text("pypi_token"),
        fallback,
        "a client without the variable falls through to the next source"
    );
    let audit = broker.audit();
    assert!(
        audit.contains("\"source\":\"client-env\"")
            && audit.contains("\"value_owner\":\"session\""),
        "{audit}"
    );
}

#[test]
fn the_embedded_default_reads_build_named_variables_only() {
    if skip() {
        return;
    }
    let body = embedded_default_body();
    let broker = Broker::start(BrokerOptions {
        policy: &body,
        ..Default::default()
    });
    let dockerfile = print_id("pypi_token");
    let meant = unique_secret("meant-for-builds");
    let b = Build::new(dockerfile.clone())
        .env("BUILDBROKER_PYPI_TOKEN", &meant)
        .run(&broker);
    b.assert_ok();
    assert_eq!(b.text("pypi_token"), meant);
    let general = unique_secret("general-purpose");
    let b = Build::new(dockerfile)
        .env("PYPI_TOKEN", &general)
        .run(&broker);
    b.assert_ok();
    assert_eq!(
        b.text("pypi_token"),
        "none",
        "a shell's PYPI_TOKEN is not for builds"
    );
}

#[test]
fn a_client_the_daemon_cannot_see_is_not_here() {
    if skip() {
        return;
    }
    // The daemon in a pid namespace of its own: the build client (outside it) has no pid
    // there, and the kernel reports pid 0 for the socket's peer.
    let fallback = unique_secret("fallback");
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.tok]\nsources = [\"client-env:TOK\", \"env:FALLBACK\"]\n",
        env: vec![("FALLBACK", &fallback)],
        wrapper: vec![
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child=SIGTERM",
        ],
        ..Default::default()
    });
    let client_value = unique_secret("client");
    let b = Build::new(print_id("tok"))
        .env("TOK", &client_value)
        .run(&broker);
    b.assert_ok();
    assert_eq!(b.text("tok"), fallback, "never another process's value");
    let log = broker.log();
    assert!(
        log.contains("not visible in the daemon's pid namespace"),
        "the daemon says why at debug level:\n{log}"
    );
}

/// The quick start lines of `buildbroker --help`.
fn quick_start() -> Vec<String> {
    let help = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let lines: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Quick start:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(lines.len(), 3, "{help}");
    lines
}

#[test]
fn the_quick_start_works_as_written() {
    if skip() {
        return;
    }
    let engine = engine();
    let lines = quick_start();
    let readme = include_str!("../../README.md");
    for line in &lines {
        let command = line.split(" #").next().unwrap().trim();
        assert!(
            readme.contains(command),
            "README's quick start says the same as --help: {command}"
        );
    }
    let value = unique_secret("quick-start");
    let work = tempfile::tempdir().unwrap();
    // The Dockerfile the quick start's comment describes; the build fails unless the mount
    // holds the exported value.
    std::fs::write(
        work.path().join("Dockerfile"),
        format!(
            "FROM {BASE}\nRUN --network=none --mount=type=secret,id=pypi_token,required=true \
             test \"$(cat /run/secrets/pypi_token)\" = \"{value}\"\n"
        ),
    )
    .unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_buildbroker"))
        .parent()
        .unwrap()
        .to_owned();
    let script = format!(
        "set -e\n{}\nbroker=$!\ntrap 'kill $broker; wait $broker' EXIT\n{}\n{}\n",
        lines[0],
        lines[1],
        lines[2].replace('…', &value)
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .env_clear()
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        // A fresh machine's root: no policy file, the test bed as the engine.
        .env("HOME", work.path())
        .env("DOCKER_HOST", engine);
    let out = run_with_timeout(cmd, Duration::from_secs(180));
    assert!(
        out.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
