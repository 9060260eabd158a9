//! `file:PATH` — a regular file's whole content, read at request time with the size cap applied
//! while reading (a huge file is never loaded whole).
//!
//! The file is opened once, non-blocking (`O_NONBLOCK|O_CLOEXEC|O_NOCTTY`), and every check is
//! made on the descriptor that is then read: a FIFO, socket, device or directory is refused at
//! once (never a read that waits forever for a writer), and nothing can be swapped between the
//! check and the read. A root daemon also refuses a file that another user could have written or
//! replaced — owned by someone other than root, writable by group or others, or in a directory
//! such a user can change — unless the policy names the path in `[file] allow_foreign`: root
//! reading a user's file on a build's behalf would otherwise hand that user a way to feed values
//! (or, with a symlink, root's own files) into builds.
//!
//! This module must never follow the path a second time for the read, and never put file
//! content in an error.
//!
//! Where the read runs depends on the file system the file was on when last opened (the first
//! read of a path always runs as one blocking task, open, checks and read together):
//! - a memory file system (tmpfs, ramfs: Docker's and Kubernetes' secret mounts, `/run`,
//!   `/dev/shm`): inline, with no hop at all; such a read never waits on a device;
//! - a local disk file system (ext4, xfs, btrfs): open and checks inline, the content read with
//!   `RWF_NOWAIT`, so only what the page cache holds is read on the worker; anything else is
//!   read in the blocking pool, on the same descriptor. This is what buildx itself does
//!   (`os.ReadFile` on the calling goroutine), minus the wait for the content;
//! - anything else (NFS, FUSE, SMB, whose every call can wait for a server): the blocking pool.
//!
//! An inline open resolves the path from the kernel's caches alone (`openat2` with
//! `RESOLVE_CACHED`): a step that needs a disk read, a server's answer or a write (a new
//! symlink's access time) fails it, and the pool does it all; so does a kernel before 5.12.
//! Root's owner walk then stats the steps that open just found cached. The file system is asked
//! again (`fstatfs` of the opened file) on every read, so a path that now names a file
//! elsewhere is read as that file system's at once; the one call that can still reach a server
//! on a worker is that `fstatfs`, once, on the first read after a path was re-pointed to a
//! network file system whose entries were already cached. A read can update the file's access
//! time, which on ext4 and xfs joins the journal (with relatime: at most daily per file).
//!
//! Measured in `benches/get_secret.rs` against a provider that reads the same file per call as
//! buildx's `--secret src=` does (docs/benchmarks.md).

use std::fs::{File, Metadata};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

use super::{Lookup, SourceError};
use crate::secret::{MAX_SECRET_BYTES, SecretFill};

/// The sticky bit: in such a directory only an entry's owner (or root) may rename or remove it.
const STICKY: u32 = 0o1000;
/// Write permission for group or others.
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

pub async fn lookup(path: &Path, allow_foreign: &[PathBuf]) -> Result<Lookup, SourceError> {
    static ROOT: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| rustix::process::geteuid().is_root());
    let trusted = *ROOT && !allow_foreign.iter().any(|p| p == path);
    let pending = match read_modes().of(path) {
        ReadMode::Pool => None,
        ReadMode::Memory | ReadMode::LocalDisk => match read_capped(path, trusted, Place::Inline) {
            Outcome::Done(result) => return result,
            // Not in the page cache: the rest of the read, on the descriptor already checked,
            // goes to the blocking pool.
            Outcome::WouldWait(pending) => Some(pending),
            // Resolving the path would have to wait, or it now names a file on a file system
            // read in the pool: all of it in the pool.
            Outcome::Elsewhere => None,
        },
    };
    let path: PathBuf = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        #[cfg(test)]
        {
            *POOL_READS.lock().unwrap().entry(path.clone()).or_default() += 1;
        }
        match pending {
            Some(pending) => pending.read(Wait::Yes),
            None => read_capped(&path, trusted, Place::Pool),
        }
        .done()
    })
    .await
    .map_err(|e| SourceError::transient(format!("file read task failed: {e}")))?
}

