use super::*;

#[test]
fn session_paths() {
    for p in ["/session", "/session/", "/v1.45/session", "/v1.24/session"] {
        assert!(is_session_path(p), "{p}");
    }
    for p in [
        "/sessions",
        "/v1/session",
        "/v1.x/session",
        "/v1.45/session/x",
        "/grpc",
        "/v1.45/grpc",
        "/",
        "/vsession",
    ] {
        assert!(!is_session_path(p), "{p}");
    }
}

#[test]
fn routes() {
    assert_eq!(
        Route::of("/moby.buildkit.secrets.v1.Secrets/GetSecret"),
        Route::Secrets
    );
    assert_eq!(
        Route::of("/moby.buildkit.secrets.v1.Secrets/Other"),
        Route::Secrets
    );
    for p in [
        "/moby.sshforward.v1.SSH/ForwardAgent",
        "/moby.sshforward.v1.SSH/CheckAgent",
    ] {
        assert_eq!(Route::of(p), Route::Ssh, "{p}");
    }
    for p in [
        "/grpc.health.v1.Health/Check",
        "/moby.filesync.v1.FileSync/DiffCopy",
        "/moby.sshforward.v1.SSHX/ForwardAgent",
        "/moby.filesync.v1.Auth/Credentials",
        "/moby.buildkit.secrets.v1.SecretsX/GetSecret",
    ] {
        assert_eq!(Route::of(p), Route::Relay, "{p}");
    }
}

#[test]
fn upstream_headers_keep_the_client_and_add_our_methods_once() {
    let mut h = HeaderMap::new();
    h.insert(HEADER_UUID, HeaderValue::from_static("abc"));
    h.insert(
        "x-docker-expose-session-sharedkey",
        HeaderValue::from_static("key"),
    );
    h.append(
        HEADER_METHOD,
        HeaderValue::from_static("/grpc.health.v1.Health/Check"),
    );
    let (uuid, out) = upstream_session_headers(&h).unwrap();
    assert_eq!(uuid, "abc");
    assert_eq!(out.get("x-docker-expose-session-sharedkey").unwrap(), "key");
    let methods: Vec<_> = out
        .get_all(HEADER_METHOD)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        methods,
        vec![
            "/grpc.health.v1.Health/Check",
            "/moby.buildkit.secrets.v1.Secrets/GetSecret",
            "/moby.sshforward.v1.SSH/CheckAgent",
            "/moby.sshforward.v1.SSH/ForwardAgent",
        ],
        "one header line per method, never comma-joined"
    );

    // A client that already announces them (buildx 0.13 always does) gets no duplicates.
    let (_, again) = upstream_session_headers(&out).unwrap();
    assert_eq!(again.get_all(HEADER_METHOD).iter().count(), 4);
}

#[test]
fn session_without_uuid_is_refused() {
    assert_eq!(
        upstream_session_headers(&HeaderMap::new()),
        Err(SessionError::MissingUuid)
    );
    let mut h = HeaderMap::new();
    h.insert(HEADER_UUID, HeaderValue::from_static(""));
    assert_eq!(upstream_session_headers(&h), Err(SessionError::MissingUuid));
}

#[test]
fn only_the_dockerfile_sync_is_watched() {
    let req = |dir: &str| {
        http::Request::builder()
            .uri("/moby.filesync.v1.FileSync/DiffCopy")
            .header("dir-name", dir)
            .body(())
            .unwrap()
    };
    assert_eq!(Route::of_request(&req("dockerfile")), Route::DockerfileSync);
    assert_eq!(Route::of_request(&req("context")), Route::Relay);
    let tar = http::Request::builder()
        .uri("/moby.filesync.v1.FileSync/TarStream")
        .header("dir-name", "dockerfile")
        .body(())
        .unwrap();
    assert_eq!(Route::of_request(&tar), Route::Relay);
}
