//! Files and sockets the daemon creates, made so another local user cannot plant or redirect
//! them: the Docker endpoint sockets, `[ssh.*] socket` agent sockets and the audit log, plus the
//! ownership rule for the policy file a root daemon reads.
//!
//! Every path is walked one component at a time from `/` with `openat(O_NOFOLLOW)`, and
//! missing directories are made with `mkdirat` relative to an already-checked parent, so a
//! symlink planted anywhere on the way is never followed unless root or the daemon's own user
//! made it in a directory nobody else can write. The directory that holds a socket or a log
//! must belong to the daemon's user and be writable by nobody else; a directory above it must
//! belong to root or the daemon's user and must not be world-writable unless sticky (like
//! `/tmp`). Group-writable directories *above* the last one are accepted (Ubuntu's `/var/log`
//! is `root:syslog 0775`). This module never chmods or chowns anything it did not just create,
//! never truncates a file, and never follows a symlink at the final name.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

/// Linux follows at most 40 symlinks in one lookup (path_resolution(7)); so do we.
const MAX_SYMLINKS: usize = 40;
/// `sun_path` holds 108 bytes including the terminating NUL (unix(7)).
const MAX_SOCKET_PATH: usize = 107;

/// Why a file or socket the daemon creates is refused. Each message names the path, what is
/// wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{path}: expected an absolute path")]
    Relative { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} belongs to {owner}; {expected}. Remove it, or fix it with `chown {want} {path}` if it is meant to be used"
    )]
    Owner {
        path: PathBuf,
        owner: String,
        expected: &'static str,
        want: String,
    },
    #[error(
        "{path} is writable by {who} (mode {mode:04o}), so another user could plant or replace files in it; fix it with `chmod {fix} {path}`"
    )]
    Writable {
        path: PathBuf,
        mode: u32,
        who: &'static str,
        fix: &'static str,
    },
    #[error(
        "{path} is a symbolic link owned by {owner}; only links made by root or the daemon's user are followed. Remove it, or use the path it points to"
    )]
    UntrustedSymlink { path: PathBuf, owner: String },
    #[error(
        "{path} is a symbolic link (owned by {owner}); buildbroker never follows a link at a socket or log path. Remove it (`rm {path}`) and start again"
    )]
    Symlink { path: PathBuf, owner: String },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} exists and is a {kind}, not a socket; remove it if nothing needs it")]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("{path} is a {kind}, not a regular file")]
    NotARegularFile { path: PathBuf, kind: &'static str },
    #[error(
        "{path} has {links} hard links; the audit log must be a file of its own. Move it aside and start again"
    )]
    HardLinked { path: PathBuf, links: u64 },
    #[error("{path} is in use by a live socket owned by {owner} (is buildbroker already running?)")]
    InUse { path: PathBuf, owner: String },
    #[error(
        "{path} is a stale socket owned by {owner}, not by the daemon's user; remove it (`rm {path}`) if nothing needs it"
    )]
    ForeignSocket { path: PathBuf, owner: String },
    #[error("{path}: socket paths are limited to {MAX_SOCKET_PATH} bytes; this one is {len}")]
    TooLong { path: PathBuf, len: usize },
    #[error(
        "cannot give {path} the group {gid}: {source} (the daemon's user must be root or a member of that group)"
    )]
    Group {
        path: PathBuf,
        gid: u32,
        source: io::Error,
    },
}

/// The facts of one `stat`, in fixed-width types on every architecture.
#[derive(Debug, Clone, Copy)]
struct Meta {
    file_type: FileType,
    mode: u32,
    uid: u32,
    dev: u64,
    ino: u64,
    nlink: u64,
}

impl Meta {
    // The stat fields' widths differ between architectures; on x86_64 these are identities.
    #[allow(clippy::useless_conversion)]
    fn of(st: &rustix::fs::Stat) -> Meta {
        let raw = u32::from(st.st_mode);
        Meta {
            file_type: FileType::from_raw_mode(raw),
            mode: raw & 0o7777,
            uid: st.st_uid,
            dev: u64::from(st.st_dev),
            ino: u64::from(st.st_ino),
            nlink: u64::from(st.st_nlink),
        }
    }
}

fn fstat(fd: impl AsFd, path: &Path) -> Result<Meta, PathError> {
    rustix::fs::fstat(fd)
        .map(|st| Meta::of(&st))
        .map_err(|e| io_error(path, e))
}