thread_local! {
    /// Tests: when set, a read on this thread that may not wait (`RWF_NOWAIT`) acts as if the
    /// page cache held the file's first this-many bytes and no more. Whether a real read of an
    /// evicted page waits is the kernel's call (a fast disk can finish the readahead such a read
    /// starts before the read looks), so the hand-off to the pool is tested with this.
    #[cfg(test)]
    pub(super) static CACHED_ONLY: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(None) };
}

/// Per path, the lookups that went to the blocking pool (for the tests that check a read
/// stayed inline).
#[cfg(test)]
static POOL_READS: std::sync::Mutex<std::collections::BTreeMap<PathBuf, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

#[cfg(test)]
pub(super) fn pool_reads(path: &Path) -> usize {
    POOL_READS.lock().unwrap().get(path).copied().unwrap_or(0)
}

/// Memory file systems, by `statfs` magic (linux/magic.h): `TMPFS_MAGIC`, `RAMFS_MAGIC`.
const MEMORY_FILE_SYSTEMS: [u64; 2] = [0x0102_1994, 0x8584_58f6];
/// Local disk file systems whose buffered reads honour `RWF_NOWAIT` (linux/magic.h):
/// `EXT4_SUPER_MAGIC` (ext2/3/4), `XFS_SUPER_MAGIC`, `BTRFS_SUPER_MAGIC`. Network and FUSE file
/// systems are not among them: their metadata calls can wait for a server, so they always
/// take the blocking pool.
const LOCAL_DISK_FILE_SYSTEMS: [u64; 3] = [0xEF53, 0x5846_5342, 0x9123_683E];
/// The most paths remembered; past it, new ones are read through the blocking pool.
const MAX_REMEMBERED: usize = 1024;

/// Set once a read with `RWF_NOWAIT` was refused as such (a kernel or a sandbox without it):
/// from then on files on local disks are read in the pool, as on any other file system.
static NOWAIT_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How a path's file is read, from what its file system was when it was last opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// Not seen yet, or on a file system that is neither of the others: everything (open,
    /// checks, read) in tokio's blocking pool.
    Pool,
    /// On a memory file system (tmpfs, ramfs): read inline; such a read never waits on a
    /// device.
    Memory,
    /// On a local disk file system: open and checks inline, the content read with
    /// `RWF_NOWAIT`, and whatever the page cache does not hold read in the blocking pool.
    LocalDisk,
}

/// The paths whose file was, when last opened, on a file system read inline, and which one.
/// Asked again (`fstatfs` of the opened file) on every read, so a path that now names a file
/// elsewhere is read as that file system's at once.
#[derive(Default)]
pub(crate) struct ReadModes(std::sync::Mutex<std::collections::BTreeMap<PathBuf, ReadMode>>);

impl ReadModes {
    pub(crate) fn of(&self, path: &Path) -> ReadMode {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .copied()
            .unwrap_or(ReadMode::Pool)
    }

    /// Records the mode for the file just opened at `path`, and returns it.
    fn note(&self, path: &Path, file: &File) -> ReadMode {
        let mode = match rustix::fs::fstatfs(file).map(|fs| fs.f_type as u64) {
            Ok(magic) if MEMORY_FILE_SYSTEMS.contains(&magic) => ReadMode::Memory,
            Ok(magic)
                if LOCAL_DISK_FILE_SYSTEMS.contains(&magic)
                    && !NOWAIT_REFUSED.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                ReadMode::LocalDisk
            }
            _ => ReadMode::Pool,
        };
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if mode == ReadMode::Pool {
            known.remove(path);
        } else if let Some(entry) = known.get_mut(path) {
            *entry = mode;
        } else if known.len() < MAX_REMEMBERED {
            known.insert(path.to_path_buf(), mode);
        }
        mode
    }
}

pub(crate) fn read_modes() -> &'static ReadModes {
    static READ_MODES: std::sync::LazyLock<ReadModes> =
        std::sync::LazyLock::new(ReadModes::default);
    &READ_MODES
}

/// Where a read runs: on the runtime's thread (in the daemon, the connection's thread, shared
/// with the other connections placed there), or in the blocking pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// On a worker: a file found on a memory file system is read whole, one on a local disk
    /// as far as the page cache holds it, and one anywhere else not at all.
    Inline,
    Pool,
}

/// Whether a read may wait for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    Yes,
    /// Only what the page cache holds (`RWF_NOWAIT`); the rest is handed back.
    No,
}

