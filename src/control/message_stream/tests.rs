use super::*;

use http_body_util::BodyExt;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proto::control::BytesMessage;

/// A body that yields the given chunks, then the given trailers.
fn body_of(chunks: Vec<Bytes>, trailers: Option<http::HeaderMap>) -> RelayBody {
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> =
        chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
    if let Some(t) = trailers {
        frames.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

fn stream_of(chunks: Vec<Bytes>) -> (MessageStream<RelayBody>, Arc<Outcome>, RelayBody) {
    let outcome = Arc::new(Outcome::default());
    let (tx, out) = channel();
    (
        MessageStream::new(body_of(chunks, None), Side::Client, tx, outcome.clone()),
        outcome,
        out,
    )
}

#[test]
fn encoding_matches_prost() {
    for data in [&b""[..], b"x", &[7u8; 300], &[1u8; 70_000]] {
        let ours = encode_message(data);
        let expected = BytesMessage {
            data: data.to_vec(),
        }
        .encode_to_vec();
        assert_eq!(ours[0], 0);
        // prost leaves an empty proto3 field out; ours writes it, which decodes the same.
        if !data.is_empty() {
            assert_eq!(
                u32::from_be_bytes(ours[1..5].try_into().unwrap()) as usize,
                expected.len()
            );
            assert_eq!(&ours[5..], &expected[..]);
        }
        assert_eq!(
            BytesMessage::decode(&ours[5..]).unwrap().data,
            data,
            "prost reads ours"
        );
        let mut buf = BytesMut::from(&ours[..]);
        assert_eq!(
            decode_message(&mut buf, Side::Client).unwrap().unwrap(),
            data
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn decoding_keeps_the_last_data_and_skips_unknown_fields() {
    let mut msg = Vec::new();
    msg.extend_from_slice(&[0x0a, 1, b'a']); // data = "a"
    msg.extend_from_slice(&[0x10, 0x96, 0x01]); // field 2 varint
    msg.extend_from_slice(&[0x1d, 1, 2, 3, 4]); // field 3 fixed32
    msg.extend_from_slice(&[0x0a, 2, b'b', b'c']); // data = "bc" (last wins)
    let mut framed = vec![0, 0, 0, 0, msg.len() as u8];
    framed.extend_from_slice(&msg);
    let mut buf = BytesMut::from(&framed[..]);
    assert_eq!(
        decode_message(&mut buf, Side::Daemon).unwrap().unwrap(),
        &b"bc"[..]
    );
}

#[test]
fn decoding_refuses_bad_messages() {
    let mut big = BytesMut::from(&[0u8, 0x01, 0x00, 0x00, 0x01][..]);
    assert_eq!(
        decode_message(&mut big, Side::Client),
        Err(FrameError::Oversized {
            side: "the build client",
            len: MAX_MESSAGE + 1
        })
    );
    let mut compressed = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
    assert!(matches!(
        decode_message(&mut compressed, Side::Daemon),
        Err(FrameError::Compressed { .. })
    ));
    // data says 5 bytes, has 1.
    let mut malformed = BytesMut::from(&[0u8, 0, 0, 0, 3, 0x0a, 5, b'x'][..]);
    assert!(matches!(
        decode_message(&mut malformed, Side::Daemon),
        Err(FrameError::Malformed { .. })
    ));
    // A partial message waits for more.
    let mut partial = BytesMut::from(&[0u8, 0, 0, 0, 3, 0x0a][..]);
    assert_eq!(decode_message(&mut partial, Side::Client), Ok(None));
    assert_eq!(partial.len(), 6);
}

#[tokio::test]
async fn reads_messages_split_across_frames() {
    let mut wire = Vec::new();
    for part in [&b"hello "[..], b"", b"world"] {
        wire.extend_from_slice(&encode_message(part));
    }
    // Frame boundaries that cut through prefixes and payloads.
    let chunks: Vec<Bytes> = wire.chunks(3).map(Bytes::copy_from_slice).collect();
    let (mut stream, outcome, _out) = stream_of(chunks);
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert_eq!(text, "hello world");
    assert!(outcome.take().is_none());
}

#[tokio::test]
async fn a_stream_ending_mid_message_is_an_error_and_a_status() {
    let mut wire = encode_message(b"complete").to_vec();
    wire.extend_from_slice(&encode_message(b"cut short")[..9]);
    let (mut stream, outcome, _out) = stream_of(vec![Bytes::from(wire)]);
    let mut got = Vec::new();
    let err = stream.read_to_end(&mut got).await.unwrap_err();
    // A plain BytesMessage is passed on as its data arrives: the two bytes that came ("cu")
    // were read before the body ended.
    assert_eq!(got, b"completecu");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let status = outcome.take().unwrap();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("ended Control/Session in the middle of a message (9 of 16 bytes)"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn an_oversized_message_is_refused_from_its_prefix() {
    let prefix = [0u8, 0x7f, 0xff, 0xff, 0xff];
    let (mut stream, outcome, _out) = stream_of(vec![Bytes::copy_from_slice(&prefix)]);
    let mut got = Vec::new();
    assert!(stream.read_to_end(&mut got).await.is_err());
    let status = outcome.take().unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("limit is 16777216 bytes"));
}

#[tokio::test]
async fn a_failed_peer_status_is_kept() {
    let mut trailers = http::HeaderMap::new();
    tonic::Status::unavailable("gone")
        .add_header(&mut trailers)
        .unwrap();
    let outcome = Arc::new(Outcome::default());
    let (tx, _out) = channel();
    let mut stream = MessageStream::new(
        body_of(vec![encode_message(b"x")], Some(trailers)),
        Side::Daemon,
        tx,
        outcome.clone(),
    );
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"x");
    assert_eq!(outcome.take().unwrap().code(), tonic::Code::Unavailable);
}

/// Shuts the stream down and decodes every message it sent.
async fn sent_messages(mut stream: MessageStream<RelayBody>, out: RelayBody) -> Vec<Bytes> {
    stream.shutdown().await.unwrap();
    drop(stream);
    let bytes = out.collect().await.unwrap().to_bytes();
    let mut buf = BytesMut::from(&bytes[..]);
    let mut messages = Vec::new();
    while let Some(data) = decode_message(&mut buf, Side::Client).unwrap() {
        messages.push(data);
    }
    assert!(buf.is_empty(), "only whole messages");
    messages
}

#[tokio::test]
async fn writes_become_messages() {
    let (mut stream, _outcome, out) = stream_of(vec![]);
    stream.write_all(b"abc").await.unwrap();
    stream.write_all(&[9u8; 5000]).await.unwrap();
    stream.flush().await.unwrap();
    stream.write_all(b"x").await.unwrap();
    let messages = sent_messages(stream, out).await;
    assert_eq!(messages.len(), 2, "one message per flush");
    assert_eq!(&messages[0][..3], b"abc");
    assert_eq!(messages[0].len(), 5003);
    assert_eq!(messages[1], &b"x"[..]);
}

#[tokio::test]
async fn bulk_writes_are_coalesced_across_one_flush() {
    let (mut stream, _outcome, out) = stream_of(vec![]);
    let frame: Vec<u8> = (0..16 * 1024 + 9).map(|k| (k % 251) as u8).collect();
    stream.write_all(&frame).await.unwrap();
    stream.flush().await.unwrap(); // a bulk frame: deferred once
    stream.write_all(&frame).await.unwrap();
    stream.flush().await.unwrap(); // written since: deferred again
    stream.flush().await.unwrap(); // nothing new: sent
    stream.write_all(b"answer").await.unwrap();
    stream.flush().await.unwrap(); // small: sent at once
    let messages = sent_messages(stream, out).await;
    assert_eq!(
        messages.len(),
        2,
        "the two bulk frames in one message, then the answer"
    );
    assert_eq!(messages[0], [frame.clone(), frame].concat());
    assert_eq!(messages[1], &b"answer"[..]);
}

/// Inside the session's own poll (BuildKit's half on the docker-container path), a small
/// answer waits one round for the trailers its call adds next, asking for that round through
/// the waker: HEADERS, DATA and trailers leave as one message, not two. Outside it, at once.
#[tokio::test]
async fn a_small_answer_inside_the_sessions_poll_leaves_with_its_trailers_in_one_message() {
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let count = Arc::new(Count(Default::default()));
    let waker = std::task::Waker::from(count.clone());
    let (mut stream, _outcome, out) = stream_of(vec![]);
    let mut write_and_flush = |data: &[u8]| {
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            Pin::new(&mut stream).poll_write(&mut cx, data),
            Poll::Ready(Ok(n)) if n == data.len()
        ));
        assert!(matches!(
            Pin::new(&mut stream).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
    };
    {
        let _in_rounds = crate::session::InRounds::enter();
        write_and_flush(b"headers+data");
        assert_eq!(
            count.0.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "one more round asked for"
        );
        write_and_flush(b"+trailers");
    }
    write_and_flush(b"outside");
    let messages = sent_messages(stream, out).await;
    assert_eq!(
        messages,
        vec![
            Bytes::from_static(b"headers+data+trailers"),
            Bytes::from_static(b"outside")
        ],
        "the held answer and its trailers in one message; outside the poll, at once"
    );
}

/// A BytesMessage with `data` twice (the last one wins) and an unknown field between.
fn unusual_message(data: &[u8]) -> Vec<u8> {
    let mut field = vec![0x0a, 0x01, b'!', 0x10, 0x01];
    field.push(0x0a);
    encode_varint(data.len() as u64, &mut field);
    field.extend_from_slice(data);
    let mut out = vec![0u8];
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(&field);
    out
}

#[tokio::test]
async fn any_frame_boundaries_give_the_same_bytes() {
    // Plain messages (streamed as they arrive) and unusual ones (gathered whole), large and
    // small, cut at pseudo-random frame boundaries, including inside prefixes and headers.
    let mut wire = Vec::new();
    let mut want = Vec::new();
    for (i, len) in [0usize, 1, 127, 128, 300, 16 * 1024, 70_000, 5]
        .iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..*len).map(|k| (k * 7 + i) as u8).collect();
        if i % 3 == 2 {
            wire.extend_from_slice(&unusual_message(&data));
        } else {
            wire.extend_from_slice(&encode_message(&data));
        }
        want.extend_from_slice(&data);
    }
    let mut seed = 0x2545_f491_u64;
    for round in 0..200 {
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let cap = if round % 2 == 0 { 40 } else { 20_000 };
            let n = (1 + (seed >> 33) as usize % cap).min(wire.len() - at);
            chunks.push(Bytes::copy_from_slice(&wire[at..at + n]));
            at += n;
        }
        let (mut stream, outcome, _out) = stream_of(chunks);
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert!(got == want, "round {round}: the bytes differ");
        assert!(outcome.take().is_none());
    }
}
