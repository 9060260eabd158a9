//! `aws-credentials:[?role_arn=…&session_name=…&duration=…&external_id=…&region=…&profile=…&format=env]`
//! — short-lived AWS credentials minted for each request, rendered as an AWS shared-credentials
//! file (`[default]` with `aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`) or,
//! with `format=env`, as `AWS_ACCESS_KEY_ID=…` lines.
//!
//! With `role_arn`, each lookup is one STS `AssumeRole` call made with the daemon's own
//! credentials (the SDK's default chain), so every build gets credentials of that role that
//! expire on their own after `duration`. Without it the daemon's own identity is served: if the
//! chain already holds temporary credentials (web identity as in CI OIDC, container or instance
//! roles, an assumed profile) they are served as they are, with their own expiry; long-term keys
//! (an IAM user's `AWS_ACCESS_KEY_ID`) are never handed out: STS `GetSessionToken` mints
//! temporary ones from them instead. The SDK configuration (region, endpoint, profile, time
//! limits, retries) is the one `aws-sm:` sources use ([`super::aws_sm::AwsClients::shared`]).
//!
//! The rendered value is written once into a zeroed buffer of its exact size; the strings STS
//! returned are taken by value and zeroized as soon as they are copied. What stays out of reach
//! (the SDK's buffered response body, the credentials cache of the default chain) is listed in
//! SECURITY.md. A lookup also reports [`Minted`]: the role, the expiry and the access key id's
//! last four characters, for the cache (an entry never outlives its credential) and for
//! `buildbroker resolve` and the audit log.
//!
//! This module must never put a secret access key or session token into an error, a log line
//! or a [`Minted`]; only the last four characters of an access key id (which is an identifier,
//! not a secret) ever leave it outside the value.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_config::{Region, SdkConfig};
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sts::Client;
use aws_sdk_sts::config::http::HttpResponse;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::Credentials as StsCredentials;
use zeroize::Zeroize;

use super::aws_sm::{
    ACCESS_DENIED, AwsClients, AwsSettings, BAD_CREDENTIALS, THROTTLED,
    describe_credentials_failure, error_chain, find_source,
};
use super::{SourceError, check_region};
use crate::secret::{SecretBytes, SecretFill};

/// `duration=` when absent: STS's own default for AssumeRole.
pub const DEFAULT_DURATION_SECS: u32 = 3600;
/// STS's bounds for `DurationSeconds` (AssumeRole allows up to the role's maximum, at most 12 h).
const DURATION_RANGE: std::ops::RangeInclusive<u32> = 900..=43_200;
/// `session_name=` when absent (it shows in CloudTrail as the assumed-role session).
const DEFAULT_SESSION_NAME: &str = "buildbroker";
/// STS needs a region to sign with; its global endpoint lives in us-east-1.
const FALLBACK_REGION: &str = "us-east-1";

const FORM: &str = "aws-credentials:[?role_arn=ARN&session_name=S&duration=SECONDS&external_id=X&region=R&profile=NAME&format=env]";

/// How the credentials are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CredentialsFormat {
    /// An AWS shared-credentials file (`~/.aws/credentials`) with one profile section.
    #[default]
    SharedFile,
    /// `AWS_ACCESS_KEY_ID=…` lines, one per variable.
    Env,
}

/// One `aws-credentials:` source URI.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AwsCredentialsSpec {
    /// `role_arn=`: assume this role per request; absent, the daemon's own identity.
    pub role_arn: Option<String>,
    /// `session_name=`: the assumed-role session name (default "buildbroker").
    pub session_name: Option<String>,
    /// `duration=`: seconds the minted credentials live (default 3600).
    pub duration: Option<u32>,
    /// `external_id=`: the external id the role's trust policy asks for.
    pub external_id: Option<String>,
    /// `region=`: the STS region, when it is not the policy's or the environment's.
    pub region: Option<String>,
    /// `profile=`: the section name in the rendered file (default "default").
    pub profile: Option<String>,
    /// `format=env`: variable lines instead of a shared-credentials file.
    pub format: CredentialsFormat,
}

/// What a minted (or served) credential is, without any secret part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The role assumed; `None`: the daemon's own identity.
    pub role: Option<String>,
    /// When the credentials stop working; `None` when the daemon's own temporary credentials
    /// came without one (`AWS_SESSION_TOKEN` in its environment).
    pub expires: Option<SystemTime>,
    /// The access key id's last four characters (the id is an identifier, not a secret).
    pub key_id_last4: String,
}

