//! `aws-sm:NAME_OR_ARN[?region=R&version_stage=S&version_id=V][#key.path]` — a secret from AWS
//! Secrets Manager, read with one `GetSecretValue` call per request.
//!
//! Credentials come from the SDK's default chain (environment, shared profile, web identity as CI
//! uses, container and instance roles); the endpoint, profile, default region and time limits
//! from the policy's `[aws]` table. The SDK configuration is loaded once, on first use, and there
//! is one client per region, shared by every request (its connection pool and credentials cache
//! with it). Retries are the SDK's standard strategy with a small number of attempts inside one
//! overall deadline, so an unreachable endpoint fails a build within `[aws] timeout`, never hangs it.
//!
//! A `#key.path` selects one field of a JSON secret without copying the document: the walk
//! borrows from the secret's own buffer, and only the selected field is copied (and unescaped)
//! into a fresh [`SecretBytes`]. The SDK's own copies (the response body it buffered, the
//! `String` it decoded) are outside our reach: the decoded value is moved, not copied, into a
//! zeroizing buffer; the raw response buffer is freed by the SDK without being zeroized.
//!
//! This module must never put a value, or any text derived from a response body, into an error
//! or a log line: errors carry AWS's error code and message, the secret's name and the endpoint.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::{
    GetSecretValueError, GetSecretValueOutput,
};
use serde::Deserializer as _;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{Lookup, SourceError};
use crate::secret::{SecretBuf, SecretBytes};

/// The first retry waits up to this long (with jitter), the second up to twice as long.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);

/// One `aws-sm:` source URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSmSpec {
    /// A secret name (`prod/db`) or ARN, as `GetSecretValue` takes it.
    pub secret_id: String,
    /// `?region=`: where the secret lives, when it is not the policy's or the environment's region.
    pub region: Option<String>,
    /// `?version_stage=`: a staging label such as `AWSPREVIOUS` (AWS defaults to `AWSCURRENT`).
    pub version_stage: Option<String>,
    /// `?version_id=`: one exact version.
    pub version_id: Option<String>,
    /// `#a.b.c`: the field of a JSON secret to serve instead of the whole secret.
    pub json_path: Option<Vec<String>>,
}

/// Checks one option's value; the error says what was expected.
type CheckValue = fn(&str) -> Result<(), String>;

const FORM: &str = "aws-sm:NAME_OR_ARN[?region=R&version_stage=S&version_id=V][#key.path]";

impl AwsSmSpec {
    /// Parses what follows `aws-sm:`.
    pub fn parse(rest: &str) -> Result<AwsSmSpec, String> {
        let whole = format!("aws-sm:{rest}");
        let fail = |why: String| Err(format!("{why}; expected {FORM}, got {whole:?}"));
        let (before_fragment, fragment) = match rest.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (rest, None),
        };
        let (secret_id, query) = match before_fragment.split_once('?') {
            Some((id, q)) => (id, Some(q)),
            None => (before_fragment, None),
        };
        if let Err(why) = check_secret_id(secret_id) {
            return fail(why);
        }
        let mut spec = AwsSmSpec {
            secret_id: secret_id.to_string(),
            region: None,
            version_stage: None,
            version_id: None,
            json_path: None,
        };
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let Some((key, value)) = pair.split_once('=') else {
                return fail(format!("option {pair:?} has no value"));
            };
            let (slot, check): (&mut Option<String>, CheckValue) = match key {
                "region" => (&mut spec.region, check_region),
                "version_stage" => (&mut spec.version_stage, check_version_stage),
                "version_id" => (&mut spec.version_id, check_version_id),
                _ => {
                    return fail(format!(
                        "unknown option {key:?} (known: region, version_stage, version_id)"
                    ));
                }
            };
            if slot.is_some() {
                return fail(format!("option {key} is given twice"));
            }
            if let Err(why) = check(value) {
                return fail(format!("{key}: {why}"));
            }
            *slot = Some(value.to_string());
        }
        if let Some(fragment) = fragment {
            let path: Vec<String> = fragment.split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                return fail("#key.path needs non-empty keys separated by single dots".into());
            }
            spec.json_path = Some(path);
        }
        if let (Some(option), Some(arn_region)) = (&spec.region, arn_region(&spec.secret_id))
            && option != arn_region
        {
            return fail(format!(
                "region={option} contradicts the ARN's region {arn_region}"
            ));
        }
        Ok(spec)
    }

    /// The region a call for this secret goes to, when the source itself says.
    fn own_region(&self) -> Option<&str> {
        self.region
            .as_deref()
            .or_else(|| arn_region(&self.secret_id))
    }
}

