//! Issue 13 items 2 and 6 as another local user would try them: planted socket directories,
//! symlinks and live sockets; a socket group and supplementary groups; revocation of a
//! connected peer by SIGHUP while its build runs; per-uid connection caps; a policy file
//! another user could change.
//!
//! The other users are real: `bb-attacker` and `bb-builder` are made with useradd (once,
//! idempotently), and act through setpriv, as in bad_input.rs.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A unix user (and its own group), made with useradd if missing. Returns (uid, gid).
fn local_user(name: &str) -> (u32, u32) {
    // useradd locks /etc/passwd itself, but two tests racing to create the same user would
    // make one fail with "already exists": serialize within this test binary.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg(name).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        let status = Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin", name])
            .status()
            .expect("useradd (passwd) must be installed");
        assert!(status.success(), "useradd {name} failed");
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

/// A group with `member` in it as a supplementary group, made with groupadd if missing.
fn local_group(name: &str, member: &str) -> u32 {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let gid = || -> Option<u32> {
        let out = Command::new("getent").args(["group", name]).output().ok()?;
        String::from_utf8(out.stdout)
            .ok()?
            .split(':')
            .nth(2)?
            .trim()
            .parse()
            .ok()
    };
    if gid().is_none() {
        assert!(
            Command::new("groupadd")
                .args(["--system", name])
                .status()
                .unwrap()
                .success()
        );
    }
    assert!(
        Command::new("usermod")
            .args(["-a", "-G", name, member])
            .status()
            .unwrap()
            .success()
    );
    gid().unwrap()
}

/// `setpriv` as `uid`/`gid` with exactly `groups` as supplementary groups.
fn as_user(uid: u32, gid: u32, groups: &[u32], program: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg("--").arg(program);
    cmd
}

/// A directory like /tmp (root, 1777) where the attacker can make things of its own.
fn shared_tmp() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("bb-planted-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    t
}

/// Runs `buildbroker serve` on `policy` and expects it to refuse to start: exit code 2 within
/// 10 s. Returns its stderr.
fn serve_refuses(policy: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["serve", "--config"])
        .arg(policy)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "buildbroker serve did not refuse {} within 10 s",
                policy.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "stderr: {err}");
    err
}

