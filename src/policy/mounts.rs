//! Pure decisions about mounts: does one `--mount` of a Dockerfile keep the policy's `mode`,
//! `uid`, `gid`, `targets` and `mount_required` rules ([`check_mount`]), and may a build be
//! served an id given every Dockerfile its session read ([`decide_mounts`]).
//!
//! No I/O and no values: the inputs are the policy and what the Dockerfile reader found.

use crate::config::{DockerfileUnseen, MountRules, Policy};
use crate::dockerfile::{Mount, MountKind, ReadDockerfile, Resolved, Word};

/// One rule a mount breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The policy key broken: `mode`, `uid`, `gid`, `targets` or `mount_required`.
    pub key: &'static str,
    /// The rule as the policy spells it, with its table: `[secrets.pypi_token] mode = 0o400`.
    pub rule: String,
    /// What the mount does: `mounts it with mode=0444`.
    pub problem: String,
}

/// One policy key's value and the table it came from (the id's own, or `[mounts.<kind>]`).
fn pick<'p, T>(
    own: &'p Option<T>,
    default: &'p Option<T>,
    table: &str,
    kind: MountKind,
) -> Option<(&'p T, String)> {
    match (own, default) {
        (Some(v), _) => Some((v, table.to_string())),
        (None, Some(v)) => Some((v, format!("[mounts.{}]", kind_table(kind)))),
        (None, None) => None,
    }
}

fn kind_table(kind: MountKind) -> &'static str {
    match kind {
        MountKind::Secret => "secrets",
        MountKind::Ssh => "ssh",
    }
}

/// The id's own mount rules and the `[mounts]` defaults of its kind.
pub fn rules_for<'p>(
    policy: &'p Policy,
    kind: MountKind,
    id: &str,
) -> (&'p MountRules, &'p MountRules) {
    static NONE: MountRules = MountRules {
        mode: None,
        uid: None,
        gid: None,
        targets: None,
        mount_required: None,
    };
    match kind {
        MountKind::Secret => (
            policy.secrets.get(id).map_or(&NONE, |r| &r.mount),
            &policy.mounts.secrets,
        ),
        MountKind::Ssh => (
            policy.ssh.get(id).map_or(&NONE, |r| &r.mount),
            &policy.mounts.ssh,
        ),
    }
}

/// Ids the daemon asks for itself, not for a mount: git credentials for a git context
/// (buildkit source/git/source.go, `GIT_AUTH_TOKEN.<host>`, `GIT_AUTH_HEADER.<host>`).
/// `[mounts]` defaults do not apply to them.
const DAEMON_IDS: &[&str] = &["GIT_AUTH_TOKEN.", "GIT_AUTH_HEADER."];

/// Whether any mount rule applies to `id`.
pub fn has_rules(policy: &Policy, kind: MountKind, id: &str) -> bool {
    let (own, mut default) = rules_for(policy, kind, id);
    if kind == MountKind::Secret && DAEMON_IDS.iter().any(|p| id.starts_with(p)) {
        default = own;
    }
    own.mode.or(default.mode).is_some()
        || own.uid.or(default.uid).is_some()
        || own.gid.or(default.gid).is_some()
        || own.targets.is_some()
        || default.targets.is_some()
        || own.mount_required.or(default.mount_required) == Some(true)
}

fn unresolved(key: &'static str, rule: String, option: &str, word: &Word) -> Violation {
    let vars = word
        .unknowns()
        .iter()
        .map(|v| format!("${v}"))
        .collect::<Vec<_>>()
        .join(", ");
    Violation {
        key,
        rule,
        problem: format!(
            "mounts it with {option}={word}, and buildbroker cannot know {vars} (a build arg, which --build-arg can override, or the base image's ENV); write the value literally"
        ),
    }
}