/// A read that ended, one that would have had to wait for the device, or one that does not
/// belong on a worker at all (the file is no longer on a file system read inline).
pub(super) enum Outcome {
    Done(Result<Lookup, SourceError>),
    WouldWait(Pending),
    Elsewhere,
}

impl Outcome {
    pub(super) fn done(self) -> Result<Lookup, SourceError> {
        match self {
            Outcome::Done(result) => result,
            // Only an inline read hands back its rest or itself.
            Outcome::WouldWait(_) | Outcome::Elsewhere => {
                Err(SourceError::transient("file read did not finish"))
            }
        }
    }
}

/// An opened and checked file, and what has been read of it so far.
pub(super) struct Pending {
    file: File,
    fill: SecretFill,
}

impl Pending {
    /// How many bytes were read before the read stopped.
    #[cfg(test)]
    pub(super) fn read_so_far(&self) -> usize {
        self.fill.filled()
    }

    /// Reads to the end of the file, never past the size it had when opened.
    pub(super) fn read(mut self, wait: Wait) -> Outcome {
        loop {
            // Tests: a read that may not wait stops where this thread's page cache "ends".
            // At that end, the read fails as `RWF_NOWAIT` does on an uncached page.
            #[cfg(test)]
            let cached_only = match (wait, CACHED_ONLY.get()) {
                (Wait::No, Some(end)) => Some(end.saturating_sub(self.fill.filled())),
                _ => None,
            };
            let Some(spare) = self.fill.spare() else {
                return Outcome::Done(Err(SourceError::transient(
                    "file changed size while being read; try again",
                )));
            };
            #[cfg(test)]
            let spare = match cached_only {
                Some(room) => {
                    let end = room.min(spare.len());
                    &mut spare[..end]
                }
                None => spare,
            };
            let got = match wait {
                #[cfg(test)]
                Wait::No if cached_only == Some(0) => Err(ErrorKind::WouldBlock.into()),
                Wait::Yes => self.file.read(spare),
                // u64::MAX: at (and advancing) the file's own offset, as read(2) does.
                Wait::No => rustix::io::preadv2(
                    &self.file,
                    &mut [std::io::IoSliceMut::new(spare)],
                    u64::MAX,
                    rustix::io::ReadWriteFlags::NOWAIT,
                )
                .map_err(std::io::Error::from),
            };
            match got {
                Ok(0) => break,
                Ok(n) => self.fill.advance(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if wait == Wait::No && e.kind() == ErrorKind::WouldBlock => {
                    return Outcome::WouldWait(self);
                }
                // Any other error of the read that may not wait is asked again where waiting
                // is allowed, which reports it if it is the file's. One that says the kernel
                // (or a seccomp sandbox) does not take RWF_NOWAIT at all stops inline reads
                // from local disks for good.
                Err(e) if wait == Wait::No => {
                    use rustix::io::Errno;
                    let refused = [Errno::OPNOTSUPP, Errno::NOSYS, Errno::INVAL, Errno::PERM]
                        .map(|e| e.raw_os_error());
                    if e.raw_os_error().is_some_and(|raw| refused.contains(&raw)) {
                        NOWAIT_REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Outcome::WouldWait(self);
                }
                Err(e) => {
                    return Outcome::Done(Err(SourceError::permanent(format!("cannot read: {e}"))));
                }
            }
        }
        Outcome::Done(Ok(Lookup::Found(self.fill.finish())))
    }
}

/// Opens `path` without blocking and reads it; `check_owners` applies the root daemon's rule
/// that only root may be able to write the file and the directories leading to it. Inline,
/// the file system the opened file is on decides how (or whether) it is read ([`Place`]).
pub(super) fn read_capped(path: &Path, check_owners: bool, place: Place) -> Outcome {
    let opened = match place {
        Place::Pool => open_regular(path),
        // Inline, the path is resolved from the kernel's caches only (`RESOLVE_CACHED`):
        // a step that needs a disk read or a server's answer (NFS revalidation, an automount)
        // fails with EAGAIN instead of waiting, and then the pool does it all. So does a kernel
        // without openat2 (before 5.6) or RESOLVE_CACHED (before 5.12).
        Place::Inline => match rustix::fs::openat2(
            rustix::fs::CWD,
            path,
            READ_FLAGS,
            Mode::empty(),
            rustix::fs::ResolveFlags::CACHED,
        ) {
            Ok(fd) => accept_regular(path, fd).map(Some),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(_) => return Outcome::Elsewhere,
        },
    };
    let (file, meta) = match opened {
        Ok(Some(opened)) => opened,
        Ok(None) => return Outcome::Done(Ok(Lookup::Missing("no such file".into()))),
        Err(message) => return Outcome::Done(Err(SourceError::permanent(message))),
    };
    let wait = match (place, read_modes().note(path, &file)) {
        (Place::Pool, _) | (Place::Inline, ReadMode::Memory) => Wait::Yes,
        (Place::Inline, ReadMode::LocalDisk) => Wait::No,
        (Place::Inline, ReadMode::Pool) => return Outcome::Elsewhere,
    };
    if check_owners && let Err(e) = check_foreign(path, &file, &meta) {
        return Outcome::Done(Err(e));
    }
    if meta.len() > MAX_SECRET_BYTES as u64 {
        return Outcome::Done(Err(SourceError::permanent(format!(
            "file is {} bytes, over the {MAX_SECRET_BYTES}-byte limit that buildx and BuildKit accept",
            meta.len()
        ))));
    }
    // Allocate once for the size we expect, so no reallocation leaves an unzeroized copy
    // behind, and never read past that capacity: a file that grew meanwhile is an error.
    Pending {
        file,
        fill: SecretFill::new(meta.len() as usize + 1),
    }
    .read(wait)
}

/// Opens `path` for reading without blocking and without becoming its controlling terminal,
/// and accepts it only if the opened descriptor is a regular file; `None` when it does not
/// exist. Shared with the other files the daemon reads at request time (known_hosts).
pub(crate) fn open_regular(path: &Path) -> Result<Option<(File, Metadata)>, String> {
    let fd = match rustix::fs::open(path, READ_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot open {}: {}",
                path.display(),
                std::io::Error::from(e)
            ));
        }
    };
    accept_regular(path, fd).map(Some)
}

