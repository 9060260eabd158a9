use super::*;
use crate::config::{HostEnv, PolicyOrigin};

fn policy(text: &str) -> Policy {
    let env = HostEnv {
        euid: 1000,
        home: Some("/home/u".into()),
        xdg_runtime_dir: Some("/run/user/1000".into()),
        ..HostEnv::default()
    };
    Policy::parse(text, PolicyOrigin::File("policy.toml".into()), &env).unwrap()
}

fn secret<'a>(
    id: &'a str,
    decision: &'static str,
    source: Option<&'static str>,
) -> SecretEvent<'a> {
    SecretEvent {
        session: "a-session-uuid",
        client: "uid:1000",
        peer_uid: 1000,
        peer_pid: Some(4242),
        id,
        source,
        value_owner: None,
        decision,
        cache: Some("hit"),
        error: Some("the whole message, with /a/path"),
        minted: None,
    }
}

/// One test: the registry is process-wide, so the assertions share one sequence of events.
#[test]
fn labels_name_listed_ids_only_and_never_peers_sessions_or_messages() {
    enable();
    policy_ids(&policy(
        "[secrets.pypi_token]\nsources = [\"env:PYPI\"]\n[secrets.npm]\nsources = [\"env:NPM\"]\n",
    ));
    secret_decision(&secret("pypi_token", "served", Some("env")));
    secret_decision(&secret("pypi_token", "served", Some("env")));
    secret_decision(&secret("GIT_AUTH_TOKEN.example.org", "not_found", None));
    secret_decision(&secret("random-id-from-a-dockerfile", "error", None));
    let guard = session_opened();
    let text = render();
    assert!(
        text.contains(
            r#"buildbroker_secret_requests_total{id="pypi_token",decision="served",source="env"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"buildbroker_secret_requests_total{id="_unlisted",decision="not_found",source="none"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"buildbroker_errors_total{kind="secret_failed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"buildbroker_secret_cache_total{id="pypi_token",result="hit"} 2"#),
        "{text}"
    );
    assert!(text.contains("buildbroker_sessions_open 1"), "{text}");
    for never in [
        "GIT_AUTH_TOKEN",
        "random-id",
        "a-session-uuid",
        "4242",
        "/a/path",
        "npm\"",
    ] {
        // In names, labels and help, not in sample values: other tests' lookups, timed into
        // the same process-wide registry, may have a duration whose digits read "4242".
        let described = text
            .lines()
            .map(|l| match l.starts_with('#') {
                true => l,
                false => l.rsplit_once(' ').map_or(l, |(series, _value)| series),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!described.contains(never), "{never} in:\n{text}");
    }
    drop(guard);
    let text = render();
    assert!(text.contains("buildbroker_sessions_open 0"), "{text}");
    assert!(text.contains("buildbroker_sessions_total 1"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}
