use super::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn exec_paths() {
    for p in [
        "/containers/buildx_buildkit_x0/exec",
        "/v1.45/containers/abc/exec",
        "/v1.24/containers/0123abcd/exec",
    ] {
        assert!(is_exec_create(p), "{p}");
    }
    for p in [
        "/containers//exec",
        "/containers/a/b/exec",
        "/containers/a/exec/x",
        "/containers/a/execs",
        "/v1/containers/a/exec",
        "/exec/abc/start",
        "/containers/a/attach",
    ] {
        assert!(!is_exec_create(p), "{p}");
    }
    assert_eq!(exec_start_id("/exec/abc123/start"), Some("abc123"));
    assert_eq!(exec_start_id("/v1.45/exec/abc123/start"), Some("abc123"));
    for p in [
        "/exec//start",
        "/exec/a/b/start",
        "/exec/abc/resize",
        "/vx.1/exec/a/start",
    ] {
        assert_eq!(exec_start_id(p), None, "{p}");
    }
}

#[test]
fn create_bodies() {
    let buildx = br#"{"User":"","Privileged":false,"Tty":false,"ConsoleSize":null,"AttachStdin":true,"AttachStderr":true,"AttachStdout":true,"Detach":false,"DetachKeys":"","Env":null,"WorkingDir":"","Cmd":["buildctl","dial-stdio"]}"#;
    assert_eq!(classify_create(buildx), ExecKind::DialStdio);
    // The engine's Go decoder ignores case; so do we.
    assert_eq!(
        classify_create(br#"{"cmd":["buildctl","dial-stdio"]}"#),
        ExecKind::DialStdio
    );
    assert_eq!(
        classify_create(br#"{"Cmd":["buildctl","dial-stdio"],"Tty":true}"#),
        ExecKind::DialStdioTty
    );
    for other in [
        &br#"{"Cmd":["buildctl","debug","workers"]}"#[..],
        br#"{"Cmd":["buildctl","dial-stdio","x"]}"#,
        br#"{"Cmd":["cat"]}"#,
        br#"{"Cmd":"buildctl dial-stdio"}"#,
        br#"{}"#,
        b"not json",
        b"",
    ] {
        assert_eq!(classify_create(other), ExecKind::Other);
    }
}

#[test]
fn created_ids_and_start_bodies() {
    let id = "a".repeat(64);
    assert_eq!(
        created_id(format!(r#"{{"Id":"{id}"}}"#).as_bytes()),
        Some(id)
    );
    for bad in [
        &br#"{"Id":""}"#[..],
        br#"{"Id":"../x"}"#,
        br#"{"Id":5}"#,
        br#"{"message":"no such container"}"#,
        b"garbage",
    ] {
        assert_eq!(created_id(bad), None);
    }
    assert!(!start_wants_tty(br#"{"Detach":false,"Tty":false}"#));
    assert!(start_wants_tty(br#"{"Detach":false,"Tty":true}"#));
    assert!(!start_wants_tty(b""));
}

#[test]
fn registry_remembers_once_and_forgets_old_ids() {
    let execs = DialStdioExecs::new();
    let t0 = Instant::now();
    execs.remember_at("a".into(), t0);
    assert!(execs.take_at("a", t0), "a created exec is known");
    assert!(!execs.take_at("a", t0), "an exec starts once");
    execs.remember_at("b".into(), t0);
    assert!(!execs.take_at("b", t0 + EXEC_TTL), "expired");
    for i in 0..MAX_EXECS + 10 {
        execs.remember_at(format!("id{i}"), t0 + Duration::from_millis(i as u64));
    }
    assert!(execs.created.lock().unwrap().len() <= MAX_EXECS);
    assert!(
        !execs.take_at("id0", t0 + Duration::from_secs(1)),
        "the oldest went first"
    );
    assert!(execs.take_at(&format!("id{}", MAX_EXECS + 9), t0 + Duration::from_secs(1)));
}

#[tokio::test]
async fn demux_splits_stdout_and_passes_other_frames_verbatim() {
    let (mut engine, ours) = tokio::io::duplex(1024);
    let (stdout_tx, stdout_rx) = mpsc::channel(8);
    let (pass_tx, mut pass_rx) = mpsc::channel(8);
    let task = tokio::spawn(stdcopy::demux(ours, stdout_tx, pass_tx));
    let mut wire = Vec::new();
    wire.extend_from_slice(&stdcopy::frame(stdcopy::STDOUT, b"hello "));
    wire.extend_from_slice(&stdcopy::frame(stdcopy::STDERR, b"warning\n"));
    wire.extend_from_slice(&stdcopy::frame(stdcopy::STDOUT, b""));
    wire.extend_from_slice(&stdcopy::frame(stdcopy::STDOUT, b"world"));
    for piece in wire.chunks(3) {
        engine.write_all(piece).await.unwrap();
    }
    drop(engine);
    let mut reader = stdcopy::ChannelReader::new(stdout_rx);
    let mut text = String::new();
    reader.read_to_string(&mut text).await.unwrap();
    assert_eq!(text, "hello world");
    assert_eq!(
        pass_rx.recv().await.unwrap(),
        stdcopy::frame(stdcopy::STDERR, b"warning\n")
    );
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn demux_refuses_truncated_and_oversized_frames() {
    let (mut engine, ours) = tokio::io::duplex(1024);
    let (stdout_tx, _stdout_rx) = mpsc::channel(8);
    let (pass_tx, _pass_rx) = mpsc::channel(8);
    let task = tokio::spawn(stdcopy::demux(ours, stdout_tx, pass_tx));
    engine
        .write_all(&[1, 0, 0, 0, 0, 0, 0, 9, b'x'])
        .await
        .unwrap();
    drop(engine);
    assert!(matches!(
        task.await.unwrap(),
        Err(stdcopy::DemuxError::Truncated)
    ));

    let (mut engine, ours) = tokio::io::duplex(1024);
    let (stdout_tx, _stdout_rx) = mpsc::channel(8);
    let (pass_tx, _pass_rx) = mpsc::channel(8);
    let task = tokio::spawn(stdcopy::demux(ours, stdout_tx, pass_tx));
    engine
        .write_all(&[1, 0, 0, 0, 0xff, 0, 0, 0])
        .await
        .unwrap();
    assert!(matches!(
        task.await.unwrap(),
        Err(stdcopy::DemuxError::Oversized(_))
    ));
}

#[tokio::test]
async fn frame_writer_and_mux_frame_every_write_as_stdout() {
    let (frames_tx, frames_rx) = mpsc::channel(8);
    let (client, mut client_end) = tokio::io::duplex(64 * 1024);
    let mux = tokio::spawn(stdcopy::mux(frames_rx, client));
    let mut writer = stdcopy::FrameWriter::new(frames_tx.clone());
    writer.write_all(b"abc").await.unwrap();
    frames_tx
        .send(stdcopy::frame(stdcopy::STDERR, b"err"))
        .await
        .unwrap();
    writer.write_all(b"de").await.unwrap();
    drop(writer);
    drop(frames_tx);
    let mut got = Vec::new();
    client_end.read_to_end(&mut got).await.unwrap();
    mux.await.unwrap().unwrap();
    let mut expected = Vec::new();
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 3]);
    expected.extend_from_slice(b"abc");
    expected.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 3]);
    expected.extend_from_slice(b"err");
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 2]);
    expected.extend_from_slice(b"de");
    assert_eq!(got, expected);
}
