//! One conformance suite, run against every source kind through the real `buildbroker resolve`:
//! a stored value resolves byte for byte (checked by length and hash, since `resolve` never
//! prints values), an absent one falls through to the next source, a required id with nothing
//! fails naming the source, the 512000-byte cap holds at the edge, and the value never appears
//! in the output. Real peers: the kernel keyring via keyctl, GNOME Keyring on a private session
//! bus, real programs for exec:, moto_server for aws-sm:.

#[path = "../support/kernel_keyring.rs"]
mod kernel_keyring;
#[path = "../support/secret_service.rs"]
mod secret_service;
// moto_server for aws-sm:, shared with tests/aws; this suite needs only part of it.
#[allow(dead_code)]
#[path = "../aws/moto.rs"]
mod moto;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use kernel_keyring::{KernelKey, unique};
use secret_service::SecretServiceBed;

const CAP: usize = 512_000;
const VALUE: &[u8] = b"conformance \xc3\xa9 value\twith tab";

/// Which values around the 512000-byte cap a store can be seeded with.
enum Capacity {
    /// Exactly the cap and one byte more.
    BeyondTheCap,
    /// Exactly the cap only.
    UpToTheCap,
    /// Neither (the store's own limit is lower).
    Small,
}

/// A source kind: where to put a value so that a source URI finds it.
trait Kind {
    /// Stores `value` and returns the URI that reads it.
    fn put(&mut self, value: &[u8]) -> String;
    /// A URI of this kind that finds nothing.
    fn absent(&mut self) -> String;
    /// Policy text the kind needs (for example a keyring backend).
    fn policy(&self) -> String {
        String::new()
    }
    /// The environment `buildbroker resolve` needs to reach the store.
    fn env(&self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
    /// Which values around the cap this store can be given here.
    fn capacity(&self) -> Capacity {
        Capacity::BeyondTheCap
    }
}

struct Env {
    vars: Vec<(String, Vec<u8>)>,
}

impl Kind for Env {
    fn put(&mut self, value: &[u8]) -> String {
        let name = format!("CONFORMANCE_{}", self.vars.len());
        self.vars.push((name.clone(), value.to_vec()));
        format!("env:{name}")
    }
    fn absent(&mut self) -> String {
        "env:CONFORMANCE_SURELY_UNSET".into()
    }
    fn env(&self) -> Vec<(String, Vec<u8>)> {
        self.vars.clone()
    }
    /// The kernel limits one environment string to 128 KiB.
    fn capacity(&self) -> Capacity {
        Capacity::Small
    }
}

struct File {
    dir: tempfile::TempDir,
    n: usize,
}

impl Kind for File {
    fn put(&mut self, value: &[u8]) -> String {
        self.n += 1;
        let p = self.dir.path().join(format!("v{}", self.n));
        std::fs::write(&p, value).unwrap();
        format!("file:{}", p.display())
    }
    fn absent(&mut self) -> String {
        format!("file:{}/absent", self.dir.path().display())
    }
}

/// exec: a program that prints a stored file, as `op read` prints an item.
struct Exec {
    dir: tempfile::TempDir,
    n: usize,
}

impl Exec {
    fn script(&self, name: &str, body: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    }
}

impl Kind for Exec {
    fn put(&mut self, value: &[u8]) -> String {
        self.n += 1;
        let data = self.dir.path().join(format!("v{}", self.n));
        std::fs::write(&data, value).unwrap();
        // One trailing newline is removed from exec output: print the value and one newline.
        let script = self.script(&format!("get{}", self.n), "cat \"$1\"; echo");
        format!("exec:{script} {}", data.display())
    }
    fn absent(&mut self) -> String {
        let script = self.script("absent", "echo 'item not found' >&2; exit 2");
        format!("exec:{script}")
    }
}

struct KernelKeyring {
    service: String,
    keys: Vec<KernelKey>,
}

impl Kind for KernelKeyring {
    fn put(&mut self, value: &[u8]) -> String {
        let account = format!("acct{}", self.keys.len());
        self.keys
            .push(KernelKey::add(&self.service, &account, value));
        format!("keyring:{}/{account}", self.service)
    }
    fn absent(&mut self) -> String {
        format!("keyring:{}/absent", self.service)
    }
    fn policy(&self) -> String {
        "[keyring]\nbackend = \"kernel\"\n".into()
    }
    /// The kernel caps a "user" key's payload at 32767 bytes.
    fn capacity(&self) -> Capacity {
        Capacity::Small
    }
}

struct SecretService {
    bed: SecretServiceBed,
    n: usize,
}

impl Kind for SecretService {
    fn put(&mut self, value: &[u8]) -> String {
        self.n += 1;
        let account = format!("acct{}", self.n);
        if value.len() < 4096 {
            self.bed.secret_tool_store("conformance", &account, value);
        } else {
            // secret-tool refuses long values ("password is too long"); the Secret Service
            // itself does not, and `buildbroker keyring set` stores them.
            let mut child = self
                .bed
                .command(env!("CARGO_BIN_EXE_buildbroker"))
                .args(["keyring", "set", "--raw", "--backend", "secret-service"])
                .arg(format!("conformance/{account}"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), value).unwrap();
            assert!(
                child.wait().unwrap().success(),
                "buildbroker keyring set failed"
            );
        }
        format!("keyring:conformance/{account}")
    }
    fn absent(&mut self) -> String {
        "keyring:conformance/absent".into()
    }
    fn policy(&self) -> String {
        "[keyring]\nbackend = \"secret-service\"\n".into()
    }
    fn env(&self) -> Vec<(String, Vec<u8>)> {
        vec![(
            "DBUS_SESSION_BUS_ADDRESS".into(),
            self.bed.address.clone().into_bytes(),
        )]
    }
    /// Every tool that stores items here (secret-tool, `buildbroker keyring set`) refuses a
    /// value over the cap, so no such item can be made to test the read side.
    fn capacity(&self) -> Capacity {
        Capacity::UpToTheCap
    }
}

/// aws-sm: a real moto_server, seeded through the AWS SDK (text as SecretString, other bytes
/// as SecretBinary).
struct AwsSm {
    moto: moto::Moto,
    n: usize,
}

impl Kind for AwsSm {
    fn put(&mut self, value: &[u8]) -> String {
        self.n += 1;
        let name = format!("conformance/v{}", self.n);
        match std::str::from_utf8(value) {
            Ok(text) => {
                self.moto.create_string(&name, text);
            }
            Err(_) => self.moto.create_binary(&name, value),
        }
        format!("aws-sm:{name}")
    }
    fn absent(&mut self) -> String {
        "aws-sm:conformance/absent".into()
    }
    fn policy(&self) -> String {
        format!(
            "[aws]\nendpoint_url = \"{}\"\nregion = \"{}\"\n",
            self.moto.endpoint(),
            moto::REGION
        )
    }
    /// moto's fake credentials; no instance metadata lookups (nothing leaves loopback).
    fn env(&self) -> Vec<(String, Vec<u8>)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
    }
    /// AWS caps a secret at 64 KiB; moto does not, so both sides of the cap can be stored.
    fn capacity(&self) -> Capacity {
        Capacity::BeyondTheCap
    }
}

