//! Chooses, per call inside a session, between buildbroker's own services and the relay.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use super::SessionInfo;
use super::relay::{ClientChannel, RelayBody};
use crate::broker::Broker;
use crate::service::secrets::SecretsService;
use crate::source::ClientSecrets;

/// Where one call inside a session goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `moby.buildkit.secrets.v1.Secrets/*`: answered from the policy.
    Secrets,
    /// Everything else (Health, FileSync, Auth, SSH, Upload, …): relayed to the build client.
    Relay,
}

impl Route {
    pub fn of(path: &str) -> Route {
        if path.starts_with("/moby.buildkit.secrets.v1.Secrets/") {
            Route::Secrets
        } else {
            Route::Relay
        }
    }
}

pub struct SessionRouter {
    client: ClientChannel,
    secrets: SecretsService,
}

impl SessionRouter {
    pub fn new(client: ClientChannel, broker: Arc<Broker>, info: Arc<SessionInfo>) -> Self {
        let service = SecretsService::new(broker, info, ClientSecrets::new(client.clone()));
        SessionRouter {
            client,
            secrets: service,
        }
    }

    pub async fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<RelayBody>, Infallible> {
        match Route::of(req.uri().path()) {
            Route::Secrets => Ok(self.secrets.handle(req).await),
            Route::Relay => Ok(self.client.relay(req).await),
        }
    }
}
