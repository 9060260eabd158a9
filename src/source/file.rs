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
//! The read runs as one blocking task (open, stat and read together) rather than three
//! `tokio::fs` hops: measured in `benches/get_secret.rs`, this is what keeps a file-backed
//! GetSecret near the env-backed one. A file last found on a memory file system (tmpfs,
//! ramfs: Docker's and Kubernetes' secret mounts, `/run`, `/dev/shm`) is read inline instead,
//! with no hop at all: such a read never waits on a device. A file on a disk or a network file
//! system (whose reads can wait for seconds) always goes through the blocking pool.

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
    if in_memory().is_known(path) {
        return read_capped(path, trusted);
    }
    let path: PathBuf = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_capped(&path, trusted))
        .await
        .map_err(|e| SourceError::transient(format!("file read task failed: {e}")))?
}

/// Memory file systems, by `statfs` magic (linux/magic.h): `TMPFS_MAGIC`, `RAMFS_MAGIC`.
const MEMORY_FILE_SYSTEMS: [u64; 2] = [0x0102_1994, 0x8584_58f6];
/// The most paths remembered; past it, new ones are read through the blocking pool.
const MAX_REMEMBERED: usize = 1024;

/// The paths whose file was on a memory file system when last opened.
#[derive(Default)]
pub(crate) struct InMemory(std::sync::Mutex<std::collections::BTreeSet<PathBuf>>);

impl InMemory {
    pub(crate) fn is_known(&self, path: &Path) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(path)
    }

    fn note(&self, path: &Path, file: &File) {
        let on_memory = rustix::fs::fstatfs(file)
            .is_ok_and(|fs| MEMORY_FILE_SYSTEMS.contains(&(fs.f_type as u64)));
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !on_memory {
            known.remove(path);
        } else if known.len() < MAX_REMEMBERED && !known.contains(path) {
            known.insert(path.to_path_buf());
        }
    }
}

pub(crate) fn in_memory() -> &'static InMemory {
    static IN_MEMORY: std::sync::LazyLock<InMemory> = std::sync::LazyLock::new(InMemory::default);
    &IN_MEMORY
}

/// Opens `path` without blocking and reads it; `check_owners` applies the root daemon's rule
/// that only root may be able to write the file and the directories leading to it.
fn read_capped(path: &Path, check_owners: bool) -> Result<Lookup, SourceError> {
    let (mut file, meta) = match open_regular(path) {
        Ok(Some(opened)) => opened,
        Ok(None) => return Ok(Lookup::Missing("no such file".into())),
        Err(message) => return Err(SourceError::permanent(message)),
    };
    in_memory().note(path, &file);
    if check_owners {
        check_foreign(path, &file, &meta)?;
    }
    if meta.len() > MAX_SECRET_BYTES as u64 {
        return Err(SourceError::permanent(format!(
            "file is {} bytes, over the {MAX_SECRET_BYTES}-byte limit that buildx and BuildKit accept",
            meta.len()
        )));
    }
    // Allocate once for the size we expect, so no reallocation leaves an unzeroized copy
    // behind, and never read past that capacity: a file that grew meanwhile is an error.
    let mut fill = SecretFill::new(meta.len() as usize + 1);
    loop {
        let Some(spare) = fill.spare() else {
            return Err(SourceError::transient(
                "file changed size while being read; try again",
            ));
        };
        match file.read(spare) {
            Ok(0) => break,
            Ok(n) => fill.advance(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(SourceError::permanent(format!("cannot read: {e}"))),
        }
    }
    Ok(Lookup::Found(fill.finish()))
}

/// Opens `path` for reading without blocking and without becoming its controlling terminal,
/// and accepts it only if the opened descriptor is a regular file; `None` when it does not
/// exist. Shared with the other files the daemon reads at request time (known_hosts).
pub(crate) fn open_regular(path: &Path) -> Result<Option<(File, Metadata)>, String> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
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
    Ok(Some((file, meta)))
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