fn resolve(kind: &dyn Kind, sources: &[String], required: bool) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let list = sources
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &policy,
        format!(
            "{}\n[secrets.c]\nsources = [{list}]\nrequired = {required}\n",
            kind.policy()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_buildbroker"));
    cmd.args(["resolve", "--config"])
        .arg(&policy)
        .arg("c")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap());
    for (k, v) in kind.env() {
        use std::os::unix::ffi::OsStrExt;
        cmd.env(k, std::ffi::OsStr::from_bytes(&v));
    }
    cmd.env("CONFORMANCE_FALLBACK", "fallback-value")
        .env("STATE_DIRECTORY", state_dir());
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// The state directory every `resolve` of this suite uses, so its fingerprint key is known.
fn state_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// What `resolve` prints for a value: its fingerprint under the suite's key.
fn fingerprint(v: &[u8]) -> String {
    let key = std::fs::read(state_dir().join("fingerprint.key")).unwrap();
    buildbroker::cli::fingerprint::keyed_fingerprint(&key, v)
}

fn conformance(kind: &mut dyn Kind) {
    // A stored value resolves byte for byte and is never printed.
    let uri = kind.put(VALUE);
    let (out, text) = resolve(kind, std::slice::from_ref(&uri), true);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "c: resolved from {uri} ({} bytes, fingerprint {})",
            VALUE.len(),
            fingerprint(VALUE)
        )),
        "{text}"
    );
    assert!(
        !text.as_bytes().windows(VALUE.len()).any(|w| w == VALUE),
        "the value was printed: {text}"
    );

    // Absent: the chain falls through to the next source.
    let absent = kind.absent();
    let (out, text) = resolve(
        kind,
        &[absent.clone(), "env:CONFORMANCE_FALLBACK".into()],
        true,
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("c: resolved from env:CONFORMANCE_FALLBACK (14 bytes"),
        "{text}"
    );
    assert!(
        text.contains(&format!("  {absent}")) && text.contains("missing: "),
        "{text}"
    );

    // Required and absent: the build would fail, naming the source.
    let (out, text) = resolve(kind, std::slice::from_ref(&absent), true);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("is required by policy but no source has it") && text.contains(&absent),
        "{text}"
    );

    let capacity = kind.capacity();
    if matches!(capacity, Capacity::BeyondTheCap | Capacity::UpToTheCap) {
        let at_cap = vec![b'x'; CAP];
        let uri = kind.put(&at_cap);
        let (out, text) = resolve(kind, std::slice::from_ref(&uri), true);
        assert_eq!(
            out.status.code(),
            Some(0),
            "exactly the cap is accepted: {text}"
        );
        assert!(text.contains(&format!("({CAP} bytes")), "{text}");
    }
    if matches!(capacity, Capacity::BeyondTheCap) {
        let over = vec![b'x'; CAP + 1];
        let uri = kind.put(&over);
        let (out, text) = resolve(kind, std::slice::from_ref(&uri), true);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("512000-byte limit"), "{text}");
    }
}

