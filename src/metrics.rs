//! Prometheus metrics: counters and histograms the daemon's decision points update, rendered
//! by [`crate::health`] at `/metrics` when `[server] metrics_listen` is set.
//!
//! Off by default: until [`enable`] runs, every hook is a check of an empty `OnceLock` and
//! nothing is allocated. Labels are bounded so a build cannot grow the series without limit:
//! a secret or ssh id appears only if the policy lists it, every other id is counted under
//! [`UNLISTED`]; every other label is a fixed word (decision, source kind, cache result).
//! Never a value, a path, a peer or a session UUID: those belong in the audit log.

use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::audit::{SecretEvent, SshEvent};
use crate::config::Policy;
use crate::source::{Lookup, SourceError};

/// The `id` label of every id the policy does not list.
pub const UNLISTED: &str = "_unlisted";

/// The content type of [`render`]'s output (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabels {
    id: String,
    decision: &'static str,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    id: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SshLabels {
    id: String,
    via: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the daemon keeps, and the ids that may appear as label values.
pub struct Metrics {
    registry: Registry,
    connections: Counter,
    sessions_open: Gauge,
    sessions: Counter,
    secret_requests: Family<SecretLabels, Counter>,
    secret_cache: Family<CacheLabels, Counter>,
    ssh_signs: Family<SshLabels, Counter>,
    source_lookups: HistogramFamily<SourceLabels>,
    errors: Family<KindLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    client_bytes_received: Counter,
    client_bytes_sent: Counter,
    secret_pages: Gauge,
    secret_pages_unlocked: Gauge,
    /// The secret and ssh ids of the policy in force (and of earlier ones: a series, once
    /// made, stays until restart, so the set of series stays bounded by what policies listed).
    listed: RwLock<ListedIds>,
}

#[derive(Default)]
struct ListedIds {
    secrets: HashSet<String>,
    ssh: HashSet<String>,
}

fn source_histogram() -> Histogram {
    // 10 µs … ~5 s: env/file answers sit at the bottom, keyrings, programs and AWS above.
    Histogram::new(exponential_buckets(0.00001, 4.0, 10))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("buildbroker");
        let m = Metrics {
            connections: Counter::default(),
            sessions_open: Gauge::default(),
            sessions: Counter::default(),
            secret_requests: Family::default(),
            secret_cache: Family::default(),
            ssh_signs: Family::default(),
            source_lookups: Family::new_with_constructor(source_histogram),
            errors: Family::default(),
            reloads: Family::default(),
            client_bytes_received: Counter::default(),
            client_bytes_sent: Counter::default(),
            secret_pages: Gauge::default(),
            secret_pages_unlocked: Gauge::default(),
            listed: RwLock::new(ListedIds::default()),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Connections accepted on the Docker Engine API listeners",
            m.connections.clone(),
        );
        registry.register(
            "sessions_open",
            "BuildKit sessions being intercepted now",
            m.sessions_open.clone(),
        );
        registry.register(
            "sessions",
            "BuildKit sessions intercepted since start",
            m.sessions.clone(),
        );
        registry.register(
            "secret_requests",
            "GetSecret requests by policy id (unlisted ids as _unlisted), decision and the kind of source that answered",
            m.secret_requests.clone(),
        );
        registry.register(
            "secret_cache",
            "Cache results for ids with cache_ttl: hit, miss or stale",
            m.secret_cache.clone(),
        );
        registry.register(
            "ssh_signs",
            "Sign requests to managed ssh ids by id, way in (session or socket) and decision",
            m.ssh_signs.clone(),
        );
        registry.register(
            "source_lookup_duration_seconds",
            "Time one secret source took to answer, by source kind and outcome (found, missing, error)",
            m.source_lookups.clone(),
        );
        registry.register(
            "errors",
            "Errors by kind: secret_required_missing, secret_failed, accept, reload_rejected",
            m.errors.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy reloads (SIGHUP) by result",
            m.reloads.clone(),
        );
        registry.register(
            "client_bytes_received",
            "Bytes read from build clients on every listener (requests, build contexts, session traffic), before TLS is removed for tcp clients",
            m.client_bytes_received.clone(),
        );
        registry.register(
            "client_bytes_sent",
            "Bytes written to build clients on every listener (responses, exports, session traffic)",
            m.client_bytes_sent.clone(),
        );
        registry.register(
            "secret_pages",
            "Memory pages set aside for secret values (kept out of core files; pooled pages stay mapped)",
            m.secret_pages.clone(),
        );
        registry.register(
            "secret_pages_unlocked",
            "Secret pages mlock refused (RLIMIT_MEMLOCK): these may be written to swap",
            m.secret_pages_unlocked.clone(),
        );
        Metrics { registry, ..m }
    }

    fn secret_label(&self, id: &str) -> String {
        let listed = self.listed.read().unwrap_or_else(|p| p.into_inner());
        label(&listed.secrets, id)
    }

    fn ssh_label(&self, id: &str) -> String {
        let listed = self.listed.read().unwrap_or_else(|p| p.into_inner());
        label(&listed.ssh, id)
    }
}

