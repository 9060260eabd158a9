//! `moby.buildkit.secrets.v1.Secrets/GetSecret`: policy → cache → sources → answer → zeroize.
//!
//! This is the single place where secret answers become gRPC status codes (design.md §5):
//! NotFound lets the daemon skip optional mounts; any other code fails the build, which is what
//! a policy-required secret with no value must do.
//!
//! The response is framed here rather than by tonic's server codec, so that the only copy of
//! the value on its way out is one we own: the gRPC frame is built in a `SecretBytes` and handed
//! to h2 as `Bytes` that zeroize when h2 drops them. h2 writes a DATA payload of 256 bytes or
//! more (1024 without vectored I/O) straight from our buffer but copies smaller ones into its
//! connection write buffer, which is never cleared; so a short answer carries an unknown
//! padding field (protobuf ignores unknown fields) to reach [`MIN_FRAME`]. Checked by the core
//! dump test in tests/e2e/no_leaks.rs.

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::Status;

use crate::audit::{AuditError, SecretEvent};
use crate::broker::Broker;
use crate::channel::{BoxError, RelayBody, SessionInfo};
use crate::dockerfile::{MountKind, SessionDockerfiles};
use crate::policy::{secret_failure_for_build, template_failure_for_build};
use crate::proto::secrets::GetSecretRequest;
use crate::resolver::{Answer, CacheUse, ValueOrigin, answer};
use crate::secret::SecretBytes;
use crate::source::BuildClient;

/// The one method of the service.
pub const GET_SECRET: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";
/// GetSecret requests carry an id and a few annotations; anything bigger is not one.
const MAX_REQUEST: usize = 64 * 1024;
/// Smallest gRPC frame we send, so h2 writes it from our buffer instead of copying it.
pub const MIN_FRAME: usize = 1024;
/// An unused field number for padding (GetSecretResponse has only `data = 1`).
const PADDING_FIELD: u32 = 15;

pub struct SecretsService {
    broker: Arc<Broker>,
    session: Arc<SessionInfo>,
    /// The session's build client, for `client` and `client-env:` sources.
    client: BuildClient,
    /// The Dockerfiles the session showed, for the mount rules.
    dockerfiles: Arc<SessionDockerfiles>,
    /// The caller as audit records name it (`uid:N`, the TLS identity): fixed for the
    /// session, so formatted once rather than on every call.
    client_label: String,
}

impl SecretsService {
    pub fn new(
        broker: Arc<Broker>,
        session: Arc<SessionInfo>,
        client: BuildClient,
        dockerfiles: Arc<SessionDockerfiles>,
    ) -> Self {
        let client_label = session.peer.client.to_string();
        SecretsService {
            broker,
            session,
            client,
            dockerfiles,
            client_label,
        }
    }

