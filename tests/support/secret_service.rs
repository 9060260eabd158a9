//! A real, private Secret Service for tests: a session `dbus-daemon` of our own and
//! `gnome-keyring-daemon --foreground --unlock --components=secrets` on it, with its keyrings
//! under a temporary HOME (design.md §10). Dropped → both daemons are killed.

// Shared by several test binaries; each uses the part it needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct SecretServiceBed {
    pub dir: tempfile::TempDir,
    /// The value for DBUS_SESSION_BUS_ADDRESS.
    pub address: String,
    bus: Child,
    keyring: Child,
}

impl SecretServiceBed {
    pub fn start() -> SecretServiceBed {
        let dir = tempfile::Builder::new().prefix("bb-ss-").tempdir().unwrap();
        for sub in ["data", "run", "config"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .arg(format!("--address=unix:path={}/bus", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (package dbus) must be installed: run tests/testbed/setup.sh");
        let mut line = String::new();
        BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed no address: {line:?}"
        );

        let mut keyring = Self::command_in(&dir, &address, "gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gnome-keyring-daemon must be installed: run tests/testbed/setup.sh");
        // The login keyring's password, then EOF.
        keyring
            .stdin
            .take()
            .unwrap()
            .write_all(b"test-password")
            .unwrap();
        let bed = SecretServiceBed {
            dir,
            address,
            bus,
            keyring,
        };
        bed.wait_for_service();
        bed
    }

    fn command_in(dir: &tempfile::TempDir, address: &str, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_RUNTIME_DIR", dir.path().join("run"))
            .env("DBUS_SESSION_BUS_ADDRESS", address);
        c
    }

    /// A command whose environment reaches this Secret Service (and nothing of the caller's).
    pub fn command(&self, program: &str) -> Command {
        Self::command_in(&self.dir, &self.address, program)
    }

    /// Waits until gnome-keyring owns org.freedesktop.secrets, so nothing D-Bus-activates a
    /// second, locked instance.
    fn wait_for_service(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self
                .command("dbus-send")
                .args([
                    "--session",
                    "--print-reply",
                    "--dest=org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                ])
                .args([
                    "org.freedesktop.DBus.NameHasOwner",
                    "string:org.freedesktop.secrets",
                ])
                .output()
                .expect("dbus-send (package dbus-bin) must be installed");
            if String::from_utf8_lossy(&out.stdout).contains("boolean true") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gnome-keyring-daemon never registered the Secret Service"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stores an item the way a user would with `secret-tool store`.
    pub fn secret_tool_store(&self, service: &str, account: &str, value: &[u8]) {
        let mut child = self
            .command("secret-tool")
            .args([
                "store",
                "--label",
                "test item",
                "service",
                service,
                "username",
                account,
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("secret-tool (package libsecret-tools) must be installed");
        child.stdin.take().unwrap().write_all(value).unwrap();
        assert!(child.wait().unwrap().success(), "secret-tool store failed");
    }

    /// The keyring daemon's pid (to stop it in a test).
    pub fn keyring_pid(&self) -> u32 {
        self.keyring.id()
    }

    /// Locks the login collection (as logging out of a desktop would).
    pub fn lock_login_collection(&self) {
        let out = self
            .command("dbus-send")
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets",
            ])
            .args([
                "org.freedesktop.Secret.Service.Lock",
                "array:objpath:/org/freedesktop/secrets/collection/login",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "locking failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SecretServiceBed {
    fn drop(&mut self) {
        let _ = self.keyring.kill();
        let _ = self.keyring.wait();
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}
