//! The end-to-end harness: the real `buildbroker` binary between a real `docker buildx build`
//! and the real dockerd of the test bed (tests/testbed/setup.sh, design.md §10).
//!
//! Tests fail, never skip, when the test bed is missing. `BUILDBROKER_SKIP_E2E=1` is an explicit
//! opt-out for quick local runs; CI never sets it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The base image the test bed imports (busybox only).
pub const BASE_IMAGE: &str = "buildbroker-test/busybox";
/// busybox plus the host's `ssh`, `ssh-add` and `ssh-keygen` (tests/testbed/setup.sh).
pub const SSH_IMAGE: &str = "buildbroker-test/ssh";
#[path = "../support/nobody.rs"]
mod nobody;
/// `setpriv` arguments that run a command as nobody (tests/support/nobody.rs). The aws tests
/// include this harness too and do not use it.
#[allow(unused_imports)]
pub use nobody::AS_NOBODY;

/// True when the caller asked to skip end-to-end tests; each test returns early and says so.
pub fn skip() -> bool {
    if std::env::var_os("BUILDBROKER_SKIP_E2E").is_some_and(|v| v == "1") {
        eprintln!("BUILDBROKER_SKIP_E2E=1: end-to-end test not run");
        return true;
    }
    false
}

/// The test bed's engine socket, checked once. Panics with a clear message if it is not up.
pub fn engine() -> &'static str {
    static ENGINE: OnceLock<String> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let host = std::env::var("TESTBED_DOCKER_HOST").ok().or_else(|| {
            std::fs::read_to_string("/run/buildbroker-testbed/env").ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("TESTBED_DOCKER_HOST=").map(|v| v.trim().to_string()))
            })
        });
        let host = host.unwrap_or_else(|| {
            panic!("the test bed is not running: no TESTBED_DOCKER_HOST and no /run/buildbroker-testbed/env; run `bash tests/testbed/setup.sh` (tests/run.sh does)")
        });
        let out = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .env("DOCKER_HOST", &host)
            .output()
            .expect("the docker CLI must be installed");
        assert!(
            out.status.success(),
            "the test bed engine at {host} does not answer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let images = Command::new("docker")
            .args(["image", "inspect", BASE_IMAGE])
            .env("DOCKER_HOST", &host)
            .output()
            .unwrap();
        assert!(images.status.success(), "the test bed has no {BASE_IMAGE} image; run tests/testbed/setup.sh");
        host
    })
}

/// A running `buildbroker serve` with its own policy, socket, audit log and log file.
pub struct Broker {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

pub struct BrokerOptions<'a> {
    /// Policy text before the generated [server] table (top-level keys such as
    /// `secrets.aws.sources = [...]`).
    pub preamble: &'a str,
    /// Extra policy text appended after the generated [server] table.
    pub policy: &'a str,
    /// Extra lines inside [server].
    pub server: &'a str,
    /// Environment for the daemon (it starts with an empty environment plus PATH and these).
    pub env: Vec<(&'a str, &'a str)>,
    pub rust_log: &'a str,
    /// A command the daemon runs under (`unshare --pid --fork …`); empty: run it directly.
    pub wrapper: Vec<&'a str>,
    /// Where the audit log goes; `None`: `audit.jsonl` in the broker's directory.
    pub audit_log: Option<&'a Path>,
    /// More `[server] listen` addresses beside the unix socket (`tcp://127.0.0.1:PORT`).
    pub extra_listen: Vec<String>,
    /// `[server] upstream` instead of the test bed's unix socket.
    pub upstream: Option<String>,
}

impl Default for BrokerOptions<'_> {
    fn default() -> Self {
        BrokerOptions {
            preamble: "",
            policy: "",
            server: "",
            env: Vec::new(),
            rust_log: "debug",
            wrapper: Vec::new(),
            audit_log: None,
            extra_listen: Vec::new(),
            upstream: None,
        }
    }
}

impl Broker {
    pub fn start(opts: BrokerOptions<'_>) -> Broker {
        let engine = engine();
        let dir = tempfile::Builder::new()
            .prefix("bb-e2e-")
            .tempdir()
            .unwrap();
        let sock = dir.path().join("docker.sock");
        let extra: String = opts
            .extra_listen
            .iter()
            .map(|l| format!(", \"{l}\""))
            .collect();
        let engine = opts.upstream.as_deref().unwrap_or(engine);
        let policy = format!(
            "{}\n[server]\nlisten = [\"unix://{}\"{extra}]\nupstream = \"{engine}\"\naudit_log = \"{}\"\n{}\n\n{}\n",
            opts.preamble,
            sock.display(),
            opts.audit_log
                .map(Path::to_path_buf)
                .unwrap_or_else(|| dir.path().join("audit.jsonl"))
                .display(),
            opts.server,
            opts.policy
        );
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy).unwrap();
        let log = std::fs::File::create(dir.path().join("broker.log")).unwrap();
        let binary = broker_binary();
        let mut cmd = match opts.wrapper.split_first() {
            None => Command::new(&binary),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&binary);
                c
            }
        };
        cmd.args(["serve", "--config"])
            .arg(&policy_path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", opts.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start buildbroker");
        let mut broker = Broker {
            dir,
            child: Some(child),
        };
        broker.wait_ready();
        broker
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.log().contains("buildbroker ready") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "buildbroker exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "buildbroker not ready after 10 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    pub fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// How many descriptors the daemon holds open right now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The daemon's peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Sends a signal by name (`HUP`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "buildbroker did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
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
            eprintln!("---- buildbroker log ----\n{}", tail(&self.log(), 200));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The embedded default policy's text with its `[server]` header removed, so its server keys