#[test]
fn env_conforms() {
    conformance(&mut Env { vars: Vec::new() });
}

#[test]
fn file_conforms() {
    conformance(&mut File {
        dir: tempfile::tempdir().unwrap(),
        n: 0,
    });
}

#[test]
fn exec_conforms() {
    conformance(&mut Exec {
        dir: tempfile::tempdir().unwrap(),
        n: 0,
    });
}

#[test]
fn aws_sm_conforms() {
    conformance(&mut AwsSm {
        moto: moto::Moto::start(),
        n: 0,
    });
}

#[test]
fn kernel_keyring_conforms() {
    conformance(&mut KernelKeyring {
        service: unique("conformance"),
        keys: Vec::new(),
    });
}

#[test]
fn secret_service_conforms() {
    conformance(&mut SecretService {
        bed: SecretServiceBed::start(),
        n: 0,
    });
}

fn policy_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_locked_collection_is_a_clear_error_not_a_prompt() {
    let bed = SecretServiceBed::start();
    bed.secret_tool_store("locked", "acct", b"v");
    bed.lock_login_collection();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(
        &dir,
        "[keyring]\nbackend = \"auto\"\n[secrets.t]\nsources = [\"keyring:locked/acct\"]\n",
    );
    let started = std::time::Instant::now();
    let out = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["resolve", "--config"])
        .arg(&policy)
        .arg("t")
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "no prompt, no wait"
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "keyring:locked/acct (error: the Secret Service collection holding it is locked"
        ),
        "{text}"
    );
    assert!(
        text.contains("gnome-keyring-daemon --unlock"),
        "says what to do: {text}"
    );
}

#[test]
fn a_hung_secret_service_is_bounded_by_the_timeout() {
    let bed = SecretServiceBed::start();
    bed.secret_tool_store("hung", "acct", b"v");
    // A real keyring daemon that stops answering: SIGSTOP it.
    let pid = bed.keyring_pid();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(
        &dir,
        "[keyring]\nbackend = \"secret-service\"\ntimeout = \"500ms\"\n[secrets.t]\nsources = [\"keyring:hung/acct\"]\n",
    );
    let started = std::time::Instant::now();
    let out = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["resolve", "--config"])
        .arg(&policy)
        .arg("t")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let _ = Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    let text = output_text(&out);
    assert!(
        elapsed < std::time::Duration::from_secs(3),
        "took {elapsed:?}: {text}"
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the Secret Service did not answer within 500ms"),
        "{text}"
    );
}

#[test]
fn auto_uses_the_kernel_keyring_without_a_session_bus() {
    let service = unique("auto");
    let _key = KernelKey::add(&service, "acct", b"kernel-value");
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(
        &dir,
        &format!("[secrets.t]\nsources = [\"keyring:{service}/acct\"]\n"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["resolve", "--config"])
        .arg(&policy)
        .arg("t")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .output()
        .unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("resolved from keyring:{service}/acct (12 bytes")),
        "{text}"
    );
}