impl fmt::Display for AwsSmSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.secret_id)?;
        let options = [
            ("region", &self.region),
            ("version_stage", &self.version_stage),
            ("version_id", &self.version_id),
        ];
        let mut separator = '?';
        for (key, value) in options {
            if let Some(value) = value {
                write!(f, "{separator}{key}={value}")?;
                separator = '&';
            }
        }
        if let Some(path) = &self.json_path {
            write!(f, "#{}", path.join("."))?;
        }
        Ok(())
    }
}

/// A secret name (letters, digits and `/_+=.@-`, at most 512 characters, as AWS allows) or a
/// Secrets Manager ARN.
fn check_secret_id(id: &str) -> Result<(), String> {
    let name_chars = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
    };
    if id.is_empty() {
        return Err("the secret name or ARN is empty".into());
    }
    if id.starts_with("arn:") {
        let parts: Vec<&str> = id.splitn(7, ':').collect();
        let valid = parts.len() == 7
            && !parts[1].is_empty()
            && parts[2] == "secretsmanager"
            && check_region(parts[3]).is_ok()
            && !parts[4].is_empty()
            && parts[4].chars().all(|c| c.is_ascii_digit())
            && parts[5] == "secret"
            && !parts[6].is_empty()
            && name_chars(parts[6]);
        return if valid {
            Ok(())
        } else {
            Err("the ARN is not of the form arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME".into())
        };
    }
    if id.len() > 512 || !name_chars(id) {
        return Err("a secret name is at most 512 letters, digits and /_+=.@- characters".into());
    }
    Ok(())
}

/// The region field of an ARN (`arn:aws:secretsmanager:REGION:…`).
fn arn_region(id: &str) -> Option<&str> {
    id.strip_prefix("arn:")?
        .split(':')
        .nth(2)
        .filter(|r| !r.is_empty())
}

/// An AWS region name such as `eu-west-1` (lowercase letters, digits and dashes).
pub fn check_region(region: &str) -> Result<(), String> {
    let valid = !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected a region name such as \"eu-west-1\"; got {region:?}"
        ))
    }
}

fn check_version_stage(stage: &str) -> Result<(), String> {
    if stage.is_empty()
        || stage.len() > 256
        || stage.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        Err("expected a staging label such as AWSPREVIOUS".into())
    } else {
        Ok(())
    }
}

fn check_version_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        Err("expected a version id (a UUID such as 5a0f6c3e-…)".into())
    } else {
        Ok(())
    }
}

/// An `http://` or `https://` URL with a host, as the SDK's endpoint override takes it.
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    let valid = url.parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.authority().is_some_and(|a| !a.host().is_empty())
            && u.query().is_none()
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected an http:// or https:// URL such as \"https://secretsmanager.eu-west-1.amazonaws.com\"; got {url:?}"
        ))
    }
}

/// The policy's `[aws]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// `region`: used when neither the source's `?region=` nor an ARN names one; when absent,
    /// the SDK's own chain decides (`AWS_REGION`, the profile, instance metadata).
    pub region: Option<String>,
    /// `endpoint_url`: every call goes there instead of AWS's own endpoint (a VPC endpoint, a
    /// proxy, moto). Absent, the SDK honours `AWS_ENDPOINT_URL_SECRETS_MANAGER` and
    /// `AWS_ENDPOINT_URL` and the profile's `endpoint_url`.
    pub endpoint_url: Option<String>,
    /// `profile`: the shared-config profile for credentials and region (else `AWS_PROFILE`,
    /// else `default`).
    pub profile: Option<String>,
    /// `timeout`: the longest one lookup may take, every retry included.
    pub timeout: Duration,
    /// `connect_timeout`: the longest one TCP/TLS connection attempt may take.
    pub connect_timeout: Duration,
    /// `max_attempts`: how many times one lookup may call AWS (throttling, 5xx, network faults).
    pub max_attempts: u32,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            region: None,
            endpoint_url: None,
            profile: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_attempts: 3,
        }
    }
}

