//! Faults around a real build: the audit log's disk full or its file removed, the build client
//! killed in the middle of a RUN, the engine's connection cut in the middle of a build. Each
//! time the broker keeps running, the affected build gets an error that names the cause, the
//! next build succeeds, and the broker's open file descriptors come back to where they were.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const TOK_POLICY: &str = "[secrets.tok]\nsources = [\"env:TOK\"]\nrequired = true\n";

fn read_tok() -> Build<'static> {
    Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok > /v\nFROM scratch\nCOPY --from=0 /v /\n"
    ))
}

/// Waits until the broker holds no more descriptors than `baseline` (connections and sessions
/// of a dead build are closed asynchronously), and fails with the count otherwise.
#[track_caller]
fn assert_fds_back(broker: &Broker, baseline: usize) {
    assert_fds_back_within(broker, baseline, Duration::from_secs(20));
}

#[track_caller]
fn assert_fds_back_within(broker: &Broker, baseline: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = broker.open_fds();
        if now <= baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the broker holds {now} fds, {} more than before the fault ({baseline}): {:?}",
            now - baseline,
            std::fs::read_dir(format!("/proc/{}/fd", broker.pid()))
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[track_caller]
fn assert_alive(broker: &Broker) {
    let status =
        std::fs::read_to_string(format!("/proc/{}/stat", broker.pid())).unwrap_or_default();
    let state = status
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next();
    assert!(
        matches!(state, Some("S" | "R" | "D")),
        "the broker is gone (state {state:?})"
    );
}

/// A small tmpfs, unmounted (lazily) when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new().prefix("bb-fs-").tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0750"))
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the fault tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Fills the file system holding `dir` with one file until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    // Any partial block too.
    while f.write_all(&[0]).is_ok() {}
    path
}

/// The decision: fail closed. A value whose audit record cannot be written is not served; a
/// removed audit file is created again at its path.
#[test]
fn an_audit_log_that_cannot_be_written_fails_closed_and_a_removed_one_is_recreated() {
    if skip() {
        return;
    }
    let fs = Tmpfs::mount("64k");
    let audit = fs.path().join("audit.jsonl");
    let value = unique_secret("audit");
    let broker = Broker::start(BrokerOptions {
        policy: TOK_POLICY,
        env: vec![("TOK", &value)],
        audit_log: Some(&audit),
        ..Default::default()
    });
    let ok = read_tok().run(&broker);
    ok.assert_ok();
    assert_eq!(ok.text("v"), value);
    let fds = broker.open_fds();

    let filler = fill(fs.path());
    // tmpfs allocates whole pages: the audit file's last page still has room. Fill it too (with
    // blank lines, which readers of JSON lines skip).
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&audit)
            .unwrap();
        while f.write_all(b"\n").is_ok() {}
    }
    let full = read_tok().run(&broker);
    assert!(
        !full.success(),
        "served with a full audit disk:\n{}",
        full.log()
    );
    assert!(
        full.log()
            .contains("buildbroker: secret \"tok\" not served: cannot write the audit log")
            && full.log().contains("No space left on device"),
        "the build names the cause:\n{}",
        full.log()
    );
    assert!(!full.log().contains(&value));
    assert!(
        broker
            .log()
            .contains("cannot write the audit log; refusing to serve secrets"),
        "{}",
        broker.log()
    );
    assert_alive(&broker);

    std::fs::remove_file(&filler).unwrap();
    let again = read_tok().run(&broker);
    again.assert_ok();
    assert_eq!(again.text("v"), value);

    // Removed under the daemon (a rotation without SIGHUP): the next record goes to a new file.
    std::fs::remove_file(&audit).unwrap();
    let after = read_tok().run(&broker);
    after.assert_ok();
    let text = std::fs::read_to_string(&audit).expect("the audit log was created again");
    assert!(
        text.contains("\"id\":\"tok\"") && text.contains("\"decision\":\"served\""),
        "{text}"
    );
    assert!(!text.contains(&value));
    assert!(
        broker
            .log()
            .contains("the audit log was removed; writing to a new file at its path"),
        "{}",
        broker.log()
    );
    assert_fds_back(&broker, fds);
}