    /// Answers one call on `moby.buildkit.secrets.v1.Secrets`.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<RelayBody> {
        if req.uri().path() != GET_SECRET {
            return status(Status::unimplemented(format!(
                "buildbroker: no method {}",
                req.uri().path()
            )));
        }
        let id = match read_request(req).await {
            Ok(r) => r.id,
            Err(s) => return status(s),
        };
        match self.get_secret(&id).await {
            Ok(value) => grpc_ok(encode_response(&value)),
            Err(s) => status(s),
        }
    }

    async fn get_secret(&self, id: &str) -> Result<Arc<SecretBytes>, Status> {
        let generation = self.broker.current();
        let client = &self.session.peer.client;
        if let Some(rule) = generation.policy.secrets.get(id)
            && !crate::access::client_listed(rule.clients.as_deref(), client)
        {
            let _ = self.audit(
                id,
                None,
                "denied",
                None,
                Some("the client is not in this id's clients"),
                None,
            );
            return Err(Status::not_found(format!(
                "buildbroker: secret {id:?} is not available to client \"{client}\" (not in [secrets.{id}] clients)"
            )));
        }
        crate::service::mounts::enforce(
            &self.broker,
            &generation.policy,
            &self.session,
            &self.dockerfiles,
            MountKind::Secret,
            id,
        )?;
        match answer(&generation, id, Some(&self.client)).await {
            Answer::Denied => {
                let _ = self.audit(id, None, "denied", None, None, None);
                Err(Status::not_found(format!(
                    "buildbroker: secret {id:?} is not in the policy (unknown_secrets = \"deny\")"
                )))
            }
            Answer::Value {
                value,
                source,
                cache,
                attempts,
                minted,
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
                // Fail closed: a value whose record cannot be written is not served.
                if let Err(e) = self.audit(
                    id,
                    Some(&source),
                    decision,
                    cache_note,
                    error.as_deref(),
                    minted.as_ref(),
                ) {
                    drop(value);
                    return Err(Status::unavailable(format!(
                        "buildbroker: secret {id:?} not served: {e}; buildbroker serves no secret it cannot record"
                    )));
                }
                Ok(value)
            }
            Answer::NotFound { .. } => {
                let _ = self.audit(id, None, "not_found", None, None, None);
                Err(Status::not_found(format!(
                    "buildbroker: no source has secret {id:?}"
                )))
            }
            // The audit (and so the daemon log) keeps the whole message; the build's output
            // gets what `[server] build_errors` allows.
            Answer::RequiredMissing { message, attempts } => {
                let _ = self.audit(id, None, "required_missing", None, Some(&message), None);
                Err(Status::failed_precondition(secret_failure_for_build(
                    id,
                    true,
                    &attempts,
                    &message,
                    generation.policy.server.build_errors,
                )))
            }
            Answer::InputMissing {
                input,
                message,
                attempts,
            } => {
                let _ = self.audit(id, None, "input_missing", None, Some(&message), None);
                Err(Status::failed_precondition(template_failure_for_build(
                    id,
                    &input,
                    &attempts,
                    &message,
                    generation.policy.server.build_errors,
                )))
            }
            Answer::Failed { message, attempts } => {
                let _ = self.audit(id, None, "error", None, Some(&message), None);
                Err(Status::unavailable(secret_failure_for_build(
                    id,
                    false,
                    &attempts,
                    &message,
                    generation.policy.server.build_errors,
                )))
            }
        }
    }

    /// Records one decision; `source` is the source that served the value, if one did.
    fn audit(
        &self,
        id: &str,
        source: Option<&ValueOrigin>,
        decision: &'static str,
        cache: Option<&'static str>,
        error: Option<&str>,
        minted: Option<&crate::source::Minted>,
    ) -> Result<(), AuditError> {
        self.broker.audit().secret(&SecretEvent {
            session: &self.session.uuid,
            client: &self.client_label,
            peer_uid: self.session.peer.uid,
            peer_pid: self.session.peer.pid,
            id,
            source: source.map(ValueOrigin::kind),
            value_owner: source.map(|s| s.scope().as_str()),
            decision,
            cache,
            error,
            minted: minted.map(Into::into),
        })
    }
}

/// Reads one uncompressed gRPC message (we never advertise compression).
async fn read_request(req: Request<Incoming>) -> Result<GetSecretRequest, Status> {
    let body = Limited::new(req.into_body(), MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| {
            Status::invalid_argument(format!(
                "buildbroker: cannot read the GetSecret request: {e}"
            ))
        })?
        .to_bytes();
    decode_request(&body)
}

