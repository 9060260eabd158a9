//! `buildbroker resolve` (the real binary, as the daemon resolves) against moto.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::skip;
use crate::moto::{Moto, REGION, xml_text};

/// Credentials moto accepts while IAM is not enforced.
const FAKE_CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
];

pub(crate) struct Resolved {
    pub(crate) output: Output,
    elapsed: Duration,
}

impl Resolved {
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub(crate) fn text(&self) -> String {
        format!(
            "{}{}",
            self.stdout(),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }

    /// The line `resolve` prints for one source of the chain.
    fn attempt(&self, source: &str) -> String {
        self.stdout()
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{source} ")))
            .unwrap_or_else(|| panic!("no line for {source} in:\n{}", self.text()))
            .trim()
            .to_string()
    }

    #[track_caller]
    fn assert_value(&self, id: &str, source: &str, value: &[u8]) {
        let key = std::fs::read(state_dir().join("fingerprint.key")).unwrap();
        let expected = format!(
            "{id}: resolved from {source} ({} bytes, fingerprint {})",
            value.len(),
            buildbroker::cli::fingerprint::keyed_fingerprint(&key, value)
        );
        assert_eq!(self.output.status.code(), Some(0), "{}", self.text());
        assert!(
            self.stdout().contains(&expected),
            "expected {expected:?} in:\n{}",
            self.text()
        );
    }
}

/// Runs `buildbroker resolve ID` with a policy and an environment of exactly `env` (plus PATH,
/// a HOME without ~/.aws, and instance metadata turned off so nothing leaves loopback).
pub(crate) fn resolve(policy: &str, id: &str, env: &[(&str, &str)]) -> Resolved {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_buildbroker"));
    cmd.args(["resolve", "--config"])
        .arg(&path)
        .arg(id)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("STATE_DIRECTORY", state_dir())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let output = cmd.output().expect("run buildbroker resolve");
    Resolved {
        output,
        elapsed: started.elapsed(),
    }
}

/// The state directory of every `resolve` here, so the fingerprint key is known.
pub(crate) fn state_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// An `[aws]` table pointing at `moto`, then `secrets`.
pub(crate) fn policy(moto: &Moto, secrets: &str) -> String {
    format!(
        "[aws]\nendpoint_url = \"{}\"\nregion = \"{REGION}\"\n\n{secrets}",
        moto.endpoint()
    )
}

#[test]
fn string_json_nested_and_binary_values_arrive_exact() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    let text = "pypi-AgEI é\nline2 ";
    moto.create_string("ci/token", text);
    moto.create_string(
        "prod/db.main@eu",
        r#"{"username": "admin", "password": "s3cr\"et\n\u00e9", "port": 5432,
            "replica": {"primary": {"host": "db-1.internal"}}, "flags": {"tls": true}}"#,
    );
    let binary = [0u8, 1, 2, 0xff, 0xfe, b'\n', 0];
    moto.create_binary("ci/keystore", &binary);
    let policy = policy(
        &moto,
        "[secrets.token]\nsources = [\"aws-sm:ci/token\"]\n\
         [secrets.password]\nsources = [\"aws-sm:prod/db.main@eu#password\"]\n\
         [secrets.port]\nsources = [\"aws-sm:prod/db.main@eu#port\"]\n\
         [secrets.host]\nsources = [\"aws-sm:prod/db.main@eu#replica.primary.host\"]\n\
         [secrets.flags]\nsources = [\"aws-sm:prod/db.main@eu#flags\"]\n\
         [secrets.keystore]\nsources = [\"aws-sm:ci/keystore\"]\n",
    );
    let cases: [(&str, &str, &[u8]); 6] = [
        ("token", "aws-sm:ci/token", text.as_bytes()),
        (
            "password",
            "aws-sm:prod/db.main@eu#password",
            "s3cr\"et\né".as_bytes(),
        ),
        ("port", "aws-sm:prod/db.main@eu#port", b"5432"),
        (
            "host",
            "aws-sm:prod/db.main@eu#replica.primary.host",
            b"db-1.internal",
        ),
        ("flags", "aws-sm:prod/db.main@eu#flags", br#"{"tls": true}"#),
        ("keystore", "aws-sm:ci/keystore", &binary),
    ];
    for (id, source, value) in cases {
        resolve(&policy, id, &FAKE_CREDENTIALS).assert_value(id, source, value);
    }
    assert_eq!(
        moto.requests(),
        3 + cases.len(),
        "three seeding calls, then exactly one GetSecretValue per resolve"
    );
}

