//! Where secret values come from: the source URIs of the policy and the chain that tries them.
//!
//! A source either finds the value, finds nothing (so the next source is tried), or fails with an
//! error. Each kind lives in its own module under `source/`; [`SourceRuntime`] holds what they
//! share between requests (backend choices, timeouts, SDK clients). Nothing here may put a value
//! into a message: [`Attempt`]s record *why* a source did not answer, never *what* it answered.

mod aws_credentials;
mod aws_sm;
mod client;
mod client_env;
mod env;
mod exec;
pub(crate) mod file;
pub mod keyring;
mod slots;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use aws_credentials::{AwsCredentialsSpec, CredentialsFormat, Minted};
pub use aws_sm::{AwsSettings, AwsSmSpec, check_endpoint_url, check_region};
pub use client::ClientSecrets;
pub use client_env::{AcceptedAt, ClientProcess};
pub use exec::ExecSpec;
pub use keyring::{KeyringBackend, KeyringSpec};

use crate::secret::{MAX_SECRET_BYTES, SecretBytes};

/// One parsed source URI from a `sources = [...]` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `env:NAME`: the daemon's environment variable NAME.
    Env(String),
    /// `file:PATH`: a file's whole content (`~` expanded when the policy is loaded).
    File(PathBuf),
    /// `keyring:SERVICE/ACCOUNT`: the OS keyring (Secret Service or the kernel keyring).
    Keyring(KeyringSpec),
    /// `exec:PROGRAM ARG…`: a program's stdout, run without a shell.
    Exec(ExecSpec),
    /// `aws-sm:NAME_OR_ARN[?options][#key.path]`: a secret from AWS Secrets Manager.
    AwsSm(AwsSmSpec),
    /// `aws-credentials:[?role_arn=…]`: short-lived AWS credentials minted per request.
    AwsCredentials(AwsCredentialsSpec),
    /// `client`: the build client's own provider (`docker buildx build --secret id=…`).
    Client,
    /// `client-env:NAME`: the build client's environment variable NAME.
    ClientEnv(String),
}

impl SourceSpec {
    /// Parses one source URI; the error says what forms are expected.
    pub fn parse(text: &str, home: Option<&str>) -> Result<SourceSpec, String> {
        let (scheme, rest) = text.split_once(':').unwrap_or((text, ""));
        let variable = |make: fn(String) -> SourceSpec| {
            let valid = !rest.is_empty()
                && !rest.starts_with(|c: char| c.is_ascii_digit())
                && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if valid {
                Ok(make(rest.to_string()))
            } else {
                Err(format!(
                    "expected {scheme}:NAME with NAME made of letters, digits and _; got {text:?}"
                ))
            }
        };
        match scheme {
            "env" => variable(SourceSpec::Env),
            "client-env" => variable(SourceSpec::ClientEnv),
            "file" => {
                if rest.is_empty() {
                    return Err(format!("expected file:PATH; got {text:?}"));
                }
                let path = expand_home(rest, home);
                if path.is_absolute() {
                    Ok(SourceSpec::File(path))
                } else {
                    Err(format!(
                        "expected an absolute path or one starting with ~/ after file:; got {text:?}"
                    ))
                }
            }
            "keyring" => KeyringSpec::parse(rest).map(SourceSpec::Keyring),
            "exec" => ExecSpec::parse(rest, home).map(SourceSpec::Exec),
            "aws-sm" => AwsSmSpec::parse(rest).map(SourceSpec::AwsSm),
            "aws-credentials" => AwsCredentialsSpec::parse(rest).map(SourceSpec::AwsCredentials),
            "client" if rest.is_empty() => Ok(SourceSpec::Client),
            _ => Err(format!(
                "unknown source {text:?}; expected env:NAME, client-env:NAME, file:PATH, keyring:SERVICE/ACCOUNT, aws-sm:NAME_OR_ARN, aws-credentials:[?options], exec:PROGRAM ARG… or client"
            )),
        }
    }

    /// Whose value this source gives: the broker's, shared by every build the policy allows,
    /// or the build client's own, which belongs to the one session that supplied it.
    pub fn scope(&self) -> ValueScope {
        match self {
            SourceSpec::Client | SourceSpec::ClientEnv(_) => ValueScope::Session,
            _ => ValueScope::Broker,
        }
    }