#[test]
fn keyring_cli_round_trip_in_the_kernel_keyring_across_sessions() {
    let entry = format!("{}/token", unique("cli"));
    let bin = env!("CARGO_BIN_EXE_buildbroker");
    let set = Command::new(bin)
        .args(["keyring", "set", "--backend", "kernel", &entry])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(b"from-stdin\n");
    assert!(set.status.success(), "{}", output_text(&set));
    assert!(
        output_text(&set).contains("in the kernel keyring (10 bytes"),
        "one newline removed: {}",
        output_text(&set)
    );
    assert!(!output_text(&set).contains("from-stdin"));

    // A daemon started later in another session (here: a new anonymous session keyring, as
    // systemd gives a service) finds it.
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(
        &dir,
        &format!("[keyring]\nbackend = \"kernel\"\n[secrets.t]\nsources = [\"keyring:{entry}\"]\n"),
    );
    let out = Command::new("keyctl")
        .args(["session", "-", bin, "resolve", "--config"])
        .arg(&policy)
        .arg("t")
        .output()
        .unwrap();
    assert!(
        output_text(&out).contains(&format!("resolved from keyring:{entry} (10 bytes")),
        "{}",
        output_text(&out)
    );

    let info = Command::new(bin)
        .args(["keyring", "get-info", "--backend", "kernel", &entry])
        .output()
        .unwrap();
    let text = output_text(&info);
    assert!(
        info.status.success()
            && text.contains("found in the persistent keyring")
            && text.contains("10 bytes"),
        "{text}"
    );
    assert!(!text.contains("from-stdin"));

    let del = Command::new(bin)
        .args(["keyring", "delete", "--backend", "kernel", &entry])
        .output()
        .unwrap();
    assert!(del.status.success(), "{}", output_text(&del));
    let gone = Command::new(bin)
        .args(["keyring", "get-info", "--backend", "kernel", &entry])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1), "{}", output_text(&gone));
}

#[test]
fn keyring_cli_stores_where_secret_tool_reads() {
    let bed = SecretServiceBed::start();
    let out = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["keyring", "set", "cli/acct"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(b"stored-by-buildbroker\n");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("in the Secret Service"),
        "auto picked the Secret Service: {}",
        output_text(&out)
    );
    let lookup = bed
        .command("secret-tool")
        .args(["lookup", "service", "cli", "username", "acct"])
        .output()
        .unwrap();
    assert_eq!(lookup.stdout, b"stored-by-buildbroker");

    // Storing again replaces the one item's value (the keyring crate updates a unique match).
    let again = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["keyring", "set", "cli/acct"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(b"replaced-value\n");
    assert!(again.status.success(), "{}", output_text(&again));
    let info = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["keyring", "get-info", "cli/acct"])
        .output()
        .unwrap();
    let info_text = output_text(&info);
    assert!(info.status.success(), "{info_text}");
    assert!(
        info_text.contains("backend  Secret Service")
            && info_text.contains("service=cli")
            && info_text.contains("username=acct")
            && info_text.contains("value    14 bytes"),
        "{info_text}"
    );
    assert!(
        !info_text.contains("replaced-value"),
        "get-info printed the value"
    );
    let items = bed
        .command("secret-tool")
        .args(["search", "--all", "service", "cli", "username", "acct"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&items.stdout).to_string()
        + &String::from_utf8_lossy(&items.stderr);
    assert_eq!(
        listing.matches("secret = replaced-value").count(),
        1,
        "one item, with the new value: {listing}"
    );
    let removed = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["keyring", "delete", "cli/acct"])
        .output()
        .unwrap();
    assert!(removed.status.success(), "{}", output_text(&removed));
    assert!(output_text(&removed).contains("removed keyring:cli/acct (1 entry)"));
    let gone = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["keyring", "get-info", "cli/acct"])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1), "{}", output_text(&gone));

    let empty = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["keyring", "set", "cli/empty"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(b"");
    assert_eq!(empty.status.code(), Some(2));
    assert!(output_text(&empty).contains("refusing to store an empty value"));
}

/// Runs a command with the given bytes on stdin.
trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> Output;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> Output {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
        child.wait_with_output().unwrap()
    }
}

/// Runs `buildbroker resolve ID` on a policy text, with a clean environment.
fn resolve_with(policy_text: &str, id: &str) -> (Output, String, std::time::Duration) {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(&dir, policy_text);
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["resolve", "--config"])
        .arg(&policy)
        .arg(id)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .output()
        .unwrap();
    let took = started.elapsed();
    let text = output_text(&out);
    (out, text, took)
}

