//! The policy file: TOML text → a checked [`Policy`].
//!
//! Parsing happens in two stages, as in aws-secretsmanager-agent: serde reads a raw structure
//! that rejects unknown keys, then [`Policy::parse`] checks every value and collects *all* the
//! problems it finds, each with `file:line:column` and what was expected. Config lookup
//! (design.md §8) lives here too. This module never touches secret values: it only describes
//! where they come from.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::source::{KeyringBackend, SourceSettings, SourceSpec};
use crate::template::Template;

mod mounts;
mod ssh;
mod tls;

pub use mounts::{DockerfileUnseen, MountDefaults, MountRules};
pub use ssh::{
    AgentSocket, HostRule, KeyMatch, SshKeys, SshRule, parse_agent_socket, parse_host_rule,
    parse_key_match,
};
pub use tls::{TlsClientFiles, TlsServerFiles};

/// The policy compiled into the binary; used when no policy file is found.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.toml");

/// A checked policy: everything the daemon needs to decide, nothing it must still validate.
#[derive(Debug, Clone)]
pub struct Policy {
    pub origin: PolicyOrigin,
    pub server: Server,
    pub access: Access,
    pub secrets: BTreeMap<String, SecretRule>,
    pub ssh: BTreeMap<String, SshRule>,
    /// Settings shared by all sources (`[keyring]`, `[exec]`, `[aws]`).
    pub sources: SourceSettings,
    /// Caps on what one peer uid may hold open (`[limits]`).
    pub limits: Limits,
    /// Mount rules for ids whose own table does not set them (`[mounts]`).
    pub mounts: MountDefaults,
}

/// `[limits]`: how much one peer uid may hold open at once. The fetch cap per slow source kind
/// lives in [`SourceSettings::fetches_per_kind`], with the sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections (Engine API and agent sockets together) per peer uid.
    pub connections_per_uid: usize,
    /// Concurrent build sessions per peer uid.
    pub sessions_per_uid: usize,
}

/// buildx holds up to 8 Engine API connections during one build (`_ping`, version,
/// `/session`, `/grpc`, image and history calls; measured through the broker, tests/e2e/load.rs),
/// so the defaults fit 128 concurrent builds of one uid — a CI runner's builds all come from
/// one uid. The old 256/64 refused the 33rd concurrent build.
impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_uid: 1024,
            sessions_per_uid: 128,
        }
    }
}

/// Where a policy was read from; reloads read the same place again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyOrigin {
    File(PathBuf),
    Embedded,
}

impl fmt::Display for PolicyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyOrigin::File(p) => write!(f, "{}", p.display()),
            PolicyOrigin::Embedded => f.write_str("<embedded default policy>"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Server {
    /// Docker Engine API endpoints buildbroker serves (what users put in `DOCKER_HOST`).
    pub listen: Vec<Endpoint>,
    /// The real engine every request is relayed to.
    pub upstream: Endpoint,
    /// What to do with secret ids the policy does not list.
    pub unknown_secrets: UnknownIds,
    /// What to do with ssh ids the policy does not list.
    pub unknown_ssh: UnknownIds,
    /// Optional JSON-lines audit file (never values).
    pub audit_log: Option<PathBuf>,
    /// How long one GetSecret may take in all (every source and any wait for a cached fetch)
    /// before it fails transiently.
    pub fetch_timeout: std::time::Duration,
    /// How much of a failure the build's output shows.
    pub build_errors: BuildErrors,
    /// The group of the endpoint sockets (mode 0660) and of the directory made for them; its
    /// members may connect (it is one of [`Access::gids`]).
    pub socket_group: Option<u32>,
    /// What secret and ssh requests of a build whose Dockerfile buildbroker did not see mean.
    pub dockerfile_unseen: DockerfileUnseen,
    /// Where `/healthz`, `/readyz` and `/metrics` are served over plain HTTP; off when absent.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[server.tls]`: mutual TLS for every tcp:// listener.
    pub tls: Option<TlsServerFiles>,
    /// `[server] insecure_tcp = true`: tcp:// listeners without `[server.tls]` are served as
    /// plain tcp, and only on loopback addresses (checked at load).
    pub insecure_tcp: bool,
    /// `[server] worker_threads`: how many connection threads serve the accepted connections
    /// ([`crate::connection_threads`]), read at start; absent, one per core. Each connection
    /// stays on one thread; 1 caps every build the daemon relays at one core together.
    pub worker_threads: Option<std::num::NonZeroUsize>,
    /// `[upstream_tls]`: TLS towards a tcp:// `upstream`.
    pub upstream_tls: Option<TlsClientFiles>,
    /// `[buildkit_upstream_tls]`: TLS towards a tcp:// `buildkit_upstream`.
    pub buildkit_upstream_tls: Option<TlsClientFiles>,
    /// BuildKit Control API endpoints (for buildx's remote driver); empty: no BuildKit endpoint.
    pub buildkit_listen: Vec<Endpoint>,
    /// Where the BuildKit endpoint relays to; set whenever `buildkit_listen` is not empty.
    pub buildkit_upstream: Option<BuildkitUpstream>,
}

/// The BuildKit behind the BuildKit endpoint (`[server] buildkit_upstream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildkitUpstream {
    /// `docker+unix:///path` (or `docker+tcp://host:port`): the engine's embedded BuildKit,
    /// reached by `POST /grpc` upgraded to h2c on the Docker Engine API (design.md §4).
    DockerGrpc(Endpoint),
    /// `unix:///path` or `tcp://host:port`: a buildkitd speaking the Control API directly
    /// (prior-knowledge HTTP/2).
    Buildkitd(Endpoint),
}

