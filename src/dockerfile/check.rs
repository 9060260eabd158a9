//! `buildbroker check`: every secret and ssh mount of a Dockerfile against the policy, as
//! located findings. The rules themselves are the build's ([`crate::policy::mounts`]); this
//! adds what only matters before a build: ids that cannot be resolved, ids the policy does not
//! list, and files another frontend parses.

use std::fmt;

use serde::Serialize;

use super::reader::{Dockerfile, MountKind};
use crate::config::{Policy, UnknownIds};
use crate::policy::mounts::check_mount;

/// One finding about one mount (or the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// 1-based line and column of the `--mount` flag.
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    /// A short name for the rule: a policy key (`mode`, `uid`, `gid`, `targets`,
    /// `mount_required`), or `syntax`, `unresolved`, `unknown_secret`, `unknown_ssh`,
    /// `frontend`.
    pub rule: &'static str,
    /// The secret or ssh id, when known.
    pub id: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The build will fail or the policy forbids the mount.
    Violation,
    /// Worth knowing, not wrong (an optional mount that will be skipped, say).
    Note,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Violation => "violation",
            Severity::Note => "note",
        })
    }
}

/// Every finding of one read Dockerfile, in file order.
pub fn check(policy: &Policy, dockerfile: &Dockerfile) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(syntax) = &dockerfile.syntax {
        out.push(Finding {
            line: 1,
            column: 1,
            severity: Severity::Note,
            rule: "frontend",
            id: None,
            message: format!(
                "# syntax={syntax}: that frontend parses this file in the build; buildbroker reads its mounts with the standard Dockerfile rules"
            ),
        });
    }
    for e in &dockerfile.errors {
        out.push(Finding {
            line: e.line,
            column: e.column,
            severity: Severity::Violation,
            rule: "syntax",
            id: None,
            message: e.message.clone(),
        });
    }
    for m in &dockerfile.mounts {
        let what = match m.kind {
            MountKind::Secret => "secret",
            MountKind::Ssh => "ssh id",
        };
        let mut push = |severity, rule, id: Option<&str>, message: String| {
            out.push(Finding {
                line: m.line,
                column: m.column,
                severity,
                rule,
                id: id.map(str::to_string),
                message,
            })
        };
        let Some(id) = m.id.known() else {
            let vars =
                m.id.unknowns()
                    .iter()
                    .map(|v| format!("${v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
            push(
                Severity::Violation,
                "unresolved",
                None,
                format!(
                    "{what} id {} depends on {vars}, which has no value here: give it with --build-arg NAME=VALUE (a variable only the base image's ENV sets cannot be known)",
                    m.id
                ),
            );
            continue;
        };
        for v in check_mount(policy, m, &id) {
            push(
                Severity::Violation,
                v.key,
                Some(&id),
                format!(
                    "{what} {id:?} {}, against the policy rule {}",
                    v.problem, v.rule
                ),
            );
        }
        let (listed, unknown, rule, flag) = match m.kind {
            MountKind::Secret => (
                policy.secrets.contains_key(&id),
                policy.server.unknown_secrets,
                "unknown_secret",
                "--secret",
            ),
            MountKind::Ssh => (
                policy.ssh.contains_key(&id),
                policy.server.unknown_ssh,
                "unknown_ssh",
                "--ssh",
            ),
        };
        let required = matches!(m.required, super::Resolved::Known(true));
        if !listed {
            match (unknown, required) {
                (UnknownIds::Deny, true) => push(
                    Severity::Violation,
                    rule,
                    Some(&id),
                    format!(
                        "required {what} {id:?} is not in the policy and {rule}s = \"deny\": the build will fail"
                    ),
                ),
                (UnknownIds::Deny, false) => push(
                    Severity::Note,
                    rule,
                    Some(&id),
                    format!("{what} {id:?} is not in the policy: the mount will be skipped"),
                ),
                (UnknownIds::Client, _) => push(
                    Severity::Note,
                    rule,
                    Some(&id),
                    format!(
                        "{what} {id:?} is not in the policy: it comes from the build's own {flag} flag"
                    ),
                ),
            }
        }
    }
    out.sort_by_key(|f| (f.line, f.column));
    out
}
