//! The audit trail: one JSON line per decision, to the policy's `audit_log` file and to the
//! tracing log (target `buildbroker::audit`).
//!
//! Records carry ids, source names, peers and decisions. They never carry values: nothing in
//! [`SecretEvent`] can hold secret bytes, and [`SshEvent`] names keys and hosts only by
//! fingerprint. The file is opened by [`crate::daemon_files::open_log`] (no symlink followed,
//! append-only, owner and mode checked on every open, nothing truncated).
//!
//! **Fail closed.** A value is served, and a signature given, only once its record is written:
//! [`AuditLog::secret`] and [`AuditLog::ssh`] return an error when the file cannot be written
//! (disk full, I/O error), and the callers then refuse. A file removed under the daemon (by hand
//! or by a log rotation without SIGHUP) is noticed on the next write (its link count is 0) and
//! opened again at its path with the same checks, so records never go to an unlinked inode.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// One GetSecret decision.
#[derive(Debug, Serialize)]
pub struct SecretEvent<'a> {
    /// The session's UUID as the client announced it.
    pub session: &'a str,
    /// Who asked: `uid:N` for a unix peer, the TLS client identity, or `tcp:insecure`.
    pub client: &'a str,
    pub peer_uid: u32,
    pub peer_pid: Option<i32>,
    /// The secret id the daemon asked for.
    pub id: &'a str,
    /// The kind of the source that answered (`env`, `file`, `client`), if one did.
    pub source: Option<&'static str>,
    /// Whose value was served: `broker` (the policy's own sources, shared by every build the
    /// policy serves the id to) or `session` (this session's build client supplied it, and
    /// only this session got it).
    pub value_owner: Option<&'static str>,
    /// `served`, `served_stale`, `not_found`, `denied`, `required_missing` or `error`.
    pub decision: &'static str,
    /// For ids with `cache_ttl`: `hit`, `miss` or `stale`.
    pub cache: Option<&'static str>,
    /// What went wrong, for `required_missing` and `error`.
    pub error: Option<&'a str>,
    /// For credentials an `aws-credentials:` source minted: whose they are, when they expire
    /// and the access key id's last four characters.
    pub minted: Option<MintedRecord>,
}

/// A minted credential as the audit log records it: never the secret key or the token.
#[derive(Debug, Serialize)]
pub struct MintedRecord {
    /// The role assumed; `null` for the daemon's own identity.
    pub role: Option<String>,
    /// RFC 3339, UTC; `null` when not known.
    pub expires: Option<String>,
    pub key_id_last4: String,
}

impl From<&crate::source::Minted> for MintedRecord {
    fn from(m: &crate::source::Minted) -> Self {
        MintedRecord {
            role: m.role.clone(),
            expires: m
                .expires
                .map(|e| humantime::format_rfc3339_seconds(e).to_string()),
            key_id_last4: m.key_id_last4.clone(),
        }
    }
}

/// One sign request to an ssh id buildbroker manages.
#[derive(Debug, Serialize)]
pub struct SshEvent<'a> {
    /// How the build reached the agent: `session` (SSH/ForwardAgent) or `socket` (a
    /// standalone agent socket).
    pub via: &'static str,
    /// The session's UUID, for `session`.
    pub session: Option<&'a str>,
    /// Who asked: `uid:N`, the TLS client identity, or `tcp:insecure`.
    pub client: &'a str,
    pub peer_uid: u32,
    pub peer_pid: Option<i32>,
    /// The ssh id.
    pub id: &'a str,
    /// The SHA256 fingerprint of the key asked to sign.
    pub key: &'a str,
    /// The host the agent connection is bound to (session-bind@openssh.com), as
    /// `SHA256:… (policy hosts entry)` for constrained ids; `None` if unbound.
    pub host: Option<&'a str>,
    /// `signed` or `refused`.
    pub decision: &'static str,
    /// Why it was refused.
    pub reason: Option<&'a str>,
}

/// A mount rule decision about one secret or ssh request: a refusal, or a request served
/// without its Dockerfile having been seen.
#[derive(Debug, Serialize)]
pub struct MountEvent<'a> {
    pub session: &'a str,
    /// Who asked: `uid:N`, the TLS client identity, or `tcp:insecure`.
    pub client: &'a str,
    pub peer_uid: u32,
    pub peer_pid: Option<i32>,
    /// `secret` or `ssh`.
    pub kind: &'static str,
    pub id: &'a str,
    /// `refused` (a mount breaks a rule), `unseen_allowed` or `unseen_refused`
    /// (`[server] dockerfile_unseen`).
    pub decision: &'static str,
    /// The rule broken, as the policy spells it.
    pub rule: Option<&'a str>,
    /// The Dockerfile and line of the mount that breaks it.
    pub dockerfile: Option<&'a str>,
    pub line: Option<usize>,
    /// Why the Dockerfile was not seen, for the `unseen_*` decisions.
    pub reason: Option<&'a str>,
}