fn lstatat(dir: impl AsFd, name: &OsStr, path: &Path) -> Result<Option<Meta>, PathError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(Meta::of(&st))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

fn io_error(path: &Path, e: Errno) -> PathError {
    PathError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// `uid 1001 (alice)`, or `uid 1001` when passwd(5) does not name it.
pub fn describe_uid(uid: u32) -> String {
    let name = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut f = line.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse() == Ok(uid)).then(|| name.to_string())
            })
        });
    match name {
        Some(n) => format!("uid {uid} ({n})"),
        None => format!("uid {uid}"),
    }
}

/// The gid of group `name` in group(5). Groups that only NSS (LDAP, sssd) knows are not seen:
/// give those as a number.
pub fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The rule for a directory above the last one: root's or ours, and not writable by everyone
/// unless sticky (in a sticky directory nobody can rename or remove what another user made).
fn check_ancestor(meta: &Meta, path: &Path, euid: u32) -> Result<(), PathError> {
    if meta.uid != 0 && meta.uid != euid {
        return Err(PathError::Owner {
            path: path.to_path_buf(),
            owner: describe_uid(meta.uid),
            expected: "a directory on the way to a socket or log must belong to root or the daemon's user",
            want: "root".into(),
        });
    }
    if meta.mode & 0o002 != 0 && meta.mode & 0o1000 == 0 {
        return Err(PathError::Writable {
            path: path.to_path_buf(),
            mode: meta.mode,
            who: "everyone",
            fix: "o-w",
        });
    }
    Ok(())
}

/// The rule for the directory that holds a socket or log: ours, writable by nobody else.
fn check_holder(meta: &Meta, path: &Path, euid: u32) -> Result<(), PathError> {
    if meta.uid != euid {
        return Err(PathError::Owner {
            path: path.to_path_buf(),
            owner: describe_uid(meta.uid),
            expected: "the directory holding a socket or log must belong to the daemon's user",
            want: euid.to_string(),
        });
    }
    check_not_writable(meta, path)
}

fn check_not_writable(meta: &Meta, path: &Path) -> Result<(), PathError> {
    let (who, fix) = match (meta.mode & 0o020 != 0, meta.mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => ("its group", "g-w"),
        (false, true) => ("everyone", "o-w"),
        (true, true) => ("its group and everyone", "go-w"),
    };
    Err(PathError::Writable {
        path: path.to_path_buf(),
        mode: meta.mode,
        who,
        fix,
    })
}

/// How to make the last directory when it is missing.
#[derive(Debug, Clone, Copy)]
pub struct Create {
    /// Permission bits of the last directory (exactly: set with fchmod, not left to the umask).
    pub mode: u32,
    /// Its group, so members can reach a group socket inside.
    pub group: Option<u32>,
}

/// Intermediate directories the daemon makes hold nothing but the way down.
const INTERMEDIATE_MODE: u32 = 0o755;

/// A checked directory, held open so everything inside is made relative to it.
#[derive(Debug)]
pub struct CheckedDir {
    fd: OwnedFd,
    /// The path as the policy wrote it, for messages.
    pub path: PathBuf,
}

