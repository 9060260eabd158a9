//! Answering one secret request: the policy's decision, the cache, the chain of sources and the
//! conclusion. Shared by the session's Secrets service and `buildbroker resolve`, so the CLI
//! says exactly what a build would get. Mapping answers to gRPC codes is not done here.
//!
//! Values never cross sessions unless the policy shares them: a chain is walked in runs, and
//! only runs of the broker's own sources ([`ValueScope::Broker`]) go through the cache. A
//! session-scoped source (`client`: the build's own `--secret` flags) is asked afresh in its
//! own session every time, outside any lock, so one build's value is never cached for another
//! and a client that never answers holds up nobody but its own build (and that only until the
//! request's `fetch_timeout`).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::Generation;
use crate::cache::{CachePolicy, Cached};
use crate::policy::{SecretDecision, SecretOutcome, conclude_secret, decide_secret};
use crate::secret::SecretBytes;
use crate::source::{
    Attempt, AttemptOutcome, BuildClient, Minted, ResolveContext, SourceError, SourceSpec,
    ValueScope, failed_transiently, resolve_chain,
};
use crate::template::Template;

/// How the cache took part in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Not cached: the id has no `cache_ttl`, or the value came from the build client.
    Off,
    /// Answered from a fresh cached value.
    Hit,
    /// Resolved afresh (and cached if found).
    Miss,
    /// The sources failed transiently; an expired value answered (`stale_on_error`).
    Stale { past_expiry: Duration },
}

/// Where a served value came from.
#[derive(Debug, Clone)]
pub enum ValueOrigin {
    /// The source that produced it (for a cache hit: the one that produced it then).
    Source(SourceSpec),
    /// A template, rendered from these ids, each with where its value came from.
    Template { inputs: Vec<(String, ValueOrigin)> },
}

impl ValueOrigin {
    /// The kind, as the audit log records it.
    pub fn kind(&self) -> &'static str {
        match self {
            ValueOrigin::Source(s) => s.kind(),
            ValueOrigin::Template { .. } => "template",
        }
    }

    /// Whose value it is: a rendered value belongs to a session if any input does.
    pub fn scope(&self) -> ValueScope {
        match self {
            ValueOrigin::Source(s) => s.scope(),
            ValueOrigin::Template { inputs } => {
                if inputs.iter().any(|(_, o)| o.scope() == ValueScope::Session) {
                    ValueScope::Session
                } else {
                    ValueScope::Broker
                }
            }
        }
    }
}

impl std::fmt::Display for ValueOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueOrigin::Source(s) => write!(f, "{s}"),
            ValueOrigin::Template { inputs } => {
                f.write_str("a template of ")?;
                for (i, (id, origin)) in inputs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{id} (from {origin})")?;
                }
                Ok(())
            }
        }
    }
}

/// The answer to one request, with what led to it.
pub enum Answer {
    /// The id is not in the policy and `unknown_secrets = "deny"`.
    Denied,
    Value {
        value: Arc<SecretBytes>,
        /// Where the value came from.
        source: ValueOrigin,
        cache: CacheUse,
        attempts: Vec<Attempt>,
        /// Whether the id is listed in the policy (false: the implicit `client` chain).
        listed: bool,
        /// What the value is, when a source minted it (`aws-credentials:`); never a secret.
        minted: Option<Minted>,
    },
    NotFound {
        attempts: Vec<Attempt>,
    },
    RequiredMissing {
        message: String,
        attempts: Vec<Attempt>,
    },
    Failed {
        message: String,
        attempts: Vec<Attempt>,
    },
    /// A template's input has no value (a template renders whole or not at all).
    InputMissing {
        /// The input id that has no value.
        input: String,
        message: String,
        /// What the input's sources said.
        attempts: Vec<Attempt>,
    },
}

/// One run of a chain: asked directly, or through the cache.
#[derive(Debug, PartialEq, Eq)]
enum Run {
    Direct(Range<usize>),
    Cached(Range<usize>),
}

