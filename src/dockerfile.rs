//! Finds every `RUN --mount=type=secret|ssh` in a Dockerfile and checks it against the policy,
//! for `buildbroker check`. Pure text processing: no file is read here, no value is touched.
//!
//! Mount flag syntax follows BuildKit's dockerfile frontend (`instructions/commands_runmount.go`):
//! comma-separated `key=value` fields; `id` defaults to the target's base name for secrets and
//! to `default` for ssh; `mode` defaults to 0400, `uid`/`gid` to 0, `required` to false.

use std::fmt;

use crate::config::{Policy, UnknownIds};

/// One finding about one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// 1-based line of the RUN instruction.
    pub line: usize,
    pub severity: Severity,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A `--mount` flag of type secret or ssh, with BuildKit's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub line: usize,
    pub kind: MountKind,
    pub id: String,
    pub required: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Secret,
    Ssh,
}

/// A mount flag that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSyntaxError {
    pub line: usize,
    pub message: String,
}

/// Every secret and ssh mount of every RUN instruction, in file order.
pub fn mounts(text: &str) -> Result<Vec<Mount>, MountSyntaxError> {
    let mut out = Vec::new();
    for (line, instruction) in instructions(text) {
        let mut words = instruction.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("RUN")) {
            continue;
        }
        for word in words {
            let Some(flag) = word.strip_prefix("--") else {
                break;
            };
            if let Some(spec) = flag.strip_prefix("mount=")
                && let Some(m) = parse_mount(spec, line)?
            {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// Logical instructions with the line each starts on: continuation lines joined, comments and
/// blank lines dropped, the `# escape=` parser directive honoured.
fn instructions(text: &str) -> Vec<(usize, String)> {
    let mut escape = '\\';
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut directives_allowed = true;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if directives_allowed {
            if let Some(rest) = trimmed.strip_prefix('#') {
                let rest = rest.trim();
                if let Some(v) = rest.strip_prefix("escape=")
                    && let Some(c) = v.trim().chars().next()
                {
                    escape = c;
                }
                continue;
            }
            directives_allowed = false;
        }
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if current.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix(escape) {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        let entry = current.get_or_insert_with(|| (i + 1, String::new()));
        entry.1.push_str(body);
        entry.1.push(' ');
        if !continues {
            out.push(current.take().expect("just inserted"));
        }
    }
    out.extend(current);
    out
}

fn parse_mount(spec: &str, line: usize) -> Result<Option<Mount>, MountSyntaxError> {
    let err = |message: String| MountSyntaxError { line, message };
    let mut kind = None;
    let mut id = None;
    let mut target = None;
    let mut required = false;
    let mut mode = 0o400;
    let mut uid = 0;
    let mut gid = 0;
    for field in spec.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (
                k.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"')),
            ),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        match (key.as_str(), value) {
            ("type", Some(v)) => kind = Some(v.to_string()),
            ("id", Some(v)) => id = Some(v.to_string()),
            ("target" | "dst" | "destination", Some(v)) => target = Some(v.to_string()),
            ("required", None) => required = true,
            ("required", Some(v)) => {
                required = v
                    .parse::<bool>()
                    .map_err(|_| err(format!("--mount required={v:?}: expected true or false")))?
            }
            ("mode", Some(v)) => {
                mode = u32::from_str_radix(v.trim_start_matches("0o"), 8).map_err(|_| {
                    err(format!(
                        "--mount mode={v:?}: expected an octal mode such as 0400"
                    ))
                })?
            }
            ("uid", Some(v)) => {
                uid = v
                    .parse()
                    .map_err(|_| err(format!("--mount uid={v:?}: expected a number")))?
            }
            ("gid", Some(v)) => {
                gid = v
                    .parse()
                    .map_err(|_| err(format!("--mount gid={v:?}: expected a number")))?
            }
            _ => {}
        }
    }
    let kind = match kind.as_deref() {
        Some("secret") => MountKind::Secret,
        Some("ssh") => MountKind::Ssh,
        _ => return Ok(None),
    };
    let id = match (kind, id, target) {
        (_, Some(id), _) => id,
        (MountKind::Secret, None, Some(t)) => t.rsplit('/').next().unwrap_or_default().to_string(),
        (MountKind::Secret, None, None) => {
            return Err(err("--mount=type=secret needs id= or target=".into()));
        }
        (MountKind::Ssh, None, _) => "default".to_string(),
    };
    if kind == MountKind::Ssh && !spec.contains("mode=") {
        mode = 0o600;
    }
    Ok(Some(Mount {
        line,
        kind,
        id,
        required,
        mode,
        uid,
        gid,
    }))
}

/// Checks each mount against the policy.
pub fn check(policy: &Policy, mounts: &[Mount]) -> Vec<Finding> {
    let mut out = Vec::new();
    for m in mounts {
        let mut push = |severity, message: String| {
            out.push(Finding {
                line: m.line,
                severity,
                message,
            })
        };
        match m.kind {
            MountKind::Secret => match policy.secrets.get(&m.id) {
                Some(rule) => {
                    if let Some(max) = rule.mode
                        && m.mode & !max != 0
                    {
                        push(
                            Severity::Violation,
                            format!(
                                "secret {:?} mounted with mode {:04o}; the policy allows at most {:04o}",
                                m.id, m.mode, max
                            ),
                        );
                    }
                    if let Some(uid) = rule.uid
                        && m.uid != uid
                    {
                        push(
                            Severity::Violation,
                            format!(
                                "secret {:?} mounted for uid {}; the policy allows only uid {uid}",
                                m.id, m.uid
                            ),
                        );
                    }
                    if let Some(gid) = rule.gid
                        && m.gid != gid
                    {
                        push(
                            Severity::Violation,
                            format!(
                                "secret {:?} mounted for gid {}; the policy allows only gid {gid}",
                                m.id, m.gid
                            ),
                        );
                    }
                }
                None => match (policy.server.unknown_secrets, m.required) {
                    (UnknownIds::Deny, true) => push(
                        Severity::Violation,
                        format!(
                            "required secret {:?} is not in the policy and unknown_secrets = \"deny\": the build will fail",
                            m.id
                        ),
                    ),
                    (UnknownIds::Deny, false) => push(
                        Severity::Note,
                        format!(
                            "secret {:?} is not in the policy: the mount will be skipped",
                            m.id
                        ),
                    ),
                    (UnknownIds::Client, _) => push(
                        Severity::Note,
                        format!(
                            "secret {:?} is not in the policy: it comes from the build's own --secret flag",
                            m.id
                        ),
                    ),
                },
            },
            MountKind::Ssh => {
                if !policy.ssh.contains_key(&m.id) {
                    match (policy.server.unknown_ssh, m.required) {
                        (UnknownIds::Deny, true) => push(
                            Severity::Violation,
                            format!(
                                "required ssh id {:?} is not in the policy and unknown_ssh = \"deny\"",
                                m.id
                            ),
                        ),
                        (UnknownIds::Deny, false) => push(
                            Severity::Note,
                            format!("ssh id {:?} is not in the policy", m.id),
                        ),
                        (UnknownIds::Client, _) => push(
                            Severity::Note,
                            format!(
                                "ssh id {:?} is not in the policy: it comes from the build's own --ssh flag",
                                m.id
                            ),
                        ),
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
