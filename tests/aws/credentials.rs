//! `aws-credentials:` against moto's STS (issue 11): real builds through the daemon get a
//! shared-credentials file minted per request, the cache reuses a credential only while
//! `min_remaining` of it is left, `buildbroker resolve` names the role, the expiry and the access
//! key id's last four characters and never a secret part, and a dead STS endpoint fails that id
//! alone with an error naming the source.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::harness::*;
use crate::moto::{Moto, REGION};
use crate::resolve::{policy, resolve, state_dir};

const ROLE: &str = "arn:aws:iam::123456789012:role/ci-build";

/// What moto's GetSessionToken always answers (moto/sts/responses.py): known, so a test can
/// look for them where they must never be.
const MOTO_SESSION_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
const MOTO_SESSION_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";
const MOTO_SESSION_TOKEN_START: &str = "AQoEXAMPLEH4aoAH0gNCAPyJxz4BlCFFxWNE1OPTgk5TthT";

/// The daemon's own (long-term, fake) identity, moto as every AWS endpoint, nothing beyond
/// loopback.
fn daemon_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

/// The `[aws]` table for moto, then `secrets`.
fn aws_policy(endpoint: &str, secrets: &str) -> String {
    format!("[aws]\nendpoint_url = \"{endpoint}\"\nregion = \"{REGION}\"\n\n{secrets}")
}

/// One build mounting every id of [`BUILD_POLICY`]; it writes out the access key ids and the
/// key *names* of the file, never a secret key or a token.
fn dockerfile(label: &str) -> String {
    let key_id = |file: &str, out: &str| {
        format!(" && sed -n 's/^aws_access_key_id = //p' {file} > /o/{out}")
    };
    format!(
        "FROM {BASE_IMAGE}\n\
         RUN --mount=type=secret,id=aws,target=/root/.aws/credentials,required=true \
             --mount=type=secret,id=aws_cached,target=/c/cached,required=true \
             --mount=type=secret,id=aws_short,target=/c/short,required=true \
             --mount=type=secret,id=aws_env,target=/c/env,required=true \
             --mount=type=secret,id=aws_own,target=/c/own,required=true \
             mkdir /o && echo {label} > /o/label \
             && head -n 1 /root/.aws/credentials > /o/head \
             && sed -n 's/^\\(aws_[a-z_]*\\) = ..*$/\\1/p' /root/.aws/credentials > /o/keys \
             && wc -l < /root/.aws/credentials > /o/lines \
             {}{}{} \
             && (set -a; . /c/env; echo \"$AWS_ACCESS_KEY_ID\" > /o/env_id; \
                 [ -n \"$AWS_SECRET_ACCESS_KEY\" ] && [ -n \"$AWS_SESSION_TOKEN\" ] && echo ok > /o/env_ok) \
             && cat /c/own > /o/own\n\
         FROM scratch\nCOPY --from=0 /o /\n",
        key_id("/root/.aws/credentials", "id"),
        key_id("/c/cached", "id_cached"),
        key_id("/c/short", "id_short"),
    )
}

/// `aws`: minted per request; `aws_cached`: cached for an hour (900 s credentials, 5 minutes
/// kept back: reused for 10 minutes); `aws_short`: cached, but 20 minutes must be left of a
/// 15-minute credential, so it is never reused; `aws_env`: variable lines; `aws_own`: the
/// daemon's own identity (long-term keys, so a GetSessionToken session).
fn build_policy() -> String {
    let role = format!("aws-credentials:?role_arn={ROLE}&duration=900");
    format!(
        "[secrets.aws]\nsources = [\"{role}\"]\n\
         [secrets.aws_cached]\nsources = [\"{role}\"]\ncache_ttl = \"1h\"\n\
         [secrets.aws_short]\nsources = [\"{role}\"]\ncache_ttl = \"1h\"\nmin_remaining = \"20m\"\n\
         [secrets.aws_env]\nsources = [\"aws-credentials:?role_arn={ROLE}&session_name=env-build&format=env\"]\n\
         [secrets.aws_own]\nsources = [\"aws-credentials:\"]\n"
    )
}

