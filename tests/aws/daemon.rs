//! Real builds through the daemon with `aws-sm:` sources: real buildx → buildbroker → the test
//! bed's dockerd, with the secret in moto.

use crate::harness::*;
use crate::moto::{Moto, REGION};

/// The daemon's environment for moto: fake static credentials, the SDK's endpoint variable, a
/// region, and no instance metadata lookups (nothing may leave loopback).
fn moto_env(endpoint: &str) -> Vec<(&str, &str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", REGION),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

const POLICY: &str = "[secrets.aws]\nsources = [\"aws-sm:ci/aws-credentials\"]\nrequired = true\n\
                      [secrets.db_password]\nsources = [\"aws-sm:prod/db#password\"]\nrequired = true\n";

/// The seed's pattern, plus a JSON field. `label` makes each test's build unique: BuildKit merges
/// identical steps of concurrent builds and may then ask any of their sessions for the secret.
fn dockerfile(label: &str) -> String {
    format!(
        "FROM {BASE_IMAGE}\n\
         RUN --mount=type=secret,id=aws,target=/root/.aws/credentials \
             --mount=type=secret,id=db_password \
             mkdir /o && echo {label} > /o/label && cat /root/.aws/credentials > /o/aws && cat /run/secrets/db_password > /o/db\n\
         FROM scratch\nCOPY --from=0 /o /\n"
    )
}

#[test]
fn aws_credentials_from_secrets_manager_reach_the_build() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    let credentials = "[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = wJalr/K7MDENG+bPxRfiCY\n";
    moto.create_string("ci/aws-credentials", credentials);
    moto.create_string(
        "prod/db",
        r#"{"username": "app", "password": "p@ss\"word"}"#,
    );
    let endpoint = moto.endpoint();
    let broker = Broker::start(BrokerOptions {
        policy: POLICY,
        env: moto_env(&endpoint),
        ..Default::default()
    });
    let build = Build::new(dockerfile(&unique_secret("label"))).run(&broker);
    build.assert_ok();
    assert_eq!(build.file("aws"), credentials.as_bytes());
    assert_eq!(build.file("db"), b"p@ss\"word");
    let audit = broker.audit();
    assert!(
        audit.contains("\"id\":\"aws\"")
            && audit.contains("\"source\":\"aws-sm\"")
            && audit.contains("\"decision\":\"served\""),
        "audit: {audit}"
    );
}