/// Decodes one GetSecret request body: a gRPC frame header (uncompressed only) and the
/// message, whose length must match the header's. Public for the fuzz target.
pub fn decode_request(body: &[u8]) -> Result<GetSecretRequest, Status> {
    let (header, message) = body.split_at_checked(5).ok_or_else(|| {
        Status::invalid_argument("buildbroker: GetSecret request shorter than a gRPC frame header")
    })?;
    if header[0] != 0 {
        return Err(Status::unimplemented(
            "buildbroker: compressed GetSecret requests are not supported",
        ));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len != message.len() {
        return Err(Status::invalid_argument(
            "buildbroker: GetSecret request frame length does not match its body",
        ));
    }
    GetSecretRequest::decode(message).map_err(|e| {
        Status::invalid_argument(format!("buildbroker: malformed GetSecretRequest: {e}"))
    })
}

/// The gRPC frame of `GetSecretResponse { data: value }`, padded to [`MIN_FRAME`], in a buffer
/// that zeroizes when the network stack drops it.
fn encode_response(value: &SecretBytes) -> Bytes {
    let data_len = 1 + encoded_len_varint(value.len() as u64) + value.len();
    // The padding field (key, length varint, zeros) fills the frame up to MIN_FRAME, or one
    // byte over where the varint grows or the field's 2-byte minimum does not fit exactly.
    let room = (MIN_FRAME - 5).saturating_sub(data_len);
    let pad_payload = room.saturating_sub(2);
    let pad_len = if room == 0 {
        0
    } else {
        1 + encoded_len_varint(pad_payload as u64) + pad_payload
    };
    let message_len = data_len + pad_len;

    // The framing around the value (flags, lengths, field keys) is not secret; it is encoded
    // on the stack and copied in, so the only heap block holding the value is the frame.
    let mut head = [0u8; 16];
    let mut at = &mut head[..];
    at.put_u8(0);
    at.put_u32(message_len as u32);
    encode_key(1, WireType::LengthDelimited, &mut at);
    encode_varint(value.len() as u64, &mut at);
    let head_len = 16 - at.len();

    let mut frame = SecretBytes::with_capacity(5 + message_len);
    let buf = frame.buffer_mut();
    buf.extend_from_slice(&head[..head_len]);
    buf.extend_from_slice(value.expose());
    if pad_len > 0 {
        let mut pad_head = [0u8; 16];
        let mut at = &mut pad_head[..];
        encode_key(PADDING_FIELD, WireType::LengthDelimited, &mut at);
        encode_varint(pad_payload as u64, &mut at);
        let pad_head_len = 16 - at.len();
        buf.extend_from_slice(&pad_head[..pad_head_len]);
        buf.resize(buf.len() + pad_payload, 0);
    }
    debug_assert_eq!(buf.len(), 5 + message_len);
    frame.into_wire_bytes()
}

fn grpc_ok(frame: Bytes) -> Response<RelayBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = futures_util::stream::iter([
        Ok::<_, BoxError>(Frame::data(frame)),
        Ok(Frame::trailers(trailers)),
    ]);
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(StreamBody::new(frames).boxed_unsync())
        .expect("a static response is valid")
}

/// A trailers-only gRPC error response.
fn status(s: Status) -> Response<RelayBody> {
    s.into_http::<http_body_util::Empty<Bytes>>()
        .map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::secrets::GetSecretResponse;

    fn decode(frame: &[u8]) -> Vec<u8> {
        assert_eq!(frame[0], 0);
        let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 5);
        GetSecretResponse::decode(&frame[5..]).unwrap().data
    }

    #[test]
    fn frames_decode_to_the_value_and_small_ones_are_padded() {
        for size in (0..1100).chain([5000, 512_000]) {
            let value: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let frame = encode_response(&SecretBytes::new(value.clone()));
            assert!(
                frame.len() >= MIN_FRAME && (frame.len() <= MIN_FRAME + 1 || size >= MIN_FRAME - 8),
                "size {size}: frame of {} bytes",
                frame.len()
            );
            assert_eq!(decode(&frame), value, "size {size}");
            if size >= MIN_FRAME {
                assert_eq!(
                    frame.len(),
                    5 + 1 + encoded_len_varint(size as u64) + size,
                    "no padding when not needed"
                );
            }
        }
    }
}
