//! Where secret values come from: the source URIs of the policy and the chain that tries them.
//!
//! A source either finds the value, finds nothing (so the next source is tried), or fails with an
//! error. Each kind lives in its own module under `source/`. Nothing here may put a value into a
//! message: [`Attempt`]s record *why* a source did not answer, never *what* it answered.

mod client;
mod env;
mod file;

use std::fmt;
use std::path::{Path, PathBuf};

pub use client::ClientSecrets;

use crate::secret::{MAX_SECRET_BYTES, SecretBytes};

/// One parsed source URI from a `sources = [...]` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `env:NAME`: the daemon's environment variable NAME.
    Env(String),
    /// `file:PATH`: a file's whole content (`~` expanded when the policy is loaded).
    File(PathBuf),
    /// `client`: the build client's own provider (`docker buildx build --secret id=…`).
    Client,
}

impl SourceSpec {
    /// Parses one source URI; the error says what forms are expected.
    pub fn parse(text: &str, home: Option<&str>) -> Result<SourceSpec, String> {
        let (scheme, rest) = text.split_once(':').unwrap_or((text, ""));
        match scheme {
            "env" => {
                let valid = !rest.is_empty()
                    && !rest.starts_with(|c: char| c.is_ascii_digit())
                    && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if valid {
                    Ok(SourceSpec::Env(rest.to_string()))
                } else {
                    Err(format!(
                        "expected env:NAME with NAME made of letters, digits and _; got {text:?}"
                    ))
                }
            }
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
            "client" if rest.is_empty() => Ok(SourceSpec::Client),
            "keyring" | "aws-sm" | "exec" => Err(format!(
                "{scheme}: sources are not available in this version of buildbroker yet; use env:, file: or client"
            )),
            _ => Err(format!(
                "unknown source {text:?}; expected env:NAME, file:PATH or client"
            )),
        }
    }

    /// The kind, as the audit log records it.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Env(_) => "env",
            SourceSpec::File(_) => "file",
            SourceSpec::Client => "client",
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Env(n) => write!(f, "env:{n}"),
            SourceSpec::File(p) => write!(f, "file:{}", p.display()),
            SourceSpec::Client => f.write_str("client"),
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
#[error("{0}")]
pub struct SourceError(pub String);

/// Checks the size cap every source shares.
fn within_cap(value: SecretBytes) -> Result<Lookup, SourceError> {
    if value.len() > MAX_SECRET_BYTES {
        return Err(SourceError(format!(
            "value is {} bytes, over the {MAX_SECRET_BYTES}-byte limit that buildx and BuildKit accept",
            value.len()
        )));
    }
    Ok(Lookup::Found(value))
}

/// What the build's session offers to sources (only the `client` source uses it).
#[derive(Default, Clone, Copy)]
pub struct ResolveContext<'a> {
    /// The build client's own secrets provider, inside a session; `None` for `buildbroker resolve`.
    pub client: Option<&'a ClientSecrets>,
}

/// Asks one source for `id`.
pub async fn lookup(
    spec: &SourceSpec,
    id: &str,
    ctx: ResolveContext<'_>,
) -> Result<Lookup, SourceError> {
    match spec {
        SourceSpec::Env(name) => env::lookup(name).and_then(found_within_cap),
        SourceSpec::File(path) => file::lookup(path).await.and_then(found_within_cap),
        SourceSpec::Client => match ctx.client {
            Some(client) => client.lookup(id).await.and_then(found_within_cap),
            None => Ok(Lookup::Missing(
                "no build client (only asked inside a build session)".into(),
            )),
        },
    }
}

fn found_within_cap(l: Lookup) -> Result<Lookup, SourceError> {
    match l {
        Lookup::Found(v) => within_cap(v),
        missing => Ok(missing),
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
    Failed(String),
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            AttemptOutcome::Found => write!(f, "{} (found)", self.source),
            AttemptOutcome::Missing(why) => write!(f, "{} ({why})", self.source),
            AttemptOutcome::Failed(why) => write!(f, "{} (error: {why})", self.source),
        }
    }
}

/// The result of walking a chain: the value (if any) with the index of the source that gave
/// it, and what every source tried said.
pub struct ChainResult {
    pub value: Option<(usize, SecretBytes)>,
    pub attempts: Vec<Attempt>,
}

/// Tries `sources` in order; the first that finds a value wins.
pub async fn resolve_chain(
    sources: &[SourceSpec],
    id: &str,
    ctx: ResolveContext<'_>,
) -> ChainResult {
    let mut attempts = Vec::with_capacity(sources.len());
    for (i, spec) in sources.iter().enumerate() {
        let outcome = match lookup(spec, id, ctx).await {
            Ok(Lookup::Found(value)) => {
                attempts.push(Attempt {
                    source: spec.clone(),
                    outcome: AttemptOutcome::Found,
                });
                return ChainResult {
                    value: Some((i, value)),
                    attempts,
                };
            }
            Ok(Lookup::Missing(why)) => AttemptOutcome::Missing(why),
            Err(e) => AttemptOutcome::Failed(e.0),
        };
        attempts.push(Attempt {
            source: spec.clone(),
            outcome,
        });
    }
    ChainResult {
        value: None,
        attempts,
    }
}

#[cfg(test)]
mod tests;
