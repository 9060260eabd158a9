//! Real builds reading secrets from the OS keyrings and from programs, through the broker.

use std::os::unix::fs::PermissionsExt;

use crate::harness::*;
use crate::kernel_keyring::{KernelKey, unique};
use crate::secret_service::SecretServiceBed;

fn dockerfile(ids: &[&str]) -> String {
    let mounts: String = ids
        .iter()
        .map(|id| format!("--mount=type=secret,id={id},required=true "))
        .collect();
    let copies: String = ids
        .iter()
        .map(|id| format!("cat /run/secrets/{id} > /o/{id} && "))
        .collect();
    format!(
        "FROM {BASE_IMAGE}\nRUN {mounts}mkdir /o && {copies}true\nFROM scratch\nCOPY --from=0 /o /\n"
    )
}

#[test]
fn kernel_keyring_values_reach_a_build() {
    if skip() {
        return;
    }
    let service = unique("e2e");
    let _key = KernelKey::add(&service, "deploy", b"kernel-keyring-value");
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[keyring]\nbackend = \"kernel\"\n[secrets.deploy]\nsources = [\"keyring:{service}/deploy\"]\n"
        ),
        ..Default::default()
    });
    let build = Build::new(dockerfile(&["deploy"])).run(&broker);
    build.assert_ok();
    assert_eq!(build.text("deploy"), "kernel-keyring-value");
    assert!(
        broker
            .audit()
            .contains("\"id\":\"deploy\",\"source\":\"keyring\",\"value_owner\":\"broker\",\"decision\":\"served\""),
        "{}",
        broker.audit()
    );
}

#[test]
fn secret_service_values_reach_a_build() {
    if skip() {
        return;
    }
    let bed = SecretServiceBed::start();
    bed.secret_tool_store("buildbroker", "npm_token", b"npm-from-secret-tool");
    let mut set = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["keyring", "set", "buildbroker/pypi_token"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut set.stdin.take().unwrap(), b"pypi-from-keyring-set\n").unwrap();
    assert!(set.wait().unwrap().success());

    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.npm_token]\nsources = [\"env:NPM_TOKEN\", \"keyring:buildbroker/npm_token\"]\n\
                 [secrets.pypi_token]\nsources = [\"keyring:buildbroker/pypi_token\"]\n",
        env: vec![("DBUS_SESSION_BUS_ADDRESS", &bed.address)],
        ..Default::default()
    });
    let build = Build::new(dockerfile(&["npm_token", "pypi_token"])).run(&broker);
    build.assert_ok();
    assert_eq!(build.text("npm_token"), "npm-from-secret-tool");
    assert_eq!(build.text("pypi_token"), "pypi-from-keyring-set");
}

#[test]
fn exec_values_reach_a_build_and_stdout_never_reaches_logs_on_failure() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("op");
    std::fs::write(
        &ok,
        "#!/bin/sh\necho \"token-for-$BUILDBROKER_SECRET_ID\"\n",
    )
    .unwrap();
    let bad = dir.path().join("vault");
    std::fs::write(
        &bad,
        "#!/bin/sh\necho LEAKED-STDOUT-VALUE\necho 'permission denied' >&2\nexit 1\n",
    )
    .unwrap();
    for p in [&ok, &bad] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[secrets.gh]\nsources = [\"exec:{}\"]\n[secrets.broken]\nsources = [\"exec:{}\"]\n",
            ok.display(),
            bad.display()
        ),
        rust_log: "trace",
        ..Default::default()
    });
    let build = Build::new(dockerfile(&["gh"])).run(&broker);
    build.assert_ok();
    assert_eq!(build.text("gh"), "token-for-gh");

    let failing = Build::new(dockerfile(&["broken"])).run(&broker);
    assert!(!failing.success());
    // The program's stderr is the daemon log's business; the build sees the kind and class.
    assert!(
        failing.log().contains("tried exec (error)")
            && !failing.log().contains("permission denied"),
        "{}",
        failing.log()
    );
    assert!(
        broker
            .log()
            .contains("exited with status 1: permission denied"),
        "{}",
        broker.log()
    );
    for text in [failing.log(), broker.log(), broker.audit()] {
        assert!(
            !text.contains("LEAKED-STDOUT-VALUE"),
            "stdout of a failing program leaked"
        );
    }
}

#[test]
fn cached_values_survive_a_failing_source_with_stale_on_error() {
    if skip() {
        return;
    }
    // A program that answers once, then fails like an unreachable service (a timeout). The
    // timeout leaves the first, real run seconds to start on a loaded machine.
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("served");
    let script = dir.path().join("flaky");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e {f} ]; then sleep 30; fi\ntouch {f}\necho cached-value\n",
            f = flag.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[exec]\ntimeout = \"3s\"\n[secrets.flaky]\nsources = [\"exec:{}\"]\ncache_ttl = \"1s\"\nstale_on_error = \"1h\"\n",
            script.display()
        ),
        ..Default::default()
    });
    let first = Build::new(dockerfile(&["flaky"])).run(&broker);
    first.assert_ok();
    assert_eq!(first.text("flaky"), "cached-value");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let second = Build::new(dockerfile(&["flaky"])).run(&broker);
    second.assert_ok();
    assert_eq!(second.text("flaky"), "cached-value");
    let audit = broker.audit();
    assert!(
        audit.contains("\"decision\":\"served_stale\",\"cache\":\"stale\""),
        "{audit}"
    );
    assert!(
        audit.contains("timed out after 3s"),
        "the audit record says why: {audit}"
    );
}

#[test]
fn a_fifo_file_source_fails_the_build_fast_and_the_broker_keeps_serving() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[secrets.piped]\nsources = [\"file:{}\"]\nrequired = true\n[secrets.ok]\nsources = [\"env:OK\"]\n",
            fifo.display()
        ),
        env: vec![("OK", "still-serving")],
        ..Default::default()
    });
    // Nobody writes to the FIFO: before, the read blocked a thread for good and the build hung.
    let started = std::time::Instant::now();
    let failing = Build::new(dockerfile(&["piped"])).run(&broker);
    let took = started.elapsed();
    assert!(!failing.success(), "{}", failing.log());
    assert!(
        took < std::time::Duration::from_secs(60),
        "the build took {took:?}"
    );
    assert!(
        broker
            .log()
            .contains("is a FIFO (named pipe), not a regular file"),
        "{}",
        broker.log()
    );
    let build = Build::new(dockerfile(&["ok"])).run(&broker);
    build.assert_ok();
    assert_eq!(build.text("ok"), "still-serving");
}