impl BuildkitUpstream {
    /// Parses `docker+unix://…`, `docker+tcp://…`, `unix://…` or `tcp://…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.strip_prefix("docker+") {
            Some(rest) => Endpoint::parse(rest).map(BuildkitUpstream::DockerGrpc),
            None => Endpoint::parse(text).map(BuildkitUpstream::Buildkitd),
        }
        .map_err(|m| {
            format!(
                "{m}; expected docker+unix:///var/run/docker.sock (the engine's BuildKit), unix:///run/buildkit/buildkitd.sock or tcp://HOST:PORT"
            )
        })
    }

    /// The socket or address dialled, whichever API runs on it.
    pub fn endpoint(&self) -> &Endpoint {
        match self {
            BuildkitUpstream::DockerGrpc(e) | BuildkitUpstream::Buildkitd(e) => e,
        }
    }
}

impl fmt::Display for BuildkitUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildkitUpstream::DockerGrpc(e) => write!(f, "docker+{e}"),
            BuildkitUpstream::Buildkitd(e) => write!(f, "{e}"),
        }
    }
}

/// The default `[server] fetch_timeout`.
pub const DEFAULT_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The most `[server] worker_threads` accepted: far above any core count this daemon needs.
pub const MAX_WORKER_THREADS: usize = 256;

/// How much of a failed secret or ssh request reaches the build's output (`[server]
/// build_errors`). The daemon log and the audit always keep the whole story.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildErrors {
    /// The id, the kinds of source tried and why each gave nothing (not found, error,
    /// unavailable): what a build author can act on, without paths, ARNs, socket paths or an
    /// `exec:` program's stderr. The default, since the build's output may be read by anyone
    /// who can read the CI log.
    #[default]
    Brief,
    /// Everything the daemon log says (for a local daemon whose builds only its user reads).
    Detailed,
}

/// How ids that the policy does not name are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownIds {
    /// Ask the build client's own providers (`--secret` / `--ssh` flags): transparent.
    Client,
    /// Answer NotFound: only the ids the policy lists exist.
    Deny,
}

impl fmt::Display for UnknownIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnknownIds::Client => "client",
            UnknownIds::Deny => "deny",
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Unix uids allowed to connect (root is always allowed).
    pub uids: Vec<u32>,
    /// Unix gids allowed to connect: a peer whose primary gid or one of whose supplementary
    /// groups is listed is allowed. `[server] socket_group` is added here.
    pub gids: Vec<u32>,
    /// TLS client identities allowed to connect; `None` (no `clients` key): every client whose
    /// certificate `[server.tls] client_ca` verifies.
    pub clients: Option<Vec<String>>,
}

/// What the policy says about one secret id.
#[derive(Debug, Clone)]
pub struct SecretRule {
    /// Tried in order; the first that resolves wins. Empty for a template.
    pub sources: Vec<SourceSpec>,
    /// Rendered from other ids' values instead of read from sources.
    pub template: Option<Template>,
    /// Unresolvable → the build fails loudly, even for optional mounts.
    pub required: bool,
    /// How a Dockerfile may mount it (mode, uid, gid, targets, mount_required): checked in
    /// every build and by `buildbroker check`.
    pub mount: MountRules,
    /// Keep a resolved value this long (off when absent: every RUN resolves afresh).
    pub cache_ttl: Option<std::time::Duration>,
    /// How long past `cache_ttl` an expired value may answer when every source fails
    /// transiently.
    pub stale_on_error: Option<std::time::Duration>,
    /// Only these callers may get the id (`None`: every caller `[access]` allows); others get
    /// NotFound, audited as denied.
    pub clients: Option<Vec<crate::access::ClientMatch>>,
    /// With `cache_ttl`: a minted credential (`aws-credentials:`) is reused only while at least
    /// this much of its lifetime is left (`min_remaining`, default 5 minutes).
    pub min_remaining: std::time::Duration,
}

/// The staleness window `stale_on_error = true` means.
pub const DEFAULT_STALE_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// A listening or upstream address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`: a tcp listener (mutual TLS unless `insecure_tcp`), or a tcp upstream
    /// (TLS with `[upstream_tls]`).
    Tcp(String),
}

impl Endpoint {
    /// Parses `unix:///path` or `tcp://host:port`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "expected an absolute socket path after unix://, as in unix:///run/x.sock; got {text:?}"
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = text.strip_prefix("tcp://") {
            let hostport = hostport.trim_end_matches('/');
            if hostport
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(format!("expected tcp://HOST:PORT; got {text:?}"));
            }
            return Ok(Endpoint::Tcp(hostport.to_string()));
        }
        Err(format!(
            "expected an address such as unix:///run/buildbroker/docker.sock or tcp://127.0.0.1:2375; got {text:?}"
        ))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(h) => write!(f, "tcp://{h}"),
        }
    }
}

