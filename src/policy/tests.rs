use super::*;
use crate::config::{HostEnv, PolicyOrigin};

fn policy(unknown: &str) -> Policy {
    let text = format!(
        "[server]\nunknown_secrets = \"{unknown}\"\n\
         [secrets.pypi_token]\nsources = [\"env:PYPI_TOKEN\"]\nrequired = true\n\
         [secrets.npm_token]\nsources = [\"env:NPM_TOKEN\", \"client\"]\n"
    );
    Policy::parse(&text, PolicyOrigin::Embedded, &HostEnv::default()).unwrap()
}

#[test]
fn decisions_table() {
    let client = policy("client");
    let deny = policy("deny");
    let pypi = [SourceSpec::Env("PYPI_TOKEN".into())];
    // (policy, id, expected)
    let table: Vec<(&Policy, &str, SecretDecision)> = vec![
        (
            &client,
            "pypi_token",
            SecretDecision::Resolve {
                sources: &pypi,
                required: true,
                listed: true,
            },
        ),
        (
            &deny,
            "pypi_token",
            SecretDecision::Resolve {
                sources: &pypi,
                required: true,
                listed: true,
            },
        ),
        (
            &client,
            "other",
            SecretDecision::Resolve {
                sources: CLIENT_ONLY,
                required: false,
                listed: false,
            },
        ),
        (&deny, "other", SecretDecision::Deny),
        (&deny, "GIT_AUTH_TOKEN.github.com", SecretDecision::Deny),
        (&deny, "", SecretDecision::Deny),
    ];
    for (p, id, expected) in table {
        assert_eq!(decide_secret(p, id), expected, "id {id:?}");
    }
}

fn attempt(source: SourceSpec, outcome: AttemptOutcome) -> Attempt {
    Attempt { source, outcome }
}

#[test]
fn conclusions_table() {
    let env = || SourceSpec::Env("A".into());
    let file = || SourceSpec::File("/f".into());
    let missing = || AttemptOutcome::Missing("not set".into());
    let failed =
        || AttemptOutcome::Failed(crate::source::SourceError::permanent("permission denied"));

    assert_eq!(
        conclude_secret(
            "x",
            true,
            Some(1),
            &[
                attempt(env(), missing()),
                attempt(file(), AttemptOutcome::Found)
            ]
        ),
        SecretOutcome::Served { source: 1 }
    );
    assert_eq!(
        conclude_secret("x", false, None, &[attempt(env(), missing())]),
        SecretOutcome::NotFound
    );

    match conclude_secret(
        "pypi_token",
        true,
        None,
        &[attempt(env(), missing()), attempt(file(), missing())],
    ) {
        SecretOutcome::RequiredMissing { message } => {
            assert!(message.contains("\"pypi_token\""), "{message}");
            assert!(message.contains("env:A (not set)"), "{message}");
            assert!(message.contains("file:/f (not set)"), "{message}");
        }
        other => panic!("expected RequiredMissing, got {other:?}"),
    }
    // A failing source is reported even for optional ids: silently skipping would hide it.
    match conclude_secret(
        "x",
        false,
        None,
        &[attempt(env(), missing()), attempt(file(), failed())],
    ) {
        SecretOutcome::Failed { message } => assert!(
            message.contains("file:/f (error: permission denied)"),
            "{message}"
        ),
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn ssh_decisions_table() {
    let text = |unknown: &str| {
        format!(
            "[server]\nunknown_ssh = \"{unknown}\"\n\
             [ssh.default]\nagent = \"env:SSH_AUTH_SOCK\"\nkeys = [\"comment:me\"]\n\
             [ssh.github]\nprivate_keys = [\"file:/k\"]\n"
        )
    };
    let client =
        Policy::parse(&text("client"), PolicyOrigin::Embedded, &HostEnv::default()).unwrap();
    let deny = Policy::parse(&text("deny"), PolicyOrigin::Embedded, &HostEnv::default()).unwrap();
    // (policy, id, expected: managed rule id / client / deny)
    let table: Vec<(&Policy, &str, SshDecision)> = vec![
        (
            &client,
            "github",
            SshDecision::Managed(&client.ssh["github"]),
        ),
        (&deny, "github", SshDecision::Managed(&deny.ssh["github"])),
        // BuildKit sends an empty id for `default`.
        (&client, "", SshDecision::Managed(&client.ssh["default"])),
        (
            &client,
            "default",
            SshDecision::Managed(&client.ssh["default"]),
        ),
        (&client, "gitlab", SshDecision::Client),
        (&deny, "gitlab", SshDecision::Deny),
    ];
    for (policy, id, expected) in table {
        assert_eq!(decide_ssh(policy, id), expected, "{id:?}");
    }
}