/// Every rule of the policy that `mount`, mounting `id`, breaks.
pub fn check_mount(policy: &Policy, mount: &Mount, id: &str) -> Vec<Violation> {
    let kind = mount.kind;
    let table = format!("[{}.{id}]", kind_table(kind));
    let (own, default) = rules_for(policy, kind, id);
    let mut out = Vec::new();

    if let Some((max, from)) = pick(&own.mode, &default.mode, &table, kind) {
        let rule = format!("{from} mode = 0o{max:o}");
        match &mount.mode {
            Resolved::Known(m) if m & !max != 0 => out.push(Violation {
                key: "mode",
                rule,
                problem: format!("mounts it with mode={m:04o}, wider than {max:04o}"),
            }),
            Resolved::Known(_) => {}
            Resolved::Unknown(w) => out.push(unresolved("mode", rule, "mode", w)),
        }
    }
    for (key, own, default, value) in [
        ("uid", &own.uid, &default.uid, &mount.uid),
        ("gid", &own.gid, &default.gid, &mount.gid),
    ] {
        if let Some((want, from)) = pick(own, default, &table, kind) {
            let rule = format!("{from} {key} = {want}");
            match value {
                Resolved::Known(v) if v != want => out.push(Violation {
                    key,
                    rule,
                    problem: format!("mounts it for {key} {v}"),
                }),
                Resolved::Known(_) => {}
                Resolved::Unknown(w) => out.push(unresolved(key, rule, key, w)),
            }
        }
    }
    if let Some((targets, from)) = pick(&own.targets, &default.targets, &table, kind) {
        let rule = format!("{from} targets = {targets:?}");
        let mut places: Vec<(&str, String, &Word)> = Vec::new();
        if let Some(t) = &mount.target {
            places.push(("target", String::new(), t));
        }
        if let Some(e) = &mount.env {
            places.push(("env", "env:".to_string(), e));
        }
        for (option, prefix, word) in places {
            match word.known() {
                Some(v) if !targets.contains(&format!("{prefix}{v}")) => out.push(Violation {
                    key: "targets",
                    rule: rule.clone(),
                    problem: match option {
                        "env" => format!("mounts it as the environment variable {v}"),
                        _ => format!("mounts it at {v}"),
                    },
                }),
                Some(_) => {}
                None => out.push(unresolved("targets", rule.clone(), option, word)),
            }
        }
    }
    if let Some((true, from)) = pick(&own.mount_required, &default.mount_required, &table, kind) {
        let rule = format!("{from} mount_required = true");
        match &mount.required {
            Resolved::Known(true) => {}
            Resolved::Known(false) => out.push(Violation {
                key: "mount_required",
                rule,
                problem: "does not say required=true".to_string(),
            }),
            Resolved::Unknown(w) => out.push(unresolved("mount_required", rule, "required", w)),
        }
    }
    out
}

/// Why a request is refused: the first broken rule, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub dockerfile: String,
    pub line: usize,
    pub violation: Violation,
}

impl Refusal {
    /// The message the build shows (the build author's own file and line, and the rule).
    pub fn message(&self, kind: MountKind, id: &str) -> String {
        let what = match kind {
            MountKind::Secret => "secret",
            MountKind::Ssh => "ssh id",
        };
        format!(
            "buildbroker: {what} {id:?} refused: {} line {} {}, against the policy rule {}",
            self.dockerfile, self.line, self.violation.problem, self.violation.rule
        )
    }
}

/// What the Dockerfiles a session read say about serving `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountVerdict {
    /// Every mount of the id in every Dockerfile keeps the rules (or no rule applies).
    Complies,
    /// The session's Dockerfile was not seen whole; `dockerfile_unseen` decides.
    Unseen {
        why: String,
        policy: DockerfileUnseen,
    },
    Refused(Refusal),
}

/// Decides for one request of `kind`/`id`, given what the session's file syncs showed:
/// `dockerfiles` read whole, and `problems` (syncs that could not be followed, or files the
/// daemon already held and did not fetch again).
pub fn decide_mounts(
    policy: &Policy,
    kind: MountKind,
    id: &str,
    dockerfiles: &[std::sync::Arc<ReadDockerfile>],
    problems: &[String],
) -> MountVerdict {
    let id = if kind == MountKind::Ssh && id.is_empty() {
        "default"
    } else {
        id
    };
    if !has_rules(policy, kind, id) {
        return MountVerdict::Complies;
    }
    for df in dockerfiles {
        for m in df.read.mounts.iter().filter(|m| m.kind == kind) {
            if !m.id.matches(id) {
                continue;
            }
            if let Some(v) = check_mount(policy, m, id).into_iter().next() {
                return MountVerdict::Refused(Refusal {
                    dockerfile: df.name.clone(),
                    line: m.line,
                    violation: v,
                });
            }
        }
    }
    let unreadable = dockerfiles.iter().find_map(|df| {
        df.read
            .errors
            .first()
            .map(|e| format!("{} line {}: {}", df.name, e.line, e.message))
    });
    let why = match (dockerfiles.is_empty(), unreadable, problems.first()) {
        (_, Some(e), _) => Some(format!("buildbroker cannot read the Dockerfile: {e}")),
        (_, None, Some(p)) => Some(p.clone()),
        (true, None, None) => Some(
            "no Dockerfile came through this build's file sync (a remote git or https context, or another frontend)".to_string(),
        ),
        (false, None, None) => None,
    };
    match why {
        Some(why) => MountVerdict::Unseen {
            why,
            policy: policy.server.dockerfile_unseen,
        },
        None => MountVerdict::Complies,
    }
}

#[cfg(test)]
mod tests;