impl Minted {
    /// How much of its lifetime is left at `now`, when its expiry is known.
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.expires
            .map(|e| e.duration_since(now).unwrap_or_default())
    }

    /// "role arn:…" or "the daemon's own identity", for messages.
    pub fn identity(&self) -> String {
        match &self.role {
            Some(role) => format!("role {role}"),
            None => "the daemon's own identity".to_string(),
        }
    }
}

impl AwsCredentialsSpec {
    /// Parses what follows `aws-credentials:`.
    pub fn parse(rest: &str) -> Result<AwsCredentialsSpec, String> {
        let whole = format!("aws-credentials:{rest}");
        let fail = |why: String| Err(format!("{why}; expected {FORM}, got {whole:?}"));
        let query = match rest.strip_prefix('?') {
            Some(q) => q,
            None if rest.is_empty() => "",
            None => return fail("options start with ?".into()),
        };
        let mut spec = AwsCredentialsSpec::default();
        let mut seen: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return fail(format!("option {pair:?} has no value"));
            };
            if seen.contains(&key) {
                return fail(format!("option {key} is given twice"));
            }
            seen.push(key);
            let checked = match key {
                "role_arn" => check_role_arn(value).map(|()| spec.role_arn = Some(value.into())),
                "session_name" => check_chars(value, 2, 64, "+=,.@-", "a session name")
                    .map(|()| spec.session_name = Some(value.into())),
                "external_id" => check_chars(value, 2, 1224, "+=,.@:/-", "an external id")
                    .map(|()| spec.external_id = Some(value.into())),
                "duration" => check_duration(value).map(|d| spec.duration = Some(d)),
                "region" => check_region(value).map(|()| spec.region = Some(value.into())),
                "profile" => check_chars(value, 1, 64, ".-", "a profile name")
                    .map(|()| spec.profile = Some(value.into())),
                "format" => check_format(value).map(|f| spec.format = f),
                _ => {
                    return fail(format!(
                        "unknown option {key:?} (known: role_arn, session_name, duration, external_id, region, profile, format)"
                    ));
                }
            };
            if let Err(why) = checked {
                return fail(format!("{key}: {why}"));
            }
        }
        if spec.role_arn.is_none() {
            for (key, set) in [
                ("session_name", spec.session_name.is_some()),
                ("external_id", spec.external_id.is_some()),
            ] {
                if set {
                    return fail(format!(
                        "{key} needs role_arn (it is an AssumeRole parameter)"
                    ));
                }
            }
        }
        if spec.format == CredentialsFormat::Env && spec.profile.is_some() {
            return fail(
                "profile names a section of the credentials file; format=env has none".into(),
            );
        }
        Ok(spec)
    }

    fn duration_secs(&self) -> u32 {
        self.duration.unwrap_or(DEFAULT_DURATION_SECS)
    }
}

impl fmt::Display for AwsCredentialsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let duration = self.duration.map(|d| d.to_string());
        let format = (self.format == CredentialsFormat::Env).then(|| "env".to_string());
        let options = [
            ("role_arn", &self.role_arn),
            ("session_name", &self.session_name),
            ("duration", &duration),
            ("external_id", &self.external_id),
            ("region", &self.region),
            ("profile", &self.profile),
            ("format", &format),
        ];
        let mut separator = '?';
        for (key, value) in options {
            if let Some(value) = value {
                write!(f, "{separator}{key}={value}")?;
                separator = '&';
            }
        }
        Ok(())
    }
}

/// `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
fn check_role_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let valid = parts.len() == 6
        && parts[0] == "arn"
        && !parts[1].is_empty()
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && parts[5].strip_prefix("role/").is_some_and(|name| {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c))
        });
    if valid {
        Ok(())
    } else {
        Err("expected a role ARN such as arn:aws:iam::123456789012:role/ci-build".into())
    }
}

/// `min..=max` letters, digits, `_` and the `extra` characters (STS's own patterns).
fn check_chars(value: &str, min: usize, max: usize, extra: &str, what: &str) -> Result<(), String> {
    let valid = (min..=max).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected {what} of {min} to {max} letters, digits and _{extra} characters; got {value:?}"
        ))
    }
}

fn check_format(value: &str) -> Result<CredentialsFormat, String> {
    match value {
        "env" => Ok(CredentialsFormat::Env),
        "file" => Ok(CredentialsFormat::SharedFile),
        _ => Err(format!("expected file or env; got {value:?}")),
    }
}

fn check_duration(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(d) if DURATION_RANGE.contains(&d) => Ok(d),
        _ => Err(format!(
            "expected whole seconds from {} to {} (STS's limits); got {value:?}",
            DURATION_RANGE.start(),
            DURATION_RANGE.end()
        )),
    }
}

