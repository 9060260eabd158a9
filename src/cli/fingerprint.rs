//! The fingerprint `resolve` and `keyring` print for a value: HMAC-SHA256 under a key kept on
//! this host, so two runs can be compared ("did the token change?") while the printed text
//! tells nothing to anyone without the key. A plain hash would: a short token, a PIN or a
//! password from a list can be found by hashing guesses offline until one matches.
//!
//! The key is 32 random bytes in `fingerprint.key` in the state directory — `$STATE_DIRECTORY`
//! (systemd's `StateDirectory=`), else `$XDG_STATE_HOME/buildbroker`, else
//! `/var/lib/buildbroker` for root and `~/.local/state/buildbroker` for others — created once
//! with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600, and refused afterwards unless it is a regular
//! file of ours that nobody else can read. This module must never print or log the key, and
//! never fall back to an unkeyed hash.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rustix::fs::{Mode, OFlags};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::HostEnv;

/// The key file's name inside the state directory.
pub const KEY_FILE: &str = "fingerprint.key";
const KEY_LEN: usize = 32;
/// How much of the MAC is printed: 96 bits, plenty to tell values apart.
const SHOWN_BYTES: usize = 12;

/// The per-host key values are fingerprinted with.
pub struct FingerprintKey {
    key: Zeroizing<[u8; KEY_LEN]>,
}

/// The state directory the key lives in, as the module documentation orders the choices.
pub fn state_dir(env: &HostEnv) -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dirs) = var("STATE_DIRECTORY") {
        // systemd passes a colon-separated list when a unit names several; ours is the first.
        let first = dirs.to_string_lossy().split(':').next().map(PathBuf::from);
        return first.filter(|p| p.is_absolute());
    }
    if let Some(xdg) = var("XDG_STATE_HOME").map(PathBuf::from)
        && xdg.is_absolute()
    {
        return Some(xdg.join("buildbroker"));
    }
    if env.euid == 0 {
        return Some(PathBuf::from("/var/lib/buildbroker"));
    }
    env.home
        .as_deref()
        .map(|h| Path::new(h).join(".local/state/buildbroker"))
}

impl FingerprintKey {
    /// Reads the key in `dir`, creating the directory and the key on first use.
    pub fn load_or_create(dir: &Path) -> Result<FingerprintKey, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
        let euid = rustix::process::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} must be a directory owned by uid {euid} that nobody else can write",
                dir.display()
            ));
        }
        let path = dir.join(KEY_FILE);
        // A second process may be creating the key right now: give it a moment to finish.
        for _ in 0..50 {
            match Self::read(&path, euid)? {
                Some(key) => return Ok(key),
                None => match Self::create(&path)? {
                    Some(key) => return Ok(key),
                    None => std::thread::sleep(std::time::Duration::from_millis(10)),
                },
            }
        }
        Err(format!("{} is incomplete", path.display()))
    }

    /// The key at `path`; `None` when there is none yet or it is still being written.
    fn read(path: &Path, euid: u32) -> Result<Option<FingerprintKey>, String> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
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
        let mut file = std::fs::File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        if !meta.is_file() || meta.uid() != euid || meta.mode() & 0o077 != 0 {
            return Err(format!(
                "{} must be a regular file owned by uid {euid} with mode 0600; remove it to make a new key (fingerprints printed before will not match)",
                path.display()
            ));
        }
        if meta.len() < KEY_LEN as u64 {
            return Ok(None);
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        file.read_exact(key.as_mut())
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(Some(FingerprintKey { key }))
    }

    /// Creates the key; `None` if another process created the file first.
    fn create(path: &Path) -> Result<Option<FingerprintKey>, String> {
        use rand_core::RngCore;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(path, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::EXIST) => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "cannot create {}: {}",
                    path.display(),
                    std::io::Error::from(e)
                ));
            }
        };
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand_core::OsRng.fill_bytes(key.as_mut());
        let mut file = std::fs::File::from(fd);
        file.write_all(key.as_ref())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(Some(FingerprintKey { key }))
    }

    /// `hmac-sha256:` and the first 96 bits of HMAC-SHA256(key, value), in hex.
    pub fn fingerprint(&self, value: &[u8]) -> String {
        keyed_fingerprint(self.key.as_ref(), value)
    }
}

/// The fingerprint of `value` under `key` (public so tests can check what `resolve` prints).
pub fn keyed_fingerprint(key: &[u8], value: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(value);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag[..SHOWN_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("hmac-sha256:{hex}")
}

/// What `resolve` and `keyring` print for a value: its fingerprint, or why there is none.
pub fn describe(env: &HostEnv, value: &[u8]) -> String {
    let Some(dir) = state_dir(env) else {
        return "no fingerprint: no state directory (set XDG_STATE_HOME or HOME)".into();
    };
    match FingerprintKey::load_or_create(&dir) {
        Ok(key) => format!("fingerprint {}", key.fingerprint(value)),
        Err(e) => format!("no fingerprint: {e}"),
    }
}