#[test]
fn secrets_are_found_by_arn() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    moto.create_string("ci/by-arn", "arn-value");
    let arn = crate::moto::block_on(
        moto.client()
            .describe_secret()
            .secret_id("ci/by-arn")
            .send(),
    )
    .unwrap()
    .arn
    .expect("moto gives the ARN");
    let source = format!("aws-sm:{arn}");
    let out = resolve(
        &policy(&moto, &format!("[secrets.a]\nsources = [\"{source}\"]\n")),
        "a",
        &FAKE_CREDENTIALS,
    );
    out.assert_value("a", &source, b"arn-value");
}

#[test]
fn version_stage_and_version_id_pick_older_versions() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    let first = moto.create_string("ci/rotated", "version-one");
    let second = moto.put_string("ci/rotated", "version-two");
    assert_ne!(first, second);
    let policy = policy(
        &moto,
        &format!(
            "[secrets.current]\nsources = [\"aws-sm:ci/rotated\"]\n\
             [secrets.previous]\nsources = [\"aws-sm:ci/rotated?version_stage=AWSPREVIOUS\"]\n\
             [secrets.pinned]\nsources = [\"aws-sm:ci/rotated?version_id={first}\"]\n\
             [secrets.nostage]\nsources = [\"aws-sm:ci/rotated?version_stage=NOSUCHSTAGE\", \"env:FALLBACK\"]\n"
        ),
    );
    resolve(&policy, "current", &FAKE_CREDENTIALS).assert_value(
        "current",
        "aws-sm:ci/rotated",
        b"version-two",
    );
    resolve(&policy, "previous", &FAKE_CREDENTIALS).assert_value(
        "previous",
        "aws-sm:ci/rotated?version_stage=AWSPREVIOUS",
        b"version-one",
    );
    resolve(&policy, "pinned", &FAKE_CREDENTIALS).assert_value(
        "pinned",
        &format!("aws-sm:ci/rotated?version_id={first}"),
        b"version-one",
    );
    let env = [
        FAKE_CREDENTIALS[0],
        FAKE_CREDENTIALS[1],
        ("FALLBACK", "fallback"),
    ];
    let out = resolve(&policy, "nostage", &env);
    out.assert_value("nostage", "env:FALLBACK", b"fallback");
    assert!(
        out.attempt("aws-sm:ci/rotated?version_stage=NOSUCHSTAGE")
            .contains("missing: not found"),
        "{}",
        out.text()
    );
}

#[test]
fn unknown_secret_and_missing_key_fall_through_the_chain() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    moto.create_string("ci/json", r#"{"present": "yes"}"#);
    moto.create_string("ci/plain", "not json at all");
    let policy = policy(
        &moto,
        "[secrets.unknown]\nsources = [\"aws-sm:ci/does-not-exist\", \"env:FALLBACK\"]\n\
         [secrets.nokey]\nsources = [\"aws-sm:ci/json#absent.deeper\", \"env:FALLBACK\"]\n\
         [secrets.notjson]\nsources = [\"aws-sm:ci/plain#field\", \"env:FALLBACK\"]\n",
    );
    let env = [
        FAKE_CREDENTIALS[0],
        FAKE_CREDENTIALS[1],
        ("FALLBACK", "from-env"),
    ];

    let out = resolve(&policy, "unknown", &env);
    out.assert_value("unknown", "env:FALLBACK", b"from-env");
    let line = out.attempt("aws-sm:ci/does-not-exist");
    assert!(
        line.contains("missing: not found in AWS Secrets Manager at http://127.0.0.1:"),
        "{line}"
    );
    assert!(line.contains("ResourceNotFoundException"), "{line}");

    let out = resolve(&policy, "nokey", &env);
    out.assert_value("nokey", "env:FALLBACK", b"from-env");
    assert!(
        out.attempt("aws-sm:ci/json#absent.deeper")
            .ends_with("missing: the secret's JSON has no key absent")
    );

    // A `#` path on a secret that is not JSON is a mistake, reported as an error (the chain
    // still goes on to the next source, as for every error).
    let out = resolve(&policy, "notjson", &env);
    out.assert_value("notjson", "env:FALLBACK", b"from-env");
    let line = out.attempt("aws-sm:ci/plain#field");
    assert!(
        line.contains(" error: the secret is not a JSON object"),
        "{line}"
    );
    assert!(
        !out.text().contains("not json at all"),
        "the value leaked: {}",
        out.text()
    );
}