/// The parts of the process environment that shape defaults. Passed in, so defaults are
/// testable without touching the real environment.
#[derive(Debug, Clone, Default)]
pub struct HostEnv {
    pub euid: u32,
    pub docker_host: Option<String>,
    pub xdg_runtime_dir: Option<String>,
    pub xdg_config_home: Option<String>,
    pub home: Option<String>,
    pub buildbroker_config: Option<String>,
}

impl HostEnv {
    /// Reads the real process environment.
    pub fn current() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let euid = rustix::process::geteuid().as_raw();
        HostEnv {
            euid,
            docker_host: var("DOCKER_HOST"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            // A system service may start without HOME (systemd sets it only with User=).
            home: var("HOME").or_else(|| {
                let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
                home_from_passwd(&passwd, euid)
            }),
            buildbroker_config: var("BUILDBROKER_CONFIG"),
        }
    }

    /// design.md §8: `/run/buildbroker/docker.sock` for root, else under `$XDG_RUNTIME_DIR`.
    pub fn default_listen(&self) -> PathBuf {
        match (&self.xdg_runtime_dir, self.euid) {
            (Some(dir), uid) if uid != 0 => Path::new(dir).join("buildbroker/docker.sock"),
            _ => PathBuf::from("/run/buildbroker/docker.sock"),
        }
    }

    /// Where the policy is read from when `--config` is absent (design.md §8), in order.
    pub fn config_candidates(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Some(p) = &self.buildbroker_config {
            out.push(PathBuf::from(p));
        }
        if let Some(x) = &self.xdg_config_home {
            out.push(Path::new(x).join("buildbroker/policy.toml"));
        } else if let Some(h) = &self.home {
            out.push(Path::new(h).join(".config/buildbroker/policy.toml"));
        }
        out.push(PathBuf::from("/etc/buildbroker/policy.toml"));
        out
    }
}

/// The home directory of `uid` in passwd(5) text.
pub fn home_from_passwd(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2].parse() == Ok(uid) && !fields[5].is_empty())
            .then(|| fields[5].to_string())
    })
}

/// One problem in a policy file, located by line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.origin, self.line, self.column, self.message
        )
    }
}

/// Every problem found in a policy file, in file order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Failure to obtain a policy at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The named file could not be read (missing, permissions).
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file was read but is not a valid policy.
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
}

// ---- raw stage -------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    secrets: BTreeMap<Spanned<String>, Spanned<RawSecret>>,
    #[serde(default)]
    ssh: BTreeMap<Spanned<String>, Spanned<ssh::RawSsh>>,
    #[serde(default)]
    exec: RawExec,
    #[serde(default)]
    file: RawFile,
    #[serde(default)]
    keyring: RawKeyring,
    #[serde(default)]
    aws: RawAws,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    mounts: mounts::RawMounts,
    upstream_tls: Option<Spanned<tls::RawClientTls>>,
    buildkit_upstream_tls: Option<Spanned<tls::RawClientTls>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    connections_per_uid: Option<Spanned<i64>>,
    sessions_per_uid: Option<Spanned<i64>>,
    source_fetches: Option<Spanned<i64>>,
}

/// `socket_group = "docker"` or `socket_group = 999`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawGroup {
    Gid(u32),
    Name(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeyring {
    backend: Option<KeyringBackend>,
    timeout: Option<Spanned<String>>,
}

/// `[file]`: what `file:` sources of a root daemon may read although another user owns them.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    allow_foreign: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExec {
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Option<Spanned<String>>,
    endpoint_url: Option<Spanned<String>>,
    profile: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    max_attempts: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Vec<Spanned<String>>>,
    upstream: Option<Spanned<String>>,
    unknown_secrets: Option<UnknownIds>,
    unknown_ssh: Option<UnknownIds>,
    audit_log: Option<Spanned<String>>,
    socket_group: Option<Spanned<RawGroup>>,
    buildkit_listen: Option<Spanned<Vec<Spanned<String>>>>,
    buildkit_upstream: Option<Spanned<String>>,
    fetch_timeout: Option<Spanned<String>>,
    build_errors: Option<BuildErrors>,
    dockerfile_unseen: Option<DockerfileUnseen>,
    metrics_listen: Option<Spanned<String>>,
    tls: Option<Spanned<tls::RawServerTls>>,
    insecure_tcp: Option<bool>,
    worker_threads: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    gids: Vec<u32>,
    clients: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    sources: Option<Spanned<Vec<Spanned<String>>>>,
    template: Option<Spanned<String>>,
    #[serde(default)]
    required: bool,
    mode: Option<Spanned<u32>>,
    uid: Option<u32>,
    gid: Option<u32>,
    targets: Option<Vec<Spanned<String>>>,
    mount_required: Option<bool>,
    cache_ttl: Option<Spanned<String>>,
    stale_on_error: Option<Spanned<StaleSetting>>,
    clients: Option<Spanned<Vec<Spanned<String>>>>,
    min_remaining: Option<Spanned<String>>,
}