/// The audit records of `id`, as JSON.
fn audit_records(audit: &str, id: &str) -> Vec<serde_json::Value> {
    audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["id"] == id)
        .collect()
}

/// How far `expires` (RFC 3339) is from `lifetime` after `from`, in whole seconds.
fn expiry_error(expires: &str, from: SystemTime, lifetime: Duration) -> i64 {
    let at = humantime::parse_rfc3339(expires).unwrap_or_else(|e| panic!("{expires}: {e}"));
    let want = from + lifetime;
    match at.duration_since(want) {
        Ok(late) => late.as_secs() as i64,
        Err(early) => -(early.duration().as_secs() as i64),
    }
}

#[test]
fn builds_get_minted_credentials_and_the_cache_reuses_them_only_within_min_remaining() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    let policy = aws_policy(&moto.endpoint(), &build_policy());
    let broker = Broker::start(BrokerOptions {
        policy: &policy,
        env: daemon_env(),
        ..Default::default()
    });
    let started = SystemTime::now();
    let first = Build::new(dockerfile(&unique_secret("first"))).run(&broker);
    first.assert_ok();
    let second = Build::new(dockerfile(&unique_secret("second"))).run(&broker);
    second.assert_ok();

    // The file has its section and the three keys, each with a value.
    assert_eq!(first.text("head"), "[default]\n");
    assert_eq!(
        first.text("keys"),
        "aws_access_key_id\naws_secret_access_key\naws_session_token\n"
    );
    assert_eq!(first.text("lines").trim(), "4");
    let id = |b: &BuildResult, f: &str| {
        let id = b.text(f).trim().to_string();
        assert!(id.len() >= 16, "{f}: an access key id, got {id:?}");
        id
    };
    assert_ne!(
        id(&first, "id"),
        id(&second, "id"),
        "without cache_ttl every build gets its own credentials"
    );
    assert_eq!(
        id(&first, "id_cached"),
        id(&second, "id_cached"),
        "with cache_ttl both builds share one credential"
    );
    assert_ne!(
        id(&first, "id_short"),
        id(&second, "id_short"),
        "min_remaining larger than the credential's lifetime: minted anew"
    );
    assert_ne!(id(&first, "id"), id(&first, "id_cached"));
    // format=env: sourced by the shell, all three variables set.
    assert_eq!(first.text("env_ok"), "ok\n");
    assert!(first.text("env_id").trim().len() >= 16);
    // The daemon's own long-term keys never reach a build: a session minted from them does.
    let own = format!(
        "[default]\naws_access_key_id = {MOTO_SESSION_KEY_ID}\naws_secret_access_key = {MOTO_SESSION_SECRET}\naws_session_token = "
    );
    let own_file = first.text("own");
    assert!(own_file.starts_with(&own), "{own_file:?}");
    assert!(!own_file.contains("= testing"), "the daemon's own keys");

    // The audit names the role, the expiry and the key's last four characters, as the build saw.
    let audit = broker.audit();
    let records = audit_records(&audit, "aws");
    assert_eq!(records.len(), 2, "{audit}");
    for (record, build) in records.iter().zip([&first, &second]) {
        let minted = &record["minted"];
        assert_eq!(minted["role"], ROLE, "{record}");
        let key = id(build, "id");
        assert_eq!(minted["key_id_last4"], key[key.len() - 4..], "{record}");
        let off = expiry_error(
            minted["expires"].as_str().unwrap(),
            started,
            Duration::from_secs(900),
        );
        assert!(
            (-5..=120).contains(&off),
            "expiry {off} s off 900 s: {record}"
        );
    }
    let cached: Vec<_> = audit_records(&audit, "aws_cached")
        .iter()
        .map(|r| r["cache"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(cached, ["miss", "hit"], "{audit}");
    let short: Vec<_> = audit_records(&audit, "aws_short")
        .iter()
        .map(|r| r["cache"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(short, ["miss", "miss"], "{audit}");
    // No secret part anywhere in the daemon's own records (its log is at debug level).
    for text in [&audit, &broker.log()] {
        assert!(!text.contains(MOTO_SESSION_SECRET), "{text}");
        assert!(!text.contains(MOTO_SESSION_TOKEN_START), "{text}");
        assert!(
            !text.contains(MOTO_SESSION_KEY_ID),
            "only the last four: {text}"
        );
    }
}

#[test]
fn a_dead_sts_endpoint_fails_that_id_naming_the_source_and_the_daemon_keeps_serving() {
    if skip() {
        return;
    }
    // A port nothing listens on (bound, then released).
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{dead}");
    let policy = aws_policy(
        &endpoint,
        &format!(
            "[secrets.aws]\nsources = [\"aws-credentials:?role_arn={ROLE}\"]\nrequired = true\n\
             [secrets.token]\nsources = [\"env:TOKEN\"]\nrequired = true\n"
        ),
    );
    let token = unique_secret("token");
    let mut env = daemon_env();
    env.push(("TOKEN", &token));
    let broker = Broker::start(BrokerOptions {
        policy: &policy,
        env,
        ..Default::default()
    });
    let failed = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=aws,target=/root/.aws/credentials echo {}\n",
        unique_secret("dead")
    ))
    .run(&broker);
    assert!(!failed.success(), "{}", failed.log());
    assert!(
        failed.log().contains("aws-credentials (unavailable)"),
        "brief build output names the source kind: {}",
        failed.log()
    );
    let audit = broker.audit();
    let record = audit_records(&audit, "aws")
        .pop()
        .unwrap_or_else(|| panic!("{audit}"));
    let error = record["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("aws-credentials:?role_arn={ROLE}"))
            && error.contains(&format!("cannot reach AWS STS at {endpoint}"))
            && error.contains(&format!("assuming role {ROLE}")),
        "{record}"
    );
    // The daemon still serves other ids.
    let ok = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=token,required=true \
         mkdir /o && cat /run/secrets/token > /o/token && echo {}\n\
         FROM scratch\nCOPY --from=0 /o /\n",
        unique_secret("alive")
    ))
    .run(&broker);
    ok.assert_ok();
    assert_eq!(ok.text("token"), token);
}

