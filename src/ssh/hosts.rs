//! Resolves an ssh id's `hosts` to the host keys its keys may authenticate to.
//!
//! Fingerprint entries (`SHA256:…`) are taken as they are. Host names are looked up in the
//! known_hosts file the policy names, as OpenSSH reads it (sshd(8) "SSH_KNOWN_HOSTS FILE
//! FORMAT"; ssh-key's parser reads the lines): comma-separated patterns with `*`, `?` and
//! `!` negation, `[host]:port` for other ports, `|1|salt|hash` hashed names (HMAC-SHA1), and
//! `@revoked` keys, which are never allowed whatever else lists them. `@cert-authority` lines
//! are skipped: a session binding names the host's own key, not a certificate authority.
//!
//! [`AllowedHosts::resolve`] is pure (the file's text is passed in); [`load`] reads the file as
//! `file:` sources are read — non-blocking, regular files only — and at most
//! [`MAX_KNOWN_HOSTS_BYTES`] of it: the file is read again for each agent connection, and
//! neither a FIFO nor a runaway file may hang or bloat the daemon.

use std::io::Read;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use ssh_key::known_hosts::{HostPatterns, KnownHosts, Marker};
use ssh_key::public::KeyData;
use ssh_key::{Fingerprint, HashAlg};

use crate::config::HostRule;

/// The largest known_hosts file read: OpenSSH's own files are a few KiB to a few hundred; 4 MiB
/// holds tens of thousands of keys.
pub const MAX_KNOWN_HOSTS_BYTES: u64 = 4 * 1024 * 1024;

/// The host keys an ssh id may sign for, each with the policy entry that allowed it.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    allowed: Vec<(Fingerprint, String)>,
    revoked: Vec<Fingerprint>,
}

/// Why `hosts` could not be resolved; CheckAgent reports it and constrained keys cannot sign.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostsError {
    #[error("cannot read known_hosts file {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// A host name that no line of the file lists: the constraint could never be met.
    #[error("hosts entry {name:?} matches no key in known_hosts file {path}")]
    NoMatch { name: String, path: PathBuf },
}

impl AllowedHosts {
    /// Resolves `rules` against the text of the known_hosts file at `path` (if any).
    pub fn resolve(
        rules: &[HostRule],
        known_hosts: Option<(&Path, &str)>,
    ) -> Result<AllowedHosts, HostsError> {
        let entries: Vec<_> = known_hosts
            .map(|(_, text)| KnownHosts::new(text).filter_map(Result::ok).collect())
            .unwrap_or_default();
        let mut out = AllowedHosts::default();
        for entry in &entries {
            if entry.marker() == Some(&Marker::Revoked) {
                out.revoked
                    .push(entry.public_key().key_data().fingerprint(HashAlg::Sha256));
            }
        }
        for rule in rules {
            match rule {
                HostRule::Fingerprint(fp) => out.allowed.push((*fp, rule.to_string())),
                HostRule::Name(name) => {
                    let before = out.allowed.len();
                    for entry in entries.iter().filter(|e| e.marker().is_none()) {
                        if entry_matches(name, entry.host_patterns()) {
                            let fp = entry.public_key().key_data().fingerprint(HashAlg::Sha256);
                            out.allowed.push((fp, name.clone()));
                        }
                    }
                    if out.allowed.len() == before {
                        return Err(HostsError::NoMatch {
                            name: name.clone(),
                            path: known_hosts
                                .map(|(p, _)| p.to_path_buf())
                                .unwrap_or_default(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// The policy entry that allows `host_key`, or `None` if it is not allowed or revoked.
    pub fn label_for(&self, host_key: &KeyData) -> Option<&str> {
        let fp = host_key.fingerprint(HashAlg::Sha256);
        if self.revoked.contains(&fp) {
            return None;
        }
        self.allowed
            .iter()
            .find(|(allowed, _)| *allowed == fp)
            .map(|(_, label)| label.as_str())
    }
}

/// Reads the known_hosts file (if the rules need one) and resolves the rules.
pub async fn load(
    rules: &[HostRule],
    known_hosts: Option<&Path>,
) -> Result<AllowedHosts, HostsError> {
    let text = match known_hosts {
        Some(path) => {
            let owned = path.to_path_buf();
            let read = tokio::task::spawn_blocking(move || read_capped(&owned))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            Some(read.map_err(|message| HostsError::Read {
                path: path.to_path_buf(),
                message,
            })?)
        }
        None => None,
    };
    AllowedHosts::resolve(rules, known_hosts.zip(text.as_deref()))
}

/// The file's text: a regular file, opened without blocking, at most the cap.
fn read_capped(path: &Path) -> Result<String, String> {
    let (file, meta) =
        crate::source::file::open_regular(path)?.ok_or_else(|| "no such file".to_string())?;
    let too_big = || {
        format!(
            "it is over the {MAX_KNOWN_HOSTS_BYTES}-byte limit for a known_hosts file; keep only the hosts this policy needs"
        )
    };
    if meta.len() > MAX_KNOWN_HOSTS_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The limit holds even for a file that grows while it is read.
    file.take(MAX_KNOWN_HOSTS_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_KNOWN_HOSTS_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())
}

/// Whether a policy host entry (a name, or a pattern) names a known_hosts line's host(s).
fn entry_matches(name: &str, patterns: &HostPatterns) -> bool {
    let name = name.to_ascii_lowercase();
    let has_wildcard = name.contains(['*', '?']);
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            // A hashed line can only be tested against a concrete name.
            !has_wildcard && hashed_name_matches(&name, salt, hash)
        }
        HostPatterns::Patterns(list) if has_wildcard => {
            // A policy pattern such as *.example.com selects the plain names the file lists.
            list.iter()
                .filter(|p| !p.starts_with('!') && !p.contains(['*', '?']))
                .any(|p| glob(&p.to_ascii_lowercase(), &name))
        }
        HostPatterns::Patterns(list) => host_matches_list(&name, list),
    }
}

/// OpenSSH's `match_hostname`: a name matches a pattern list if some positive pattern matches
/// it and no negated one does.
fn host_matches_list(name: &str, list: &[String]) -> bool {
    let mut matched = false;
    for pattern in list {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_prefix('!') {
            Some(negated) if glob(name, negated) => return false,
            Some(_) => {}
            None => matched |= glob(name, &pattern),
        }
    }
    matched
}

/// `|1|salt|hash`: hash = HMAC-SHA1(key = salt, message = host name) (OpenSSH hostfile.c).
fn hashed_name_matches(name: &str, salt: &[u8], hash: &[u8; 20]) -> bool {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(hash).is_ok()
}

/// OpenSSH's `match_pattern`: `*` matches any run of characters, `?` exactly one.
fn glob(text: &str, pattern: &str) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = (text.chars().collect(), pattern.chars().collect());
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