#[test]
fn a_fifo_file_source_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Nobody ever writes to it: a blocking open would hang resolve (and a daemon's thread).
    let (out, text, took) = resolve_with(
        &format!(
            "[secrets.t]\nsources = [\"file:{}\"]\nrequired = true\n",
            fifo.display()
        ),
        "t",
    );
    assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{} is a FIFO (named pipe), not a regular file",
            fifo.display()
        )),
        "{text}"
    );
}

/// A second unix user for files the root daemon must not trust (created once, idempotently).
fn other_user() -> (u32, u32) {
    let exists = |name: &str| {
        Command::new("id")
            .args(["-u", name])
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    if exists("bb-other").is_none() {
        // Exit 9: another test created it meanwhile.
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "bb-other",
            ])
            .status()
            .unwrap();
        assert!(matches!(status.code(), Some(0 | 9)), "useradd: {status}");
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "bb-other"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

#[test]
fn a_root_daemon_refuses_another_users_file_unless_the_policy_allows_it() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test checks the root daemon's rule and runs as root (as CI does)"
    );
    let (uid, gid) = other_user();
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("netrc");
    std::fs::write(&theirs, b"machine example login ci password p").unwrap();
    std::os::unix::fs::chown(&theirs, Some(uid), Some(gid)).unwrap();
    let sources = format!(
        "[secrets.t]\nsources = [\"file:{}\"]\nrequired = true\n",
        theirs.display()
    );

    let (out, text, _) = resolve_with(&sources, "t");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("refusing {}", theirs.display()))
            && text.contains(&format!("it is owned by uid {uid} (bb-other), not root"))
            && text.contains(&format!(
                "[file] allow_foreign = [\"{}\"]",
                theirs.display()
            )),
        "names the path, the owner and the opt-in: {text}"
    );

    let allowed = format!(
        "{sources}[file]\nallow_foreign = [\"{}\"]\n",
        theirs.display()
    );
    let (out, text, _) = resolve_with(&allowed, "t");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("t: resolved from file:"), "{text}");

    // Root's own file, but in a directory the other user owns: they could swap it.
    let their_dir = dir.path().join("home");
    std::fs::create_dir(&their_dir).unwrap();
    std::os::unix::fs::chown(&their_dir, Some(uid), Some(gid)).unwrap();
    let inside = their_dir.join("token");
    std::fs::write(&inside, b"v").unwrap();
    let (out, text, _) = resolve_with(
        &format!("[secrets.t]\nsources = [\"file:{}\"]\n", inside.display()),
        "t",
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{} is owned by uid {uid} (bb-other)",
            their_dir.display()
        )),
        "{text}"
    );

    // A symlink the other user planted, pointing at root's file.
    let rootfile = dir.path().join("root-only");
    std::fs::write(&rootfile, b"root's").unwrap();
    let link = their_dir.join("link");
    std::os::unix::fs::symlink(&rootfile, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(uid), Some(gid)).unwrap();
    let (out, text, _) = resolve_with(
        &format!("[secrets.t]\nsources = [\"file:{}\"]\n", link.display()),
        "t",
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("bb-other"), "{text}");

    // A group-writable file of root's.
    let shared = dir.path().join("shared");
    std::fs::write(&shared, b"v").unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o660)).unwrap();
    let (out, text, _) = resolve_with(
        &format!("[secrets.t]\nsources = [\"file:{}\"]\n", shared.display()),
        "t",
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("is writable by group or others (mode 0660)"),
        "{text}"
    );
}

#[test]
fn allow_foreign_must_name_a_file_source() {
    let (out, text, _) = resolve_with(
        "[secrets.t]\nsources = [\"file:/etc/hostname\"]\n[file]\nallow_foreign = [\"/etc/hostnme\"]\n",
        "t",
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("[file] allow_foreign: no file: source of this policy reads /etc/hostnme"),
        "{text}"
    );
}

/// Set in the re-executed test process that talks to the bed's Secret Service in-process (the
/// crate forbids the `unsafe` that setting DBUS_SESSION_BUS_ADDRESS in this process would need).
const CONCURRENT_CHILD: &str = "BB_TEST_SECRET_SERVICE_CHILD_PID";

#[test]
fn a_hung_secret_service_makes_each_id_wait_its_own_timeout_not_a_queue() {
    if let Some(pid) = std::env::var_os(CONCURRENT_CHILD) {
        return concurrent_lookups_against_a_stopped_keyring(&pid.to_string_lossy());
    }
    let bed = SecretServiceBed::start();
    bed.secret_tool_store("queue", "a", b"value-a");
    bed.secret_tool_store("queue", "b", b"value-b");
    let pid = bed.keyring_pid();
    let out = bed
        .command(std::env::current_exe().unwrap().to_str().unwrap())
        .args([
            "--exact",
            "a_hung_secret_service_makes_each_id_wait_its_own_timeout_not_a_queue",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CONCURRENT_CHILD, pid.to_string())
        .output()
        .unwrap();
    // Whatever happened in the child, the keyring daemon runs again for the bed's teardown.
    let _ = Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("both ids answered within"), "{text}");
    for line in text.lines().filter(|l| l.contains("answered within")) {
        println!("{line}");
    }
}