#[test]
fn access_denied_is_a_permanent_error_naming_the_secret() {
    if skip() {
        return;
    }
    // moto models IAM: after three unchecked calls (the seeding below), every request is
    // checked, and a user without policies may not call GetSecretValue. moto answers 403 with
    // an XML body, which the SDK cannot parse for a JSON-protocol service; the unit tests cover
    // AWS's own AccessDeniedException code.
    let moto = Moto::start_enforcing_iam_after(3);
    moto.iam("Action=CreateUser&UserName=builder");
    let key = moto.iam("Action=CreateAccessKey&UserName=builder");
    moto.create_string("ci/guarded", "guarded-value");
    let env = [
        ("AWS_ACCESS_KEY_ID", xml_text(&key, "AccessKeyId")),
        ("AWS_SECRET_ACCESS_KEY", xml_text(&key, "SecretAccessKey")),
    ];
    let policy = policy(
        &moto,
        "[secrets.guarded]\nsources = [\"aws-sm:ci/guarded\"]\n",
    );
    let out = resolve(&policy, "guarded", &env);
    assert_eq!(out.output.status.code(), Some(1), "{}", out.text());
    let line = out.attempt("aws-sm:ci/guarded");
    assert!(
        line.contains(
            "error: access denied to secret ci/guarded by AWS Secrets Manager at http://127.0.0.1:"
        ),
        "{line}"
    );
    assert!(!line.contains("transient"), "{line}");
}

#[test]
fn stopped_server_gives_a_clear_transient_error_quickly() {
    if skip() {
        return;
    }
    let mut moto = Moto::start();
    moto.create_string("ci/token", "before-the-crash");
    let policy = policy(&moto, "[secrets.token]\nsources = [\"aws-sm:ci/token\"]\n");
    resolve(&policy, "token", &FAKE_CREDENTIALS).assert_value(
        "token",
        "aws-sm:ci/token",
        b"before-the-crash",
    );

    moto.stop();
    let out = resolve(&policy, "token", &FAKE_CREDENTIALS);
    assert_eq!(out.output.status.code(), Some(1), "{}", out.text());
    let line = out.attempt("aws-sm:ci/token");
    assert!(
        line.contains(&format!(
            "transient error: cannot reach AWS Secrets Manager at {} for secret ci/token (after up to 3 attempts)",
            moto.endpoint()
        )),
        "{line}"
    );
    assert!(line.contains("Connection refused"), "{line}");
    // Refused connections fail fast: three attempts with short backoffs, far below the timeout.
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
}

#[test]
fn silent_server_is_a_transient_error_within_the_timeout() {
    if skip() {
        return;
    }
    // A listener that never accepts or answers: the kernel completes the TCP handshake, then
    // nothing — the SDK's attempt and operation timeouts must end the wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let policy = format!(
        "[aws]\nendpoint_url = \"{endpoint}\"\nregion = \"{REGION}\"\ntimeout = \"2s\"\n\n\
         [secrets.token]\nsources = [\"aws-sm:ci/token\"]\n"
    );
    let out = resolve(&policy, "token", &FAKE_CREDENTIALS);
    let line = out.attempt("aws-sm:ci/token");
    assert!(
        line.contains(&format!(
            "transient error: no answer from AWS Secrets Manager at {endpoint} for secret ci/token"
        )),
        "{line}"
    );
    assert!(
        out.elapsed >= Duration::from_millis(1900) && out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
}

