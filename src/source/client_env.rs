//! `client-env:NAME` — a variable of the **build client's** environment: the process that
//! opened the session (buildx, started from the user's shell), read from `/proc/<pid>/environ`.
//! This is what `docker buildx build --secret id=x,env=X` does, without the flag.
//!
//! Race-free by pinning: [`ClientProcess::pin`] opens a pidfd for the peer's pid and checks
//! that the process it names started before the connection was accepted and runs as the uid
//! the kernel reported for the socket, so a pid recycled between `connect` and the pin is
//! refused. A lookup re-checks the start time, reads the environment, and then checks that the
//! pidfd's process is still alive: if it is, the pid named that very process for the whole
//! read, so a recycled pid can never supply a value.
//!
//! The environment block is read into one zeroizing buffer of exactly its size, the value
//! copied into [`SecretBytes`], and the block zeroized; nothing else of it is kept or logged.
//! A peer whose pid is not visible in the daemon's pid namespace (the kernel reports pid 0),
//! that exited, or whose environment the daemon may not read is "not here": the next source is
//! tried.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};
use rustix::time::{ClockId, Timespec, clock_gettime};

use super::{Lookup, SourceError};
use crate::access::PeerInfo;
use crate::secret::{SecretBytes, SecretFill};

/// The largest environment block read (Linux caps argv + envp at a quarter of the stack
/// rlimit; 8 MiB stacks give 2 MiB).
const MAX_ENVIRON: usize = 4 * 1024 * 1024;

/// When a connection was accepted, on the clock process start times use (CLOCK_BOOTTIME, in
/// clock ticks since boot: proc(5), /proc/pid/stat field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AcceptedAt(u64);

impl AcceptedAt {
    pub fn now() -> Self {
        let Timespec { tv_sec, tv_nsec } = clock_gettime(ClockId::Boottime);
        let hz = rustix::param::clock_ticks_per_second();
        // Round up: a process that started in the same tick as the accept still counts as
        // started before it.
        let ticks = tv_sec as u64 * hz + (tv_nsec as u64 * hz).div_ceil(1_000_000_000);
        AcceptedAt(ticks)
    }
}

/// The build client's process, pinned for one session, or why it cannot be read.
#[derive(Debug)]
pub enum ClientProcess {
    Pinned {
        pid: i32,
        /// Keeps the process identity: polls readable once the process has exited.
        pidfd: OwnedFd,
        /// Its start time, to tell it from a later process with a recycled pid.
        start_ticks: u64,
    },
    /// Not readable; the reason is what `client-env:` reports as "not here".
    Unavailable(String),
}

impl ClientProcess {
    /// Pins the process that opened a connection. `accepted` is when the connection was
    /// accepted: the pinned process must have started no later.
    pub fn pin(peer: &PeerInfo, accepted: AcceptedAt) -> ClientProcess {
        let unavailable = |why: &str| ClientProcess::Unavailable(why.to_string());
        let pid = match peer.pid {
            Some(pid) if pid > 0 => pid,
            _ => {
                return unavailable(
                    "the build client's process is not visible in the daemon's pid namespace",
                );
            }
        };
        let Some(raw) = Pid::from_raw(pid) else {
            return unavailable("the build client's pid is not valid");
        };
        let Ok(pidfd) = pidfd_open(raw, PidfdFlags::empty()) else {
            return unavailable("the build client's process has exited");
        };
        let Some(stat) = Stat::read(pid) else {
            return unavailable("the build client's process has exited");
        };
        if stat.start_ticks > accepted.0 {
            return unavailable(
                "the build client's pid now names a process that started after it connected",
            );
        }
        match effective_uid(pid) {
            Some(uid) if uid == peer.uid => {}
            _ => {
                return unavailable("the build client's pid now names a process of another user");
            }
        }
        ClientProcess::Pinned {
            pid,
            pidfd,
            start_ticks: stat.start_ticks,
        }
    }

    /// Whether the pinned process is still running (a pidfd polls readable once it exits).
    fn alive(pidfd: &OwnedFd) -> bool {
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&zero)), Ok(0))
    }
}

/// What a lookup needs from /proc/<pid>/stat.
struct Stat {
    start_ticks: u64,
    /// Where the environment block lives (fields 50–51, Linux 3.5+; 0 without ptrace access).
    env_len: usize,
}

impl Stat {
    fn read(pid: i32) -> Option<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces or ')'.
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let start_ticks = field(22)?;
        let env_len = match (field(50), field(51)) {
            (Some(start), Some(end)) if end > start => (end - start) as usize,
            _ => 0,
        };
        Some(Stat {
            start_ticks,
            env_len,
        })
    }
}

fn effective_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The value of `name` in the build client's environment. The /proc reads run on the blocking
/// pool: reading another process's memory can stall (a hostile client can hold its own memory
/// map's lock), and that must cost at most this request its deadline, never a runtime worker.
pub async fn lookup(
    process: Option<Arc<ClientProcess>>,
    name: &str,
) -> Result<Lookup, SourceError> {
    let name = name.to_string();
    tokio::task::spawn_blocking(move || lookup_blocking(process.as_deref(), &name))
        .await
        .unwrap_or_else(|e| {
            Err(SourceError::transient(format!(
                "reading the build client's environment failed: {e}"
            )))
        })
}