impl AwsSettings {
    /// Each attempt gets an equal share of the overall deadline, so a server that accepts a
    /// connection and then never answers still leaves time for the retries.
    fn attempt_timeout(&self) -> Duration {
        self.timeout / self.max_attempts.max(1)
    }
}

/// The SDK state shared by every `aws-sm:` lookup of one policy.
#[derive(Default)]
pub struct AwsClients {
    /// The SDK configuration (credentials chain and its cache, HTTP client, retries), loaded on
    /// the first lookup: a policy without `aws-sm:` sources never reads AWS profiles.
    shared: tokio::sync::OnceCell<SdkConfig>,
    /// One client per region, made from `shared` on first use and kept for the policy's life.
    by_region: Mutex<HashMap<String, RegionClient>>,
}

/// A region's client and how messages name the service it calls.
#[derive(Clone)]
struct RegionClient {
    client: Client,
    /// "AWS Secrets Manager at http://…" with an endpoint override, else "… in eu-west-1".
    service: String,
}

impl AwsClients {
    /// The SDK configuration every AWS source of this policy shares (`aws-sm:` and
    /// `aws-credentials:`), loaded on first use within `[aws] timeout`.
    pub(super) async fn shared(&self, settings: &AwsSettings) -> Result<&SdkConfig, SourceError> {
        tokio::time::timeout(
            settings.timeout,
            self.shared.get_or_init(|| load_shared_config(settings)),
        )
        .await
        .map_err(|_| {
            SourceError::transient(format!(
                "loading the AWS configuration (profile, region) took longer than {:?}",
                settings.timeout
            ))
        })
    }

    async fn client_for(
        &self,
        spec: &AwsSmSpec,
        settings: &AwsSettings,
    ) -> Result<RegionClient, SourceError> {
        let shared = self.shared(settings).await?;
        let region = spec
            .own_region()
            .or(settings.region.as_deref())
            .map(str::to_string)
            .or_else(|| shared.region().map(|r| r.to_string()));
        let Some(region) = region else {
            return Err(SourceError::permanent(
                "no AWS region: set region in the policy's [aws] table, add ?region= to the source, or set AWS_REGION (or region in the AWS profile)",
            ));
        };
        let mut clients = self
            .by_region
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let client = clients.entry(region.clone()).or_insert_with(|| {
            let config = aws_sdk_secretsmanager::config::Builder::from(shared)
                .region(Region::new(region.clone()))
                .build();
            let service = service_label(
                "AWS Secrets Manager",
                "AWS_ENDPOINT_URL_SECRETS_MANAGER",
                settings,
                shared,
                &region,
            );
            RegionClient {
                client: Client::from_conf(config),
                service,
            }
        });
        Ok(client.clone())
    }
}

