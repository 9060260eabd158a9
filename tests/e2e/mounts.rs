//! The mount policy held at build time: real `docker buildx build` → `buildbroker` → the test
//! bed's dockerd. buildbroker reads the Dockerfile the daemon fetches over the session's file
//! sync, and refuses a secret or ssh id whose mount breaks the policy's `mode`, `uid`, `gid`,
//! `targets` or `mount_required`, with a message naming the rule, the Dockerfile and the line.
//!
//! Line numbers: the harness adds `ARG BB_TEST_NONCE` after every FROM, so the daemon's copy of
//! a Dockerfile has one more line per stage than the text written here.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::sshbed::*;

const BASE: &str = BASE_IMAGE;

const PYPI_POLICY: &str = "[secrets.pypi_token]\nsources = [\"env:PYPI_TOKEN\"]\n\
    mode = 0o400\nuid = 1000\nmount_required = true\n";

/// A one-stage Dockerfile whose RUN (line 3 as the daemon sees it) mounts `flags`.
fn one_run(flags: &str) -> String {
    format!(
        "FROM {BASE}\n\
         RUN {flags} mkdir /o && stat -c '%a %u' /run/secrets/pypi_token > /o/meta && cat /run/secrets/pypi_token > /o/value\n\
         FROM scratch\nCOPY --from=0 /o /\n"
    )
}

#[track_caller]
fn assert_refused(build: &BuildResult, expected: &str) {
    assert!(
        !build.success(),
        "the build should have failed:\n{}",
        build.log()
    );
    assert!(
        build.log().contains(expected),
        "expected {expected:?} in the build's output:\n{}",
        build.log()
    );
}

#[test]
fn compliant_mounts_build_and_each_broken_rule_fails_at_its_line() {
    if skip() {
        return;
    }
    let value = unique_secret("pypi");
    let broker = Broker::start(BrokerOptions {
        policy: PYPI_POLICY,
        env: vec![("PYPI_TOKEN", &value)],
        ..Default::default()
    });
    let ok = Build::new(one_run(
        "--mount=type=secret,id=pypi_token,required=true,mode=0400,uid=1000",
    ))
    .run(&broker);
    ok.assert_ok();
    assert_eq!(ok.text("meta"), "400 1000\n");
    assert_eq!(ok.text("value"), value);

    let cases = [
        (
            "--mount=type=secret,id=pypi_token,required=true,mode=0444,uid=1000",
            "buildbroker: secret \"pypi_token\" refused: Dockerfile line 3 mounts it with mode=0444, wider than 0400, against the policy rule [secrets.pypi_token] mode = 0o400",
        ),
        (
            "--mount=type=secret,id=pypi_token,required=true,uid=0",
            "buildbroker: secret \"pypi_token\" refused: Dockerfile line 3 mounts it for uid 0, against the policy rule [secrets.pypi_token] uid = 1000",
        ),
        (
            "--mount=type=secret,id=pypi_token,mode=0400,uid=1000",
            "buildbroker: secret \"pypi_token\" refused: Dockerfile line 3 does not say required=true, against the policy rule [secrets.pypi_token] mount_required = true",
        ),
    ];
    for (flags, expected) in cases {
        let build = Build::new(one_run(flags)).run(&broker);
        assert_refused(&build, expected);
        assert!(
            !build.log().contains(&value),
            "the value reached the output"
        );
    }
    let audit = broker.audit();
    assert!(
        audit.contains("\"event\":\"mount\"")
            && audit.contains("\"decision\":\"refused\"")
            && audit.contains("\"rule\":\"[secrets.pypi_token] mode = 0o400\"")
            && audit.contains("\"dockerfile\":\"Dockerfile\",\"line\":3"),
        "audit: {audit}"
    );
    assert!(!audit.contains(&value), "the audit holds the value");
}

#[test]
fn the_dockerfile_named_by_f_is_the_one_checked() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        policy: PYPI_POLICY,
        env: vec![("PYPI_TOKEN", "v")],
        ..Default::default()
    });
    // The default Dockerfile in the context complies; the one built does not. Reading the
    // wrong file would let the build pass.
    let build = Build::new(one_run(
        "--mount=type=secret,id=pypi_token,required=true,mode=0640,uid=1000",
    ))
    .dockerfile_at("sub/Build.dockerfile")
    .file(
        "Dockerfile",
        one_run("--mount=type=secret,id=pypi_token,required=true,uid=1000"),
    )
    .run(&broker);
    assert_refused(
        &build,
        "refused: Build.dockerfile line 3 mounts it with mode=0640",
    );
    let build = Build::new(one_run(
        "--mount=type=secret,id=pypi_token,required=true,uid=1000",
    ))
    .dockerfile_at("sub/Build.dockerfile")
    .run(&broker);
    build.assert_ok();
    assert_eq!(build.text("meta"), "400 1000\n");
}