fn lookup_blocking(process: Option<&ClientProcess>, name: &str) -> Result<Lookup, SourceError> {
    let (pid, pidfd, start_ticks) = match process {
        None => {
            return Ok(Lookup::Missing(
                "read from the build client's environment at build time".into(),
            ));
        }
        Some(ClientProcess::Unavailable(why)) => return Ok(Lookup::Missing(why.clone())),
        Some(ClientProcess::Pinned {
            pid,
            pidfd,
            start_ticks,
        }) => (*pid, pidfd, *start_ticks),
    };
    let gone = || {
        Ok(Lookup::Missing(
            "the build client's process has exited".into(),
        ))
    };
    let Some(stat) = Stat::read(pid) else {
        return gone();
    };
    if stat.start_ticks != start_ticks {
        return gone();
    }
    if stat.env_len == 0 {
        return Ok(Lookup::Missing(
            "the daemon may not read the build client's environment".into(),
        ));
    }
    if stat.env_len > MAX_ENVIRON {
        return Err(SourceError::permanent(format!(
            "the build client's environment is {} bytes, over the {MAX_ENVIRON}-byte limit",
            stat.env_len
        )));
    }
    let block = match read_environ(pid, stat.env_len) {
        Ok(block) => block,
        Err(e) => {
            tracing::debug!(pid, error = %e, "cannot read the build client's environment");
            return Ok(Lookup::Missing(
                "the daemon may not read the build client's environment".into(),
            ));
        }
    };
    // Only now is it known that the pid named the pinned process throughout the read.
    if !ClientProcess::alive(pidfd) {
        return gone();
    }
    Ok(match find_var(block.expose(), name.as_bytes()) {
        Some(value) => Lookup::Found(SecretBytes::new(value.to_vec())),
        None => Lookup::Missing("not set in the build client's environment".into()),
    })
}

/// Reads the whole environment block into one zeroizing buffer of its exact size (+1, to
/// notice a block that grew).
fn read_environ(pid: i32, len: usize) -> std::io::Result<SecretBytes> {
    let mut file = std::fs::File::open(format!("/proc/{pid}/environ"))?;
    let mut fill = SecretFill::new(len + 1);
    while let Some(spare) = fill.spare() {
        match file.read(spare) {
            Ok(0) => break,
            Ok(n) => fill.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(fill.finish())
}

/// The value of `name` in a NUL-separated `NAME=value` block: the first entry with that name,
/// as getenv(3) finds it.
fn find_var<'a>(block: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    block
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(name)?.strip_prefix(b"="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> PeerInfo {
        PeerInfo {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            pid: Some(std::process::id() as i32),
            client: crate::access::ClientId::Uid(rustix::process::geteuid().as_raw()),
        }
    }

    #[test]
    fn finds_exact_names_only() {
        let block = b"PATH=/bin\0TOKEN_X=no\0TOKEN=yes=really\0EMPTY=\0";
        assert_eq!(find_var(block, b"TOKEN"), Some(&b"yes=really"[..]));
        assert_eq!(find_var(block, b"EMPTY"), Some(&b""[..]));
        assert_eq!(find_var(block, b"TOKEN_"), None);
        assert_eq!(find_var(block, b"MISSING"), None);
    }

    #[test]
    fn reads_a_live_process_environment() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env_clear()
            .env("BB_CLIENT_ENV_TEST", "from-the-child")
            .spawn()
            .unwrap();
        // spawn returns once exec has committed, a moment before the kernel records where the
        // new environment lives (/proc/pid/stat shows 0 until then); a real build client
        // connects long after that.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Stat::read(child.id() as i32).is_none_or(|s| s.env_len == 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never finished exec"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let peer = PeerInfo {
            pid: Some(child.id() as i32),
            ..me()
        };
        let process = ClientProcess::pin(&peer, AcceptedAt::now());
        assert!(
            matches!(process, ClientProcess::Pinned { .. }),
            "{process:?}"
        );
        match lookup_blocking(Some(&process), "BB_CLIENT_ENV_TEST").unwrap() {
            Lookup::Found(v) => assert_eq!(v.expose(), b"from-the-child"),
            Lookup::Missing(why) => panic!("missing: {why}"),
        }
        assert!(matches!(
            lookup_blocking(Some(&process), "PATH").unwrap(),
            Lookup::Missing(_)
        ));
        child.kill().unwrap();
        child.wait().unwrap();
        match lookup_blocking(Some(&process), "BB_CLIENT_ENV_TEST").unwrap() {
            Lookup::Missing(why) => assert!(why.contains("exited"), "{why}"),
            Lookup::Found(_) => panic!("an exited client must not answer"),
        }
    }

    #[test]
    fn a_process_that_started_after_the_accept_is_refused() {
        let accepted = AcceptedAt::now();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let peer = PeerInfo {
            pid: Some(child.id() as i32),
            ..me()
        };
        let process = ClientProcess::pin(&peer, accepted);
        child.kill().unwrap();
        child.wait().unwrap();
        match process {
            ClientProcess::Unavailable(why) => assert!(why.contains("started after"), "{why}"),
            ClientProcess::Pinned { .. } => panic!("a recycled pid must not be pinned"),
        }
    }

    #[test]
    fn invisible_or_foreign_peers_are_not_here() {
        let invisible = PeerInfo {
            pid: Some(0),
            ..me()
        };
        assert!(matches!(
            ClientProcess::pin(&invisible, AcceptedAt::now()),
            ClientProcess::Unavailable(_)
        ));
        let other_user = PeerInfo {
            uid: me().uid + 4242,
            ..me()
        };
        match ClientProcess::pin(&other_user, AcceptedAt::now()) {
            ClientProcess::Unavailable(why) => assert!(why.contains("another user"), "{why}"),
            ClientProcess::Pinned { .. } => panic!("uid mismatch must not pin"),
        }
        assert!(matches!(
            lookup_blocking(None, "X").unwrap(),
            Lookup::Missing(why) if why.contains("at build time")
        ));
    }
}