/// `stale_on_error = true | false | "30m"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum StaleSetting {
    Flag(bool),
    Window(String),
}

// ---- checked stage ---------------------------------------------------------------------------

struct Collector<'a> {
    text: &'a str,
    origin: String,
    errors: Vec<ConfigError>,
}

impl Collector<'_> {
    fn push(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_column(self.text, span.start);
        self.errors.push(ConfigError {
            origin: self.origin.clone(),
            line,
            column,
            message: message.into(),
        });
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

impl Policy {
    /// Loads the policy from `explicit` (`--config`), else the lookup order of design.md §8,
    /// else the embedded default.
    pub fn load(explicit: Option<&Path>, env: &HostEnv) -> Result<Policy, LoadError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => env.config_candidates().into_iter().find(|p| p.exists()),
        };
        match path {
            Some(path) => Policy::load_file(&path, env),
            None => Ok(Policy::parse(
                EMBEDDED_DEFAULT,
                PolicyOrigin::Embedded,
                env,
            )?),
        }
    }

    /// Reads and checks one policy file.
    pub fn load_file(path: &Path, env: &HostEnv) -> Result<Policy, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Policy::parse(
            &text,
            PolicyOrigin::File(path.to_path_buf()),
            env,
        )?)
    }

    /// Reads the policy at `origin` again (SIGHUP).
    pub fn reload(origin: &PolicyOrigin, env: &HostEnv) -> Result<Policy, LoadError> {
        match origin {
            PolicyOrigin::File(p) => Policy::load_file(p, env),
            PolicyOrigin::Embedded => Ok(Policy::parse(EMBEDDED_DEFAULT, origin.clone(), env)?),
        }
    }

    /// Checks policy text, collecting every problem with its line and column.
    pub fn parse(text: &str, origin: PolicyOrigin, env: &HostEnv) -> Result<Policy, ConfigErrors> {
        let mut c = Collector {
            text,
            origin: origin.to_string(),
            errors: Vec::new(),
        };
        let raw: RawPolicy = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                c.push(e.span().unwrap_or(0..0), tidy_serde_message(e.message()));
                return Err(ConfigErrors(c.errors));
            }
        };

        let server_tls = raw
            .server
            .tls
            .as_ref()
            .and_then(|t| tls::check_server(t, env, &mut c));
        let insecure_tcp = raw.server.insecure_tcp.unwrap_or(false);
        let listen: Vec<Endpoint> = match &raw.server.listen {
            None => vec![Endpoint::Unix(env.default_listen())],
            Some(list) => list
                .iter()
                .filter_map(|s| match Endpoint::parse(s.get_ref()) {
                    Ok(Endpoint::Tcp(hostport)) => tls::check_tcp_listen(
                        s,
                        &hostport,
                        "listen",
                        raw.server.tls.is_some(),
                        insecure_tcp,
                        &mut c,
                    )
                    .then_some(Endpoint::Tcp(hostport)),
                    Ok(e) => Some(e),
                    Err(m) => {
                        c.push(s.span(), format!("[server] listen: {m}"));
                        None
                    }
                })
                .collect(),
        };
        if raw.server.listen.as_ref().is_some_and(|l| l.is_empty()) {
            c.push(0..0, "[server] listen: expected at least one address");
        }

        let upstream = match &raw.server.upstream {
            Some(s) => match Endpoint::parse(s.get_ref()) {
                Ok(e) => {
                    if listen.contains(&e) {
                        c.push(
                            s.span(),
                            format!("[server] upstream {e} is also one of buildbroker's own listen addresses: that would loop; point upstream at the real engine socket"),
                        );
                    }
                    Some(e)
                }
                Err(m) => {
                    c.push(s.span(), format!("[server] upstream: {m}"));
                    None
                }
            },
            None => {
                match env.docker_host.as_deref().map(Endpoint::parse) {
                    Some(Ok(e)) if listen.contains(&e) => {
                        c.push(
                        0..0,
                        format!("DOCKER_HOST={e} points at buildbroker's own listener, so it cannot be the upstream engine; set [server] upstream (for example unix:///var/run/docker.sock) or unset DOCKER_HOST for the daemon"),
                    );
                        None
                    }
                    Some(Ok(e)) => Some(e),
                    Some(Err(m)) => {
                        c.push(0..0, format!("DOCKER_HOST cannot be used as the upstream: {m}; set [server] upstream"));
                        None
                    }
                    None => Some(Endpoint::Unix(PathBuf::from("/var/run/docker.sock"))),
                }
            }
        };

        let (buildkit_listen, buildkit_upstream) =
            check_buildkit_endpoint(&raw.server, &listen, upstream.as_ref(), &mut c);

        let worker_threads = raw.server.worker_threads.as_ref().and_then(|n| {
            match usize::try_from(*n.get_ref())
                .ok()
                .filter(|&n| n <= MAX_WORKER_THREADS)
                .and_then(std::num::NonZeroUsize::new)
            {
                Some(n) => Some(n),
                None => {
                    c.push(
                        n.span(),
                        format!(
                            "[server] worker_threads: expected a number of threads from 1 to {MAX_WORKER_THREADS}; got {}",
                            n.get_ref()
                        ),
                    );
                    None
                }
            }
        });

        // An IP address and port only: a host name would be resolved once at start and could
        // silently bind somewhere else than the operator meant.
        let metrics_listen = raw.server.metrics_listen.as_ref().and_then(|s| {
            match s.get_ref().parse::<std::net::SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.push(
                        s.span(),
                        format!(
                            "[server] metrics_listen: expected an IP address and port such as \"127.0.0.1:9464\"; got {:?}",
                            s.get_ref()
                        ),
                    );
                    None
                }
            }
        });

        let audit_log = raw.server.audit_log.as_ref().and_then(|s| {
            let p = crate::source::expand_home(s.get_ref(), env.home.as_deref());
            if p.is_absolute() {
                Some(p)
            } else {
                c.push(
                    s.span(),
                    format!(
                        "[server] audit_log: expected an absolute path; got {:?}",
                        s.get_ref()
                    ),
                );
                None
            }
        });

        let fetch_timeout = match &raw.server.fetch_timeout {
            None => DEFAULT_FETCH_TIMEOUT,
            Some(t) => parse_duration(t.get_ref()).unwrap_or_else(|m| {
                c.push(t.span(), format!("[server] fetch_timeout: {m}"));
                DEFAULT_FETCH_TIMEOUT
            }),
        };

        let mut secrets = BTreeMap::new();
        for (id, rule) in &raw.secrets {
            let rule = rule.get_ref();
            if id.get_ref().is_empty() {
                c.push(id.span(), "[secrets]: a secret id must not be empty");
            }
            let mut sources = Vec::new();
            match (&rule.sources, &rule.template) {
                (Some(_), Some(t)) => c.push(
                    t.span(),
                    format!("[secrets.{}]: set either sources or template, not both", id.get_ref()),
                ),
                (None, None) => c.push(
                    id.span(),
                    format!("[secrets.{}]: expected sources = [\"env:NAME\", …] or template = \"…{{{{other_id}}}}…\"", id.get_ref()),
                ),
                (Some(list), None) if list.get_ref().is_empty() => c.push(
                    list.span(),
                    format!("[secrets.{}] sources: expected at least one source such as \"env:NAME\" or \"file:PATH\"", id.get_ref()),
                ),
                _ => {}
            }
            for s in rule.sources.iter().flat_map(|l| l.get_ref()) {
                match SourceSpec::parse(s.get_ref(), env.home.as_deref()) {
                    Ok(spec) => sources.push(spec),
                    Err(m) => c.push(s.span(), format!("[secrets.{}] sources: {m}", id.get_ref())),
                }
            }
            let template =
                rule.template
                    .as_ref()
                    .and_then(|t| match Template::parse(t.get_ref()) {
                        Ok(template) => Some(template),
                        Err(e) => {
                            let at = string_offset(text, t.span(), t.get_ref(), e.offset);
                            c.push(
                                at..at,
                                format!("[secrets.{}] template: {}", id.get_ref(), e.message),
                            );
                            None
                        }
                    });
            if rule.template.is_some()
                && let Some(ttl) = &rule.cache_ttl
            {
                c.push(
                    ttl.span(),
                    format!("[secrets.{}] cache_ttl: a template is rendered for each request; set cache_ttl on the ids it uses", id.get_ref()),
                );
            }
            let mount = mounts::check(
                &format!("[secrets.{}]", id.get_ref()),
                rule.mode.as_ref(),
                rule.uid,
                rule.gid,
                rule.targets.as_ref(),
                rule.mount_required,
                &mut c,
            );
            let cache_ttl =
                rule.cache_ttl
                    .as_ref()
                    .and_then(|t| match parse_duration(t.get_ref()) {
                        Ok(d) => Some(d),
                        Err(m) => {
                            c.push(
                                t.span(),
                                format!("[secrets.{}] cache_ttl: {m}", id.get_ref()),
                            );
                            None
                        }
                    });
            let stale_on_error = rule.stale_on_error.as_ref().and_then(|s| {
                let window = match s.get_ref() {
                    StaleSetting::Flag(false) => return None,
                    StaleSetting::Flag(true) => DEFAULT_STALE_WINDOW,
                    StaleSetting::Window(w) => match parse_duration(w) {
                        Ok(d) => d,
                        Err(m) => {
                            c.push(s.span(), format!("[secrets.{}] stale_on_error: expected true, false or {m}", id.get_ref()));
                            return None;
                        }
                    },
                };
                if rule.cache_ttl.is_none() {
                    c.push(s.span(), format!("[secrets.{}] stale_on_error needs cache_ttl: only a cached value can be served stale", id.get_ref()));
                }
                Some(window)
            });
            let clients = rule
                .clients
                .as_ref()
                .map(|l| tls::check_clients(l, &format!("[secrets.{}]", id.get_ref()), &mut c));
            let mints = sources
                .iter()
                .any(|s| matches!(s, SourceSpec::AwsCredentials(_)));
            let min_remaining = match &rule.min_remaining {
                None => crate::cache::DEFAULT_MIN_REMAINING,
                Some(m) => {
                    if !mints {
                        c.push(m.span(), format!("[secrets.{}] min_remaining: only credentials minted by an aws-credentials: source have a lifetime; this id has none", id.get_ref()));
                    } else if rule.cache_ttl.is_none() {
                        c.push(m.span(), format!("[secrets.{}] min_remaining needs cache_ttl: it says when a cached credential is too close to its expiry to reuse", id.get_ref()));
                    }
                    parse_duration(m.get_ref()).unwrap_or_else(|e| {
                        c.push(
                            m.span(),
                            format!("[secrets.{}] min_remaining: {e}", id.get_ref()),
                        );
                        crate::cache::DEFAULT_MIN_REMAINING
                    })
                }
            };
            secrets.insert(
                id.get_ref().clone(),
                SecretRule {
                    clients,
                    cache_ttl,
                    stale_on_error,
                    min_remaining,
                    sources,
                    template,
                    required: rule.required,
                    mount,
                },
            );
        }

        check_templates(&raw, &secrets, &mut c);

        let ssh = ssh::check(&raw.ssh, &listen, env, &mut c);

        let mut sources = SourceSettings::default();
        if let Some(t) = &raw.exec.timeout {
            match parse_duration(t.get_ref()) {
                Ok(d) => sources.exec_timeout = d,
                Err(m) => c.push(t.span(), format!("[exec] timeout: {m}")),
            }
        }
        if let Some(b) = raw.keyring.backend {
            sources.keyring_backend = b;
        }
        if let Some(t) = &raw.keyring.timeout {
            match parse_duration(t.get_ref()) {
                Ok(d) => sources.keyring_timeout = d,
                Err(m) => c.push(t.span(), format!("[keyring] timeout: {m}")),
            }
        }
        check_aws(&raw.aws, &mut sources.aws, &mut c);
        let limits = check_limits(&raw.limits, &mut sources, &mut c);
        let mount_defaults = MountDefaults {
            secrets: raw.mounts.secrets.check("[mounts.secrets]", &mut c),
            ssh: raw.mounts.ssh.check("[mounts.ssh]", &mut c),
        };

        let socket_group = raw.server.socket_group.as_ref().and_then(|g| match g.get_ref() {
            RawGroup::Gid(gid) => Some(*gid),
            RawGroup::Name(name) => match crate::daemon_files::group_id(name) {
                Some(gid) => Some(gid),
                None => {
                    c.push(
                        g.span(),
                        format!("[server] socket_group: no group named {name:?} in /etc/group; create it or give its number"),
                    );
                    None
                }
            },
        });
        let mut gids = raw.access.gids;
        if let Some(gid) = socket_group
            && !gids.contains(&gid)
        {
            gids.push(gid);
        }
        sources.file_allow_foreign = check_allow_foreign(&raw.file, &secrets, &ssh, env, &mut c);
        let access_clients = raw
            .access
            .clients
            .as_ref()
            .map(|l| tls::check_access_clients(l, &mut c));
        let upstream_tls = raw
            .upstream_tls
            .as_ref()
            .and_then(|t| tls::check_client(t, "[upstream_tls]", env, &mut c));
        tls::check_upstream_pair(
            upstream.as_ref(),
            raw.upstream_tls.as_ref(),
            "[upstream_tls]",
            "upstream",
            &mut c,
        );
        let buildkit_upstream_tls = raw
            .buildkit_upstream_tls
            .as_ref()
            .and_then(|t| tls::check_client(t, "[buildkit_upstream_tls]", env, &mut c));
        tls::check_upstream_pair(
            buildkit_upstream.as_ref().map(BuildkitUpstream::endpoint),
            raw.buildkit_upstream_tls.as_ref(),
            "[buildkit_upstream_tls]",
            "buildkit_upstream",
            &mut c,
        );

        if !c.errors.is_empty() {
            c.errors.sort_by_key(|e| (e.line, e.column));
            return Err(ConfigErrors(c.errors));
        }
        Ok(Policy {
            origin,
            server: Server {
                listen,
                upstream: upstream.expect("upstream is set when no error was collected"),
                unknown_secrets: raw.server.unknown_secrets.unwrap_or(UnknownIds::Client),
                unknown_ssh: raw.server.unknown_ssh.unwrap_or(UnknownIds::Client),
                audit_log,
                fetch_timeout,
                build_errors: raw.server.build_errors.unwrap_or_default(),
                socket_group,
                dockerfile_unseen: raw.server.dockerfile_unseen.unwrap_or_default(),
                metrics_listen,
                tls: server_tls,
                insecure_tcp,
                worker_threads,
                upstream_tls,
                buildkit_upstream_tls,
                buildkit_listen,
                buildkit_upstream,
            },
            access: Access {
                uids: raw.access.uids,
                gids,
                clients: access_clients,
            },
            secrets,
            ssh,
            sources,
            limits,
            mounts: mount_defaults,
        })
    }
}