    /// The kind, as the audit log records it.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Env(_) => "env",
            SourceSpec::File(_) => "file",
            SourceSpec::Keyring(_) => "keyring",
            SourceSpec::Exec(_) => "exec",
            SourceSpec::AwsSm(_) => "aws-sm",
            SourceSpec::AwsCredentials(_) => "aws-credentials",
            SourceSpec::Client => "client",
            SourceSpec::ClientEnv(_) => "client-env",
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Env(n) => write!(f, "env:{n}"),
            SourceSpec::File(p) => write!(f, "file:{}", p.display()),
            SourceSpec::Keyring(k) => write!(f, "keyring:{k}"),
            SourceSpec::Exec(e) => write!(f, "exec:{e}"),
            SourceSpec::AwsSm(a) => write!(f, "aws-sm:{a}"),
            SourceSpec::AwsCredentials(a) => write!(f, "aws-credentials:{a}"),
            SourceSpec::Client => f.write_str("client"),
            SourceSpec::ClientEnv(n) => write!(f, "client-env:{n}"),
        }
    }
}

/// Whose value a source gives, which decides where it may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueScope {
    /// From the broker's own sources (environment, files, keyring, programs, AWS): any session
    /// the policy serves the id to may get it, and it may be cached for all of them.
    Broker,
    /// From the build client of one session (its `--secret` flags): only that session may get
    /// it. Never cached, never served to another session.
    Session,
}

impl ValueScope {
    /// As the audit log records it (`value_owner`).
    pub fn as_str(self) -> &'static str {
        match self {
            ValueScope::Broker => "broker",
            ValueScope::Session => "session",
        }
    }
}

/// `~` and `~/x` become the home directory; anything else is returned as it is.
pub fn expand_home(path: &str, home: Option<&str>) -> PathBuf {
    match (path, home) {
        ("~", Some(h)) => PathBuf::from(h),
        (p, Some(h)) if p.starts_with("~/") => Path::new(h).join(&p[2..]),
        (p, _) => PathBuf::from(p),
    }
}

/// What one source said.
pub enum Lookup {
    Found(SecretBytes),
    /// Nothing here; the reason is shown to users ("not set", "no such file").
    Missing(String),
}

/// A source that failed (as opposed to one that simply has no value). The message never
/// contains the value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub message: String,
    /// A fault that may pass (timeout, network, throttling): a cache may serve a stale value.
    pub transient: bool,
}

impl SourceError {
    /// A failure that will not fix itself (permissions, a malformed value, access denied).
    pub fn permanent(message: impl Into<String>) -> Self {
        SourceError {
            message: message.into(),
            transient: false,
        }
    }

    /// A failure that may pass on its own (timeouts, unreachable services).
    pub fn transient(message: impl Into<String>) -> Self {
        SourceError {
            message: message.into(),
            transient: true,
        }
    }
}

/// Settings the sources share, from the policy's `[keyring]`, `[exec]`, `[file]` and `[aws]`
/// tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSettings {
    pub keyring_backend: KeyringBackend,
    /// Bound on every keyring call (a D-Bus peer that never answers must not hang a build).
    pub keyring_timeout: Duration,
    /// How long an `exec:` program may run before it is killed.
    pub exec_timeout: Duration,
    /// `[file] allow_foreign`: `file:` paths a root daemon reads although another user owns
    /// (or could replace) them.
    pub file_allow_foreign: Vec<PathBuf>,
    /// Region, endpoint, profile and time limits for `aws-sm:` sources.
    pub aws: AwsSettings,
    /// How many fetches of one slow kind (`exec`, `aws-sm`, `keyring`) may run at once
    /// (`[limits] source_fetches`); more wait for a slot.
    pub fetches_per_kind: usize,
}

impl Default for SourceSettings {
    fn default() -> Self {
        SourceSettings {
            keyring_backend: KeyringBackend::Auto,
            keyring_timeout: keyring::DEFAULT_TIMEOUT,
            exec_timeout: Duration::from_secs(10),
            file_allow_foreign: Vec::new(),
            aws: AwsSettings::default(),
            fetches_per_kind: 16,
        }
    }
}

/// What sources share between requests: settings and lazily made clients. One per policy; a
/// reload makes a new one.
#[derive(Default)]
pub struct SourceRuntime {
    pub settings: SourceSettings,
    /// The shared Secret Service connection and backend choice.
    pub keyring: keyring::KeyringRuntime,
    /// The AWS SDK configuration and one Secrets Manager client per region, made on first use.
    aws: aws_sm::AwsClients,
    /// One STS client per region for `aws-credentials:`, from the same SDK configuration.
    aws_sts: aws_credentials::StsClients,
    /// `[limits] source_fetches`: concurrent fetches per slow kind.
    fetch_slots: slots::FetchSlots,
}