/// `docker buildx build` started in its own process group, so the test can kill buildx with it.
fn spawn_build(docker_host: &str, dockerfile: &str) -> (Child, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("bb-build-")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    let child = Command::new("docker")
        .env("DOCKER_HOST", docker_host)
        .args([
            "buildx",
            "build",
            "--no-cache",
            "--progress=plain",
            "--network=none",
        ])
        .args(["-o", "type=cacheonly"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    (child, dir)
}

fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_build_client_killed_mid_run_leaves_the_broker_serving_with_nothing_held() {
    if skip() {
        return;
    }
    let value = unique_secret("killed");
    let broker = Broker::start(BrokerOptions {
        policy: TOK_POLICY,
        env: vec![("TOK", &value)],
        ..Default::default()
    });
    read_tok().run(&broker).assert_ok();
    let fds = broker.open_fds();
    let served_before = broker.audit().matches("\"decision\":\"served\"").count();

    let nonce = unique_secret("nonce");
    let (mut child, _dir) = spawn_build(
        &broker.docker_host(),
        &format!(
            "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=tok,required=true echo {nonce} && sleep 60\n"
        ),
    );
    wait_for(
        "the killed build's GetSecret",
        Duration::from_secs(60),
        || broker.audit().matches("\"decision\":\"served\"").count() > served_before,
    );
    std::thread::sleep(Duration::from_millis(500));
    kill_group(&mut child);

    assert_alive(&broker);
    let next = read_tok().run(&broker);
    next.assert_ok();
    assert_eq!(next.text("v"), value);
    assert_fds_back(&broker, fds);
}

/// The engine cut in the middle of a build. The test bed's engine is shared by every test
/// running at the same time, so it cannot be killed here: the broker's upstream is a relay to
/// it (socat), and killing the relay cuts every connection to the engine exactly as the
/// engine's death would, from the broker's side.
#[test]
fn the_engine_cut_mid_build_fails_that_build_clearly_and_the_next_one_works() {
    if skip() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("bb-relay-")
        .tempdir()
        .unwrap();
    let relay_sock = dir.path().join("engine.sock");
    let engine_sock = engine().strip_prefix("unix://").expect("a unix engine");
    let start_relay = || {
        let _ = std::fs::remove_file(&relay_sock);
        let child = Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", relay_sock.display()))
            .arg(format!("UNIX-CONNECT:{engine_sock}"))
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        wait_for("the relay socket", Duration::from_secs(10), || {
            relay_sock.exists()
        });
        child
    };
    let mut relay = start_relay();
    let upstream = format!("unix://{}", relay_sock.display());
    let value = unique_secret("engine");
    let broker = Broker::start(BrokerOptions {
        policy: TOK_POLICY,
        env: vec![("TOK", &value)],
        upstream: Some(upstream.clone()),
        ..Default::default()
    });
    read_tok().run(&broker).assert_ok();
    let fds = broker.open_fds();
    let served_before = broker.audit().matches("\"decision\":\"served\"").count();

    let nonce = unique_secret("nonce");
    let dockerfile = format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=tok,required=true echo {nonce} && sleep 20\n"
    );
    let build_dir = tempfile::Builder::new()
        .prefix("bb-build-")
        .tempdir()
        .unwrap();
    std::fs::write(build_dir.path().join("Dockerfile"), &dockerfile).unwrap();
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_HOST", broker.docker_host())
        .args([
            "buildx",
            "build",
            "--no-cache",
            "--progress=plain",
            "--network=none",
        ])
        .args(["-o", "type=cacheonly"])
        .arg(build_dir.path());
    let cut = std::thread::scope(|scope| {
        let build = scope.spawn(|| run_with_timeout(cmd, Duration::from_secs(120)));
        wait_for("the build's GetSecret", Duration::from_secs(60), || {
            broker.audit().matches("\"decision\":\"served\"").count() > served_before
        });
        kill_group(&mut relay);
        build.join().unwrap()
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&cut.stdout),
        String::from_utf8_lossy(&cut.stderr)
    );
    assert!(!cut.status.success(), "the build survived the cut:\n{text}");
    assert!(
        text.contains("EOF") || text.contains("connection reset") || text.contains("closed"),
        "the build's error says the connection went away:\n{text}"
    );
    assert_alive(&broker);

    // While the engine is away, a new build gets the broker's own clear answer.
    let away = read_tok().run(&broker);
    assert!(!away.success());
    assert!(
        away.log().contains("cannot reach the upstream engine") || away.log().contains(&upstream),
        "{}",
        away.log()
    );

    relay = start_relay();
    let next = read_tok().run(&broker);
    next.assert_ok();
    assert_eq!(next.text("v"), value);
    kill_group(&mut relay);
    assert_fds_back(&broker, fds);
}

/// 300 connections from another uid that never finish their request headers: they cannot
/// starve a build (each uid has its own `[limits] connections_per_uid`, set to 256 here so
/// the extra ones are refused), and the broker closes them when the header read timeout
/// (30 s) runs out, though their client keeps them open.
#[test]
fn three_hundred_half_open_connections_do_not_starve_a_build_and_are_closed() {
    use std::os::unix::fs::PermissionsExt;
    if skip() {
        return;
    }
    let value = unique_secret("idle");
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "{TOK_POLICY}[access]\nuids = [65534]\n[limits]\nconnections_per_uid = 256\n"
        ),
        env: vec![("TOK", &value)],
        ..Default::default()
    });
    read_tok().run(&broker).assert_ok();
    let fds = broker.open_fds();
    // Let uid 65534 reach the socket file; the broker's own checks decide the rest.
    std::fs::set_permissions(broker.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(broker.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = r#"
import socket, sys, time
held = []
for _ in range(300):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n")
    except OSError:
        pass  # over the per-uid limit: refused and closed by the broker
    held.append(s)
print("ready", flush=True)
time.sleep(300)
"#;
    let mut idle = Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        // Debian's own interpreter: a pyenv shim under /root is not reachable by uid 65534.
        .args(["/usr/bin/python3", "-c", script])
        .arg(broker.socket())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("setpriv and python3");
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(idle.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the idle client could not connect");
    }
    wait_for(
        "the idle connections to be accepted",
        Duration::from_secs(20),
        || broker.open_fds() >= fds + 250,
    );
    let build = read_tok().run(&broker);
    build.assert_ok();
    assert_eq!(build.text("v"), value);
    assert!(
        broker.log().contains("refused connection") && broker.log().contains("uid 65534"),
        "the connections over the per-uid limit are refused: {}",
        broker.log()
    );
    // Their client still holds them: only the broker's header timeout can close them.
    assert_fds_back_within(&broker, fds + 5, Duration::from_secs(60));
    assert!(
        idle.try_wait().unwrap().is_none(),
        "the idle client exited early"
    );
    kill_group(&mut idle);
}

/// An upstream ssh-agent (OpenSSH's, in debug mode so the test sees each request) that dies
/// after the build listed its keys and before it asks for a signature: that signature fails and
/// the broker says why, the broker lives on, and with the agent back the next build signs.
#[test]
fn an_upstream_agent_that_dies_mid_build_fails_that_signature_and_the_next_build_signs() {
    if skip() {
        return;
    }
    crate::sshbed::require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let key = crate::sshbed::Key::new(dir.path(), "up", "");
    let socket = dir.path().join("agent.sock");
    let agent_log = dir.path().join("agent.log");
    let start_agent = || {
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("ssh-agent")
            .arg("-d")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .spawn()
            .unwrap();
        wait_for("the agent socket", Duration::from_secs(10), || {
            socket.exists()
        });
        let added = Command::new("ssh-add")
            .arg("-q")
            .arg(&key.path)
            .env("SSH_AUTH_SOCK", &socket)
            .status()
            .unwrap();
        assert!(added.success());
        child
    };
    let mut agent = start_agent();
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[ssh.up]\nagent = \"{}\"\nkeys = [\"{}\"]\n",
            socket.display(),
            key.fingerprint
        ),
        ..Default::default()
    });
    let fds = broker.open_fds();
    let dockerfile = |label: &str| {
        format!(
            "FROM {SSH_IMAGE}\nCOPY up.pub /k.pub\n\
             RUN --mount=type=ssh,id=up,required=true mkdir /o && echo {label} && \
                 ssh-add -l > /o/list 2>&1; sleep 4; ssh-add -T /k.pub > /o/t 2>&1; echo $? > /o/rc\n\
             FROM scratch\nCOPY --from=0 /o /\n"
        )
    };
    let lists_before = std::fs::read_to_string(&agent_log)
        .unwrap_or_default()
        .matches("type 11")
        .count();
    let build = std::thread::scope(|scope| {
        let build = scope.spawn(|| {
            Build::new(dockerfile(&unique_secret("dies")))
                .file("up.pub", key.public.clone())
                .run(&broker)
        });
        // Once the agent has answered the build's listing, it dies. Two listings: BuildKit's
        // CheckAgent (the broker's check lists the upstream's keys) while the mount is
        // prepared, then the build's `ssh-add -l`, which waits on the container's start.
        wait_for("the build's key listing", Duration::from_secs(90), || {
            std::fs::read_to_string(&agent_log)
                .unwrap_or_default()
                .matches("type 11")
                .count()
                > lists_before + 1
        });
        // The listing's answer is on its way back to the build.
        std::thread::sleep(Duration::from_millis(300));
        let _ = agent.kill();
        let _ = agent.wait();
        build.join().unwrap()
    });
    build.assert_ok();
    assert!(
        build.text("list").contains(&key.fingerprint),
        "{}",
        build.text("list")
    );
    assert_ne!(
        build.text("rc").trim(),
        "0",
        "the signature succeeded without its agent: {}",
        build.text("t")
    );
    let audit = broker.audit();
    assert!(
        audit.contains("\"decision\":\"refused\"") && audit.contains("agent"),
        "the refusal names the upstream agent: {audit}"
    );
    assert_alive(&broker);

    agent = start_agent();
    let next = Build::new(dockerfile(&unique_secret("back")))
        .file("up.pub", key.public.clone())
        .run(&broker);
    next.assert_ok();
    assert_eq!(next.text("rc").trim(), "0", "{}", next.text("t"));
    let _ = agent.kill();
    let _ = agent.wait();
    assert_fds_back(&broker, fds);
}