/// Opens directory `path` (creating what is missing when `create` is given) without following
/// a symlink another user could have made, and checks it with [`check_holder`] and everything
/// above it with [`check_ancestor`].
pub fn open_dir(path: &Path, euid: u32, create: Option<Create>) -> Result<CheckedDir, PathError> {
    if !path.is_absolute() {
        return Err(PathError::Relative {
            path: path.to_path_buf(),
        });
    }
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let root = rustix::fs::open("/", dir_flags, Mode::empty()).map_err(|e| io_error(path, e))?;
    // The directories walked so far, `/` first, each already checked as an ancestor.
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root, PathBuf::from("/"))];
    let mut todo: VecDeque<OsString> = components(path);
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let (cur, cur_path) = stack.last().expect("the root stays on the stack");
        let here = cur_path.join(&name);
        let last = todo.is_empty();
        let fd = match rustix::fs::openat(cur, &name, dir_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create.is_some() => {
                let create = create.expect("checked just above");
                let mode = if last { create.mode } else { INTERMEDIATE_MODE };
                make_dir(
                    cur,
                    &name,
                    &here,
                    euid,
                    mode,
                    if last { create.group } else { None },
                )?
            }
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let meta = lstatat(cur, &name, &here)?.ok_or_else(|| PathError::Io {
                    path: here.clone(),
                    source: io::ErrorKind::NotFound.into(),
                })?;
                if meta.file_type != FileType::Symlink {
                    return Err(PathError::NotADirectory { path: here });
                }
                if meta.uid != 0 && meta.uid != euid {
                    return Err(PathError::UntrustedSymlink {
                        path: here,
                        owner: describe_uid(meta.uid),
                    });
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io_error(&here, Errno::LOOP));
                }
                let target = rustix::fs::readlinkat(cur, &name, Vec::new())
                    .map_err(|e| io_error(&here, e))?;
                let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for c in components(&target).into_iter().rev() {
                    todo.push_front(c);
                }
                continue;
            }
            Err(e) => return Err(io_error(&here, e)),
        };
        check_ancestor(&fstat(&fd, &here)?, &here, euid)?;
        stack.push((fd, here));
    }
    let (fd, resolved) = stack.pop().expect("the root stays on the stack");
    check_holder(&fstat(&fd, &resolved)?, &resolved, euid)?;
    Ok(CheckedDir {
        fd,
        path: path.to_path_buf(),
    })
}

/// The normal components of `path` (and `..`), without the root and `.`.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// `mkdirat` one directory and give it exactly `mode` (and `group`), through a descriptor of
/// the directory just made: nothing is changed through a path.
fn make_dir(
    parent: &OwnedFd,
    name: &OsStr,
    path: &Path,
    euid: u32,
    mode: u32,
    group: Option<u32>,
) -> Result<OwnedFd, PathError> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io_error(path, e)),
    }
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error(path, e))?;
    let meta = fstat(&fd, path)?;
    if meta.uid != euid {
        // Someone made it between our ENOENT and mkdirat: it is not ours to change.
        return Err(PathError::Owner {
            path: path.to_path_buf(),
            owner: describe_uid(meta.uid),
            expected: "it appeared while buildbroker was creating it",
            want: "root".into(),
        });
    }
    if let Some(gid) = group {
        rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(gid))).map_err(|e| {
            PathError::Group {
                path: path.to_path_buf(),
                gid,
                source: e.into(),
            }
        })?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| io_error(path, e))?;
    Ok(fd)
}

/// The file of a bound unix socket; dropping it removes the file if it is still ours.
pub struct SocketFile {
    pub path: PathBuf,
    dir: OwnedFd,
    name: OsString,
    /// Which inode is ours, so dropping never removes a socket someone else put there since.
    identity: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(Some(meta)) = lstatat(&self.dir, &self.name, &self.path)
            && (meta.dev, meta.ino) == self.identity
        {
            let _ = rustix::fs::unlinkat(&self.dir, &self.name, AtFlags::empty());
        }
    }
}

/// How a socket is made.
#[derive(Debug, Clone, Copy)]
pub struct SocketSpec {
    /// Permission bits of the socket.
    pub mode: u32,
    /// The socket's group (the directory made for it gets it too).
    pub group: Option<u32>,
    /// Permission bits of the directory, when buildbroker makes it.
    pub dir_mode: u32,
}

