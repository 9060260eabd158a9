//! Chooses, per call inside a session, between buildbroker's own services and the relay.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower_service::Service;

use super::dockerfile_watch::{DockerfileTee, followpaths, is_dockerfile_sync};
use crate::broker::Broker;
use crate::channel::{BoxError, ClientChannel, RelayBody, SessionInfo};
use crate::dockerfile::SessionDockerfiles;
use crate::proto::sshforward::ssh_server::SshServer;
use crate::service::secrets::SecretsService;
use crate::service::ssh::SshService;
use crate::source::{BuildClient, ClientSecrets};

/// Where one call inside a session goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `moby.buildkit.secrets.v1.Secrets/*`: answered from the policy.
    Secrets,
    /// `moby.sshforward.v1.SSH/*`: the policy's agents, or the client's for unlisted ids.
    Ssh,
    /// `FileSync/DiffCopy` of the Dockerfile (`dir-name: dockerfile`): relayed, and its
    /// response read as it passes (`dockerfile_watch`).
    DockerfileSync,
    /// Everything else (Health, the context's FileSync, Auth, Upload, …): relayed to the
    /// build client.
    Relay,
}

impl Route {
    /// The route of a call, from its path and metadata.
    pub fn of_request<B>(req: &Request<B>) -> Route {
        if is_dockerfile_sync(req) {
            Route::DockerfileSync
        } else {
            Route::of(req.uri().path())
        }
    }

    pub fn of(path: &str) -> Route {
        if path.starts_with("/moby.buildkit.secrets.v1.Secrets/") {
            Route::Secrets
        } else if path.starts_with("/moby.sshforward.v1.SSH/") {
            Route::Ssh
        } else {
            Route::Relay
        }
    }
}

pub struct SessionRouter {
    client: ClientChannel,
    /// The Dockerfiles this session showed, which both services check mounts against.
    dockerfiles: Arc<SessionDockerfiles>,
    session: Arc<str>,
    secrets: SecretsService,
    ssh: SshServer<SshService>,
}

impl SessionRouter {
    pub fn new(client: ClientChannel, broker: Arc<Broker>, info: Arc<SessionInfo>) -> Self {
        let build_client = BuildClient {
            secrets: ClientSecrets::new(client.clone()),
            process: info.client.clone(),
        };
        let dockerfiles = Arc::new(SessionDockerfiles::default());
        let session: Arc<str> = info.uuid.as_str().into();
        let secrets = SecretsService::new(
            broker.clone(),
            info.clone(),
            build_client,
            dockerfiles.clone(),
        );
        let ssh = SshService::new(broker, info, client.clone(), dockerfiles.clone());
        SessionRouter {
            client,
            dockerfiles,
            session,
            secrets,
            ssh: SshServer::new(ssh),
        }
    }

    pub async fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<RelayBody>, Infallible> {
        match Route::of_request(&req) {
            Route::Secrets => Ok(self.secrets.handle(req).await),
            Route::Ssh => {
                let resp = self.ssh.clone().call(req).await?;
                Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()))
            }
            // The relay arms are boxed so that their futures do not size every call's future:
            // hyper hands this future to the session's executor once per stream (boxed there,
            // `super::calls`), and GetSecret, the hot path, should not copy the relay's state
            // in and out (issue 14).
            Route::DockerfileSync => {
                let follow = followpaths(&req);
                let resp = Box::pin(self.client.relay(req)).await;
                let (dockerfiles, session) = (self.dockerfiles.clone(), self.session.clone());
                Ok(resp
                    .map(|b| DockerfileTee::new(b, &follow, dockerfiles, session).boxed_unsync()))
            }
            Route::Relay => Ok(Box::pin(self.client.relay(req)).await),
        }
    }
}
