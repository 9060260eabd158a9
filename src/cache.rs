//! The secret cache, for slow sources (AWS, `exec:`): per-id `cache_ttl`, off by default so
//! each RUN resolves afresh.
//!
//! It holds only values from the broker's own sources ([`crate::source::ValueScope::Broker`]):
//! the resolver never passes a session-scoped source (`client`) through it, so one build's
//! `--secret` value can never answer another build. Entries are keyed by the id *and* the
//! position in the chain where the cached run of sources starts, so a chain such as
//! `["client", "aws-sm:x"]` still asks each build's own client first.
//!
//! Concurrent requests for one id wait on that id's slot while the first resolves, so they share
//! one fetch (no thundering herd on AWS). Values are held as `Arc<SecretBytes>`: an entry that
//! expires, a sweep, a reload (the whole cache is dropped with its generation) or shutdown drops
//! the cache's reference, and the bytes are zeroized as soon as no answer in flight still uses
//! them. With `stale_on_error`, an expired value is kept that much longer and served only when
//! every source failed *transiently* (timeouts, network) — never when a source says "not found"
//! or "access denied".
//!
//! A minted credential (`aws-credentials:`) bounds its own entry: it is reused only while at
//! least `min_remaining` of its lifetime is left, so a build never gets credentials that expire
//! under it because the cache held them, and a stale answer never outlives the credential.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::secret::SecretBytes;
use crate::source::{Attempt, ChainResult, Minted};

/// How one id may be cached (from its policy rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub ttl: Duration,
    /// How long past expiry a value may still answer when the sources fail transiently.
    pub stale_on_error: Option<Duration>,
    /// A minted credential is served from the cache only while at least this much of its
    /// lifetime is left (`min_remaining`).
    pub min_remaining: Duration,
}

/// `min_remaining` when the policy does not say.
pub const DEFAULT_MIN_REMAINING: Duration = Duration::from_secs(300);

/// A value the cache holds, with where it came from.
struct Entry {
    value: Arc<SecretBytes>,
    /// Index of the source in the chain that produced it.
    source: usize,
    /// What it is, when it is a minted credential.
    minted: Option<Minted>,
    expires: Instant,
    /// After this the entry is dropped even for stale-on-error.
    keep_until: Instant,
}

#[derive(Default)]
struct Slot {
    entry: Option<Entry>,
}

/// What the cache did for one request.
pub enum Cached {
    /// A fresh entry answered; no source was asked.
    Hit {
        value: Arc<SecretBytes>,
        source: usize,
        minted: Option<Minted>,
    },
    /// The sources were asked; what they said, and the value (now cached) if one was found.
    Fetched {
        attempts: Vec<Attempt>,
        served: Option<(usize, Arc<SecretBytes>)>,
        minted: Option<Minted>,
    },
    /// The sources failed transiently and an expired value answered instead.
    Stale {
        attempts: Vec<Attempt>,
        value: Arc<SecretBytes>,
        source: usize,
        minted: Option<Minted>,
        past_expiry: Duration,
    },
    /// Another request held the slot (fetching) until this request's deadline.
    Busy,
}

/// Which run of sources an entry belongs to: the secret id and the index in its chain of the
/// first source of the run.
pub type CacheKey<'a> = (&'a str, usize);

/// Per-key slots. The outer lock is held only to find a slot; the slot's async lock is held
/// across a fetch, which is what makes concurrent requests share it. Every fetch is bounded by
/// the request's deadline (the sources' own lookups stop there), and so is the wait for a
/// slot, so one stuck source cannot hold other requests past their deadline.
#[derive(Default)]
pub struct SecretCache {
    slots: Mutex<HashMap<(String, usize), SharedSlot>>,
}

/// One key's slot, shared by the requests that wait on it.
type SharedSlot = Arc<tokio::sync::Mutex<Slot>>;