impl SourceRuntime {
    pub fn new(settings: SourceSettings) -> Self {
        SourceRuntime {
            fetch_slots: slots::FetchSlots::new(settings.fetches_per_kind),
            settings,
            keyring: keyring::KeyringRuntime::default(),
            aws: aws_sm::AwsClients::default(),
            aws_sts: aws_credentials::StsClients::default(),
        }
    }
}

/// Checks the size cap every source shares.
fn within_cap(value: SecretBytes) -> Result<Lookup, SourceError> {
    if value.len() > MAX_SECRET_BYTES {
        return Err(SourceError::permanent(format!(
            "value is {} bytes, over the {MAX_SECRET_BYTES}-byte limit that buildx and BuildKit accept",
            value.len()
        )));
    }
    Ok(Lookup::Found(value))
}

/// The build client of one session: what its session-scoped sources read. Nothing here is
/// shared between sessions, and values read through it belong to its session alone.
pub struct BuildClient {
    /// Its own secrets provider (`--secret` flags), for `client`.
    pub secrets: ClientSecrets,
    /// Its process, pinned when it connected, for `client-env:`.
    pub process: std::sync::Arc<ClientProcess>,
}

/// What a request offers to sources.
#[derive(Clone, Copy)]
pub struct ResolveContext<'a> {
    pub runtime: &'a SourceRuntime,
    /// The session's build client; `None` for `buildbroker resolve` and outside sessions.
    pub client: Option<&'a BuildClient>,
    /// When the request gives up (`[server] fetch_timeout` after it arrived): a source still
    /// busy then counts as a transient failure and the chain stops there.
    pub deadline: tokio::time::Instant,
}

impl<'a> ResolveContext<'a> {
    /// Outside a build session (held ssh keys, tests, benchmarks): no build client, and no
    /// deadline beyond each source's own timeout.
    pub fn without_client(runtime: &'a SourceRuntime) -> Self {
        ResolveContext {
            runtime,
            client: None,
            deadline: tokio::time::Instant::now() + Duration::from_secs(365 * 86_400),
        }
    }
}

/// Asks one source for `id`.
pub async fn lookup(
    spec: &SourceSpec,
    id: &str,
    ctx: ResolveContext<'_>,
) -> Result<Lookup, SourceError> {
    lookup_minted(spec, id, ctx).await.map(|(lookup, _)| lookup)
}

/// [`lookup`], with what the value is when the source minted it (`aws-credentials:`).
async fn lookup_minted(
    spec: &SourceSpec,
    id: &str,
    ctx: ResolveContext<'_>,
) -> Result<(Lookup, Option<Minted>), SourceError> {
    let settings = &ctx.runtime.settings;
    let mut minted = None;
    let _slot = ctx.runtime.fetch_slots.acquire(spec).await;
    let started = std::time::Instant::now();
    // Every lookup that awaits more than a blocking-pool hop is boxed: the AWS SDK's, zbus's,
    // a child process's and tonic's futures are kilobytes, and an unboxed arm makes every
    // caller's future as big as the largest one, so each GetSecret (a task hyper spawns per
    // call) copied and cleared ~13 KiB even for `env:` (issue 14, docs/benchmarks.md). Those
    // lookups cost 100 µs to seconds; one allocation is nothing to them.
    let result = match spec {
        SourceSpec::Env(name) => env::lookup(name),
        SourceSpec::File(path) => file::lookup(path, &settings.file_allow_foreign).await,
        SourceSpec::Keyring(k) => Box::pin(ctx.runtime.keyring.lookup(k, settings)).await,
        SourceSpec::Exec(e) => Box::pin(exec::lookup(e, id, settings.exec_timeout)).await,
        SourceSpec::AwsSm(a) => Box::pin(aws_sm::lookup(a, &settings.aws, &ctx.runtime.aws)).await,
        SourceSpec::AwsCredentials(a) => Box::pin(aws_credentials::lookup(
            a,
            &settings.aws,
            &ctx.runtime.aws,
            &ctx.runtime.aws_sts,
        ))
        .await
        .map(|(value, m)| {
            minted = Some(m);
            Lookup::Found(value)
        }),
        SourceSpec::Client => match ctx.client {
            Some(client) => Box::pin(client.secrets.lookup(id)).await,
            None => Ok(Lookup::Missing(
                "asked of the build client's --secret flags at build time".into(),
            )),
        },
        SourceSpec::ClientEnv(name) => {
            Box::pin(client_env::lookup(
                ctx.client.map(|c| c.process.clone()),
                name,
            ))
            .await
        }
    };
    crate::metrics::source_lookup(spec.kind(), started, &result);
    match result? {
        Lookup::Found(v) => within_cap(v).map(|found| (found, minted)),
        missing => Ok((missing, None)),
    }
}