fn write_policy(dir: &Path, listen: &Path, extra: &str) -> PathBuf {
    let p = dir.join("policy.toml");
    std::fs::write(
        &p,
        format!(
            "[server]\nlisten = [\"unix://{}\"]\nupstream = \"{}\"\n{extra}\n",
            listen.display(),
            engine()
        ),
    )
    .unwrap();
    p
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A private directory of root's (0755, so other users can reach sockets in it).
fn root_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

#[test]
fn a_world_writable_socket_directory_made_by_another_user_is_refused_untouched() {
    if skip() {
        return;
    }
    let (uid, gid) = local_user("bb-attacker");
    let shared = shared_tmp();
    let planted = shared.path().join("buildbroker");
    let made = as_user(uid, gid, &[], "mkdir")
        .args(["-m", "777"])
        .arg(&planted)
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
    let conf = tempfile::tempdir().unwrap();
    let policy = write_policy(conf.path(), &planted.join("docker.sock"), "");
    let err = serve_refuses(&policy);
    assert!(
        err.contains(&*planted.to_string_lossy())
            && err.contains("uid")
            && err.contains("bb-attacker"),
        "stderr: {err}"
    );
    assert_eq!(mode(&planted), 0o777, "nothing chmod-ed");
    assert_eq!(
        std::fs::metadata(&planted).unwrap().uid(),
        uid,
        "nothing chown-ed"
    );
    assert_eq!(
        std::fs::read_dir(&planted).unwrap().count(),
        0,
        "no socket made in it"
    );

    // The same directory, now root's but still world-writable: refused with the chmod fix.
    std::os::unix::fs::chown(&planted, Some(0), Some(0)).unwrap();
    let err = serve_refuses(&policy);
    assert!(
        err.contains("chmod go-w") || err.contains("chmod o-w"),
        "stderr: {err}"
    );
    assert_eq!(mode(&planted), 0o777, "nothing chmod-ed");
}

#[test]
fn a_symlink_at_the_socket_path_is_refused_and_its_target_untouched() {
    if skip() {
        return;
    }
    let (uid, _) = local_user("bb-attacker");
    let shared = shared_tmp();
    let run = root_dir(shared.path(), "run");
    // What the attacker wants the daemon to chmod 0660 or replace: a file of root's.
    let victim = shared.path().join("victim");
    std::fs::write(&victim, b"do not touch").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The link is the attacker's, as if planted while the directory was open to it.
    let sock = run.join("docker.sock");
    std::os::unix::fs::symlink(&victim, &sock).unwrap();
    std::os::unix::fs::lchown(&sock, Some(uid), None).unwrap();
    let conf = tempfile::tempdir().unwrap();
    let err = serve_refuses(&write_policy(conf.path(), &sock, ""));
    assert!(
        err.contains("symbolic link")
            && err.contains(&*sock.to_string_lossy())
            && err.contains("bb-attacker"),
        "stderr: {err}"
    );
    assert!(
        std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_symlink(),
        "link left alone"
    );
    assert_eq!(mode(&victim), 0o600, "target not chmod-ed");
    assert_eq!(std::fs::read(&victim).unwrap(), b"do not touch");
}

#[test]
fn a_symlink_at_the_audit_log_path_is_refused_and_its_target_not_written() {
    if skip() {
        return;
    }
    let (uid, _) = local_user("bb-attacker");
    let shared = shared_tmp();
    let run = root_dir(shared.path(), "run");
    let logs = root_dir(shared.path(), "log");
    let victim = shared.path().join("shadow-like");
    std::fs::write(&victim, b"root:precious:\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o640)).unwrap();
    let audit = logs.join("audit.jsonl");
    std::os::unix::fs::symlink(&victim, &audit).unwrap();
    std::os::unix::fs::lchown(&audit, Some(uid), None).unwrap();
    let conf = tempfile::tempdir().unwrap();
    let sock = run.join("docker.sock");
    let policy = write_policy(
        conf.path(),
        &sock,
        &format!("audit_log = \"{}\"", audit.display()),
    );
    let err = serve_refuses(&policy);
    assert!(
        err.contains("audit log")
            && err.contains("symbolic link")
            && err.contains(&*audit.to_string_lossy()),
        "stderr: {err}"
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"root:precious:\n",
        "not written, not truncated"
    );
    assert_eq!(mode(&victim), 0o640, "not chmod-ed");
    assert!(!sock.exists(), "nothing served");
}

#[test]
fn a_live_socket_of_another_user_at_the_socket_path_is_refused_and_keeps_serving() {
    if skip() {
        return;
    }
    let (uid, gid) = local_user("bb-attacker");
    let shared = shared_tmp();
    let run = root_dir(shared.path(), "run");
    // The attacker listens in the shared directory; its socket is then found at our path (as
    // if planted while the directory was open), still live: renaming keeps a socket bound.
    let theirs = shared.path().join("theirs.sock");
    let mut listener = as_user(uid, gid, &[], "socat")
        .arg("-u")
        .arg(format!("UNIX-LISTEN:{},fork", theirs.display()))
        .arg("OPEN:/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat must be installed (tests/testbed/setup.sh)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&theirs).is_err() {
        assert!(
            Instant::now() < deadline,
            "the attacker's socat never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sock = run.join("docker.sock");
    std::fs::rename(&theirs, &sock).unwrap();
    let conf = tempfile::tempdir().unwrap();
    let err = serve_refuses(&write_policy(conf.path(), &sock, ""));
    let alive = UnixStream::connect(&sock).is_ok();
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(
        err.contains("in use")
            && err.contains(&*sock.to_string_lossy())
            && err.contains("bb-attacker"),
        "stderr: {err}"
    );
    assert!(
        alive,
        "the other user's socket was left in place and serving"
    );
}

#[test]
fn a_root_daemon_refuses_a_group_writable_policy_at_start_and_at_reload() {
    if skip() {
        return;
    }
    let conf = tempfile::tempdir().unwrap();
    let sock = conf.path().join("docker.sock");
    let policy = write_policy(conf.path(), &sock, "");
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o664)).unwrap();
    let err = serve_refuses(&policy);
    assert!(
        err.contains(&*policy.to_string_lossy()) && err.contains("chmod g-w"),
        "stderr: {err}"
    );
    assert_eq!(mode(&policy), 0o664, "nothing chmod-ed");

    // At reload: the old policy stays in force and the broker keeps serving.
    let broker = Broker::start(BrokerOptions::default());
    std::fs::set_permissions(broker.policy_path(), std::fs::Permissions::from_mode(0o666)).unwrap();
    broker.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !broker.log().contains("policy reload rejected") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(broker.log().contains("chmod go-w"), "{}", broker.log());
    let ping = Command::new("docker")
        .args(["-H", &broker.docker_host(), "version"])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
}

/// Sends one request on a connection and returns the first bytes of the answer.
fn ping_on(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_connection_over_the_per_uid_cap_is_refused_while_the_others_work() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        policy: "[limits]\nconnections_per_uid = 2\n",
        ..Default::default()
    });
    let mut first = UnixStream::connect(broker.socket()).unwrap();
    let mut second = UnixStream::connect(broker.socket()).unwrap();
    assert!(ping_on(&mut first).starts_with("HTTP/1.1 200"));
    assert!(ping_on(&mut second).starts_with("HTTP/1.1 200"));
    let mut third = UnixStream::connect(broker.socket()).unwrap();
    let refused = ping_on(&mut third);
    assert!(refused.starts_with("HTTP/1.1 429"), "got: {refused}");
    assert!(
        refused.contains("\"message\"") && refused.contains("connections_per_uid"),
        "got: {refused}"
    );
    assert!(
        broker.log().contains("refused connection"),
        "{}",
        broker.log()
    );
    // The two open connections still work, and a closed one frees its place.
    assert!(ping_on(&mut first).starts_with("HTTP/1.1 200"));
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = UnixStream::connect(broker.socket()).unwrap();
        if ping_on(&mut again).starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never given back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_peer_allowed_only_through_a_supplementary_group_connects() {
    if skip() {
        return;
    }
    let (uid, gid) = local_user("bb-builder");
    let group = local_group("bb-sockgrp", "bb-builder");
    let broker = Broker::start(BrokerOptions {
        server: "socket_group = \"bb-sockgrp\"",
        ..Default::default()
    });
    // Other users may traverse the harness's directory; the socket guards itself.
    std::fs::set_permissions(broker.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let meta = std::fs::metadata(broker.socket()).unwrap();
    assert_eq!(meta.gid(), group, "the socket has the socket_group");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(home.path(), Some(uid), Some(gid)).unwrap();
    let docker = |groups: &[u32]| {
        as_user(uid, gid, groups, "docker")
            .args([
                "-H",
                &broker.docker_host(),
                "version",
                "--format",
                "{{.Server.Version}}",
            ])
            .env("HOME", home.path())
            .env("DOCKER_CONFIG", home.path())
            .output()
            .unwrap()
    };
    // bb-builder's primary group is its own; only the supplementary bb-sockgrp lets it in.
    let out = docker(&[group]);
    assert!(
        out.status.success(),
        "stderr: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
    let out = docker(&[]);
    assert!(
        !out.status.success(),
        "without the group it must not connect"
    );
}

/// Starts `docker buildx build` of `dockerfile` as `uid` against `docker_host`, in the
/// background, with a context and DOCKER_CONFIG that user owns.
fn start_build_as(uid: u32, gid: u32, docker_host: &str, dockerfile: &str, work: &Path) -> Child {
    let ctx = work.join("ctx");
    let config = work.join("docker-config");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    for p in [
        work.to_path_buf(),
        ctx.clone(),
        config.clone(),
        ctx.join("Dockerfile"),
    ] {
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
    }
    as_user(uid, gid, &[], "docker")
        .env("HOME", work)
        .env("DOCKER_CONFIG", &config)
        .env("DOCKER_HOST", docker_host)
        .env("BUILDKIT_PROGRESS", "plain")
        .args([
            "buildx",
            "build",
            "--no-cache",
            "--progress=plain",
            "--network=none",
        ])
        .arg(format!(
            "--build-arg=BB_TEST_NONCE={}",
            unique_secret("revoke")
        ))
        .arg("-o")
        .arg(format!("type=local,dest={}", work.join("out").display()))
        .arg(&ctx)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_peer_removed_by_sighup_loses_its_running_build_and_its_session() {
    if skip() {
        return;
    }
    let (uid, gid) = local_user("bb-builder");
    let access = format!("[access]\nuids = [{uid}]\n");
    let broker = Broker::start(BrokerOptions {
        policy: &access,
        ..Default::default()
    });
    // Let bb-builder reach the socket file, so it is [access] alone that decides.
    std::fs::set_permissions(broker.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(broker.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();

    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut build = start_build_as(
        uid,
        gid,
        &broker.docker_host(),
        &format!(
            "FROM {BASE_IMAGE}\nARG BB_TEST_NONCE\nRUN sleep 60 && echo done > /d\nFROM scratch\nCOPY --from=0 /d /\n"
        ),
        work.path(),
    );
    let session_of_uid = format!("uid={uid}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = broker.log();
        if log
            .lines()
            .any(|l| l.contains("session opened") && l.contains(&session_of_uid))
        {
            break;
        }
        if let Some(status) = build.try_wait().unwrap() {
            let out = build.wait_with_output().unwrap();
            panic!(
                "the build ended ({status}) before its session opened:\n{}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "no session from uid {uid}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Give the build time to reach its RUN step, then remove the uid and reload.
    std::thread::sleep(Duration::from_secs(3));
    let policy = std::fs::read_to_string(broker.policy_path()).unwrap();
    std::fs::write(broker.policy_path(), policy.replace(&access, "")).unwrap();
    let revoked_at = Instant::now();
    broker.signal("HUP");

    let status = loop {
        if let Some(s) = build.try_wait().unwrap() {
            break s;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(30),
            "the revoked peer's build kept running 30 s after SIGHUP:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    build
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        !status.success(),
        "the build must fail, not finish:\n{stderr}"
    );
    assert!(
        revoked_at.elapsed() < Duration::from_secs(20),
        "it ended by revocation, not by the RUN's 60 s"
    );
    assert!(
        !work.path().join("out/d").exists(),
        "nothing exported:\n{stderr}"
    );
    let log = broker.log();
    assert!(log.contains("[access] no longer allows this peer"), "{log}");
    let audit = broker.audit();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"event\":\"revoke\"")
                && l.contains(&format!("\"peer_uid\":{uid}"))),
        "audit: {audit}"
    );
    // The uid cannot come back, and everyone else is still served.
    let again = as_user(uid, gid, &[], "docker")
        .args(["-H", &broker.docker_host(), "version"])
        .env("HOME", work.path())
        .env("DOCKER_CONFIG", work.path().join("docker-config"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not allowed"));
    let root = Command::new("docker")
        .args(["-H", &broker.docker_host(), "version"])
        .output()
        .unwrap();
    assert!(root.status.success());
}

#[test]
fn the_ci_script_serves_each_job_from_a_private_directory() {
    if skip() {
        return;
    }
    let runner_temp = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_buildbroker"))
        .parent()
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ci-sidecar.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -e; source {}; echo \"$DOCKER_HOST\"; docker version --format '{{{{.Server.Version}}}}' >/dev/null; kill \"$BUILDBROKER_PID\"",
            script.display()
        ))
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()),
        )
        .env("RUNNER_TEMP", runner_temp.path())
        .env("DOCKER_HOST", engine())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = stdout.trim();
    let prefix = format!("unix://{}/buildbroker.", runner_temp.path().display());
    assert!(host.starts_with(&prefix), "DOCKER_HOST={host}");
    let dir = Path::new(host.trim_start_matches("unix://"))
        .parent()
        .unwrap();
    assert_eq!(mode(dir), 0o700, "the job's directory is private");
}