#[test]
fn an_id_built_from_an_arg_is_matched_whatever_build_arg_sets_it_to() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.token_prod]\nsources = [\"env:PROD\"]\nmode = 0o400\n\
                 [secrets.token_dev]\nsources = [\"env:DEV\"]\n",
        env: vec![("PROD", "prod-value"), ("DEV", "dev-value")],
        ..Default::default()
    });
    let dockerfile = |mode: &str| {
        format!(
            "FROM {BASE}\nARG ENVIRONMENT=dev\n\
             RUN --mount=type=secret,id=token_${{ENVIRONMENT}},required,mode={mode} mkdir /o && cat /run/secrets/token_$ENVIRONMENT > /o/v\n\
             FROM scratch\nCOPY --from=0 /o /\n"
        )
    };
    // The default (dev) has no mode rule; --build-arg picks prod, whose rule the mount breaks.
    let build = Build::new(dockerfile("0444")).run(&broker);
    build.assert_ok();
    assert_eq!(build.text("v"), "dev-value");
    let build = Build::new(dockerfile("0444"))
        .arg("--build-arg=ENVIRONMENT=prod")
        .run(&broker);
    assert_refused(
        &build,
        "secret \"token_prod\" refused: Dockerfile line 4 mounts it with mode=0444, wider than 0400, against the policy rule [secrets.token_prod] mode = 0o400",
    );
    let build = Build::new(dockerfile("0400"))
        .arg("--build-arg=ENVIRONMENT=prod")
        .run(&broker);
    build.assert_ok();
    assert_eq!(build.text("v"), "prod-value");
}

#[test]
fn concurrent_builds_get_the_verdicts_of_their_own_dockerfiles() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        policy: PYPI_POLICY,
        env: vec![("PYPI_TOKEN", "v")],
        ..Default::default()
    });
    for round in 0..2 {
        let (good, bad) = std::thread::scope(|s| {
            let good = s.spawn(|| {
                Build::new(one_run(
                    "--mount=type=secret,id=pypi_token,required=true,uid=1000",
                ))
                .run(&broker)
            });
            let bad = s.spawn(|| {
                Build::new(one_run(
                    "--mount=type=secret,id=pypi_token,required=true,uid=1000,mode=0777",
                ))
                .run(&broker)
            });
            (good.join().unwrap(), bad.join().unwrap())
        });
        assert!(good.success(), "round {round}: {}", good.log());
        assert_refused(&bad, "mounts it with mode=0777");
    }
}

#[test]
fn an_ssh_mount_wider_than_the_policy_fails() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new(dir.path(), "deploy", "");
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[ssh.deploy]\nprivate_keys = [\"file:{}\"]\nmode = 0o600\nuid = 0\n",
            key.path.display()
        ),
        ..Default::default()
    });
    let dockerfile = |flags: &str| {
        format!(
            "FROM {SSH_IMAGE}\nRUN {flags} mkdir /o && ssh-add -l > /o/keys\n\
             FROM scratch\nCOPY --from=0 /o /\n"
        )
    };
    let build = Build::new(dockerfile("--mount=type=ssh,id=deploy")).run(&broker);
    build.assert_ok();
    assert!(
        build.text("keys").contains(&key.fingerprint),
        "{}",
        build.text("keys")
    );
    let build = Build::new(dockerfile(
        "--mount=type=ssh,id=deploy,mode=0666,required=true",
    ))
    .run(&broker);
    assert_refused(
        &build,
        "buildbroker: ssh id \"deploy\" refused: Dockerfile line 3 mounts it with mode=0666, wider than 0600, against the policy rule [ssh.deploy] mode = 0o600",
    );
    // BuildKit skips an optional ssh mount on any CheckAgent error (solver/llbsolver/mounts/
    // mount.go): the step runs with no agent at all, which is still a refusal.
    let build = Build::new(dockerfile("--mount=type=ssh,id=deploy,mode=0666")).run(&broker);
    assert!(!build.success(), "{}", build.log());
    assert!(
        build.log().contains("Error connecting to agent"),
        "{}",
        build.log()
    );
    let audit = broker.audit();
    assert!(
        audit.contains("\"kind\":\"ssh\"") && audit.contains("\"decision\":\"refused\""),
        "audit: {audit}"
    );
}

/// `docker buildx build - < context.tar`: the Dockerfile travels inside the context tarball
/// (session Upload), never over the Dockerfile sync, so buildbroker cannot see it.
fn build_from_tar(broker: &Broker, dockerfile: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let tar = dir.path().join("ctx.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&ctx)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "docker buildx build --no-cache --progress=plain --network=none --build-arg BB_TEST_NONCE={} -o type=local,dest={}/out - < {}",
            unique_secret("nonce"),
            dir.path().display(),
            tar.display()
        ))
        .env("DOCKER_HOST", broker.docker_host());
    run_with_timeout(cmd, Duration::from_secs(180))
}

