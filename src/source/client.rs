//! `client` — the build client's own secrets provider (`docker buildx build --secret id=…`),
//! asked over the intercepted session. This is how `unknown_secrets = "client"` stays
//! transparent, and how a policy chain can end with "whatever the user passed".

use tonic::Code;

use super::{Lookup, SourceError};
use crate::channel::ClientChannel;
use crate::proto::secrets::GetSecretRequest;
use crate::proto::secrets::secrets_client::SecretsClient;
use crate::secret::SecretBytes;

/// A gRPC client for the Secrets service that buildx serves on its side of the session.
#[derive(Clone)]
pub struct ClientSecrets {
    client: SecretsClient<ClientChannel>,
}

impl ClientSecrets {
    pub fn new(channel: ClientChannel) -> Self {
        // The origin only fills `:scheme`/`:authority`; buildx's session server ignores both.
        let origin = http::Uri::from_static("http://buildbroker");
        ClientSecrets {
            client: SecretsClient::with_origin(channel, origin),
        }
    }

    pub async fn lookup(&self, id: &str) -> Result<Lookup, SourceError> {
        let request = GetSecretRequest {
            id: id.to_string(),
            annotations: Default::default(),
        };
        match self.client.clone().get_secret(request).await {
            // prost decoded the value into its own Vec; move it into SecretBytes without a copy.
            Ok(response) => Ok(Lookup::Found(SecretBytes::new(response.into_inner().data))),
            // buildx answers NotFound for ids it was not given (Unimplemented: no provider at all).
            Err(status) if matches!(status.code(), Code::NotFound | Code::Unimplemented) => Ok(
                Lookup::Missing("the build client has no --secret with this id".into()),
            ),
            Err(status) => Err(SourceError::transient(format!(
                "the build client answered {:?}: {}",
                status.code(),
                status.message()
            ))),
        }
    }
}
