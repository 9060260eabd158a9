//! `moby.buildkit.secrets.v1.Secrets/GetSecret`: policy → cache → sources → answer → zeroize.
//!
//! This is the single place where secret answers become gRPC status codes (design.md §5):
//! NotFound lets the daemon skip optional mounts; any other code fails the build, which is what
//! a policy-required secret with no value must do.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::audit::SecretEvent;
use crate::broker::Broker;
use crate::proto::secrets::secrets_server::Secrets;
use crate::proto::secrets::{GetSecretRequest, GetSecretResponse};
use crate::resolver::{Answer, CacheUse, answer};
use crate::session::SessionInfo;
use crate::source::ClientSecrets;

pub struct SecretsService {
    broker: Arc<Broker>,
    session: Arc<SessionInfo>,
    /// The build client's own provider, for `client` sources.
    client: ClientSecrets,
}

impl SecretsService {
    pub fn new(broker: Arc<Broker>, session: Arc<SessionInfo>, client: ClientSecrets) -> Self {
        SecretsService {
            broker,
            session,
            client,
        }
    }

    fn audit(
        &self,
        id: &str,
        source: Option<&'static str>,
        decision: &'static str,
        cache: Option<&'static str>,
        error: Option<&str>,
    ) {
        self.broker.audit().secret(&SecretEvent {
            session: &self.session.uuid,
            peer_uid: self.session.peer.uid,
            peer_pid: self.session.peer.pid,
            id,
            source,
            decision,
            cache,
            error,
        });
    }
}

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        let generation = self.broker.current();
        match answer(&generation, &id, Some(&self.client)).await {
            Answer::Denied => {
                self.audit(&id, None, "denied", None, None);
                Err(Status::not_found(format!(
                    "buildbroker: secret {id:?} is not in the policy (unknown_secrets = \"deny\")"
                )))
            }
            Answer::Value {
                value,
                source,
                cache,
                attempts,
                ..
            } => {
                let (decision, cache_note, error) = match cache {
                    CacheUse::Off => ("served", None, None),
                    CacheUse::Hit => ("served", Some("hit"), None),
                    CacheUse::Miss => ("served", Some("miss"), None),
                    CacheUse::Stale { past_expiry } => {
                        let failures = attempts
                            .iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(", ");
                        let note = format!(
                            "served a cached value {} past its expiry because every source failed transiently: {failures}",
                            humantime::format_duration(std::time::Duration::from_secs(
                                past_expiry.as_secs()
                            ))
                        );
                        ("served_stale", Some("stale"), Some(note))
                    }
                };
                self.audit(
                    &id,
                    Some(source.kind()),
                    decision,
                    cache_note,
                    error.as_deref(),
                );
                // The response needs its own Vec (prost owns it until tonic has encoded it); our
                // copy is zeroized when the last Arc drops (now, or at cache expiry). The copies
                // in prost/tonic/h2 buffers are not under our control (SECURITY.md).
                Ok(Response::new(GetSecretResponse {
                    data: value.expose().to_vec(),
                }))
            }
            Answer::NotFound { .. } => {
                self.audit(&id, None, "not_found", None, None);
                Err(Status::not_found(format!(
                    "buildbroker: no source has secret {id:?}"
                )))
            }
            Answer::RequiredMissing { message, .. } => {
                self.audit(&id, None, "required_missing", None, Some(&message));
                Err(Status::failed_precondition(message))
            }
            Answer::Failed { message, .. } => {
                self.audit(&id, None, "error", None, Some(&message));
                Err(Status::unavailable(message))
            }
        }
    }
}
