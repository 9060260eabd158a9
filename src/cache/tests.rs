//! Cache behaviour on tokio's paused clock: expiry, stale-on-error, sharing of in-flight
//! fetches, and that dropped entries release (and so zeroize) their values.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::source::{AttemptOutcome, SourceError, SourceSpec};

const TTL: Duration = Duration::from_secs(60);

fn found(v: &str) -> ChainResult {
    ChainResult {
        value: Some((0, SecretBytes::new(v.as_bytes().to_vec()))),
        attempts: vec![Attempt {
            source: SourceSpec::Env("X".into()),
            outcome: AttemptOutcome::Found,
        }],
        minted: None,
    }
}

fn failing(transient: bool) -> ChainResult {
    let e = if transient {
        SourceError::transient("connection refused")
    } else {
        SourceError::permanent("access denied")
    };
    ChainResult {
        value: None,
        attempts: vec![Attempt {
            source: SourceSpec::Env("X".into()),
            outcome: AttemptOutcome::Failed(e),
        }],
        minted: None,
    }
}

fn missing() -> ChainResult {
    ChainResult {
        value: None,
        attempts: vec![Attempt {
            source: SourceSpec::Env("X".into()),
            outcome: AttemptOutcome::Missing("not set".into()),
        }],
        minted: None,
    }
}

/// A deadline no test reaches.
fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

fn value_of(c: &Cached) -> Option<Vec<u8>> {
    match c {
        Cached::Hit { value, .. } | Cached::Stale { value, .. } => Some(value.expose().to_vec()),
        Cached::Fetched { served, .. } => served.as_ref().map(|(_, v)| v.expose().to_vec()),
        Cached::Busy => None,
    }
}