#[test]
fn a_dockerfile_not_seen_is_decided_by_dockerfile_unseen() {
    if skip() {
        return;
    }
    let dockerfile = format!(
        "FROM {BASE}\nARG BB_TEST_NONCE\nRUN --mount=type=secret,id=pypi_token,required=true,uid=1000 cat /run/secrets/pypi_token > /v\n\
         FROM scratch\nCOPY --from=0 /v /\n"
    );
    let allow = Broker::start(BrokerOptions {
        policy: PYPI_POLICY,
        env: vec![("PYPI_TOKEN", "v")],
        ..Default::default()
    });
    let out = build_from_tar(&allow, &dockerfile);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    let audit = allow.audit();
    assert!(
        audit.contains("\"decision\":\"unseen_allowed\"")
            && audit.contains("no Dockerfile came through"),
        "audit: {audit}"
    );

    let deny = Broker::start(BrokerOptions {
        server: "dockerfile_unseen = \"deny\"",
        policy: PYPI_POLICY,
        env: vec![("PYPI_TOKEN", "v")],
        ..Default::default()
    });
    let out = build_from_tar(&deny, &dockerfile);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("secret \"pypi_token\" refused: its mount rules cannot be checked")
            && log.contains("dockerfile_unseen = \"deny\""),
        "{log}"
    );
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_big_context_streams_while_the_dockerfile_is_inspected() {
    if skip() {
        return;
    }
    const MIB: usize = 1024 * 1024;
    const SIZE_MIB: usize = 256;
    let broker = Broker::start(BrokerOptions {
        policy: PYPI_POLICY,
        env: vec![("PYPI_TOKEN", "v")],
        ..Default::default()
    });
    // Not compressible and not repeating at any small period.
    let mut big = Vec::with_capacity(SIZE_MIB * MIB);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while big.len() < SIZE_MIB * MIB {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes());
    }
    let build = Build::new(format!(
        "FROM {BASE}\n\
         RUN --mount=type=secret,id=pypi_token,required=true,uid=1000 --mount=type=bind,source=big,target=/big \
             mkdir /o && wc -c < /big > /o/size\n\
         FROM scratch\nCOPY --from=0 /o /\n"
    ))
    .file("big", big)
    .run(&broker);
    build.assert_ok();
    assert_eq!(build.text("size").trim(), (SIZE_MIB * MIB).to_string());
    // The context went through the session relay without being held: the broker's peak
    // memory stays far below the context's size.
    let peak = peak_rss_kib(broker.pid()) / 1024;
    assert!(
        peak < (SIZE_MIB / 2) as u64,
        "buildbroker peaked at {peak} MiB relaying a {SIZE_MIB} MiB context"
    );
}

/// The same rules on a docker-container builder (buildx's CI default): the Dockerfile and the
/// GetSecret travel inside `Control/Session` over the exec stream, not over `POST /session`.
#[test]
fn the_mount_policy_holds_on_a_docker_container_builder() {
    if skip() {
        return;
    }
    let value = unique_secret("pypi");
    let broker = Broker::start(BrokerOptions {
        policy: PYPI_POLICY,
        env: vec![("PYPI_TOKEN", &value)],
        ..Default::default()
    });
    let builder = crate::container::ContainerBuilder::create(&broker);
    let ok = builder.build(Build::new(one_run(
        "--mount=type=secret,id=pypi_token,required=true,mode=0400,uid=1000",
    )));
    ok.assert_ok();
    assert_eq!(ok.text("meta"), "400 1000\n");
    assert_eq!(ok.text("value"), value);

    let wide = builder.build(Build::new(one_run(
        "--mount=type=secret,id=pypi_token,required=true,mode=0444,uid=1000",
    )));
    assert_refused(
        &wide,
        "buildbroker: secret \"pypi_token\" refused: Dockerfile line 3 mounts it with mode=0444, wider than 0400, against the policy rule [secrets.pypi_token] mode = 0o400",
    );
    let other = builder.build(
        Build::new(one_run(
            "--mount=type=secret,id=pypi_token,required=true,mode=0400,uid=0",
        ))
        .dockerfile_at("sub/Build.dockerfile"),
    );
    assert_refused(
        &other,
        "refused: Build.dockerfile line 3 mounts it for uid 0, against the policy rule [secrets.pypi_token] uid = 1000",
    );
    for build in [&wide, &other] {
        assert!(
            !build.log().contains(&value),
            "the value reached the output"
        );
    }
    let audit = broker.audit();
    assert!(
        audit.contains("\"event\":\"mount\"") && audit.contains("\"decision\":\"refused\""),
        "audit: {audit}"
    );
}
