//! The audit trail: one JSON line per decision, to the policy's `audit_log` file and to the
//! tracing log (target `buildbroker::audit`).
//!
//! Records carry ids, source names, peers and decisions. They never carry values: nothing in
//! [`SecretEvent`] can hold secret bytes, and [`SshEvent`] names keys and hosts only by
//! fingerprint. The file is opened by [`crate::daemon_files::open_log`] (no symlink followed,
//! append-only, owner and mode checked on every open, nothing truncated).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// One GetSecret decision.
#[derive(Debug, Serialize)]
pub struct SecretEvent<'a> {
    /// The session's UUID as the client announced it.
    pub session: &'a str,
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
    file: Option<Mutex<File>>,
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
            file: Some(Mutex::new(file)),
        })
    }

    pub fn revoke(&self, event: &RevokeEvent) {
        tracing::warn!(
            target: "buildbroker::audit",
            peer_uid = event.peer_uid,
            peer_gid = event.peer_gid,
            peer_pid = event.peer_pid,
            decision = event.decision,
            "connection revoked: the reloaded [access] no longer allows this peer"
        );
        self.write("revoke", event);
    }

    pub fn secret(&self, event: &SecretEvent<'_>) {
        crate::metrics::secret_decision(event);
        tracing::info!(
            target: "buildbroker::audit",
            session = event.session,
            peer_uid = event.peer_uid,
            id = event.id,
            source = event.source,
            value_owner = event.value_owner,
            decision = event.decision,
            cache = event.cache,
            error = event.error,
            "secret request"
        );
        self.write("secret", event);
    }

    pub fn mount(&self, event: &MountEvent<'_>) {
        tracing::info!(
            target: "buildbroker::audit",
            session = event.session,
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
        self.write("mount", event);
    }

    pub fn ssh(&self, event: &SshEvent<'_>) {
        crate::metrics::ssh_decision(event);
        tracing::info!(
            target: "buildbroker::audit",
            via = event.via,
            session = event.session,
            peer_uid = event.peer_uid,
            id = event.id,
            key = event.key,
            host = event.host,
            decision = event.decision,
            reason = event.reason,
            "ssh sign request"
        );
        self.write("ssh", event);
    }

    fn write<E: Serialize>(&self, event: &'static str, body: &E) {
        let Some(file) = &self.file else { return };
        let line = Line {
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            event,
            body,
        };
        let Ok(mut text) = serde_json::to_vec(&line) else {
            return;
        };
        text.push(b'\n');
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&text) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}