/// Binds a unix socket at `path` so that it is never reachable with the wrong owner or mode,
/// and never replaces anything but a dead socket of our own.
///
/// Race-free mode and group: the socket is bound inside a fresh private (0700) directory next
/// to its final name, given its mode and group there, and only then renamed into place. A
/// umask around `bind` would work for the mode but is process-wide (other threads creating
/// files meanwhile would get it too) and cannot set the group; `chmod` after `bind` through
/// the path would leave a window with the wrong mode and follow whatever is at the path.
pub fn bind_socket(
    path: &Path,
    euid: u32,
    spec: SocketSpec,
) -> Result<(std::os::unix::net::UnixListener, SocketFile), PathError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(PathError::TooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(PathError::Relative {
            path: path.to_path_buf(),
        });
    };
    let dir = open_dir(
        parent,
        euid,
        Some(Create {
            mode: spec.dir_mode,
            group: spec.group,
        }),
    )?;
    let replace = check_stale(&dir.fd, name, path, euid)?;

    let private = PrivateBindDir::make(&dir.fd, path, euid)?;
    // Binding through /proc/self/fd/N names the private directory by descriptor, so nothing on
    // the way is looked up again, and the bind path stays short whatever the real path is.
    let bind_path = format!("/proc/self/fd/{}/s", private.fd.as_raw_fd());
    let listener =
        std::os::unix::net::UnixListener::bind(&bind_path).map_err(|source| PathError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    // Inside a 0700 directory of ours nobody else can swap `s`, so these path calls are safe.
    if let Some(gid) = spec.group {
        rustix::fs::chownat(
            &private.fd,
            "s",
            None,
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| PathError::Group {
            path: path.to_path_buf(),
            gid,
            source: e.into(),
        })?;
    }
    rustix::fs::chmodat(
        &private.fd,
        "s",
        Mode::from_raw_mode(spec.mode),
        AtFlags::empty(),
    )
    .map_err(|e| io_error(path, e))?;
    let meta =
        lstatat(&private.fd, OsStr::new("s"), path)?.ok_or_else(|| io_error(path, Errno::NOENT))?;
    // Only a dead socket of ours may be replaced; otherwise the name must still be free.
    let flags = if replace {
        RenameFlags::empty()
    } else {
        RenameFlags::NOREPLACE
    };
    rustix::fs::renameat_with(&private.fd, "s", &dir.fd, name, flags).map_err(|e| match e {
        Errno::EXIST => PathError::InUse {
            path: path.to_path_buf(),
            owner: "another process that bound it just now".into(),
        },
        e => io_error(path, e),
    })?;
    drop(private);
    let file = SocketFile {
        path: path.to_path_buf(),
        dir: dir.fd,
        name: name.to_os_string(),
        identity: (meta.dev, meta.ino),
    };
    Ok((listener, file))
}

/// Whatever is at the socket's name: nothing (false), a dead socket of ours to replace (true),
/// or a refusal.
fn check_stale(dir: &OwnedFd, name: &OsStr, path: &Path, euid: u32) -> Result<bool, PathError> {
    let Some(meta) = lstatat(dir, name, path)? else {
        return Ok(false);
    };
    match meta.file_type {
        FileType::Symlink => Err(PathError::Symlink {
            path: path.to_path_buf(),
            owner: describe_uid(meta.uid),
        }),
        FileType::Socket => {
            let live = socket_is_live(dir, name, path)?;
            match (live, meta.uid == euid) {
                (true, _) => Err(PathError::InUse {
                    path: path.to_path_buf(),
                    owner: describe_uid(meta.uid),
                }),
                (false, false) => Err(PathError::ForeignSocket {
                    path: path.to_path_buf(),
                    owner: describe_uid(meta.uid),
                }),
                (false, true) => Ok(true),
            }
        }
        other => Err(PathError::NotASocket {
            path: path.to_path_buf(),
            kind: kind_name(other),
        }),
    }
}

/// Whether something listens on the socket `name` in `dir`. A non-blocking connect: a live
/// listener with a full backlog answers EAGAIN instead of hanging the daemon's start.
fn socket_is_live(dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<bool, PathError> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let mut via = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    via.extend_from_slice(name.as_bytes());
    let addr = SocketAddrUnix::new(via.as_slice()).map_err(|e| io_error(path, e))?;
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| io_error(path, e))?;
    match rustix::net::connect(&sock, &addr) {
        Ok(()) | Err(Errno::AGAIN | Errno::INPROGRESS) => Ok(true),
        Err(Errno::CONNREFUSED | Errno::NOENT) => Ok(false),
        Err(e) => Err(io_error(path, e)),
    }
}

/// A 0700 directory of ours beside the socket's final name, removed when dropped.
struct PrivateBindDir<'a> {
    parent: &'a OwnedFd,
    name: String,
    fd: OwnedFd,
}

impl<'a> PrivateBindDir<'a> {
    fn make(parent: &'a OwnedFd, path: &Path, euid: u32) -> Result<Self, PathError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        loop {
            let name = format!(
                ".buildbroker-bind.{}.{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            match rustix::fs::mkdirat(parent, name.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                // A leftover of a crashed start with the same pid: take the next name.
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(io_error(path, e)),
            }
            let fd = rustix::fs::openat(
                parent,
                name.as_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_error(path, e))?;
            let meta = fstat(&fd, path)?;
            if meta.uid != euid || meta.mode & 0o077 != 0 {
                return Err(io_error(path, Errno::PERM));
            }
            return Ok(PrivateBindDir { parent, name, fd });
        }
    }
}