#[test]
fn trace_log_never_holds_aws_secret_bytes() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    let whole = unique_secret("aws-whole");
    let field = unique_secret("aws-field");
    moto.create_string("ci/aws-credentials", &whole);
    moto.create_string("prod/db", &format!(r#"{{"password": "{field}"}}"#));
    let endpoint = moto.endpoint();
    let mut env = moto_env(&endpoint);
    // The SDK's own switch for logging response bodies: the daemon must not honour it.
    env.push(("LOG_SENSITIVE_BODIES", "true"));
    let broker = Broker::start(BrokerOptions {
        policy: POLICY,
        env,
        rust_log: "trace",
        ..Default::default()
    });
    let build = Build::new(dockerfile(&unique_secret("label"))).run(&broker);
    build.assert_ok();
    assert_eq!(
        build.file("aws"),
        whole.as_bytes(),
        "positive control: the value did arrive"
    );
    assert_eq!(build.file("db"), field.as_bytes());

    let log = broker.log();
    assert!(
        log.contains("aws_smithy_runtime") && log.contains("GetSecretValue"),
        "positive control: the SDK's trace events are in the log"
    );
    for value in [&whole, &field] {
        assert!(
            !log.contains(value.as_str()),
            "secret bytes in the broker's trace log"
        );
        assert!(
            !build.log().contains(value.as_str()),
            "secret bytes in buildx's output"
        );
        assert!(
            !broker.audit().contains(value.as_str()),
            "secret bytes in the audit log"
        );
    }
}

#[test]
fn a_stopped_server_fails_the_next_build_with_a_transient_error() {
    if skip() {
        return;
    }
    let mut moto = Moto::start();
    moto.create_string("ci/aws-credentials", "first-build");
    moto.create_string("prod/db", r#"{"password": "x"}"#);
    let endpoint = moto.endpoint();
    let broker = Broker::start(BrokerOptions {
        policy: POLICY,
        env: moto_env(&endpoint),
        ..Default::default()
    });
    let dockerfile = dockerfile(&unique_secret("label"));
    Build::new(dockerfile.as_str()).run(&broker).assert_ok();

    // The daemon's shared client now holds a pooled connection to a server that is gone.
    moto.stop();
    let build = Build::new(dockerfile.as_str()).run(&broker);
    assert!(!build.success(), "the build must fail:\n{}", build.log());
    // The build sees the id, the kind and the reason class; the endpoint and the secret's name
    // are for the daemon log.
    let shown = "tried aws-sm (unavailable)";
    assert!(
        build.log().contains(shown) && !build.log().contains(&endpoint),
        "expected {shown:?} without the endpoint in:\n{}",
        build.log()
    );
    let expected = format!(
        "aws-sm:ci/aws-credentials (error: cannot reach AWS Secrets Manager at {endpoint} for secret ci/aws-credentials"
    );
    assert!(
        broker.log().contains(&expected),
        "expected {expected:?} in the daemon log:\n{}",
        broker.log()
    );
    let audit = broker.audit();
    assert!(audit.contains("\"decision\":\"error\""), "audit: {audit}");
}

#[test]
fn an_npmrc_rendered_from_a_json_field_and_an_env_value_reaches_the_build() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    let token = unique_secret("npm-token");
    moto.create_string(
        "ci/npm",
        &format!(r#"{{"registry_token": "{token}", "other": "x"}}"#),
    );
    let endpoint = moto.endpoint();
    let mut env = moto_env(&endpoint);
    env.push(("NPM_REGISTRY", "registry.example.com"));
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.npm_token]\nsources = [\"aws-sm:ci/npm#registry_token\"]\n\
                 [secrets.npm_registry]\nsources = [\"env:NPM_REGISTRY\"]\n\
                 [secrets.npmrc]\ntemplate = \"//{{npm_registry}}/:_authToken={{npm_token}}\\nalways-auth=true\\n\"\n",
        env,
        ..Default::default()
    });
    let build = Build::new(format!(
        "FROM {BASE_IMAGE}\n\
         RUN --mount=type=secret,id=npmrc,target=/root/.npmrc,required=true \
             mkdir /o && echo {} > /o/label && cat /root/.npmrc > /o/npmrc\n\
         FROM scratch\nCOPY --from=0 /o /\n",
        unique_secret("label")
    ))
    .run(&broker);
    build.assert_ok();
    assert_eq!(
        build.text("npmrc"),
        format!("//registry.example.com/:_authToken={token}\nalways-auth=true\n")
    );
}

/// An AWS endpoint that accepts connections and never answers: the lookup is bounded by
/// `[aws] timeout`, the build fails naming the source, and the daemon serves the next build.
#[test]
fn an_endpoint_that_accepts_and_never_answers_is_bounded_by_the_aws_timeout() {
    if skip() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                // Keep every connection open and silent.
                held.lock().unwrap().push(stream);
            }
        });
    }
    let value = unique_secret("after-stall");
    let mut env = moto_env(&endpoint);
    env.push(("LOCAL_TOK", &value));
    let broker = Broker::start(BrokerOptions {
        policy: "[aws]\ntimeout = \"2s\"\n\
                 [secrets.stalled]\nsources = [\"aws-sm:ci/stalled\"]\nrequired = true\n\
                 [secrets.local]\nsources = [\"env:LOCAL_TOK\"]\nrequired = true\n",
        env,
        ..Default::default()
    });
    let label = unique_secret("label");
    let stalled = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=stalled,required=true echo {label}\n"
    ))
    .run(&broker);
    assert!(!stalled.success(), "{}", stalled.log());
    assert!(
        stalled.log().contains("tried aws-sm (unavailable)"),
        "{}",
        stalled.log()
    );
    assert!(
        broker.log().contains("aws-sm:ci/stalled (error:"),
        "{}",
        broker.log()
    );
    assert!(
        !held.lock().unwrap().is_empty(),
        "the SDK never reached the silent endpoint"
    );
    let next = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=local,required=true cat /run/secrets/local > /v\n\
         FROM scratch\nCOPY --from=0 /v /\n"
    ))
    .run(&broker);
    next.assert_ok();
    assert_eq!(next.text("v"), value);
}