async fn load_shared_config(settings: &AwsSettings) -> SdkConfig {
    // rustls with ring and the system's root certificates; the SDK's default client would bring
    // aws-lc (see Cargo.toml).
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let retry = RetryConfig::standard()
        .with_max_attempts(settings.max_attempts)
        .with_initial_backoff(INITIAL_BACKOFF);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(settings.connect_timeout)
        .operation_attempt_timeout(settings.attempt_timeout())
        .operation_timeout(settings.timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    loader.load().await
}

/// Asks Secrets Manager for `spec`: one `GetSecretValue` call (the SDK may retry it).
pub async fn lookup(
    spec: &AwsSmSpec,
    settings: &AwsSettings,
    clients: &AwsClients,
) -> Result<Lookup, SourceError> {
    let RegionClient { client, service } = clients.client_for(spec, settings).await?;
    let response = client
        .get_secret_value()
        .secret_id(&spec.secret_id)
        .set_version_stage(spec.version_stage.clone())
        .set_version_id(spec.version_id.clone())
        .send()
        .await;
    let output = match response {
        Ok(output) => output,
        Err(err) => return describe_failure(&err, &spec.secret_id, &service, settings),
    };
    let Some(document) = take_value(output) else {
        return Err(SourceError::permanent(format!(
            "secret {} has neither a SecretString nor a SecretBinary value",
            spec.secret_id
        )));
    };
    match &spec.json_path {
        None => Ok(Lookup::Found(document)),
        Some(path) => select_json(document.expose(), path),
    }
}

/// Moves the value out of the SDK's output without copying it.
fn take_value(output: GetSecretValueOutput) -> Option<SecretBytes> {
    let GetSecretValueOutput {
        secret_string,
        secret_binary,
        ..
    } = output;
    match (secret_string, secret_binary) {
        (Some(text), _) => Some(SecretBytes::new(text.into_bytes())),
        (None, Some(blob)) => Some(SecretBytes::new(blob.into_inner())),
        (None, None) => None,
    }
}

/// AWS error codes that mean "these credentials may not read this secret".
pub(super) const ACCESS_DENIED: &[&str] = &["AccessDeniedException", "AccessDenied"];
/// AWS error codes that mean "these credentials are not valid at all".
pub(super) const BAD_CREDENTIALS: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "ExpiredTokenException",
    "ExpiredToken",
    "MissingAuthenticationToken",
];
/// AWS error codes for overload: the SDK has already retried these.
pub(super) const THROTTLED: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "ServiceUnavailableException",
];

/// Turns an SDK failure into what a chain understands: `Missing` (try the next source), a
/// permanent error (configuration, permissions) or a transient one (network, throttling).
fn describe_failure(
    err: &SdkError<GetSecretValueError, HttpResponse>,
    secret: &str,
    service: &str,
    settings: &AwsSettings,
) -> Result<Lookup, SourceError> {
    match err {
        SdkError::ServiceError(context) => {
            let e = context.err();
            let status = context.raw().status().as_u16();
            let code = e.code();
            let message = e.message().unwrap_or("no message");
            let said = format!("{}: {message}", code.unwrap_or("error"));
            Err(match e {
                GetSecretValueError::ResourceNotFoundException(_) => {
                    return Ok(Lookup::Missing(format!("not found in {service} ({said})")));
                }
                GetSecretValueError::DecryptionFailure(_) => SourceError::permanent(format!(
                    "{service} cannot decrypt secret {secret} with its KMS key (check kms:Decrypt for these credentials): {said}"
                )),
                GetSecretValueError::InternalServiceError(_) => SourceError::transient(format!(
                    "{service} failed internally on secret {secret} (after up to {} attempts): {said}",
                    settings.max_attempts
                )),
                GetSecretValueError::InvalidParameterException(_)
                | GetSecretValueError::InvalidRequestException(_) => SourceError::permanent(
                    format!("{service} refused the request for secret {secret}: {said}"),
                ),
                _ if code.is_some_and(|c| ACCESS_DENIED.contains(&c))
                    || (code.is_none() && status == 403) =>
                {
                    SourceError::permanent(format!(
                        "access denied to secret {secret} by {service}: these AWS credentials may not call secretsmanager:GetSecretValue on it ({})",
                        if code.is_some() {
                            said
                        } else {
                            "HTTP 403".into()
                        }
                    ))
                }
                _ if code.is_some_and(|c| BAD_CREDENTIALS.contains(&c)) => {
                    SourceError::permanent(format!(
                        "{service} rejected the AWS credentials (unknown, expired or wrongly signed) while reading secret {secret}: {said}"
                    ))
                }
                _ if code.is_some_and(|c| THROTTLED.contains(&c)) || status >= 500 => {
                    SourceError::transient(format!(
                        "{service} is throttling or unavailable for secret {secret} (after up to {} attempts): {said}",
                        settings.max_attempts
                    ))
                }
                _ => SourceError::permanent(format!(
                    "{service} answered HTTP {status} for secret {secret}: {said}"
                )),
            })
        }
        SdkError::TimeoutError(_) => Err(SourceError::transient(format!(
            "no answer from {service} for secret {secret} within {:?} ({} attempts at most)",
            settings.timeout, settings.max_attempts
        ))),
        SdkError::DispatchFailure(failure) => {
            if let Some(credentials) = find_source::<CredentialsError>(err) {
                return Err(describe_credentials_failure(
                    credentials,
                    &format!("to read secret {secret}"),
                ));
            }
            // Only the request path, the SDK's own words and the socket error: no response body
            // exists at this stage.
            let detail = error_chain(err);
            if failure.is_user() {
                Err(SourceError::permanent(format!(
                    "cannot send the request for secret {secret} to {service}: {detail}"
                )))
            } else if failure.is_timeout() {
                Err(SourceError::transient(format!(
                    "no answer from {service} for secret {secret} (after up to {} attempts): {detail}",
                    settings.max_attempts
                )))
            } else {
                Err(SourceError::transient(format!(
                    "cannot reach {service} for secret {secret} (after up to {} attempts): {detail}",
                    settings.max_attempts
                )))
            }
        }
        SdkError::ResponseError(context) => {
            // The body could not be read or parsed: describe it by status only, never by content.
            let status = context.raw().status().as_u16();
            if status == 403 {
                Err(SourceError::permanent(format!(
                    "access denied to secret {secret} by {service}: these AWS credentials may not call secretsmanager:GetSecretValue on it (HTTP 403)"
                )))
            } else if status >= 500 {
                Err(SourceError::transient(format!(
                    "{service} gave an unreadable HTTP {status} answer for secret {secret}"
                )))
            } else {
                Err(SourceError::permanent(format!(
                    "{service} gave an unreadable HTTP {status} answer for secret {secret}"
                )))
            }
        }
        SdkError::ConstructionFailure(_) => Err(SourceError::permanent(format!(
            "cannot build the request for secret {secret}: {}",
            error_chain(err)
        ))),
        _ => Err(SourceError::transient(format!(
            "calling {service} for secret {secret} failed: {}",
            error_chain(err)
        ))),
    }
}

