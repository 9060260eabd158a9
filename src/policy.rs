//! Pure policy decisions: no I/O, no clocks, table-tested.
//!
//! [`decide_secret`] says what to do with a requested id before anything is resolved;
//! [`conclude_secret`] turns what the sources said into the answer the build gets. The gRPC
//! status codes for those answers are chosen in one place, `service::secrets`.
//! [`decide_ssh`] does the same for ssh ids (status codes in `service::ssh`); what a managed
//! id may sign is decided in `ssh::destination`.

use crate::config::{BuildErrors, Policy, SshRule, UnknownIds};
use crate::source::{Attempt, AttemptOutcome, SourceSpec};
use crate::template::Template;

/// The implicit chain for ids the policy does not list under `unknown_secrets = "client"`.
const CLIENT_ONLY: &[SourceSpec] = &[SourceSpec::Client];

/// What to do with a GetSecret for one id.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretDecision<'p> {
    /// Walk this chain of sources.
    Resolve {
        sources: &'p [SourceSpec],
        required: bool,
        /// Whether the id is listed in the policy (false: the implicit `client` chain).
        listed: bool,
    },
    /// Render this template from the values of the ids it names.
    Render { template: &'p Template },
    /// The id does not exist for this broker (`unknown_secrets = "deny"`).
    Deny,
}

pub fn decide_secret<'p>(policy: &'p Policy, id: &str) -> SecretDecision<'p> {
    match policy.secrets.get(id) {
        Some(rule) => match &rule.template {
            Some(template) => SecretDecision::Render { template },
            None => SecretDecision::Resolve {
                sources: &rule.sources,
                required: rule.required,
                listed: true,
            },
        },
        None => match policy.server.unknown_secrets {
            UnknownIds::Client => SecretDecision::Resolve {
                sources: CLIENT_ONLY,
                required: false,
                listed: false,
            },
            UnknownIds::Deny => SecretDecision::Deny,
        },
    }
}

/// The answer a build gets once the chain has been walked.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretOutcome {
    /// The source at this index of the chain found the value.
    Served { source: usize },
    /// No source has it and it is optional: the daemon skips optional mounts.
    NotFound,
    /// The policy marks it required and no source has it: fail the build, naming what was tried.
    RequiredMissing { message: String },
    /// A source failed (rather than having nothing) and none after it answered.
    Failed { message: String },
}

/// Turns the attempts of a chain into the build's answer. `served` is the index of the source
/// that found the value, if one did.
pub fn conclude_secret(
    id: &str,
    required: bool,
    served: Option<usize>,
    attempts: &[Attempt],
) -> SecretOutcome {
    if let Some(source) = served {
        return SecretOutcome::Served { source };
    }
    let tried = attempts
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if attempts
        .iter()
        .any(|a| matches!(a.outcome, AttemptOutcome::Failed(_)))
    {
        return SecretOutcome::Failed {
            message: format!("buildbroker: secret {id:?} could not be resolved; tried {tried}"),
        };
    }
    if required {
        return SecretOutcome::RequiredMissing {
            message: format!(
                "buildbroker: secret {id:?} is required by policy but no source has it; tried {tried}"
            ),
        };
    }
    SecretOutcome::NotFound
}

/// What the build's output shows for a secret that could not be served. Under
/// `build_errors = "brief"` that is the id, the kinds of source tried and why each gave
/// nothing; `detailed` (a local daemon's opt-in) is the daemon log's own message.
pub fn secret_failure_for_build(
    id: &str,
    required_missing: bool,
    attempts: &[Attempt],
    detailed: &str,
    level: BuildErrors,
) -> String {
    if level == BuildErrors::Detailed {
        return detailed.to_string();
    }
    let tried = brief_attempts(attempts);
    if required_missing {
        format!(
            "buildbroker: secret {id:?} is required by policy but no source has it; tried {tried}"
        )
    } else {
        format!(
            "buildbroker: secret {id:?} could not be resolved; tried {tried}; the buildbroker log has the details"
        )
    }
}

/// The attempts as a build's output lists them: `env (not found), exec (error)`.
fn brief_attempts(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(Attempt::brief)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the build's output shows for a template whose input `input` has no value.
pub fn template_failure_for_build(
    id: &str,
    input: &str,
    attempts: &[Attempt],
    detailed: &str,
    level: BuildErrors,
) -> String {
    if level == BuildErrors::Detailed {
        return detailed.to_string();
    }
    let tried = brief_attempts(attempts);
    format!(
        "buildbroker: secret {id:?} is rendered from {input:?}, which has no value; tried {tried}"
    )
}

/// What the build's output shows when a managed ssh id cannot serve (see
/// [`secret_failure_for_build`]).
pub fn ssh_failure_for_build(id: &str, detailed: &str, level: BuildErrors) -> String {
    match level {
        BuildErrors::Detailed => format!("buildbroker: ssh id {id:?}: {detailed}"),
        BuildErrors::Brief => format!(
            "buildbroker: ssh id {id:?} cannot serve now; the buildbroker log has the details"
        ),
    }
}

/// Who answers the agent of one ssh id (`CheckAgent`, `ForwardAgent`).
#[derive(Debug, PartialEq, Eq)]
pub enum SshDecision<'p> {
    /// The policy lists the id: buildbroker's own filtered agent answers.
    Managed(&'p SshRule),
    /// Not listed, `unknown_ssh = "client"`: the build's own `--ssh` provider answers.
    Client,
    /// Not listed, `unknown_ssh = "deny"`: the id does not exist.
    Deny,
}

/// `id` as BuildKit sends it: empty means `default` (buildkit session/sshforward/ssh.go).
pub fn decide_ssh<'p>(policy: &'p Policy, id: &str) -> SshDecision<'p> {
    let id = if id.is_empty() { "default" } else { id };
    match policy.ssh.get(id) {
        Some(rule) => SshDecision::Managed(rule),
        None => match policy.server.unknown_ssh {
            UnknownIds::Client => SshDecision::Client,
            UnknownIds::Deny => SshDecision::Deny,
        },
    }
}

pub mod mounts;

#[cfg(test)]
mod tests;
