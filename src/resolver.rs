//! Answering one secret request: the policy's decision, the cache, the chain of sources and the
//! conclusion. Shared by the session's Secrets service and `buildbroker resolve`, so the CLI
//! says exactly what a build would get. Mapping answers to gRPC codes is not done here.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::Generation;
use crate::cache::{CachePolicy, Cached};
use crate::policy::{SecretDecision, SecretOutcome, conclude_secret, decide_secret};
use crate::secret::SecretBytes;
use crate::source::{Attempt, ClientSecrets, ResolveContext, SourceSpec, resolve_chain};

/// How the cache took part in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// The id has no `cache_ttl`: resolved afresh.
    Off,
    /// Answered from a fresh cached value.
    Hit,
    /// Resolved afresh (and cached if found).
    Miss,
    /// The sources failed transiently; an expired value answered (`stale_on_error`).
    Stale { past_expiry: Duration },
}

/// The answer to one request, with what led to it.
pub enum Answer {
    /// The id is not in the policy and `unknown_secrets = "deny"`.
    Denied,
    Value {
        value: Arc<SecretBytes>,
        /// The source that produced the value (for a cache hit: the one that produced it then).
        source: SourceSpec,
        cache: CacheUse,
        attempts: Vec<Attempt>,
        /// Whether the id is listed in the policy (false: the implicit `client` chain).
        listed: bool,
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
}

/// Resolves `id` as the daemon does for a build. `client` is the build client's own provider
/// (None outside a session).
pub async fn answer(generation: &Generation, id: &str, client: Option<&ClientSecrets>) -> Answer {
    let policy = &generation.policy;
    let (sources, required, listed) = match decide_secret(policy, id) {
        SecretDecision::Resolve {
            sources,
            required,
            listed,
        } => (sources, required, listed),
        SecretDecision::Deny => return Answer::Denied,
    };
    let ctx = ResolveContext {
        runtime: &generation.sources,
        client,
    };
    let cache_policy = policy.secrets.get(id).and_then(|rule| {
        rule.cache_ttl.map(|ttl| CachePolicy {
            ttl,
            stale_on_error: rule.stale_on_error,
        })
    });
    let (attempts, served, cache) = match cache_policy {
        None => {
            let chain = resolve_chain(sources, id, ctx).await;
            (
                chain.attempts,
                chain.value.map(|(i, v)| (i, Arc::new(v))),
                CacheUse::Off,
            )
        }
        Some(cp) => match generation
            .cache
            .resolve(id, cp, || resolve_chain(sources, id, ctx))
            .await
        {
            Cached::Hit { value, source } => (Vec::new(), Some((source, value)), CacheUse::Hit),
            Cached::Fetched { attempts, served } => (attempts, served, CacheUse::Miss),
            Cached::Stale {
                attempts,
                value,
                source,
                past_expiry,
            } => (
                attempts,
                Some((source, value)),
                CacheUse::Stale { past_expiry },
            ),
        },
    };
    let conclusion = match cache {
        // A stale answer is served despite the failures that the attempts record.
        CacheUse::Stale { .. } => SecretOutcome::Served {
            source: served.as_ref().map_or(0, |(i, _)| *i),
        },
        _ => conclude_secret(id, required, served.as_ref().map(|(i, _)| *i), &attempts),
    };
    match conclusion {
        SecretOutcome::Served { source } => {
            let (_, value) = served.expect("served implies a value");
            Answer::Value {
                value,
                source: sources[source].clone(),
                cache,
                attempts,
                listed,
            }
        }
        SecretOutcome::NotFound => Answer::NotFound { attempts },
        SecretOutcome::RequiredMissing { message } => Answer::RequiredMissing { message, attempts },
        SecretOutcome::Failed { message } => Answer::Failed { message, attempts },
    }
}
