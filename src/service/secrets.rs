//! `moby.buildkit.secrets.v1.Secrets/GetSecret`: policy → sources → answer → zeroize.
//!
//! This is the single place where secret outcomes become gRPC status codes (design.md §5):
//! NotFound lets the daemon skip optional mounts; any other code fails the build, which is what
//! a policy-required secret with no value must do.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::audit::SecretEvent;
use crate::broker::Broker;
use crate::policy::{SecretDecision, SecretOutcome, conclude_secret, decide_secret};
use crate::proto::secrets::secrets_server::Secrets;
use crate::proto::secrets::{GetSecretRequest, GetSecretResponse};
use crate::session::SessionInfo;
use crate::source::{ClientSecrets, ResolveContext, resolve_chain};

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
        error: Option<&str>,
    ) {
        self.broker.audit().secret(&SecretEvent {
            session: &self.session.uuid,
            peer_uid: self.session.peer.uid,
            peer_pid: self.session.peer.pid,
            id,
            source,
            decision,
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
        let policy = self.broker.policy();
        let (sources, required) = match decide_secret(&policy, &id) {
            SecretDecision::Resolve {
                sources, required, ..
            } => (sources, required),
            SecretDecision::Deny => {
                self.audit(&id, None, "denied", None);
                return Err(Status::not_found(format!(
                    "buildbroker: secret {id:?} is not in the policy (unknown_secrets = \"deny\")"
                )));
            }
        };
        let sources_runtime = self.broker.sources();
        let ctx = ResolveContext {
            runtime: &sources_runtime,
            client: Some(&self.client),
        };
        let chain = resolve_chain(sources, &id, ctx).await;
        let served = chain.value.as_ref().map(|(i, _)| *i);
        match conclude_secret(&id, required, served, &chain.attempts) {
            SecretOutcome::Served { source } => {
                let (_, value) = chain.value.expect("served implies a value");
                self.audit(&id, Some(sources[source].kind()), "served", None);
                // The response needs its own Vec (prost owns it until tonic has encoded it); our
                // copy in `value` is zeroized when it drops at the end of this scope. The copies
                // in prost/tonic/h2 buffers are not under our control (SECURITY.md).
                Ok(Response::new(GetSecretResponse {
                    data: value.expose().to_vec(),
                }))
            }
            SecretOutcome::NotFound => {
                self.audit(&id, None, "not_found", None);
                Err(Status::not_found(format!(
                    "buildbroker: no source has secret {id:?}"
                )))
            }
            SecretOutcome::RequiredMissing { message } => {
                self.audit(&id, None, "required_missing", Some(&message));
                Err(Status::failed_precondition(message))
            }
            SecretOutcome::Failed { message } => {
                self.audit(&id, None, "error", Some(&message));
                Err(Status::unavailable(message))
            }
        }
    }
}