/// What happened at one source in a chain (for errors, `resolve` and the audit log).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub source: SourceSpec,
    pub outcome: AttemptOutcome,
}

#[derive(Debug, Clone)]
pub enum AttemptOutcome {
    Found,
    Missing(String),
    Failed(SourceError),
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            AttemptOutcome::Found => write!(f, "{} (found)", self.source),
            AttemptOutcome::Missing(why) => write!(f, "{} ({why})", self.source),
            AttemptOutcome::Failed(e) => write!(f, "{} (error: {e})", self.source),
        }
    }
}

impl Attempt {
    /// The attempt as a build's output shows it under `build_errors = "brief"`: the source's
    /// kind and a reason class, never its path, ARN or a program's output.
    pub fn brief(&self) -> String {
        let class = match &self.outcome {
            AttemptOutcome::Found => "found",
            AttemptOutcome::Missing(_) => "not found",
            AttemptOutcome::Failed(e) if e.transient => "unavailable",
            AttemptOutcome::Failed(_) => "error",
        };
        format!("{} ({class})", self.source.kind())
    }
}

/// The result of walking a chain: the value (if any) with the index of the source that gave
/// it, and what every source tried said.
pub struct ChainResult {
    pub value: Option<(usize, SecretBytes)>,
    pub attempts: Vec<Attempt>,
    /// What the value is, when a source minted it (its expiry bounds any cache entry).
    pub minted: Option<Minted>,
}

impl ChainResult {
    /// Whether every failure in the chain may pass on its own (and at least one happened).
    pub fn failed_transiently(&self) -> bool {
        failed_transiently(&self.attempts)
    }
}

/// Whether every failure among `attempts` may pass on its own (and at least one happened).
pub fn failed_transiently(attempts: &[Attempt]) -> bool {
    let mut failures = attempts.iter().filter_map(|a| match &a.outcome {
        AttemptOutcome::Failed(e) => Some(e.transient),
        _ => None,
    });
    failures
        .next()
        .is_some_and(|first| first && failures.all(|t| t))
}

/// Tries `sources` in order; the first that finds a value wins. A source still busy at the
/// context's deadline fails transiently and ends the chain (there is no time left to try more).
pub async fn resolve_chain(
    sources: &[SourceSpec],
    id: &str,
    ctx: ResolveContext<'_>,
) -> ChainResult {
    let mut attempts = Vec::with_capacity(sources.len());
    for (i, spec) in sources.iter().enumerate() {
        let Ok(result) = tokio::time::timeout_at(ctx.deadline, lookup_minted(spec, id, ctx)).await
        else {
            attempts.push(Attempt {
                source: spec.clone(),
                outcome: AttemptOutcome::Failed(SourceError::transient(
                    "no answer before the request's fetch_timeout ran out",
                )),
            });
            break;
        };
        let (value, minted) = match result {
            Ok((Lookup::Found(value), minted)) => (value, minted),
            Ok((Lookup::Missing(why), _)) => {
                tracing::debug!(id, source = %spec, %why, "source has no value");
                attempts.push(Attempt {
                    source: spec.clone(),
                    outcome: AttemptOutcome::Missing(why),
                });
                continue;
            }
            Err(e) => {
                attempts.push(Attempt {
                    source: spec.clone(),
                    outcome: AttemptOutcome::Failed(e),
                });
                continue;
            }
        };
        attempts.push(Attempt {
            source: spec.clone(),
            outcome: AttemptOutcome::Found,
        });
        return ChainResult {
            value: Some((i, value)),
            attempts,
            minted,
        };
    }
    ChainResult {
        value: None,
        attempts,
        minted: None,
    }
}

#[cfg(test)]
mod tests;