/// How every file is opened: read-only, never waiting for a FIFO's writer, never becoming the
/// controlling terminal.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

/// The descriptor `path` was opened as, if it is a regular file.
fn accept_regular(path: &Path, fd: rustix::fd::OwnedFd) -> Result<(File, Metadata), String> {
    let file = File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    let kind = FileType::from_raw_mode(meta.mode());
    if kind != FileType::RegularFile {
        return Err(format!(
            "{} is {}, not a regular file",
            path.display(),
            describe(kind)
        ));
    }
    Ok((file, meta))
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Symlink => "a symbolic link",
        _ => "not a regular file",
    }
}

/// Who could have written or replaced the file a root daemon is about to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Foreign {
    /// The file, a directory on its way, or a symlink on its way belongs to another user.
    Owner { path: PathBuf, uid: u32 },
    /// Group or others may write it (a directory: without the sticky bit).
    Writable { path: PathBuf, mode: u32 },
}

/// One thing on the way to the file, as `stat` (or `lstat`, for a symlink) saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub path: PathBuf,
    pub uid: u32,
    pub mode: u32,
    pub kind: StepKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepKind {
    Directory,
    /// A symlink's own permission bits mean nothing; only who owns it (who can repoint it).
    Symlink,
    File,
}

/// The root daemon's rule, a pure function of what `stat` said: the file, every directory on
/// its way and every symlink followed must belong to root, and none may be writable by group or
/// others — except a sticky directory (`/tmp`), where only an entry's owner may rename or
/// remove it, so the entry's own owner decides (and that entry is a step of its own).
pub(crate) fn foreign_in(steps: &[Step]) -> Option<Foreign> {
    for step in steps {
        if step.uid != 0 {
            return Some(Foreign::Owner {
                path: step.path.clone(),
                uid: step.uid,
            });
        }
        let writable = match step.kind {
            StepKind::Symlink => false,
            StepKind::Directory => step.mode & GROUP_OR_OTHER_WRITE != 0 && step.mode & STICKY == 0,
            StepKind::File => step.mode & GROUP_OR_OTHER_WRITE != 0,
        };
        if writable {
            return Some(Foreign::Writable {
                path: step.path.clone(),
                mode: step.mode & 0o7777,
            });
        }
    }
    None
}

