//! The one place where a mount verdict ([`crate::policy::mounts::decide_mounts`]) becomes a
//! gRPC status and an audit record, for both services, before they resolve anything.
//!
//! A refusal is `PermissionDenied`, never `NotFound`: BuildKit skips optional mounts on
//! NotFound, and a mount that breaks the policy must fail the build at its step, with a
//! message naming the rule, the Dockerfile and the line (the build author's own file, so it is
//! shown whatever `build_errors` says).

use tonic::Status;

use crate::audit::MountEvent;
use crate::broker::Broker;
use crate::channel::SessionInfo;
use crate::config::{DockerfileUnseen, Policy};
use crate::dockerfile::{MountKind, SessionDockerfiles};
use crate::policy::mounts::{MountVerdict, decide_mounts};

/// Whether `id` may be served to this session, given the Dockerfiles it showed.
pub fn enforce(
    broker: &Broker,
    policy: &Policy,
    session: &SessionInfo,
    dockerfiles: &SessionDockerfiles,
    kind: MountKind,
    id: &str,
) -> Result<(), Status> {
    let (read, problems) = dockerfiles.snapshot();
    let verdict = decide_mounts(policy, kind, id, &read, &problems);
    // Formatted only when there is something to record: most calls comply.
    let event =
        |decision, rule: Option<&str>, dockerfile: Option<&str>, line, reason: Option<&str>| {
            broker.audit().mount(&MountEvent {
                session: &session.uuid,
                client: &session.peer.client.to_string(),
                peer_uid: session.peer.uid,
                peer_pid: session.peer.pid,
                kind: kind.as_str(),
                id,
                decision,
                rule,
                dockerfile,
                line,
                reason,
            })
        };
    match verdict {
        MountVerdict::Complies => Ok(()),
        MountVerdict::Refused(r) => {
            event(
                "refused",
                Some(&r.violation.rule),
                Some(&r.dockerfile),
                Some(r.line),
                None,
            );
            Err(Status::permission_denied(r.message(kind, id)))
        }
        MountVerdict::Unseen {
            why,
            policy: DockerfileUnseen::Allow,
        } => {
            event("unseen_allowed", None, None, None, Some(&why));
            Ok(())
        }
        MountVerdict::Unseen {
            why,
            policy: DockerfileUnseen::Deny,
        } => {
            event("unseen_refused", None, None, None, Some(&why));
            let what = match kind {
                MountKind::Secret => "secret",
                MountKind::Ssh => "ssh id",
            };
            Err(Status::permission_denied(format!(
                "buildbroker: {what} {id:?} refused: its mount rules cannot be checked because {why}, and dockerfile_unseen = \"deny\""
            )))
        }
    }
}
