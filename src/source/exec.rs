//! `exec:PROGRAM ARG…` — a program's stdout is the value: the bridge to 1Password's `op`,
//! `vault`, `gcloud`, `az` and in-house tools.
//!
//! The program runs without a shell, with a small explicit environment (`PATH`, `HOME`, `USER`,
//! `LOGNAME`, `LANG`, `XDG_RUNTIME_DIR`, `DBUS_SESSION_BUS_ADDRESS` as the daemon has them, plus
//! `BUILDBROKER_SECRET_ID`), no stdin, and a timeout. It runs in a process group of its own, and
//! at the timeout (or when the request is abandoned) the whole group is killed: a wrapper script
//! whose child still holds stdout open can neither hang the request nor outlive it. A program
//! that detaches itself (`setsid`) leaves the group, and is its own business. Exit code 2 means
//! "not found, try the next source" (Earthly's convention); any other failure is an error that
//! carries the program's stderr (at most 4 KiB) and never its stdout. Exactly one trailing
//! newline (`\n` or `\r\n`) is removed from the value, since `op read`, `vault kv get -field`
//! and `echo` all print one; a value that must end in a newline should print two.

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Lookup, SourceError, expand_home};
use crate::secret::{MAX_SECRET_BYTES, SecretBytes, SecretFill};

/// Environment variables passed through to the program when the daemon has them.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
];
/// How much of the program's stderr an error message may carry.
const MAX_STDERR: usize = 4096;

/// A program and its arguments, split on whitespace (no quoting: wrap anything fancier in a
/// script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub program: String,
    pub args: Vec<String>,
}

impl ExecSpec {
    pub fn parse(rest: &str, home: Option<&str>) -> Result<ExecSpec, String> {
        let mut words = rest.split_whitespace();
        let Some(program) = words.next() else {
            return Err(
                "expected exec:PROGRAM ARG…, as in \"exec:op read op://ci/pypi/token\"".into(),
            );
        };
        let program = if program.starts_with('~') {
            expand_home(program, home).to_string_lossy().into_owned()
        } else {
            program.to_string()
        };
        Ok(ExecSpec {
            program,
            args: words.map(str::to_string).collect(),
        })
    }
}

impl fmt::Display for ExecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

pub async fn lookup(spec: &ExecSpec, id: &str, timeout: Duration) -> Result<Lookup, SourceError> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args).env_clear();
    for name in PASSED_ENV {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.env("BUILDBROKER_SECRET_ID", id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = spawn(&mut cmd)
        .await
        .map_err(|e| SourceError::permanent(format!("cannot run {}: {e}", spec.program)))?;
    // Armed until the program has exited and both pipes reached EOF: if this future is dropped
    // (a build that went away) or times out, everything the program started dies with it.
    let mut group = ProcessGroup::of(&child);
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut exited = false;
    let run = async {
        let (value, err, status) = tokio::join!(
            read_value(stdout),
            read_bounded(stderr, MAX_STDERR),
            async {
                let status = child.wait().await;
                exited = true;
                status
            }
        );
        (value, err, status)
    };
    let Ok((value, stderr, status)) = tokio::time::timeout(timeout, run).await else {
        group.kill();
        // SIGKILL cannot be ignored: this wait is short, and it reaps the program.
        let _ = child.wait().await;
        let message = if exited {
            format!(
                "{} exited, but a process it started kept its output open; timed out after {timeout:?} and killed its process group",
                spec.program
            )
        } else {
            format!(
                "{} timed out after {timeout:?} and was killed with its process group",
                spec.program
            )
        };
        return Err(SourceError::transient(message));
    };
    group.disarm();
    let status =
        status.map_err(|e| SourceError::transient(format!("waiting for {}: {e}", spec.program)))?;
    let stderr = describe_stderr(&stderr);
    // Over the cap: we stopped reading, so the program died of SIGPIPE; the cap is the reason.
    let value = match value {
        Err(e) if !e.transient => return Err(e),
        v => v,
    };
    match status.code() {
        Some(0) => {
            let mut value = value?;
            value.strip_one_newline();
            Ok(Lookup::Found(value))
        }
        Some(2) => Ok(Lookup::Missing(format!(
            "{} exited 2 (not found){stderr}",
            spec.program
        ))),
        Some(code) => Err(SourceError::permanent(format!(
            "{} exited with status {code}{stderr}",
            spec.program
        ))),
        None => Err(SourceError::transient(format!(
            "{} was killed by a signal{stderr}",
            spec.program
        ))),
    }
}

/// The program's own process group (`process_group(0)` makes its pid the group id), killed
/// whole with SIGKILL when armed and dropped. The group id cannot be reused while any member
/// lives, so killing it late never reaches an unrelated process.
struct ProcessGroup(Option<rustix::process::Pid>);

impl ProcessGroup {
    fn of(child: &tokio::process::Child) -> ProcessGroup {
        ProcessGroup(
            child
                .id()
                .and_then(|id| rustix::process::Pid::from_raw(id as i32)),
        )
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // ESRCH: everyone in it has exited already.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
    }

    /// The program finished on its own; leave whatever it left behind alone.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns, retrying briefly on ETXTBSY: a program being rewritten (or one another thread of
/// this process just wrote, whose write descriptor a concurrently forked child still holds)
/// cannot be executed for a moment.
async fn spawn(cmd: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10 * tries)).await;
            }
            result => return result,
        }
    }
}

/// Reads stdout into a buffer allocated once (no reallocation copies), refusing more than the
/// cap.
async fn read_value(mut out: impl AsyncRead + Unpin) -> Result<SecretBytes, SourceError> {
    // Room for a value at the cap, the "\r\n" that is stripped, and one byte to notice more.
    let mut fill = SecretFill::new(MAX_SECRET_BYTES + 3);
    loop {
        let Some(spare) = fill.spare() else {
            return Err(SourceError::permanent(format!(
                "the program printed more than the {MAX_SECRET_BYTES}-byte limit that buildx and BuildKit accept"
            )));
        };
        match out.read(spare).await {
            Ok(0) => break,
            Ok(n) => fill.advance(n),
            Err(e) => {
                return Err(SourceError::transient(format!(
                    "reading the program's output: {e}"
                )));
            }
        }
    }
    Ok(fill.finish())
}

async fn read_bounded(mut r: impl AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 1024];
    // Keep reading (and discarding) past the limit so the program never blocks on a full pipe.
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    kept
}

fn describe_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}