/// The `[limits]` table: each cap a whole number from 1 to 65536.
/// `[server] buildkit_listen` and `buildkit_upstream`: unix listeners, or tcp ones with mutual
/// TLS (as `[server] listen`), and an upstream that defaults to the engine's own `/grpc` behind
/// `[server] upstream`. Either address naming one of buildbroker's own sockets would loop.
fn check_buildkit_endpoint(
    raw: &RawServer,
    listen: &[Endpoint],
    upstream: Option<&Endpoint>,
    c: &mut Collector<'_>,
) -> (Vec<Endpoint>, Option<BuildkitUpstream>) {
    let mut buildkit_listen = Vec::new();
    for s in raw.buildkit_listen.iter().flat_map(|l| l.get_ref()) {
        match Endpoint::parse(s.get_ref()) {
            Ok(Endpoint::Tcp(hostport)) => {
                let e = Endpoint::Tcp(hostport.clone());
                if listen.contains(&e) || buildkit_listen.contains(&e) {
                    c.push(
                        s.span(),
                        format!("[server] buildkit_listen: {e} is already one of buildbroker's listen addresses"),
                    );
                } else if tls::check_tcp_listen(
                    s,
                    &hostport,
                    "buildkit_listen",
                    raw.tls.is_some(),
                    raw.insecure_tcp.unwrap_or(false),
                    c,
                ) {
                    buildkit_listen.push(e);
                }
            }
            Ok(e) if listen.contains(&e) || buildkit_listen.contains(&e) => c.push(
                s.span(),
                format!(
                    "[server] buildkit_listen: {e} is already one of buildbroker's listen addresses"
                ),
            ),
            Ok(e) => buildkit_listen.push(e),
            Err(m) => c.push(s.span(), format!("[server] buildkit_listen: {m}")),
        }
    }
    let buildkit_upstream = match &raw.buildkit_upstream {
        Some(s) if buildkit_listen.is_empty() => {
            c.push(
                s.span(),
                "[server] buildkit_upstream is set but buildkit_listen is empty: nothing would use it; add buildkit_listen = [\"unix:///run/buildbroker/buildkitd.sock\"]",
            );
            None
        }
        Some(s) => match BuildkitUpstream::parse(s.get_ref()) {
            Ok(u) => {
                let ours = match &u {
                    BuildkitUpstream::DockerGrpc(e) => listen.contains(e),
                    BuildkitUpstream::Buildkitd(e) => buildkit_listen.contains(e),
                };
                if ours {
                    c.push(
                        s.span(),
                        format!("[server] buildkit_upstream {u} is one of buildbroker's own listen addresses: that would loop; point it at the real engine or buildkitd"),
                    );
                }
                Some(u)
            }
            Err(m) => {
                c.push(s.span(), format!("[server] buildkit_upstream: {m}"));
                None
            }
        },
        // The engine the Docker endpoint relays to already runs a BuildKit behind `/grpc`.
        None if !buildkit_listen.is_empty() => upstream.cloned().map(BuildkitUpstream::DockerGrpc),
        None => None,
    };
    (buildkit_listen, buildkit_upstream)
}