#[test]
fn endpoint_and_region_come_from_the_sdk_environment_and_the_source() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    moto.create_string("ci/east", "east-value");
    crate::moto::block_on(
        moto.client_in("eu-west-1")
            .create_secret()
            .name("ci/west")
            .secret_string("west-value")
            .send(),
    )
    .unwrap();
    // No [aws] table at all: AWS_ENDPOINT_URL and AWS_REGION, as the SDK documents them.
    let bare = "[secrets.east]\nsources = [\"aws-sm:ci/east\"]\n\
                [secrets.west]\nsources = [\"aws-sm:ci/west?region=eu-west-1\"]\n\
                [secrets.west_here]\nsources = [\"aws-sm:ci/west\"]\n";
    let endpoint = moto.endpoint();
    for endpoint_var in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETS_MANAGER"] {
        let env = [
            FAKE_CREDENTIALS[0],
            FAKE_CREDENTIALS[1],
            ("AWS_REGION", REGION),
            (endpoint_var, endpoint.as_str()),
        ];
        resolve(bare, "east", &env).assert_value("east", "aws-sm:ci/east", b"east-value");
        resolve(bare, "west", &env).assert_value(
            "west",
            "aws-sm:ci/west?region=eu-west-1",
            b"west-value",
        );
        let out = resolve(bare, "west_here", &env);
        let line = out.attempt("aws-sm:ci/west");
        assert!(
            line.contains(&format!(
                "missing: not found in AWS Secrets Manager at {endpoint}"
            )),
            "{line}"
        );
    }
    // The policy's region beats AWS_REGION; the source's ?region= beats the policy's.
    let with_region = format!("[aws]\nregion = \"eu-west-1\"\n{bare}");
    let env = [
        FAKE_CREDENTIALS[0],
        FAKE_CREDENTIALS[1],
        ("AWS_REGION", REGION),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    resolve(&with_region, "west_here", &env).assert_value(
        "west_here",
        "aws-sm:ci/west",
        b"west-value",
    );
    let pinned = format!(
        "[aws]\nregion = \"eu-west-1\"\n[secrets.east]\nsources = [\"aws-sm:ci/east?region={REGION}\"]\n"
    );
    resolve(&pinned, "east", &env).assert_value(
        "east",
        &format!("aws-sm:ci/east?region={REGION}"),
        b"east-value",
    );
}

#[test]
fn missing_credentials_or_region_are_clear_permanent_errors() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    let policy = policy(&moto, "[secrets.token]\nsources = [\"aws-sm:ci/token\"]\n");
    let out = resolve(&policy, "token", &[]);
    let line = out.attempt("aws-sm:ci/token");
    assert!(
        line.starts_with("aws-sm:ci/token")
            && line.contains(" error: no AWS credentials to read secret ci/token"),
        "{line}"
    );
    assert!(
        line.contains("AWS_ACCESS_KEY_ID") && line.contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
        "{line}"
    );
    assert!(!line.contains("transient"), "{line}");

    let no_region = format!(
        "[aws]\nendpoint_url = \"{}\"\n[secrets.token]\nsources = [\"aws-sm:ci/token\"]\n",
        moto.endpoint()
    );
    let out = resolve(&no_region, "token", &FAKE_CREDENTIALS);
    assert!(
        out.attempt("aws-sm:ci/token")
            .contains("error: no AWS region"),
        "{}",
        out.text()
    );
}

#[test]
fn a_value_over_the_buildx_limit_is_refused() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    // AWS itself caps SecretString at 64 KiB; moto does not, which lets us check our own cap.
    moto.create_string("ci/huge", &"x".repeat(512_001));
    moto.create_string("ci/limit", &"y".repeat(512_000));
    let policy = policy(
        &moto,
        "[secrets.huge]\nsources = [\"aws-sm:ci/huge\"]\n[secrets.limit]\nsources = [\"aws-sm:ci/limit\"]\n",
    );
    let out = resolve(&policy, "huge", &FAKE_CREDENTIALS);
    assert!(
        out.attempt("aws-sm:ci/huge")
            .contains("error: value is 512001 bytes, over the 512000-byte limit"),
        "{}",
        out.text()
    );
    resolve(&policy, "limit", &FAKE_CREDENTIALS).assert_value(
        "limit",
        "aws-sm:ci/limit",
        "y".repeat(512_000).as_bytes(),
    );
}