/// join the harness's own `[server]` table (pass it as `BrokerOptions::policy`).
pub fn embedded_default_body() -> String {
    include_str!("../../config/default.toml").replacen("[server]\n", "", 1)
}

/// The daemon binary under test: the one cargo built for this test run, unless
/// `BUILDBROKER_E2E_BIN` names another (scripts/bench-load.sh passes the release build, so the
/// debug test harness measures an optimised daemon).
fn broker_binary() -> PathBuf {
    std::env::var_os("BUILDBROKER_E2E_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_buildbroker")))
}

/// One `docker buildx build` through a broker.
pub struct Build<'a> {
    pub dockerfile: String,
    pub files: Vec<(&'a str, Vec<u8>)>,
    pub args: Vec<String>,
    /// Where the result goes; `None` exports to a local directory (the default).
    pub tag: Option<String>,
    /// `--network=` for the build: `none` (the default) or `host` (reaches a local sshd).
    pub network: &'static str,
    /// Extra environment for the build client (buildx), beside the test's own.
    pub env: Vec<(String, String)>,
    /// Where in the context the Dockerfile is written, passed as `-f`; `None` is the default
    /// `Dockerfile`.
    pub dockerfile_path: Option<&'a str>,
    /// How long the build may run before it is killed (a hung build must not hang CI).
    pub timeout: Duration,
}

pub struct BuildResult {
    pub output: Output,
    pub out_dir: PathBuf,
    _dirs: tempfile::TempDir,
}

impl BuildResult {
    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    /// What buildx printed (progress and errors).
    pub fn log(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }

    /// A file the build wrote into its exported result.
    pub fn file(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.out_dir.join(path))
            .unwrap_or_else(|e| panic!("the build exported no {path}: {e}\n{}", self.log()))
    }

    pub fn text(&self, path: &str) -> String {
        String::from_utf8(self.file(path)).unwrap()
    }

    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.success(), "build failed:\n{}", self.log());
    }
}

impl<'a> Build<'a> {
    pub fn new(dockerfile: impl Into<String>) -> Self {
        Build {
            dockerfile: dockerfile.into(),
            files: Vec::new(),
            args: Vec::new(),
            tag: None,
            network: "none",
            env: Vec::new(),
            dockerfile_path: None,
            timeout: Duration::from_secs(180),
        }
    }

    /// Writes the Dockerfile at `path` in the context and builds with `-f` naming it.
    pub fn dockerfile_at(mut self, path: &'a str) -> Self {
        self.dockerfile_path = Some(path);
        self
    }

    pub fn file(mut self, name: &'a str, content: impl Into<Vec<u8>>) -> Self {
        self.files.push((name, content.into()));
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn tag(mut self, t: impl Into<String>) -> Self {
        self.tag = Some(t.into());
        self
    }

    /// Sets a variable in the build client's environment.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Kills the build if it outlives `limit` (default 180 s).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    pub fn network(mut self, network: &'static str) -> Self {
        self.network = network;
        self
    }

    /// Runs the build with DOCKER_HOST pointing at `docker_host`.
    pub fn run_against(&self, docker_host: &str) -> BuildResult {
        let dirs = tempfile::Builder::new()
            .prefix("bb-build-")
            .tempdir()
            .unwrap();
        let ctx = dirs.path().join("ctx");
        let out = dirs.path().join("out");
        std::fs::create_dir_all(&ctx).unwrap();
        let dockerfile = ctx.join(self.dockerfile_path.unwrap_or("Dockerfile"));
        std::fs::create_dir_all(dockerfile.parent().unwrap()).unwrap();
        std::fs::write(&dockerfile, with_nonce(&self.dockerfile)).unwrap();
        for (name, content) in &self.files {
            let p = ctx.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", docker_host)
            .env("BUILDKIT_PROGRESS", "plain")
            .args(["buildx", "build", "--no-cache", "--progress=plain"])
            .arg(format!("--network={}", self.network))
            .arg(format!(
                "--build-arg=BB_TEST_NONCE={}",
                unique_secret("nonce")
            ));
        match &self.tag {
            Some(t) => cmd.args(["--load", "-t", t]),
            None => cmd
                .arg("-o")
                .arg(format!("type=local,dest={}", out.display())),
        };
        if self.dockerfile_path.is_some() {
            cmd.arg("-f").arg(&dockerfile);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(&self.args)
            .arg(&ctx);
        let output = run_with_timeout(cmd, self.timeout);
        BuildResult {
            output,
            out_dir: out,
            _dirs: dirs,
        }
    }

    pub fn run(&self, broker: &Broker) -> BuildResult {
        self.run_against(&broker.docker_host())
    }
}

/// BuildKit merges identical steps of builds that run at the same time on one daemon, even
/// from different sessions — so two tests with the same Dockerfile could each be answered by
/// the other's broker. Every stage declares a build arg that each build sets to a unique
/// value: declared args are part of every RUN step's environment, so no two tests' steps are
/// ever identical.
fn with_nonce(dockerfile: &str) -> String {
    let mut out = String::new();
    for line in dockerfile.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim_start().to_ascii_uppercase().starts_with("FROM ") {
            out.push_str("ARG BB_TEST_NONCE\n");
        }
    }
    out
}

/// Runs a command, killing it if it outlives `limit` (a hung build must not hang CI).
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command timed out after {limit:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// A value unlikely to appear anywhere by chance, for leak searches.
pub fn unique_secret(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("bbsecret-{label}-{nanos:x}-{}", std::process::id())
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Writes `content` to a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}