fn check_limits(raw: &RawLimits, sources: &mut SourceSettings, c: &mut Collector<'_>) -> Limits {
    let mut limits = Limits::default();
    let mut cap = |value: &Option<Spanned<i64>>, key: &str, slot: &mut usize| {
        if let Some(v) = value {
            match usize::try_from(*v.get_ref()) {
                Ok(n) if (1..=65536).contains(&n) => *slot = n,
                _ => c.push(
                    v.span(),
                    format!(
                        "[limits] {key}: expected a whole number from 1 to 65536; got {}",
                        v.get_ref()
                    ),
                ),
            }
        }
    };
    cap(
        &raw.connections_per_uid,
        "connections_per_uid",
        &mut limits.connections_per_uid,
    );
    cap(
        &raw.sessions_per_uid,
        "sessions_per_uid",
        &mut limits.sessions_per_uid,
    );
    cap(
        &raw.source_fetches,
        "source_fetches",
        &mut sources.fetches_per_kind,
    );
    limits
}

/// Every template placeholder names a listed id, and no template reaches itself.
fn check_templates(raw: &RawPolicy, secrets: &BTreeMap<String, SecretRule>, c: &mut Collector<'_>) {
    let span_of = |id: &str| {
        raw.secrets
            .iter()
            .find(|(k, _)| k.get_ref() == id)
            .and_then(|(_, r)| r.get_ref().template.as_ref())
            .map_or(0..0, |t| t.span())
    };
    let templates: BTreeMap<&str, &Template> = secrets
        .iter()
        .filter_map(|(id, r)| Some((id.as_str(), r.template.as_ref()?)))
        .collect();
    for (id, template) in &templates {
        for input in template.inputs() {
            if !secrets.contains_key(input) {
                c.push(
                    span_of(id),
                    format!("[secrets.{id}] template: {{{{{input}}}}} names no id of this policy; add [secrets.{input}] with its sources"),
                );
            }
        }
    }
    for cycle in crate::template::cycles(&templates) {
        c.push(
            span_of(&cycle[0]),
            format!(
                "[secrets.{}] template: a cycle, {}",
                cycle[0],
                cycle.join(" → ")
            ),
        );
    }
}

