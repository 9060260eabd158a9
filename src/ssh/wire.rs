//! Cuts an agent byte stream into messages and back.
//!
//! Every agent message is a `uint32` big-endian length followed by that many bytes
//! (draft-miller-ssh-agent §3, RFC 9987). tokio-util's `LengthDelimitedCodec` does that framing;
//! ssh-agent-lib's `Request` and `Response` do all parsing and encoding of what is inside.
//!
//! Why not ssh-agent-lib's own `codec::Codec`: its decoder hands the message decoder the whole
//! rest of the buffer rather than one frame (an extension request, which reads "the rest",
//! would swallow a pipelined next request), and an unknown message type is an error that ends
//! the connection, where the draft requires an `SSH_AGENT_FAILURE` reply and OpenSSH's agent
//! sends one. Framing first and decoding one frame at a time gives both for free.

use bytes::{Bytes, BytesMut};
use ssh_agent_lib::proto::{Request, Response};
use ssh_agent_lib::ssh_encoding::{Decode, Encode};
use tokio_util::codec::{Encoder, LengthDelimitedCodec};

/// The largest message accepted, as OpenSSH's agent (`AGENT_MAX_LEN` in ssh-agent.c).
pub const MAX_MESSAGE_LEN: usize = 256 * 1024;

/// The framing codec for agent connections, both directions.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(MAX_MESSAGE_LEN)
        .new_codec()
}

/// Decodes one request frame (without its length prefix).
pub fn decode_request(frame: &[u8]) -> Result<Request, ssh_agent_lib::proto::ProtoError> {
    let mut reader = frame;
    Request::decode(&mut reader)
}

/// Encodes a response (without its length prefix: the framing adds it).
pub fn encode_response(response: &Response) -> Bytes {
    let mut body = Vec::new();
    // Encoding our own, already-valid responses into a Vec cannot fail; if it somehow did,
    // the client gets a failure reply rather than a broken stream.
    if response.encode(&mut body).is_err() {
        body = vec![Response::Failure.message_id()];
    }
    Bytes::from(body)
}

/// The message number of a signature answer (draft-miller-ssh-agent §6.1).
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;

/// An `SSH_AGENT_SIGN_RESPONSE` (draft-miller-ssh-agent §3.6) built by hand, for signature
/// algorithms ssh-key cannot represent (`ssh-rsa`): `byte 14, string(string alg, string sig)`.
pub fn sign_response(algorithm: &str, signature: &[u8]) -> Bytes {
    let mut inner = Vec::with_capacity(8 + algorithm.len() + signature.len());
    inner.extend_from_slice(&(algorithm.len() as u32).to_be_bytes());
    inner.extend_from_slice(algorithm.as_bytes());
    inner.extend_from_slice(&(signature.len() as u32).to_be_bytes());
    inner.extend_from_slice(signature);
    let mut body = Vec::with_capacity(5 + inner.len());
    body.push(SSH_AGENT_SIGN_RESPONSE);
    body.extend_from_slice(&(inner.len() as u32).to_be_bytes());
    body.extend_from_slice(&inner);
    Bytes::from(body)
}

/// Puts the length prefix in front of an encoded message, for transports that carry raw
/// agent bytes (the session's `BytesMessage`s).
pub fn with_length(body: Bytes) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 4);
    codec()
        .encode(body, &mut out)
        .expect("an agent response is far below the frame limit");
    out.freeze()
}

/// The name of a request type, for logs (never its content: add requests carry private keys).
pub fn request_name(request: &Request) -> &'static str {
    match request {
        Request::RequestIdentities => "list keys",
        Request::SignRequest(_) => "sign",
        Request::AddIdentity(_) => "add key",
        Request::AddIdConstrained(_) => "add constrained key",
        Request::RemoveIdentity(_) => "remove key",
        Request::RemoveAllIdentities => "remove all keys",
        Request::AddSmartcardKey(_) => "add smartcard key",
        Request::AddSmartcardKeyConstrained(_) => "add constrained smartcard key",
        Request::RemoveSmartcardKey(_) => "remove smartcard key",
        Request::Lock(_) => "lock",
        Request::Unlock(_) => "unlock",
        Request::Extension(_) => "extension",
    }
}