/// One STS client per region, made from the shared SDK configuration on first use.
#[derive(Default)]
pub struct StsClients {
    by_region: Mutex<HashMap<String, RegionClient>>,
}

/// A region's client and how messages name the service it calls.
#[derive(Clone)]
struct RegionClient {
    client: Client,
    /// "AWS STS at http://…" with an endpoint override, else "AWS STS in eu-west-1".
    service: String,
}

impl StsClients {
    fn client_for(
        &self,
        spec: &AwsCredentialsSpec,
        settings: &AwsSettings,
        shared: &SdkConfig,
    ) -> RegionClient {
        let region = spec
            .region
            .clone()
            .or_else(|| settings.region.clone())
            .or_else(|| shared.region().map(|r| r.to_string()))
            .unwrap_or_else(|| FALLBACK_REGION.to_string());
        let mut clients = self
            .by_region
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        clients
            .entry(region.clone())
            .or_insert_with(|| {
                let config = aws_sdk_sts::config::Builder::from(shared)
                    .region(Region::new(region.clone()))
                    .build();
                let service = super::aws_sm::service_label(
                    "AWS STS",
                    "AWS_ENDPOINT_URL_STS",
                    settings,
                    shared,
                    &region,
                );
                RegionClient {
                    client: Client::from_conf(config),
                    service,
                }
            })
            .clone()
    }
}

/// Mints (or, for the daemon's own temporary credentials, takes) credentials and renders them.
pub async fn lookup(
    spec: &AwsCredentialsSpec,
    settings: &AwsSettings,
    clients: &AwsClients,
    sts: &StsClients,
) -> Result<(SecretBytes, Minted), SourceError> {
    let shared = clients.shared(settings).await?;
    match &spec.role_arn {
        Some(role) => assume_role(spec, role, settings, shared, sts).await,
        None => own_identity(spec, settings, shared, sts).await,
    }
}

async fn assume_role(
    spec: &AwsCredentialsSpec,
    role: &str,
    settings: &AwsSettings,
    shared: &SdkConfig,
    sts: &StsClients,
) -> Result<(SecretBytes, Minted), SourceError> {
    let RegionClient { client, service } = sts.client_for(spec, settings, shared);
    let doing = format!("assuming role {role}");
    let response = client
        .assume_role()
        .role_arn(role)
        .role_session_name(spec.session_name.as_deref().unwrap_or(DEFAULT_SESSION_NAME))
        .duration_seconds(spec.duration_secs() as i32)
        .set_external_id(spec.external_id.clone())
        .send()
        .await
        .map_err(|e| describe_failure(&e, &doing, &service, settings))?;
    let Some(credentials) = response.credentials else {
        return Err(SourceError::permanent(format!(
            "{service} answered AssumeRole for {role} without credentials"
        )));
    };
    render_owned(spec, credentials, Some(role.to_string()), &service)
}

async fn own_identity(
    spec: &AwsCredentialsSpec,
    settings: &AwsSettings,
    shared: &SdkConfig,
    sts: &StsClients,
) -> Result<(SecretBytes, Minted), SourceError> {
    let purpose = "for an aws-credentials: source";
    let Some(provider) = shared.credentials_provider() else {
        return Err(SourceError::permanent(format!(
            "no AWS credentials provider is configured {purpose}"
        )));
    };
    let credentials = tokio::time::timeout(settings.timeout, provider.provide_credentials())
        .await
        .map_err(|_| {
            SourceError::transient(format!(
                "loading AWS credentials {purpose} took longer than {:?}",
                settings.timeout
            ))
        })?
        .map_err(|e| describe_credentials_failure(&e, purpose))?;
    // Already temporary (web identity, container, instance role, assumed profile, or a session
    // token in the environment, which STS would refuse to make another session from): serve
    // them with their own expiry; the SDK's credentials type zeroizes its own copy.
    if let Some(token) = credentials.session_token() {
        let expires = credentials.expiry();
        let key_id = credentials.access_key_id();
        let value = render(
            spec,
            key_id,
            credentials.secret_access_key(),
            Some(token),
            "the SDK's credentials chain",
        )?;
        return Ok((
            value,
            Minted {
                role: None,
                expires,
                key_id_last4: last4(key_id),
            },
        ));
    }
    // Long-term keys never leave the daemon: mint a session from them.
    drop(credentials);
    let RegionClient { client, service } = sts.client_for(spec, settings, shared);
    let response = client
        .get_session_token()
        .duration_seconds(spec.duration_secs() as i32)
        .send()
        .await
        .map_err(|e| {
            describe_failure(
                &e,
                "minting a session token from the daemon's own credentials",
                &service,
                settings,
            )
        })?;
    let Some(credentials) = response.credentials else {
        return Err(SourceError::permanent(format!(
            "{service} answered GetSessionToken without credentials"
        )));
    };
    render_owned(spec, credentials, None, &service)
}