/// Applies [`foreign_in`] to the way the policy writes the path (the directories and any
/// symlinks on it) and to the way the open descriptor actually names the file (every symlink
/// resolved), then to the opened file itself.
fn check_foreign(path: &Path, file: &File, meta: &Metadata) -> Result<(), SourceError> {
    let stat_error = |p: &Path, e: std::io::Error| {
        SourceError::permanent(format!("cannot stat {}: {e}", p.display()))
    };
    let mut steps = Vec::new();
    let written = lexical(path);
    let mut on_the_way: Vec<&Path> = written.ancestors().collect();
    on_the_way.reverse();
    // Directories on the written path that are no symlinks: the real path needs them no second
    // `stat` (for a path without symlinks, the two walks are the same walk).
    let mut plain_dirs: Vec<&Path> = Vec::new();
    // No symlink on the way, and the written path names the very inode we opened. (A `..` is
    // folded away above, and with it a symlink it may follow: then /proc decides.)
    let mut resolved_as_written = path.components().all(|c| c != Component::ParentDir);
    for p in on_the_way {
        let link = std::fs::symlink_metadata(p).map_err(|e| stat_error(p, e))?;
        let m = if link.file_type().is_symlink() {
            resolved_as_written = false;
            steps.push(Step {
                path: p.to_path_buf(),
                uid: link.uid(),
                mode: link.mode(),
                kind: StepKind::Symlink,
            });
            if p == written {
                break;
            }
            std::fs::metadata(p).map_err(|e| stat_error(p, e))?
        } else {
            if p == written {
                resolved_as_written &= (link.dev(), link.ino()) == (meta.dev(), meta.ino());
                break;
            }
            plain_dirs.push(p);
            link
        };
        steps.push(Step {
            path: p.to_path_buf(),
            uid: m.uid(),
            mode: m.mode(),
            kind: StepKind::Directory,
        });
    }
    // The kernel's name for what we opened: symlinks resolved, and the very inode we read
    // (asked of /proc only when the walk above could not tell).
    let real = if resolved_as_written {
        written.clone()
    } else {
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|e| {
            SourceError::permanent(format!("cannot resolve {}: {e}", path.display()))
        })?
    };
    let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
    dirs.reverse();
    for dir in dirs {
        if plain_dirs.contains(&dir) {
            continue;
        }
        let m = std::fs::metadata(dir).map_err(|e| stat_error(dir, e))?;
        steps.push(Step {
            path: dir.to_path_buf(),
            uid: m.uid(),
            mode: m.mode(),
            kind: StepKind::Directory,
        });
    }
    steps.push(Step {
        path: real.clone(),
        uid: meta.uid(),
        mode: meta.mode(),
        kind: StepKind::File,
    });
    match foreign_in(&steps) {
        None => Ok(()),
        Some(found) => Err(SourceError::permanent(refusal(path, &real, &found))),
    }
}

/// The path with `.` and `..` folded away, as the kernel would walk it (for the directories a
/// symlink in the written path could live in).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn refusal(path: &Path, real: &Path, found: &Foreign) -> String {
    let shown = if real == path {
        path.display().to_string()
    } else {
        format!("{} (-> {})", path.display(), real.display())
    };
    let (at, why) = match found {
        Foreign::Owner { path: p, uid } => {
            (p, format!("is owned by {}, not root", user_name(*uid)))
        }
        Foreign::Writable { path: p, mode } => (
            p,
            format!("is writable by group or others (mode {mode:04o})"),
        ),
    };
    let why = if at == real {
        format!("it {why}")
    } else {
        format!("{} {why}", at.display())
    };
    format!(
        "refusing {shown}: {why}, so another user could change or replace it, and buildbroker runs as root. If that user is trusted to supply this value, allow the path in the policy: [file] allow_foreign = [\"{}\"]",
        path.display()
    )
}

/// `uid 1001 (ci)`: the name from /etc/passwd when it has one (no NSS lookup: a daemon that
/// reads a secret should not load NSS modules for an error message).
fn user_name(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id = fields.nth(1)?;
                (id.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        });
    match name {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}
