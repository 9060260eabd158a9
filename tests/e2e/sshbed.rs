//! Real OpenSSH peers for the SSH tests: keys made by `ssh-keygen`, an `ssh-agent` on a temp
//! socket, and `sshd` instances on loopback high ports with their own host keys. Each is
//! stopped by its own pid when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{SSH_IMAGE, engine};

/// Fails (never skips) when the test bed has no ssh image or the host lacks OpenSSH.
pub fn require_ssh_bed() {
    let image = Command::new("docker")
        .args(["image", "inspect", SSH_IMAGE])
        .env("DOCKER_HOST", engine())
        .output()
        .unwrap();
    assert!(
        image.status.success(),
        "the test bed has no {SSH_IMAGE} image; run tests/testbed/setup.sh"
    );
    for tool in [
        "/usr/sbin/sshd",
        "/usr/bin/ssh-agent",
        "/usr/bin/ssh-keygen",
    ] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install openssh-client openssh-server"
        );
    }
}

/// A key pair made by ssh-keygen.
pub struct Key {
    pub path: PathBuf,
    /// The `.pub` line: `ssh-ed25519 AAAA… comment`.
    pub public: String,
    /// `SHA256:…`, as `ssh-add -l` prints it.
    pub fingerprint: String,
}

impl Key {
    /// An ed25519 key named `name` (also its comment); `passphrase` empty for none.
    pub fn new(dir: &Path, name: &str, passphrase: &str) -> Key {
        let path = dir.join(name);
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-C", name, "-N", passphrase, "-f"])
            .arg(&path));
        let public = std::fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string();
        let listing = run(Command::new("ssh-keygen")
            .arg("-lf")
            .arg(path.with_extension("pub")));
        let fingerprint = listing.split_whitespace().nth(1).unwrap().to_string();
        Key {
            path,
            public,
            fingerprint,
        }
    }

    /// `type base64`, without the comment.
    pub fn key_only(&self) -> String {
        self.public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// OpenSSH's `ssh-agent` on a socket of its own.
pub struct Agent {
    pub socket: PathBuf,
    child: Child,
}

impl Agent {
    pub fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        // -D: foreground, so the child is the agent itself and is stopped by its pid.
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(|| socket.exists(), "ssh-agent socket");
        Agent { socket, child }
    }

    pub fn add(&self, key: &Key) {
        run(Command::new("ssh-add")
            .arg("-q")
            .arg(&key.path)
            .env("SSH_AUTH_SOCK", &self.socket));
    }

    /// `ssh-add -l` against this agent.
    pub fn list(&self) -> String {
        list_agent(&self.socket)
    }
}

/// `ssh-add -l` against any agent socket (exit 1, "no identities", is an empty list).
pub fn list_agent(socket: &Path) -> String {
    let out = Command::new("ssh-add")
        .arg("-l")
        .env("SSH_AUTH_SOCK", socket)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real sshd on 127.0.0.1 with its own host key.
pub struct Sshd {
    pub port: u16,
    pub host_key: Key,
    dir: tempfile::TempDir,
    child: Child,
}

impl Sshd {
    /// Every login runs `echo hello-from-NAME` (sshd's ForceCommand).
    pub fn start(name: &str, authorized_keys: &str) -> Sshd {
        Sshd::spawn(name, authorized_keys, true)
    }

    /// Logins run the `command="…"` of their authorized_keys line (ForceCommand would
    /// override it), so a test can tell which key logged in.
    pub fn start_with_key_commands(name: &str, authorized_keys: &str) -> Sshd {
        Sshd::spawn(name, authorized_keys, false)
    }

    fn spawn(name: &str, authorized_keys: &str, force_command: bool) -> Sshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("bb-sshd-{name}-"))
            .tempdir()
            .unwrap();
        let host_key = Key::new(dir.path(), "host_key", "");
        std::fs::write(dir.path().join("authorized_keys"), authorized_keys).unwrap();
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {dir}/authorized_keys\n\
             PidFile {dir}/sshd.pid\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             LogLevel VERBOSE\n{force}",
            hk = host_key.path.display(),
            dir = dir.path().display(),
            force = if force_command {
                format!("ForceCommand echo hello-from-{name}\n")
            } else {
                String::new()
            },
        );
        let config_path = dir.path().join("sshd_config");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let sshd = Sshd {
            port,
            host_key,
            dir,
            child,
        };
        wait_for(
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "sshd to listen",
        );
        sshd
    }

    /// A known_hosts line for this server, as ssh writes it for a non-22 port.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}\n", self.port, self.host_key.key_only())
    }

    /// The `hosts` entry naming this server in known_hosts.
    pub fn host_name(&self) -> String {
        format!("[127.0.0.1]:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// A shell command for the build that logs in and prints what the server ran, writing
    /// stdout to `out`, stderr to `out.err` and the exit code to `out.rc`. `agent` picks the
    /// agent socket (`SSH_AUTH_SOCK`); `/kh` is the known_hosts file copied into the image.
    pub fn login(&self, agent: &str, out: &str) -> String {
        format!(
            "SSH_AUTH_SOCK={agent} ssh -o BatchMode=yes -o StrictHostKeyChecking=yes \
             -o UserKnownHostsFile=/kh -o LogLevel=ERROR -p {port} root@127.0.0.1 \
             > {out} 2> {out}.err; echo $? > {out}.rc",
            port = self.port
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- sshd log ----\n{}", self.log());
        }
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