impl SecretCache {
    fn slot(&self, (id, first): CacheKey<'_>) -> SharedSlot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry((id.to_string(), first)).or_default().clone()
    }

    /// Answers from a fresh entry, or runs `fetch` (once, however many requests wait) and
    /// caches what it finds. A request that cannot get the slot by `deadline` (another one is
    /// still fetching) gets [`Cached::Busy`].
    pub async fn resolve<F, Fut>(
        &self,
        key: CacheKey<'_>,
        policy: CachePolicy,
        deadline: Instant,
        fetch: F,
    ) -> Cached
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ChainResult>,
    {
        let slot = self.slot(key);
        let Ok(mut slot) = tokio::time::timeout_at(deadline, slot.lock()).await else {
            return Cached::Busy;
        };
        let now = Instant::now();
        if let Some(e) = &slot.entry {
            if now < e.expires {
                return Cached::Hit {
                    value: e.value.clone(),
                    source: e.source,
                    minted: e.minted.clone(),
                };
            }
            if now >= e.keep_until {
                slot.entry = None;
            }
        }
        let chain = fetch().await;
        let now = Instant::now();
        let transient = chain.failed_transiently();
        let ChainResult {
            value,
            attempts,
            minted,
        } = chain;
        if let Some((source, value)) = value {
            let value = Arc::new(value);
            slot.entry = entry_for(&value, source, &minted, policy, now);
            return Cached::Fetched {
                attempts,
                served: Some((source, value)),
                minted,
            };
        }
        if let Some(e) = &slot.entry
            && policy.stale_on_error.is_some()
            && transient
            && now < e.keep_until
        {
            return Cached::Stale {
                value: e.value.clone(),
                source: e.source,
                minted: e.minted.clone(),
                past_expiry: now.saturating_duration_since(e.expires),
                attempts,
            };
        }
        // Expired and not usable: drop it now rather than at the next sweep.
        slot.entry = None;
        Cached::Fetched {
            attempts,
            served: None,
            minted: None,
        }
    }

    /// The slots as they are now, without holding the map's lock while they are looked at.
    fn all_slots(&self) -> Vec<SharedSlot> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Drops every entry past its last useful moment.
    pub fn sweep(&self, now: Instant) {
        for slot in self.all_slots() {
            // A slot busy with a fetch cleans itself up.
            if let Ok(mut s) = slot.try_lock()
                && s.entry.as_ref().is_some_and(|e| now >= e.keep_until)
            {
                s.entry = None;
            }
        }
    }

    /// How many ids hold a value now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.all_slots()
            .iter()
            .filter(|s| s.try_lock().map(|s| s.entry.is_some()).unwrap_or(true))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The entry for a fetched value, or `None` when a minted credential has too little of its
/// lifetime left to be reused at all.
fn entry_for(
    value: &Arc<SecretBytes>,
    source: usize,
    minted: &Option<Minted>,
    policy: CachePolicy,
    now: Instant,
) -> Option<Entry> {
    let stale = policy.stale_on_error.unwrap_or_default();
    // Credentials of unknown expiry (the daemon's own, from its environment) are what the SDK
    // would hand out again: only cache_ttl bounds them.
    let lifetime = minted
        .as_ref()
        .and_then(|m| m.remaining(std::time::SystemTime::now()));
    let (expires, keep_until) = match lifetime {
        None => (now + policy.ttl, now + policy.ttl + stale),
        Some(lifetime) => {
            // The wall clock says how long the credential lives; from here on the cache's own
            // clock counts it down.
            let reusable = lifetime.saturating_sub(policy.min_remaining);
            if reusable.is_zero() {
                return None;
            }
            let expires = now + policy.ttl.min(reusable);
            // Never served stale past the point where the credential itself has expired.
            (expires, (expires + stale).min(now + lifetime))
        }
    };
    Some(Entry {
        value: value.clone(),
        source,
        minted: minted.clone(),
        expires,
        keep_until,
    })
}

#[cfg(test)]
mod tests;