#[tokio::test(start_paused = true)]
async fn fresh_entries_answer_without_fetching_until_the_ttl() {
    let cache = SecretCache::default();
    let policy = CachePolicy {
        min_remaining: DEFAULT_MIN_REMAINING,
        ttl: TTL,
        stale_on_error: None,
    };
    let fetches = AtomicUsize::new(0);
    let fetch = |v: &'static str| {
        fetches.fetch_add(1, Ordering::SeqCst);
        async move { found(v) }
    };
    let first = cache
        .resolve(("id", 0), policy, far(), || fetch("one"))
        .await;
    assert!(matches!(first, Cached::Fetched { .. }));
    tokio::time::advance(TTL - Duration::from_millis(1)).await;
    let second = cache
        .resolve(("id", 0), policy, far(), || fetch("two"))
        .await;
    assert!(matches!(second, Cached::Hit { .. }));
    assert_eq!(value_of(&second).unwrap(), b"one");
    tokio::time::advance(Duration::from_millis(1)).await;
    let third = cache
        .resolve(("id", 0), policy, far(), || fetch("three"))
        .await;
    assert!(
        matches!(third, Cached::Fetched { .. }),
        "expired at exactly the TTL"
    );
    assert_eq!(value_of(&third).unwrap(), b"three");
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn expired_entries_release_their_value() {
    let cache = SecretCache::default();
    let policy = CachePolicy {
        min_remaining: DEFAULT_MIN_REMAINING,
        ttl: TTL,
        stale_on_error: None,
    };
    let weak = match cache
        .resolve(("id", 0), policy, far(), || async { found("v") })
        .await
    {
        Cached::Fetched {
            served: Some((_, v)),
            ..
        } => Arc::downgrade(&v),
        _ => panic!("expected a fetched value"),
    };
    assert!(
        weak.upgrade().is_some(),
        "the cache holds the value while fresh"
    );
    tokio::time::advance(TTL).await;
    cache.sweep(Instant::now());
    assert!(
        weak.upgrade().is_none(),
        "after expiry the SecretBytes was dropped, and so zeroized"
    );
    assert!(cache.is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_cache_releases_every_value() {
    let cache = SecretCache::default();
    let policy = CachePolicy {
        min_remaining: DEFAULT_MIN_REMAINING,
        ttl: TTL,
        stale_on_error: Some(TTL),
    };
    let mut weaks = Vec::new();
    for id in ["a", "b", "c"] {
        if let Cached::Fetched {
            served: Some((_, v)),
            ..
        } = cache
            .resolve((id, 0), policy, far(), || async { found("v") })
            .await
        {
            weaks.push(Arc::downgrade(&v));
        }
    }
    assert_eq!(cache.len(), 3);
    drop(cache); // what a reload or shutdown does to the old generation
    assert!(weaks.iter().all(|w| w.upgrade().is_none()));
}

#[tokio::test(start_paused = true)]
async fn stale_value_answers_only_transient_failures_within_the_window() {
    let cache = SecretCache::default();
    let policy = CachePolicy {
        min_remaining: DEFAULT_MIN_REMAINING,
        ttl: TTL,
        stale_on_error: Some(Duration::from_secs(300)),
    };
    cache
        .resolve(("id", 0), policy, far(), || async { found("old") })
        .await;
    tokio::time::advance(TTL + Duration::from_secs(10)).await;

    match cache
        .resolve(("id", 0), policy, far(), || async { failing(true) })
        .await
    {
        Cached::Stale {
            value,
            past_expiry,
            attempts,
            ..
        } => {
            assert_eq!(value.expose(), b"old");
            assert_eq!(past_expiry, Duration::from_secs(10));
            assert_eq!(
                attempts.len(),
                1,
                "the failure is reported for the audit record"
            );
        }
        _ => panic!("a transient failure within the window serves the stale value"),
    }
    assert!(
        value_of(
            &cache
                .resolve(("id", 0), policy, far(), || async { failing(false) })
                .await
        )
        .is_none(),
        "permanent failure: no stale value"
    );
}

#[tokio::test(start_paused = true)]
async fn not_found_drops_a_stale_value() {
    let cache = SecretCache::default();
    let policy = CachePolicy {
        min_remaining: DEFAULT_MIN_REMAINING,
        ttl: TTL,
        stale_on_error: Some(Duration::from_secs(300)),
    };
    cache
        .resolve(("id", 0), policy, far(), || async { found("old") })
        .await;
    tokio::time::advance(TTL).await;
    assert!(
        value_of(
            &cache
                .resolve(("id", 0), policy, far(), || async { missing() })
                .await
        )
        .is_none()
    );
    // The secret was deleted upstream: even a later transient failure must not resurrect it.
    assert!(
        value_of(
            &cache
                .resolve(("id", 0), policy, far(), || async { failing(true) })
                .await
        )
        .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn stale_window_ends() {
    let cache = SecretCache::default();
    let policy = CachePolicy {
        min_remaining: DEFAULT_MIN_REMAINING,
        ttl: TTL,
        stale_on_error: Some(Duration::from_secs(300)),
    };
    cache
        .resolve(("id", 0), policy, far(), || async { found("old") })
        .await;
    tokio::time::advance(TTL + Duration::from_secs(300)).await;
    assert!(
        value_of(
            &cache
                .resolve(("id", 0), policy, far(), || async { failing(true) })
                .await
        )
        .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_one_fetch() {
    let cache = Arc::new(SecretCache::default());
    let policy = CachePolicy {
        min_remaining: DEFAULT_MIN_REMAINING,
        ttl: TTL,
        stale_on_error: None,
    };
    let fetches = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            let fetches = fetches.clone();
            tokio::spawn(async move {
                let c = cache
                    .resolve(("id", 0), policy, far(), || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(2)).await; // a slow AWS call
                        found("shared")
                    })
                    .await;
                value_of(&c).unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), b"shared");
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "100 concurrent requests, one fetch"
    );
}

#[tokio::test(start_paused = true)]
async fn different_ids_do_not_wait_for_each_other() {
    let cache = Arc::new(SecretCache::default());
    let policy = CachePolicy {
        min_remaining: DEFAULT_MIN_REMAINING,
        ttl: TTL,
        stale_on_error: None,
    };
    let slow = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .resolve(("slow", 0), policy, far(), || async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    found("s")
                })
                .await;
        })
    };
    tokio::task::yield_now().await;
    let started = Instant::now();
    cache
        .resolve(("fast", 0), policy, far(), || async { found("f") })
        .await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    slow.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_at_its_deadline_while_a_fetch_holds_the_slot() {
    let cache = Arc::new(SecretCache::default());
    let policy = CachePolicy {
        min_remaining: DEFAULT_MIN_REMAINING,
        ttl: TTL,
        stale_on_error: None,
    };
    let slow = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .resolve(("id", 0), policy, far(), || async {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    found("late")
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    let started = Instant::now();
    let waited = cache
        .resolve(
            ("id", 0),
            policy,
            started + Duration::from_secs(5),
            || async { found("never asked") },
        )
        .await;
    assert!(matches!(waited, Cached::Busy));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    // Another run of the same id's chain has its own slot and is not held up.
    let other = cache
        .resolve(("id", 2), policy, far(), || async { found("other run") })
        .await;
    assert_eq!(value_of(&other).unwrap(), b"other run");
    assert_eq!(value_of(&slow.await.unwrap()).unwrap(), b"late");
}

fn minted(v: &str, lifetime: Duration) -> ChainResult {
    let mut chain = found(v);
    chain.minted = Some(Minted {
        role: None,
        expires: Some(std::time::SystemTime::now() + lifetime),
        key_id_last4: "ABCD".into(),
    });
    chain
}

#[tokio::test(start_paused = true)]
async fn a_minted_credential_is_reused_only_while_min_remaining_is_left() {
    let cache = SecretCache::default();
    let policy = CachePolicy {
        ttl: Duration::from_secs(3600),
        stale_on_error: Some(Duration::from_secs(3600)),
        min_remaining: Duration::from_secs(300),
    };
    // Lives 15 minutes: reusable for 10 of them although cache_ttl says an hour.
    let first = cache
        .resolve(("aws", 0), policy, far(), || async {
            minted("one", Duration::from_secs(900))
        })
        .await;
    assert!(matches!(
        first,
        Cached::Fetched {
            minted: Some(_),
            ..
        }
    ));
    tokio::time::advance(Duration::from_secs(599)).await;
    let second = cache
        .resolve(("aws", 0), policy, far(), || async {
            minted("two", Duration::from_secs(900))
        })
        .await;
    assert!(matches!(&second, Cached::Hit { minted: Some(m), .. } if m.key_id_last4 == "ABCD"));
    assert_eq!(value_of(&second).unwrap(), b"one");
    tokio::time::advance(Duration::from_secs(1)).await;
    let third = cache
        .resolve(("aws", 0), policy, far(), || async {
            minted("three", Duration::from_secs(900))
        })
        .await;
    assert_eq!(
        value_of(&third).unwrap(),
        b"three",
        "10 minutes in: minted anew"
    );
    // Past the credential's own expiry, a transient failure gets no stale answer.
    tokio::time::advance(Duration::from_secs(901)).await;
    let fourth = cache
        .resolve(("aws", 0), policy, far(), || async { failing(true) })
        .await;
    assert!(
        matches!(fourth, Cached::Fetched { served: None, .. }),
        "an expired credential is never served stale"
    );
}

#[tokio::test(start_paused = true)]
async fn a_credential_with_less_than_min_remaining_left_is_not_cached() {
    let cache = SecretCache::default();
    let policy = CachePolicy {
        ttl: Duration::from_secs(3600),
        stale_on_error: None,
        min_remaining: Duration::from_secs(1200),
    };
    let fetches = AtomicUsize::new(0);
    for _ in 0..2 {
        let got = cache
            .resolve(("aws", 0), policy, far(), || {
                fetches.fetch_add(1, Ordering::SeqCst);
                async { minted("v", Duration::from_secs(900)) }
            })
            .await;
        assert_eq!(value_of(&got).unwrap(), b"v", "still served");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "never reused");
    assert!(cache.is_empty());
}