/// Renders STS's credentials, taking its strings by value and zeroizing them after the copy.
fn render_owned(
    spec: &AwsCredentialsSpec,
    credentials: StsCredentials,
    role: Option<String>,
    service: &str,
) -> Result<(SecretBytes, Minted), SourceError> {
    let StsCredentials {
        mut access_key_id,
        mut secret_access_key,
        mut session_token,
        expiration,
        ..
    } = credentials;
    let rendered = render(
        spec,
        &access_key_id,
        &secret_access_key,
        Some(&session_token),
        service,
    );
    let key_id_last4 = last4(&access_key_id);
    access_key_id.zeroize();
    secret_access_key.zeroize();
    session_token.zeroize();
    let expires = Some(SystemTime::try_from(expiration).map_err(|_| {
        SourceError::permanent(format!(
            "{service} gave credentials with an unreadable expiry"
        ))
    })?);
    Ok((
        rendered?,
        Minted {
            role,
            expires,
            key_id_last4,
        },
    ))
}

fn last4(key_id: &str) -> String {
    let start = key_id.len().saturating_sub(4);
    key_id.get(start..).unwrap_or_default().to_string()
}

/// Writes the file (or the variable lines) into one zeroed buffer of exactly its size.
fn render(
    spec: &AwsCredentialsSpec,
    key_id: &str,
    secret: &str,
    token: Option<&str>,
    from: &str,
) -> Result<SecretBytes, SourceError> {
    // A line break inside a value would add lines to the file; AWS never sends one.
    let parts = [Some(key_id), Some(secret), token];
    if parts
        .iter()
        .flatten()
        .any(|p| p.is_empty() || p.contains(['\n', '\r']))
    {
        return Err(SourceError::permanent(format!(
            "{from} gave credentials with an empty part or a line break in one"
        )));
    }
    let (head, names): (String, [&str; 3]) = match spec.format {
        CredentialsFormat::SharedFile => (
            format!("[{}]\n", spec.profile.as_deref().unwrap_or("default")),
            [
                "aws_access_key_id = ",
                "aws_secret_access_key = ",
                "aws_session_token = ",
            ],
        ),
        CredentialsFormat::Env => (
            String::new(),
            [
                "AWS_ACCESS_KEY_ID=",
                "AWS_SECRET_ACCESS_KEY=",
                "AWS_SESSION_TOKEN=",
            ],
        ),
    };
    let lines: Vec<(&str, &str)> = names
        .iter()
        .zip(parts)
        .filter_map(|(name, value)| Some((*name, value?)))
        .collect();
    let size = head.len()
        + lines
            .iter()
            .map(|(name, value)| name.len() + value.len() + 1)
            .sum::<usize>();
    let mut fill = SecretFill::new(size);
    let mut put = |bytes: &[u8]| {
        let spare = fill
            .spare()
            .expect("the buffer is sized to the rendered text");
        spare[..bytes.len()].copy_from_slice(bytes);
        fill.advance(bytes.len());
    };
    put(head.as_bytes());
    for (name, value) in lines {
        put(name.as_bytes());
        put(value.as_bytes());
        put(b"\n");
    }
    Ok(fill.finish())
}

