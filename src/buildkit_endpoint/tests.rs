//! The BuildKit endpoint's own pieces: its two policy keys, the upstream dial's errors, and
//! the status answer a refused or stranded caller gets. Builds through it are end-to-end
//! tests (tests/e2e/remote.rs), against the real engine's BuildKit.

use std::path::PathBuf;

use super::*;
use crate::config::{HostEnv, Policy, PolicyOrigin};

fn parse(text: &str) -> Result<Policy, Vec<String>> {
    let env = HostEnv {
        euid: 1000,
        xdg_runtime_dir: Some("/run/user/1000".into()),
        ..HostEnv::default()
    };
    Policy::parse(text, PolicyOrigin::File("policy.toml".into()), &env)
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

#[test]
fn upstream_addresses_parse_and_print_back() {
    let unix = |p: &str| Endpoint::Unix(PathBuf::from(p));
    for (text, want) in [
        (
            "docker+unix:///var/run/docker.sock",
            BuildkitUpstream::DockerGrpc(unix("/var/run/docker.sock")),
        ),
        (
            "docker+tcp://127.0.0.1:2375",
            BuildkitUpstream::DockerGrpc(Endpoint::Tcp("127.0.0.1:2375".into())),
        ),
        (
            "unix:///run/buildkit/buildkitd.sock",
            BuildkitUpstream::Buildkitd(unix("/run/buildkit/buildkitd.sock")),
        ),
        (
            "tcp://buildkitd:1234",
            BuildkitUpstream::Buildkitd(Endpoint::Tcp("buildkitd:1234".into())),
        ),
    ] {
        let got = BuildkitUpstream::parse(text).unwrap();
        assert_eq!(got, want, "{text}");
        assert_eq!(got.to_string(), text);
    }
    for bad in [
        "docker+",
        "docker://x",
        "docker+unix://relative",
        "tcp://nohost",
        "buildkitd.sock",
    ] {
        let e = BuildkitUpstream::parse(bad).unwrap_err();
        assert!(
            e.contains("docker+unix:///var/run/docker.sock"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn the_upstream_defaults_to_the_engines_own_buildkit() {
    let p = parse(
        "[server]\nupstream = \"unix:///run/e.sock\"\n\
         buildkit_listen = [\"unix:///run/bb/buildkitd.sock\"]\n",
    )
    .unwrap();
    assert_eq!(
        p.server.buildkit_listen,
        vec![Endpoint::Unix("/run/bb/buildkitd.sock".into())]
    );
    assert_eq!(
        p.server.buildkit_upstream,
        Some(BuildkitUpstream::DockerGrpc(Endpoint::Unix(
            "/run/e.sock".into()
        )))
    );
    let off = parse("[server]\nupstream = \"unix:///run/e.sock\"\n").unwrap();
    assert!(off.server.buildkit_listen.is_empty());
    assert_eq!(off.server.buildkit_upstream, None);
}

#[test]
fn bad_endpoint_settings_are_located_and_explained() {
    for (text, want) in [
        (
            "[server]\nbuildkit_listen = [\"tcp://127.0.0.1:1234\"]\n",
            "policy.toml:2:20: [server] buildkit_listen: only unix:// sockets are served for now",
        ),
        (
            "[server]\nbuildkit_upstream = \"unix:///run/buildkit/buildkitd.sock\"\n",
            "policy.toml:2:21: [server] buildkit_upstream is set but buildkit_listen is empty",
        ),
        (
            "[server]\nbuildkit_listen = [\"unix:///run/b.sock\"]\nbuildkit_upstream = \"unix:///run/b.sock\"\n",
            "that would loop",
        ),
        (
            "[server]\nlisten = [\"unix:///run/d.sock\"]\nbuildkit_listen = [\"unix:///run/b.sock\"]\n\
             buildkit_upstream = \"docker+unix:///run/d.sock\"\n",
            "that would loop",
        ),
        (
            "[server]\nlisten = [\"unix:///run/d.sock\"]\nbuildkit_listen = [\"unix:///run/d.sock\"]\n",
            "is already one of buildbroker's listen addresses",
        ),
        (
            "[server]\nbuildkit_listen = [\"unix:///run/b.sock\"]\nbuildkit_upstream = \"http://x\"\n",
            "[server] buildkit_upstream: expected an address",
        ),
    ] {
        let errors = parse(text).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{text}\nwanted {want:?} in {errors:?}"
        );
    }
}

#[tokio::test]
async fn a_missing_upstream_socket_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing.sock");
    for upstream in [
        BuildkitUpstream::Buildkitd(Endpoint::Unix(path.clone())),
        BuildkitUpstream::DockerGrpc(Endpoint::Unix(path.clone())),
    ] {
        let e = dial(&upstream).await.err().expect("nothing listens there");
        assert!(matches!(e, DialError::Connect { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("cannot connect to unix://{}", path.display())),
            "{e}"
        );
    }
}

/// A socket that speaks HTTP/1.1 but is not an engine (a proxy, a wrong path): the error says
/// what it answered instead of switching protocols.
#[tokio::test]
async fn a_socket_that_does_not_upgrade_is_reported_with_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-an-engine.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
            assert_eq!(req.uri().path(), "/grpc");
            assert_eq!(req.headers()[UPGRADE], "h2c");
            Ok::<_, Infallible>(
                http::Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(http_body_util::Full::new(Bytes::from_static(
                        b"{\"message\":\"page not found\"}",
                    )))
                    .unwrap(),
            )
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let upstream = BuildkitUpstream::DockerGrpc(Endpoint::Unix(path));
    let e = dial(&upstream).await.err().expect("no 101");
    assert!(
        matches!(&e, DialError::NotUpgraded { status, body, .. }
            if *status == StatusCode::NOT_FOUND && body.contains("page not found")),
        "{e}"
    );
}

/// A gRPC client on a refused connection gets the status and its message.
#[tokio::test]
async fn every_call_on_a_refused_connection_gets_the_status() {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            answer_every_call(
                ours,
                Status::permission_denied("buildbroker: uid 7 is not allowed"),
                &shutdown,
            )
            .await
        }
    });
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(theirs))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::post("http://x/moby.buildkit.v1.Control/ListWorkers")
            .header("content-type", "application/grpc")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.headers()["grpc-status"], "7", "PermissionDenied");
        let message = resp.headers()["grpc-message"].to_str().unwrap().to_owned();
        assert!(
            message.contains("uid%207") || message.contains("uid 7"),
            "{message}"
        );
    }
    drop(send);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the connection ends when the caller hangs up")
        .unwrap();
}
