use super::*;

/// What the engine's router does with each path (dockerd 26.1 in the test bed, `POST` with
/// `Upgrade: h2c`): a session is intercepted exactly where the engine would open one.
#[test]
fn session_paths_as_the_engine_routes_them() {
    let table = [
        ("/session", true),
        ("/v1.45/session", true),
        ("/v1.24/session", true),
        // Percent-encoded: Go decodes the path before gorilla/mux matches it.
        ("/%73ession", true),
        ("/%73%65%73%73%69%6F%6E", true),
        ("/%73%65%73%73%69%6f%6e", true),
        ("/v1.45/%73ession", true),
        ("/v1.45%2Fsession", true),
        ("/v1.45%2fsession", true),
        ("/%761.45/session", true),
        ("/v1%2E45/session", true),
        // The version matcher is [0-9.]+: the engine routes these (and may refuse the version).
        ("/v1/session", true),
        ("/v1.45.0/session", true),
        ("/v.../session", true),
        // Not routed to the session handler by the engine.
        ("/session/", false),   // 404: no strict-slash redirect
        ("//session", false),   // 301 to /session, not followed for an upgrade
        ("/./session", false),  // 301
        ("/%2Fsession", false), // decodes to //session: 301
        ("/v1.45/../session", false),
        ("/V1.45/session", false), // 404: case matters
        ("/v/session", false),
        ("/v1.x/session", false),
        ("/v1.45/session/x", false),
        ("/sessions", false),
        ("/vsession", false),
        ("/grpc", false),
        ("/v1.45/grpc", false),
        ("/", false),
        ("/%7", false), // malformed escape: the engine answers 400
        ("/%zzsession", false),
        ("/%00session", false),
    ];
    for (path, intercepted) in table {
        assert_eq!(is_session_path(path), intercepted, "{path}");
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