#[test]
fn resolve_shows_the_role_expiry_and_key_tail_of_an_assumed_role() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    let source = format!("aws-credentials:?role_arn={ROLE}&duration=900");
    let policy = policy(&moto, &format!("[secrets.aws]\nsources = [\"{source}\"]\n"));
    let before = SystemTime::now();
    let resolved = resolve(&policy, "aws", &daemon_env());
    let after = SystemTime::now();
    assert_eq!(
        resolved.output.status.code(),
        Some(0),
        "{}",
        resolved.text()
    );
    let out = resolved.stdout();
    assert!(
        out.contains(&format!("aws: resolved from {source} (")),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("aws: credentials of "))
        .unwrap_or_else(|| panic!("{out}"));
    let prefix = format!("aws: credentials of role {ROLE}: access key id ending ");
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{line}"));
    let (tail, expiry) = rest.split_once(", expires ").unwrap();
    assert_eq!(tail.len(), 4, "{line}");
    let (at, left) = expiry.split_once(" (in ").unwrap();
    // 900 s from when the credentials were minted, some time during the resolve (a cold
    // moto_server and the process's start can take seconds), give or take the seconds the
    // expiry is rounded to.
    let late = expiry_error(at, before, Duration::from_secs(900));
    let early = expiry_error(at, after, Duration::from_secs(900));
    assert!(
        late >= -2 && early <= 2,
        "expiry not 900 s after the resolve ({late} s from its start, {early} s from its end): {line}"
    );
    assert!(left.starts_with("14m"), "{line}");
}

