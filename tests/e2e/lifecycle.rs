//! Reload and shutdown of the real daemon, with real builds around them.

use std::time::Duration;

use crate::harness::*;

fn read_x(broker: &Broker) -> BuildResult {
    Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=x,required=true cat /run/secrets/x > /v\nFROM scratch\nCOPY --from=0 /v /\n"
    ))
    .run(broker)
}

fn wait_for_log(broker: &Broker, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !broker.log().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "log never showed {needle:?}:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_reloads_and_a_bad_file_keeps_the_old_policy() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.x]\nsources = [\"env:A\"]\n",
        env: vec![("A", "from-a"), ("B", "from-b")],
        ..Default::default()
    });
    let first = read_x(&broker);
    first.assert_ok();
    assert_eq!(first.text("v"), "from-a");

    let text = std::fs::read_to_string(broker.policy_path())
        .unwrap()
        .replace("env:A", "env:B");
    std::fs::write(broker.policy_path(), &text).unwrap();
    broker.signal("HUP");
    wait_for_log(&broker, "policy reloaded");
    let second = read_x(&broker);
    second.assert_ok();
    assert_eq!(second.text("v"), "from-b");

    let broken = format!("{text}\n[secrets.y]\nsources = [\"env:Y\"]\nsource = 3\n");
    let bad_line = broken.lines().count();
    std::fs::write(broker.policy_path(), broken).unwrap();
    broker.signal("HUP");
    wait_for_log(&broker, "policy reload rejected");
    assert!(
        broker
            .log()
            .contains(&format!("policy.toml:{bad_line}:1: unknown key `source`")),
        "{}",
        broker.log()
    );
    let third = read_x(&broker);
    third.assert_ok();
    assert_eq!(
        third.text("v"),
        "from-b",
        "the previous policy stays in force"
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    if skip() {
        return;
    }
    let mut broker = Broker::start(BrokerOptions {
        policy: "[secrets.x]\nsources = [\"env:A\"]\n",
        env: vec![("A", "a")],
        ..Default::default()
    });
    read_x(&broker).assert_ok();
    broker.signal("TERM");
    assert_eq!(broker.wait_exit(Duration::from_secs(40)), Some(0));
    assert!(
        !broker.socket().exists(),
        "the socket file is removed on exit"
    );
    assert!(broker.log().contains("buildbroker stopped"));
}

/// SIGTERM while a build runs: the daemon stops accepting, but the build (its Control API
/// stream and its session) runs on through the drain, and a secret it asks for after the
/// signal is still served. Then the daemon exits 0.
#[test]
fn sigterm_lets_a_running_build_finish_and_serves_its_later_secrets() {
    if skip() {
        return;
    }
    let value = unique_secret("drain");
    let mut broker = Broker::start(BrokerOptions {
        policy: "[secrets.x]\nsources = [\"env:A\"]\n",
        env: vec![("A", &value)],
        ..Default::default()
    });
    let host = broker.docker_host();
    // The unique echo keeps BuildKit from reusing an earlier run's steps.
    let dockerfile = format!(
        "FROM {BASE_IMAGE}\n\
         RUN --mount=type=secret,id=x,required=true echo {value:?} >/dev/null; cat /run/secrets/x > /first && sleep 6\n\
         RUN --mount=type=secret,id=x,required=true cat /run/secrets/x > /second\n\
         FROM scratch\nCOPY --from=0 /first /second /\n"
    );
    let build = std::thread::spawn(move || Build::new(dockerfile).run_against(&host));
    // The first RUN has its secret: the build is inside its 6 s sleep.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !broker.audit().contains("\"id\":\"x\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "the first secret was never served:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.signal("TERM");
    let build = build.join().unwrap();
    build.assert_ok();
    assert_eq!(build.text("first"), value);
    assert_eq!(
        build.text("second"),
        value,
        "the secret asked for during the drain"
    );
    assert_eq!(broker.wait_exit(Duration::from_secs(40)), Some(0));
    let log = broker.log();
    assert!(log.contains("SIGTERM: draining"), "{log}");
    assert!(
        !log.contains("drain timeout"),
        "the build ended the drain, not the timeout: {log}"
    );
}

#[test]
fn core_dumps_are_disabled_for_the_daemon() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions::default());
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &fields[4..6],
        &["0", "0"],
        "soft and hard RLIMIT_CORE are 0: {core}"
    );
}

#[test]
fn attach_upgrades_and_streams_are_spliced() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions::default());
    // `docker run` without -d attaches: POST /containers/ID/attach with Upgrade: tcp, then the
    // container's output arrives on the spliced connection.
    let out = crate::harness::run_with_timeout(
        {
            let mut c = std::process::Command::new("docker");
            c.env("DOCKER_HOST", broker.docker_host()).args([
                "run",
                "--rm",
                "--network=none",
                BASE_IMAGE,
                "sh",
                "-c",
                "echo out-line; echo err-line >&2; exit 3",
            ]);
            c
        },
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "out-line\n", "stderr: {stderr}");
    assert!(stderr.contains("err-line"), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(3),
        "the exit code comes back through the broker"
    );
}

/// systemd starts services with a soft open-file limit of 1024; every session holds two
/// connections or more, so the daemon raises its soft limit to the hard one.
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        wrapper: vec!["bash", "-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\""],
        ..Default::default()
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert_eq!(soft, hard, "{line}");
    assert_ne!(soft, "1024", "{line}");
}