/// Turns an STS failure into a source error naming what was being done and where.
fn describe_failure<E>(
    err: &SdkError<E, HttpResponse>,
    doing: &str,
    service: &str,
    settings: &AwsSettings,
) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let attempts = settings.max_attempts;
    match err {
        SdkError::ServiceError(context) => {
            let e = context.err();
            let status = context.raw().status().as_u16();
            let code = e.code();
            let said = format!(
                "{}: {}",
                code.unwrap_or("error"),
                e.message().unwrap_or("no message")
            );
            if code.is_some_and(|c| ACCESS_DENIED.contains(&c)) || (code.is_none() && status == 403)
            {
                SourceError::permanent(format!(
                    "{service} denied {doing}: the daemon's AWS credentials may not do this ({said})"
                ))
            } else if code.is_some_and(|c| BAD_CREDENTIALS.contains(&c)) {
                SourceError::permanent(format!(
                    "{service} rejected the daemon's AWS credentials (unknown, expired or wrongly signed) while {doing}: {said}"
                ))
            } else if code.is_some_and(|c| THROTTLED.contains(&c)) || status >= 500 {
                SourceError::transient(format!(
                    "{service} is throttling or unavailable while {doing} (after up to {attempts} attempts): {said}"
                ))
            } else {
                SourceError::permanent(format!("{service} refused {doing} (HTTP {status}): {said}"))
            }
        }
        SdkError::TimeoutError(_) => SourceError::transient(format!(
            "no answer from {service} while {doing} within {:?} ({attempts} attempts at most)",
            settings.timeout
        )),
        SdkError::DispatchFailure(failure) => {
            if let Some(credentials) = find_source::<CredentialsError>(err) {
                return describe_credentials_failure(credentials, &format!("for {doing}"));
            }
            let detail = error_chain(err);
            if failure.is_user() {
                SourceError::permanent(format!(
                    "cannot send the request to {service} for {doing}: {detail}"
                ))
            } else {
                SourceError::transient(format!(
                    "cannot reach {service} for {doing} (after up to {attempts} attempts): {detail}"
                ))
            }
        }
        SdkError::ResponseError(context) => {
            // Described by status only: the body could hold credentials.
            let status = context.raw().status().as_u16();
            let message =
                format!("{service} gave an unreadable HTTP {status} answer while {doing}");
            if status >= 500 {
                SourceError::transient(message)
            } else {
                SourceError::permanent(message)
            }
        }
        SdkError::ConstructionFailure(_) => SourceError::permanent(format!(
            "cannot build the request for {doing}: {}",
            error_chain(err)
        )),
        _ => SourceError::transient(format!(
            "calling {service} for {doing} failed: {}",
            error_chain(err)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_print_back() {
        for text in [
            "",
            "?role_arn=arn:aws:iam::123456789012:role/ci-build&session_name=ci&duration=900&external_id=ext-1&region=eu-west-1&profile=build&format=file",
            "?format=env&duration=43200",
            "?role_arn=arn:aws-cn:iam::123456789012:role/path/x",
        ] {
            let spec = AwsCredentialsSpec::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let printed = spec.to_string();
            assert_eq!(
                AwsCredentialsSpec::parse(&printed).unwrap(),
                spec,
                "{printed}"
            );
        }
        let spec = AwsCredentialsSpec::parse("?format=env").unwrap();
        assert_eq!(spec.format, CredentialsFormat::Env);
        assert_eq!(spec.duration_secs(), DEFAULT_DURATION_SECS);
    }

    #[test]
    fn bad_options_are_refused_with_the_reason() {
        for (text, why) in [
            ("?colour=red", "unknown option \"colour\""),
            ("role_arn=x", "options start with ?"),
            ("?duration=60", "from 900 to 43200"),
            ("?duration=1h", "whole seconds"),
            ("?role_arn=arn:aws:iam::1:role/x", "role ARN"),
            ("?role_arn=arn:aws:s3:::bucket", "role ARN"),
            ("?session_name=ci", "needs role_arn"),
            ("?format=yaml", "expected file or env"),
            ("?format=env&profile=p", "format=env has none"),
            ("?profile=a]b", "profile name"),
            ("?region=EU", "region name"),
            ("?duration=900&duration=900", "given twice"),
            ("?duration", "has no value"),
        ] {
            let err = AwsCredentialsSpec::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains("expected aws-credentials:"), "{err}");
        }
    }

    #[test]
    fn rendering_fills_exactly_and_omits_an_absent_token() {
        let file = AwsCredentialsSpec::default();
        let value = render(&file, "AKIAEXAMPLE", "s3cr3t", Some("tok"), "test").unwrap();
        assert_eq!(
            value.expose(),
            b"[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = s3cr3t\naws_session_token = tok\n"
        );
        let env = AwsCredentialsSpec::parse("?format=env").unwrap();
        let value = render(&env, "AKIAEXAMPLE", "s3cr3t", None, "test").unwrap();
        assert_eq!(
            value.expose(),
            b"AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nAWS_SECRET_ACCESS_KEY=s3cr3t\n"
        );
        let named = AwsCredentialsSpec::parse("?profile=build").unwrap();
        let value = render(&named, "A", "B", Some("C"), "test").unwrap();
        assert!(value.expose().starts_with(b"[build]\n"));
        let Err(err) = render(&file, "A", "line\nbreak", None, "STS") else {
            panic!("a line break must be refused");
        };
        assert!(
            !err.message.contains('\n'),
            "no value in it: {}",
            err.message
        );
        assert_eq!(last4("AKIAEXAMPLE"), "MPLE");
        assert_eq!(last4("AB"), "AB");
    }
}