#[test]
fn resolve_of_the_daemons_own_identity_shows_no_secret_part() {
    if skip() {
        return;
    }
    let moto = Moto::start();
    let policy = policy(
        &moto,
        "[secrets.aws]\nsources = [\"aws-credentials:?duration=900\"]\n\
         [secrets.aws_env]\nsources = [\"aws-credentials:?format=env\"]\n",
    );
    let resolved = resolve(&policy, "aws", &daemon_env());
    let text = resolved.text();
    assert_eq!(resolved.output.status.code(), Some(0), "{text}");
    assert!(
        text.contains(
            "aws: credentials of the daemon's own identity: access key id ending MPLE, expires "
        ),
        "{text}"
    );
    for secret in [
        MOTO_SESSION_SECRET,
        MOTO_SESSION_TOKEN_START,
        MOTO_SESSION_KEY_ID,
        "testing",
    ] {
        assert!(!text.contains(secret), "{secret} in:\n{text}");
    }
    // The value is the file, byte for byte: its keyed fingerprint says so without printing it.
    let env = resolve(&policy, "aws_env", &daemon_env());
    assert_eq!(env.output.status.code(), Some(0), "{}", env.text());
    let token = moto_session_token();
    let want = format!(
        "AWS_ACCESS_KEY_ID={MOTO_SESSION_KEY_ID}\nAWS_SECRET_ACCESS_KEY={MOTO_SESSION_SECRET}\nAWS_SESSION_TOKEN={token}\n"
    );
    let key = std::fs::read(state_dir().join("fingerprint.key")).unwrap();
    let expected = format!(
        "aws_env: resolved from aws-credentials:?format=env ({} bytes, fingerprint {})",
        want.len(),
        buildbroker::cli::fingerprint::keyed_fingerprint(&key, want.as_bytes())
    );
    assert!(
        env.stdout().contains(&expected),
        "{expected} in:\n{}",
        env.text()
    );
}

/// moto's fixed GetSessionToken session token, read from the moto the test bed installed.
fn moto_session_token() -> String {
    let moto = crate::moto::moto_server();
    let site = moto.parent().unwrap().parent().unwrap();
    let responses = std::fs::read_dir(site.join("lib"))
        .unwrap()
        .filter_map(|d| d.ok())
        .map(|d| d.path().join("site-packages/moto/sts/responses.py"))
        .find(|p| p.is_file())
        .expect("moto's sts/responses.py");
    let text = std::fs::read_to_string(responses).unwrap();
    let start = text.find(MOTO_SESSION_TOKEN_START).expect("the token");
    let end = start + text[start..].find('"').unwrap();
    text[start..end].to_string()
}

#[test]
fn temporary_credentials_in_the_environment_are_served_as_they_are() {
    if skip() {
        return;
    }
    // No STS call: the chain's credentials already have a session token.
    let policy = "[aws]\nregion = \"us-east-1\"\n[secrets.aws]\nsources = [\"aws-credentials:?profile=ci\"]\n";
    let env = [
        ("AWS_ACCESS_KEY_ID", "ASIATEMPORARYKEY1234"),
        ("AWS_SECRET_ACCESS_KEY", "temporary-secret"),
        ("AWS_SESSION_TOKEN", "temporary-token"),
    ];
    let resolved = resolve(policy, "aws", &env);
    let text = resolved.text();
    assert_eq!(resolved.output.status.code(), Some(0), "{text}");
    let want = "[ci]\naws_access_key_id = ASIATEMPORARYKEY1234\naws_secret_access_key = temporary-secret\naws_session_token = temporary-token\n";
    let key = std::fs::read(state_dir().join("fingerprint.key")).unwrap();
    assert!(
        text.contains(&format!(
            "({} bytes, fingerprint {})",
            want.len(),
            buildbroker::cli::fingerprint::keyed_fingerprint(&key, want.as_bytes())
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "credentials of the daemon's own identity: access key id ending 1234, expiry not known"
        ),
        "{text}"
    );
    assert!(!text.contains("temporary-"), "{text}");
}

#[test]
fn bad_options_and_a_stray_min_remaining_are_load_errors_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(
        &path,
        "[secrets.aws]\nsources = [\"aws-credentials:?role_arn=arn:aws:iam::123456789012:role/x&colour=red\"]\n\
         [secrets.token]\nsources = [\"env:TOKEN\"]\ncache_ttl = \"1h\"\nmin_remaining = \"5m\"\n\
         [secrets.aws2]\nsources = [\"aws-credentials:\"]\nmin_remaining = \"5m\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_buildbroker"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:2:12:")) && stderr.contains("unknown option \"colour\""),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:6:17:"))
            && stderr.contains("[secrets.token] min_remaining: only credentials minted by an aws-credentials: source"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:9:17:"))
            && stderr.contains("[secrets.aws2] min_remaining needs cache_ttl"),
        "{stderr}"
    );
}