impl Drop for PrivateBindDir<'_> {
    fn drop(&mut self) {
        // After a failed bind the socket may still be inside; after the rename it is not.
        let _ = rustix::fs::unlinkat(&self.fd, "s", AtFlags::empty());
        let _ = rustix::fs::unlinkat(self.parent, self.name.as_str(), AtFlags::REMOVEDIR);
    }
}

/// Opens (creating it 0600 if missing) an append-only log file: its directory is checked like
/// a socket's; a symlink at the name, a file of another user, a group- or world-writable file,
/// a hard-linked file and anything but a regular file are refused. Nothing is truncated or
/// chmod-ed, and this runs on every open (start and each reload).
pub fn open_log(path: &Path, euid: u32) -> Result<File, PathError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(PathError::Relative {
            path: path.to_path_buf(),
        });
    };
    let dir = open_dir(
        parent,
        euid,
        Some(Create {
            mode: 0o750,
            group: None,
        }),
    )?;
    // NONBLOCK: a FIFO at the name must fail (ENXIO), not hang the start until a reader comes.
    let fd = rustix::fs::openat(
        &dir.fd,
        name,
        OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NONBLOCK
            | OFlags::NOCTTY,
        Mode::from_raw_mode(0o600),
    );
    let fd = match fd {
        Ok(fd) => fd,
        Err(Errno::LOOP) => {
            let owner = lstatat(&dir.fd, name, path)?
                .map(|m| describe_uid(m.uid))
                .unwrap_or_else(|| "unknown".into());
            return Err(PathError::Symlink {
                path: path.to_path_buf(),
                owner,
            });
        }
        Err(Errno::NXIO) => {
            return Err(PathError::NotARegularFile {
                path: path.to_path_buf(),
                kind: "FIFO",
            });
        }
        Err(e) => return Err(io_error(path, e)),
    };
    let meta = fstat(&fd, path)?;
    check_regular_owned(&meta, path, euid)?;
    if meta.nlink > 1 {
        return Err(PathError::HardLinked {
            path: path.to_path_buf(),
            links: meta.nlink,
        });
    }
    Ok(File::from(fd))
}

fn check_regular_owned(meta: &Meta, path: &Path, euid: u32) -> Result<(), PathError> {
    if meta.file_type != FileType::RegularFile {
        return Err(PathError::NotARegularFile {
            path: path.to_path_buf(),
            kind: kind_name(meta.file_type),
        });
    }
    if meta.uid != euid {
        return Err(PathError::Owner {
            path: path.to_path_buf(),
            owner: describe_uid(meta.uid),
            expected: "it must belong to the daemon's user",
            want: euid.to_string(),
        });
    }
    check_not_writable(meta, path)
}

/// The rule for the policy file of a root daemon: the policy can run programs (`exec:`)
/// as root, so the file, its directory and every directory above must be writable by root
/// only (a symlink on the way must be root's too). Non-root daemons are not held to it:
/// user-private groups make group-writable files normal in home directories.
pub fn check_policy_file(path: &Path, euid: u32) -> Result<(), PathError> {
    if euid != 0 {
        return Ok(());
    }
    let mut path = path.to_path_buf();
    for _ in 0..MAX_SYMLINKS {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(PathError::Relative { path });
        };
        let parent = if parent.as_os_str().is_empty() {
            std::env::current_dir().map_err(|source| PathError::Io {
                path: path.clone(),
                source,
            })?
        } else {
            parent.to_path_buf()
        };
        let dir = open_dir(&parent, 0, None)?;
        let meta = lstatat(&dir.fd, name, &path)?.ok_or_else(|| io_error(&path, Errno::NOENT))?;
        if meta.file_type != FileType::Symlink {
            return check_regular_owned(&meta, &path, 0);
        }
        if meta.uid != 0 {
            return Err(PathError::UntrustedSymlink {
                owner: describe_uid(meta.uid),
                path,
            });
        }
        let target =
            rustix::fs::readlinkat(&dir.fd, name, Vec::new()).map_err(|e| io_error(&path, e))?;
        path = parent.join(OsStr::from_bytes(target.as_bytes()));
    }
    Err(io_error(&path, Errno::LOOP))
}

#[cfg(test)]
mod tests;