/// In the bed's session: a warm shared connection, then the keyring daemon stops; two ids
/// asked at once must both fail at about the timeout (before: the second queued behind the
/// first's call, 2×), and the same while the connection is being opened.
fn concurrent_lookups_against_a_stopped_keyring(pid: &str) {
    use buildbroker::source::{KeyringBackend, KeyringSpec, SourceRuntime, SourceSettings};
    let timeout = std::time::Duration::from_millis(1000);
    let settings = SourceSettings {
        keyring_backend: KeyringBackend::SecretService,
        keyring_timeout: timeout,
        ..SourceSettings::default()
    };
    let a = KeyringSpec::parse("queue/a").unwrap();
    let b = KeyringSpec::parse("queue/b").unwrap();
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, pid])
                .status()
                .unwrap()
                .success()
        )
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let warm = SourceRuntime::new(settings.clone());
        assert!(matches!(
            warm.keyring.lookup(&a, &warm.settings).await,
            Ok(buildbroker::source::Lookup::Found(_))
        ));
        let cold = SourceRuntime::new(settings.clone());
        signal("-STOP");
        for (what, runtime) in [("a warm connection", &warm), ("opening the connection", &cold)] {
            let started = std::time::Instant::now();
            let (ra, rb) = tokio::join!(
                runtime.keyring.lookup(&a, &runtime.settings),
                runtime.keyring.lookup(&b, &runtime.settings)
            );
            let took = started.elapsed();
            for r in [ra, rb] {
                match r {
                    Err(e) => assert!(
                        e.message.contains("did not answer within 1s"),
                        "{what}: {}",
                        e.message
                    ),
                    Ok(_) => panic!("{what}: a stopped keyring answered"),
                }
            }
            assert!(
                // Below two timeouts (one queued behind the other), with room for a loaded CI.
                took < timeout + std::time::Duration::from_millis(900),
                "{what}: two ids took {took:?} with a {timeout:?} timeout: one queued behind the other"
            );
            println!("{what}: both ids answered within {took:?}");
        }
        signal("-CONT");
        // And the keyring serves again once it wakes: the timed-out connection was dropped.
        let again = warm.keyring.lookup(&b, &warm.settings).await;
        assert!(
            matches!(again, Ok(buildbroker::source::Lookup::Found(_))),
            "the keyring answers again after SIGCONT"
        );
    });
}

/// The CLI, unlike the daemon's reader, goes through the keyring crate, which asks the Secret
/// Service to unlock a locked collection (a prompt on a desktop). Headless, no prompter can be
/// shown: the CLI fails with the store's reason instead of hanging, and never prints a value.
/// A Secret Service that stops answering is bounded by the policy's keyring timeout.
#[test]
fn keyring_cli_asks_to_unlock_and_is_bounded_when_the_service_hangs() {
    let bed = SecretServiceBed::start();
    bed.secret_tool_store("locked", "acct", b"locked-value");
    bed.lock_login_collection();
    let started = std::time::Instant::now();
    let out = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args([
            "keyring",
            "get-info",
            "--backend",
            "secret-service",
            "locked/acct",
        ])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    // gnome-keyring answered the unlock request with a prompt that nobody can show here.
    assert!(
        text.contains("the Secret Service refused access") && text.contains("prompt dismissed"),
        "{text}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{text}"
    );
    assert!(!text.contains("locked-value"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(&dir, "[keyring]\ntimeout = \"500ms\"\n");
    let pid = bed.keyring_pid();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let started = std::time::Instant::now();
    let out = bed
        .command(env!("CARGO_BIN_EXE_buildbroker"))
        .args([
            "keyring",
            "get-info",
            "--backend",
            "secret-service",
            "--config",
        ])
        .arg(&policy)
        .arg("locked/acct")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let _ = Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    let text = output_text(&out);
    assert!(
        elapsed < std::time::Duration::from_secs(3),
        "took {elapsed:?}: {text}"
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("the Secret Service did not answer within 500ms"),
        "{text}"
    );
}