/// A failure of the SDK's credentials chain; `purpose` says what they were for ("to read
/// secret X").
pub(super) fn describe_credentials_failure(err: &CredentialsError, purpose: &str) -> SourceError {
    match err {
        CredentialsError::CredentialsNotLoaded(_) => SourceError::permanent(format!(
            "no AWS credentials {purpose}: the SDK looked for AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             the profile (AWS_PROFILE or [aws] profile) in ~/.aws/credentials and ~/.aws/config, a web identity token \
             (AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN), container credentials (AWS_CONTAINER_CREDENTIALS_*) and \
             EC2 instance metadata, and found none ({})",
            error_chain(err)
        )),
        CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
            SourceError::transient(format!(
                "loading AWS credentials {purpose} failed: {}",
                error_chain(err)
            ))
        }
        _ => SourceError::permanent(format!(
            "the AWS credentials configuration is unusable ({purpose}): {}",
            error_chain(err)
        )),
    }
}

/// An error and its sources on one line, "a: b: c": the SDK's own words without the `Debug`
/// dump that its `DisplayErrorContext` appends.
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts
            .last()
            .is_some_and(|previous| previous.contains(&text))
        {
            parts.push(text);
        }
        current = e.source();
    }
    parts
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first error of type `T` in `err`'s source chain.
pub(super) fn find_source<'e, T: std::error::Error + 'static>(
    err: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Selects the field at `path` in the JSON document `document`. A string field gives its text,
/// anything else its JSON text; a missing (or null) field is `Missing`; a document that is not a
/// JSON object, or a path through something that is not an object, is a permanent error.
fn select_json(document: &[u8], path: &[String]) -> Result<Lookup, SourceError> {
    let dotted = path.join(".");
    let not_json = |detail: String| {
        SourceError::permanent(format!(
            "the secret is not a JSON object ({detail}), so #{dotted} cannot select a field of it"
        ))
    };
    let text = std::str::from_utf8(document).map_err(|_| not_json("not UTF-8 text".into()))?;
    // serde_json's messages can quote the input: report only where the syntax broke.
    let mut current: &RawValue = serde_json::from_str(text).map_err(|e| {
        not_json(format!(
            "invalid JSON at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    for (depth, key) in path.iter().enumerate() {
        let raw = current.get().trim();
        if !raw.starts_with('{') {
            let what = if depth == 0 {
                "the secret".to_string()
            } else {
                format!("field {}", path[..depth].join("."))
            };
            return Err(SourceError::permanent(format!(
                "{what} is {}, not an object, so #{dotted} cannot select a field of it",
                json_kind(raw)
            )));
        }
        let mut fields = serde_json::Deserializer::from_str(raw);
        match (&mut fields).deserialize_map(FieldFinder { key }) {
            Ok(Some(value)) => current = value,
            Ok(None) => {
                return Ok(Lookup::Missing(format!(
                    "the secret's JSON has no key {}",
                    path[..=depth].join(".")
                )));
            }
            Err(e) => {
                return Err(not_json(format!(
                    "invalid JSON at line {} column {}",
                    e.line(),
                    e.column()
                )));
            }
        }
    }
    let raw = current.get().trim();
    if raw == "null" {
        return Ok(Lookup::Missing(format!(
            "key {dotted} is null in the secret's JSON"
        )));
    }
    // One buffer of the final size: the selected field never moves once copied.
    let mut value = SecretBytes::with_capacity(raw.len());
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(escaped) => unescape_json_string(escaped, value.buffer_mut())
            .map_err(|()| not_json(format!("key {dotted} holds an invalid string escape")))?,
        None => value.buffer_mut().extend_from_slice(raw.as_bytes()),
    }
    Ok(Lookup::Found(value))
}

/// What a JSON text is, for messages (never the text itself).
fn json_kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Finds one key of a JSON object, borrowing its value's text from the document.
struct FieldFinder<'k> {
    key: &'k str,
}

impl<'de> Visitor<'de> for FieldFinder<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        // Every entry is read, so a duplicate key gives the last value, as JavaScript's
        // JSON.parse and Python's json do.
        while let Some(matches) = map.next_key_seed(KeyMatches(self.key))? {
            if matches {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Compares an object key with the wanted one without keeping it.
struct KeyMatches<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyMatches<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyMatches<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// Decodes the inside of a JSON string literal (RFC 8259 §7) into `out`, which has room for
/// `escaped.len()` bytes: decoding never lengthens text, so `out` never reallocates.
fn unescape_json_string(escaped: &str, out: &mut SecretBuf) -> Result<(), ()> {
    let bytes = escaped.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..]
            .iter()
            .position(|&b| b == b'\\')
            .unwrap_or(bytes.len() - i);
        out.extend_from_slice(&bytes[i..i + run]);
        i += run;
        if i == bytes.len() {
            break;
        }
        let escape = *bytes.get(i + 1).ok_or(())?;
        i += 2;
        let simple = match escape {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let first = hex4(bytes, i)?;
                i += 4;
                let code = match first {
                    0xD800..=0xDBFF => {
                        if bytes.get(i..i + 2) != Some(b"\\u") {
                            return Err(());
                        }
                        let second = hex4(bytes, i + 2)?;
                        if !(0xDC00..=0xDFFF).contains(&second) {
                            return Err(());
                        }
                        i += 6;
                        0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(()),
                    c => c,
                };
                let c = char::from_u32(code).ok_or(())?;
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                continue;
            }
            _ => return Err(()),
        };
        out.push(simple);
    }
    Ok(())
}

fn hex4(bytes: &[u8], at: usize) -> Result<u32, ()> {
    let digits = bytes.get(at..at + 4).ok_or(())?;
    digits.iter().try_fold(0, |code, &d| {
        Ok(code * 16 + (d as char).to_digit(16).ok_or(())?)
    })
}

#[cfg(test)]
mod tests;

/// How messages name an AWS service's endpoint: "NAME at URL" or "NAME in REGION". The URL is
/// found with the SDK's precedence (explicit setting, the service-specific variable `env_var`,
/// then the global one), for messages only; a profile's per-service endpoint is not looked at.
pub(super) fn service_label(
    name: &str,
    env_var: &str,
    settings: &AwsSettings,
    shared: &aws_config::SdkConfig,
    region: &str,
) -> String {
    let endpoint = settings
        .endpoint_url
        .clone()
        .or_else(|| std::env::var(env_var).ok().filter(|u| !u.is_empty()))
        .or_else(|| shared.endpoint_url().map(str::to_string));
    match endpoint {
        Some(url) => format!("{name} at {url}"),
        None => format!("{name} in {region}"),
    }
}