/// Splits a chain into runs. Without a cache the whole chain is one direct run; with one,
/// consecutive broker-scoped sources form cached runs and each session-scoped source is asked
/// directly.
fn runs(sources: &[SourceSpec], cached: bool) -> Vec<Run> {
    if !cached {
        return vec![Run::Direct(0..sources.len())];
    }
    let mut out = Vec::new();
    let mut start = 0;
    for (i, spec) in sources.iter().enumerate() {
        if spec.scope() == ValueScope::Session {
            if start < i {
                out.push(Run::Cached(start..i));
            }
            out.push(Run::Direct(i..i + 1));
            start = i + 1;
        }
    }
    if start < sources.len() {
        out.push(Run::Cached(start..sources.len()));
    }
    out
}

/// Resolves `id` as the daemon does for a build. `client` is the session's build client (None
/// outside a session).
pub async fn answer(generation: &Generation, id: &str, client: Option<&BuildClient>) -> Answer {
    let deadline = Instant::now() + generation.policy.server.fetch_timeout;
    answer_until(generation, id, client, deadline).await
}

/// [`answer`], with the request's deadline (shared by a template and its inputs).
async fn answer_until(
    generation: &Generation,
    id: &str,
    client: Option<&BuildClient>,
    deadline: Instant,
) -> Answer {
    let policy = &generation.policy;
    let (sources, required, listed) = match decide_secret(policy, id) {
        SecretDecision::Resolve {
            sources,
            required,
            listed,
        } => (sources, required, listed),
        SecretDecision::Render { template } => {
            return render(generation, id, template, client, deadline).await;
        }
        SecretDecision::Deny => return Answer::Denied,
    };
    let ctx = ResolveContext {
        runtime: &generation.sources,
        client,
        deadline,
    };
    let cache_policy = policy.secrets.get(id).and_then(|rule| {
        rule.cache_ttl.map(|ttl| CachePolicy {
            ttl,
            stale_on_error: rule.stale_on_error,
            min_remaining: rule.min_remaining,
        })
    });

    let mut attempts = Vec::with_capacity(sources.len());
    let mut served: Option<(usize, Arc<SecretBytes>)> = None;
    let mut minted: Option<Minted> = None;
    let mut cache = CacheUse::Off;
    // An expired value a cached run offered after failing transiently; served only if nothing
    // later in the chain has a value and every failure was transient.
    let mut stale: Option<(usize, Arc<SecretBytes>, Duration, Option<Minted>)> = None;
    for run in runs(sources, cache_policy.is_some()) {
        match (run, cache_policy) {
            (Run::Direct(range), _) | (Run::Cached(range), None) => {
                let start = range.start;
                let chain = resolve_chain(&sources[range], id, ctx).await;
                attempts.extend(chain.attempts);
                if let Some((i, value)) = chain.value {
                    served = Some((start + i, Arc::new(value)));
                    minted = chain.minted;
                    cache = CacheUse::Off;
                }
            }
            (Run::Cached(range), Some(cp)) => {
                let start = range.start;
                let run_sources = &sources[range];
                let fetch = || resolve_chain(run_sources, id, ctx);
                match generation
                    .cache
                    .resolve((id, start), cp, deadline, fetch)
                    .await
                {
                    Cached::Hit {
                        value,
                        source,
                        minted: m,
                    } => {
                        served = Some((start + source, value));
                        minted = m;
                        cache = CacheUse::Hit;
                    }
                    Cached::Fetched {
                        attempts: a,
                        served: s,
                        minted: m,
                    } => {
                        attempts.extend(a);
                        cache = CacheUse::Miss;
                        served = s.map(|(i, v)| (start + i, v));
                        minted = m;
                    }
                    Cached::Stale {
                        attempts: a,
                        value,
                        source,
                        minted: m,
                        past_expiry,
                    } => {
                        attempts.extend(a);
                        stale.get_or_insert((start + source, value, past_expiry, m));
                    }
                    Cached::Busy => attempts.push(Attempt {
                        source: run_sources[0].clone(),
                        outcome: AttemptOutcome::Failed(SourceError::transient(
                            "another request was still fetching this id when the request's fetch_timeout ran out",
                        )),
                    }),
                }
            }
        }
        if served.is_some() {
            break;
        }
    }
    if served.is_none()
        && let Some((source, value, past_expiry, minted)) = stale
        && failed_transiently(&attempts)
    {
        return Answer::Value {
            value,
            source: ValueOrigin::Source(sources[source].clone()),
            cache: CacheUse::Stale { past_expiry },
            attempts,
            listed,
            minted,
        };
    }
    match conclude_secret(id, required, served.as_ref().map(|(i, _)| *i), &attempts) {
        SecretOutcome::Served { source } => {
            let (_, value) = served.expect("served implies a value");
            Answer::Value {
                value,
                source: ValueOrigin::Source(sources[source].clone()),
                cache,
                attempts,
                listed,
                minted,
            }
        }
        SecretOutcome::NotFound => Answer::NotFound { attempts },
        SecretOutcome::RequiredMissing { message } => Answer::RequiredMissing { message, attempts },
        SecretOutcome::Failed { message } => Answer::Failed { message, attempts },
    }
}