/// A connection closed because a reload no longer allows its peer.
#[derive(Debug, Serialize)]
pub struct RevokeEvent {
    /// Whose connection: `uid:N` or the TLS client identity.
    pub client: String,
    pub peer_uid: u32,
    pub peer_gid: u32,
    pub peer_pid: Option<i32>,
    /// Always `revoked`.
    pub decision: &'static str,
}

#[derive(Serialize)]
struct Line<'a, E: Serialize> {
    time: String,
    event: &'static str,
    #[serde(flatten)]
    body: &'a E,
}

/// Where audit records go.
pub struct AuditLog {
    file: Option<Mutex<AuditFile>>,
}

/// The audit file, with what is needed to open it again if it is removed.
struct AuditFile {
    path: PathBuf,
    euid: u32,
    file: File,
}

/// A record that could not be written: what was served depends on it, so the caller refuses.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit log {path}: {message}")]
pub struct AuditError {
    pub path: PathBuf,
    pub message: String,
}

impl AuditLog {
    /// Records only to the tracing log.
    pub fn tracing_only() -> Self {
        AuditLog { file: None }
    }

    /// Appends to `path` (created 0600, parent directory 0750) as well as the tracing log. A
    /// daemon running as `euid` refuses a file or directory someone else could have planted.
    pub fn open(path: &Path, euid: u32) -> Result<Self, crate::daemon_files::PathError> {
        let file = crate::daemon_files::open_log(path, euid)?;
        Ok(AuditLog {
            file: Some(Mutex::new(AuditFile {
                path: path.to_path_buf(),
                euid,
                file,
            })),
        })
    }

    pub fn revoke(&self, event: &RevokeEvent) {
        tracing::warn!(
            target: "buildbroker::audit",
            client = %event.client,
            peer_uid = event.peer_uid,
            peer_gid = event.peer_gid,
            peer_pid = event.peer_pid,
            decision = event.decision,
            "connection revoked: the reloaded [access] no longer allows this peer"
        );
        let _ = self.write("revoke", event);
    }

    /// Records a GetSecret decision; an error means the record is not on disk, so a value
    /// must not be served.
    pub fn secret(&self, event: &SecretEvent<'_>) -> Result<(), AuditError> {
        crate::metrics::secret_decision(event);
        tracing::info!(
            target: "buildbroker::audit",
            session = event.session,
            client = event.client,
            peer_uid = event.peer_uid,
            id = event.id,
            source = event.source,
            value_owner = event.value_owner,
            decision = event.decision,
            cache = event.cache,
            error = event.error,
            "secret request"
        );
        self.write("secret", event)
    }

    /// Records a mount decision. These are refusals or notes about a request served anyway
    /// (`unseen_allowed`); a failure to record is logged by the write.
    pub fn mount(&self, event: &MountEvent<'_>) {
        tracing::info!(
            target: "buildbroker::audit",
            session = event.session,
            client = event.client,
            peer_uid = event.peer_uid,
            kind = event.kind,
            id = event.id,
            decision = event.decision,
            rule = event.rule,
            dockerfile = event.dockerfile,
            line = event.line,
            reason = event.reason,
            "mount rule decision"
        );
        let _ = self.write("mount", event);
    }

    /// Records a sign decision; an error means the record is not on disk, so a signature
    /// must not be given.
    pub fn ssh(&self, event: &SshEvent<'_>) -> Result<(), AuditError> {
        crate::metrics::ssh_decision(event);
        tracing::info!(
            target: "buildbroker::audit",
            via = event.via,
            session = event.session,
            client = event.client,
            peer_uid = event.peer_uid,
            id = event.id,
            key = event.key,
            host = event.host,
            decision = event.decision,
            reason = event.reason,
            "ssh sign request"
        );
        self.write("ssh", event)
    }

    fn write<E: Serialize>(&self, event: &'static str, body: &E) -> Result<(), AuditError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let line = Line {
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            event,
            body,
        };
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        let fail = |message: String, f: &AuditFile| {
            tracing::error!(path = %f.path.display(), error = %message, "cannot write the audit log; refusing to serve secrets and signatures until it works");
            crate::metrics::error_seen("audit_write");
            AuditError {
                path: f.path.clone(),
                message,
            }
        };
        let mut text = serde_json::to_vec(&line).map_err(|e| fail(e.to_string(), &f))?;
        text.push(b'\n');
        // Removed under us: open it again where it was, rather than append to a ghost.
        if f.file.metadata().map(|m| m.nlink() == 0).unwrap_or(false) {
            match crate::daemon_files::open_log(&f.path, f.euid) {
                Ok(file) => {
                    tracing::warn!(path = %f.path.display(), "the audit log was removed; writing to a new file at its path");
                    f.file = file;
                }
                Err(e) => {
                    return Err(fail(
                        format!("it was removed and cannot be created again: {e}"),
                        &f,
                    ));
                }
            }
        }
        match f.file.write_all(&text) {
            Ok(()) => Ok(()),
            Err(e) => Err(fail(e.to_string(), &f)),
        }
    }
}