fn label(listed: &HashSet<String>, id: &str) -> String {
    if listed.contains(id) {
        id.to_string()
    } else {
        UNLISTED.to_string()
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Turns metrics on for this process (idempotent).
pub fn enable() {
    METRICS.get_or_init(Metrics::new);
}

fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// The metrics in the Prometheus (OpenMetrics) text format; empty when metrics are off.
pub fn render() -> String {
    let mut out = String::new();
    if let Some(m) = get() {
        let pages = crate::secret::page_stats();
        m.secret_pages.set(pages.mapped as i64);
        m.secret_pages_unlocked.set(pages.unlocked as i64);
    }
    if let Some(m) = get()
        && let Err(e) = prometheus_client::encoding::text::encode(&mut out, &m.registry)
    {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    out
}

/// Adds the ids `policy` lists to those that may appear as labels (at start and each reload).
pub fn policy_ids(policy: &Policy) {
    let Some(m) = get() else { return };
    let mut listed = m.listed.write().unwrap_or_else(|p| p.into_inner());
    listed.secrets.extend(policy.secrets.keys().cloned());
    listed.ssh.extend(policy.ssh.keys().cloned());
}

/// One GetSecret decision (called by [`crate::audit::AuditLog::secret`], which sees them all).
pub fn secret_decision(event: &SecretEvent<'_>) {
    let Some(m) = get() else { return };
    let id = m.secret_label(event.id);
    if let Some(result) = event.cache {
        m.secret_cache
            .get_or_create(&CacheLabels {
                id: id.clone(),
                result,
            })
            .inc();
    }
    let error = match event.decision {
        "required_missing" => Some("secret_required_missing"),
        "error" => Some("secret_failed"),
        _ => None,
    };
    if let Some(kind) = error {
        error_seen(kind);
    }
    m.secret_requests
        .get_or_create(&SecretLabels {
            id,
            decision: event.decision,
            source: event.source.unwrap_or("none"),
        })
        .inc();
}

/// One ssh sign decision (called by [`crate::audit::AuditLog::ssh`]).
pub fn ssh_decision(event: &SshEvent<'_>) {
    let Some(m) = get() else { return };
    m.ssh_signs
        .get_or_create(&SshLabels {
            id: m.ssh_label(event.id),
            via: event.via,
            decision: event.decision,
        })
        .inc();
}

/// One source asked for a value, from `started` until now.
pub fn source_lookup(kind: &'static str, started: Instant, result: &Result<Lookup, SourceError>) {
    let Some(m) = get() else { return };
    let outcome = match result {
        Ok(Lookup::Found(_)) => "found",
        Ok(Lookup::Missing(_)) => "missing",
        Err(_) => "error",
    };
    m.source_lookups
        .get_or_create(&SourceLabels {
            source: kind,
            outcome,
        })
        .observe(started.elapsed().as_secs_f64());
}

/// A connection accepted on a Docker Engine API listener.
pub fn connection_accepted() {
    if let Some(m) = get() {
        m.connections.inc();
    }
}

/// Something went wrong; `kind` is one of a fixed set of words.
pub fn error_seen(kind: &'static str) {
    if let Some(m) = get() {
        m.errors.get_or_create(&KindLabels { kind }).inc();
    }
}

/// A policy reload finished.
pub fn reload(ok: bool) {
    if let Some(m) = get() {
        let result = if ok { "ok" } else { "rejected" };
        m.reloads.get_or_create(&ResultLabels { result }).inc();
        if !ok {
            error_seen("reload_rejected");
        }
    }
}

/// Counts bytes read from a client connection (one atomic add per read).
pub fn client_bytes_received(n: usize) {
    if let Some(m) = get() {
        m.client_bytes_received.inc_by(n as u64);
    }
}

/// Counts bytes written to a client connection.
pub fn client_bytes_sent(n: usize) {
    if let Some(m) = get() {
        m.client_bytes_sent.inc_by(n as u64);
    }
}

/// Counts a session as open until the guard is dropped.
#[must_use = "the session counts as open only while the guard lives"]
pub struct SessionGuard(Option<&'static Metrics>);

/// A session started; it ends when the returned guard is dropped.
pub fn session_opened() -> SessionGuard {
    let m = get();
    if let Some(m) = m {
        m.sessions.inc();
        m.sessions_open.inc();
    }
    SessionGuard(m)
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.sessions_open.dec();
        }
    }
}

#[cfg(test)]
mod tests;