/// Renders a template from its inputs, each answered as a request for that id would be (its
/// own sources, cache and the same build client), within the same deadline.
async fn render(
    generation: &Generation,
    id: &str,
    template: &Template,
    client: Option<&BuildClient>,
    deadline: Instant,
) -> Answer {
    let mut values: Vec<(&str, Arc<SecretBytes>)> = Vec::new();
    let mut inputs = Vec::new();
    for input in template.inputs() {
        // Inputs may themselves be templates (cycles are refused when the policy loads).
        let answered = Box::pin(answer_until(generation, input, client, deadline)).await;
        match answered {
            Answer::Value { value, source, .. } => {
                values.push((input, value));
                inputs.push((input.to_string(), source));
            }
            // Denied cannot happen (inputs are listed ids, checked at load); it is missing too.
            missing @ (Answer::NotFound { .. }
            | Answer::RequiredMissing { .. }
            | Answer::InputMissing { .. }
            | Answer::Denied) => {
                let attempts = match missing {
                    Answer::NotFound { attempts }
                    | Answer::RequiredMissing { attempts, .. }
                    | Answer::InputMissing { attempts, .. } => attempts,
                    _ => Vec::new(),
                };
                let tried = attempts
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Answer::InputMissing {
                    input: input.to_string(),
                    message: format!(
                        "buildbroker: secret {id:?} is rendered from {input:?}, which has no value; tried {tried}"
                    ),
                    attempts,
                };
            }
            Answer::Failed { message, attempts } => {
                return Answer::Failed {
                    message: format!("{message} (an input of the template {id:?})"),
                    attempts,
                };
            }
        }
    }
    let value = template.render(|input| {
        &values
            .iter()
            .find(|(id, _)| *id == input)
            .expect("every input was resolved")
            .1
    });
    Answer::Value {
        value: Arc::new(value),
        source: ValueOrigin::Template { inputs },
        cache: CacheUse::Off,
        attempts: Vec::new(),
        listed: true,
        minted: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(text: &[&str]) -> Vec<SourceSpec> {
        text.iter()
            .map(|t| SourceSpec::parse(t, None).unwrap())
            .collect()
    }

    #[test]
    fn runs_keep_session_sources_out_of_the_cache() {
        let chain = specs(&["env:A", "file:/x", "client", "env:B"]);
        assert_eq!(runs(&chain, false), vec![Run::Direct(0..4)]);
        assert_eq!(
            runs(&chain, true),
            vec![Run::Cached(0..2), Run::Direct(2..3), Run::Cached(3..4)]
        );
        assert_eq!(runs(&specs(&["client"]), true), vec![Run::Direct(0..1)]);
        assert_eq!(
            runs(&specs(&["client", "env:A"]), true),
            vec![Run::Direct(0..1), Run::Cached(1..2)]
        );
    }
}