/// The offset in the policy text of byte `at` of a string value, when the text spells the
/// string without escapes (else the string's own start).
fn string_offset(text: &str, span: Range<usize>, value: &str, at: usize) -> usize {
    let raw = &text[span.clone()];
    for quote in ["\"\"\"", "'''", "\"", "'"] {
        if let Some(inner) = raw.strip_prefix(quote).and_then(|r| r.strip_suffix(quote)) {
            // TOML drops a newline right after an opening triple quote.
            let (skip, inner) = match inner.strip_prefix('\n') {
                Some(rest) if quote.len() == 3 => (1, rest),
                _ => (0, inner),
            };
            if inner == value {
                return span.start + quote.len() + skip + at;
            }
            break;
        }
    }
    span.start
}

/// `[file] allow_foreign`: absolute paths, each the path of some `file:` source of this policy
/// (a path no source reads is a typo that would silently leave the real one refused).
fn check_allow_foreign(
    raw: &RawFile,
    secrets: &BTreeMap<String, SecretRule>,
    ssh: &BTreeMap<String, SshRule>,
    env: &HostEnv,
    c: &mut Collector<'_>,
) -> Vec<PathBuf> {
    let held = ssh.values().flat_map(|rule| match &rule.keys {
        SshKeys::Held {
            private_keys,
            passphrase,
        } => private_keys.iter().chain(passphrase).collect(),
        SshKeys::Upstream { .. } => Vec::new(),
    });
    let named: Vec<&PathBuf> = secrets
        .values()
        .flat_map(|r| &r.sources)
        .chain(held)
        .filter_map(|spec| match spec {
            SourceSpec::File(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for entry in &raw.allow_foreign {
        let path = crate::source::expand_home(entry.get_ref(), env.home.as_deref());
        if !path.is_absolute() {
            c.push(
                entry.span(),
                format!(
                    "[file] allow_foreign: expected an absolute path or one starting with ~/; got {:?}",
                    entry.get_ref()
                ),
            );
        } else if !named.contains(&&path) {
            c.push(
                entry.span(),
                format!(
                    "[file] allow_foreign: no file: source of this policy reads {}; write the path exactly as the source does",
                    path.display()
                ),
            );
        } else {
            out.push(path);
        }
    }
    out
}

/// The `[aws]` table, for `aws-sm:` sources.
fn check_aws(raw: &RawAws, aws: &mut crate::source::AwsSettings, c: &mut Collector<'_>) {
    use crate::source::{check_endpoint_url, check_region};
    let mut text =
        |value: &Option<Spanned<String>>, key: &str, check: fn(&str) -> Result<(), String>| {
            let value = value.as_ref()?;
            match check(value.get_ref()) {
                Ok(()) => Some(value.get_ref().clone()),
                Err(m) => {
                    c.push(value.span(), format!("[aws] {key}: {m}"));
                    None
                }
            }
        };
    aws.region = text(&raw.region, "region", check_region);
    aws.endpoint_url = text(&raw.endpoint_url, "endpoint_url", check_endpoint_url);
    aws.profile = text(&raw.profile, "profile", |p| {
        if p.is_empty() || p.chars().any(char::is_whitespace) {
            Err(format!(
                "expected a profile name from ~/.aws/config; got {p:?}"
            ))
        } else {
            Ok(())
        }
    });
    for (value, key, slot) in [
        (&raw.timeout, "timeout", &mut aws.timeout),
        (
            &raw.connect_timeout,
            "connect_timeout",
            &mut aws.connect_timeout,
        ),
    ] {
        if let Some(value) = value {
            match parse_duration(value.get_ref()) {
                Ok(d) => *slot = d,
                Err(m) => c.push(value.span(), format!("[aws] {key}: {m}")),
            }
        }
    }
    if let Some(n) = &raw.max_attempts {
        if (1..=10).contains(n.get_ref()) {
            aws.max_attempts = *n.get_ref();
        } else {
            c.push(
                n.span(),
                format!("[aws] max_attempts: expected 1 to 10; got {}", n.get_ref()),
            );
        }
    }
}

/// A positive duration such as "10s", "500ms" or "5m".
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("expected a positive duration; got {text:?}")),
        Err(e) => Err(format!(
            "expected a duration such as \"10s\", \"500ms\" or \"5m\" ({e}); got {text:?}"
        )),
    }
}

/// serde's messages name Rust types ("u32", "a sequence"); keep them but make the usual ones
/// read as TOML.
fn tidy_serde_message(m: &str) -> String {
    let m = m.trim();
    if let Some(rest) = m.strip_prefix("unknown field ") {
        return format!("unknown key {rest}");
    }
    m.replace("a sequence", "an array")
        .replace("invalid type: ", "wrong type: ")
        .replace("map", "table")
}

#[cfg(test)]
mod tests;
