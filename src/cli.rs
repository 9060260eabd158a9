//! The command line (design.md §8): `serve`, `check`, `resolve`.
//!
//! Exit codes: `check` returns 0 when clean, 1 when a Dockerfile violates the policy, 2 when its
//! input is unusable (a broken policy file, an unreadable Dockerfile). `resolve` returns 0 when
//! the id resolves, 1 when it does not, 2 on unusable input. `serve` returns 0 after a clean
//! drain and 2 when it cannot start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

pub mod fingerprint;
mod keyring;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::broker::Generation;
use crate::config::{HostEnv, Policy, PolicyOrigin};
use crate::dockerfile::{self, Severity};
use crate::policy::{secret_failure_for_build, template_failure_for_build};
use crate::resolver::{Answer, answer};
use crate::server::Api;
use crate::source::{Attempt, AttemptOutcome};

const ABOUT: &str = "Brokers build secrets and ssh keys for docker buildx: a Docker Engine API endpoint \
that answers BuildKit's secret and ssh-agent requests from a policy, so builds need no --secret or \
--ssh flags, get only the keys they should, and nothing touches disk.";

const AFTER_HELP: &str = "\
Quick start:
  buildbroker serve &                              # embedded default policy
  export DOCKER_HOST=unix://${XDG_RUNTIME_DIR:-/run}/buildbroker/docker.sock
  BUILDBROKER_PYPI_TOKEN=… docker buildx build .   # RUN --mount=type=secret,id=pypi_token gets it

Which environment a source reads: `client-env:NAME` reads the build client's (the shell that
runs `docker buildx build`), `env:NAME` the daemon's (as `buildbroker serve` started). The
embedded default serves only what is meant for builds: BUILDBROKER_<ID> variables, entries
stored with `buildbroker keyring set buildbroker/<id>`, and the build's own --secret flags;
~/.netrc, ~/.aws/credentials, GITHUB_TOKEN and the like only when a policy file names them.

Policy lookup without --config: $BUILDBROKER_CONFIG, $XDG_CONFIG_HOME/buildbroker/policy.toml
(or ~/.config/buildbroker/policy.toml), /etc/buildbroker/policy.toml, then the embedded default.";

#[derive(Debug, Parser)]
#[command(name = "buildbroker", version, about = ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Log line format on stderr. RUST_LOG sets the filter (tracing EnvFilter syntax,
    /// default "info").
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: serve the Docker Engine API on the policy's listen sockets, relay it to
    /// the upstream engine, answer secret and ssh-agent requests, serve `[ssh.*] socket`s.
    /// With `[server] buildkit_listen`, also serve the BuildKit API for buildx's remote driver
    /// (`docker buildx create --driver remote unix:///run/buildbroker/buildkitd.sock`), relayed
    /// to `buildkit_upstream` (default: the engine's own BuildKit, docker+<upstream>).
    /// SIGHUP reloads the policy (a bad file is rejected and the old policy stays);
    /// SIGTERM/SIGINT drain and exit 0.
    Serve {
        /// Policy file (default: the lookup order below, then the embedded default).
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Validate the policy (every problem as file:line:column) and check the secret and ssh
    /// mounts of the given Dockerfiles against it. Exit 0 clean, 1 violations, 2 unusable input.
    Check {
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Dockerfiles whose `RUN --mount=type=secret|ssh` flags are checked.
        #[arg(value_name = "DOCKERFILE")]
        dockerfiles: Vec<PathBuf>,
        /// A build arg's value, as `docker buildx build --build-arg` gives it (repeatable);
        /// other ARGs take their defaults, and an id that still depends on an unset one is
        /// reported, never guessed.
        #[arg(long = "build-arg", value_name = "NAME=VALUE")]
        build_args: Vec<String>,
        /// `text` (file:line:column: severity: message) or `json` (one array of findings with
        /// file, line, column, severity, rule, id, message; for CI annotations).
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
    },
    /// Store, describe or remove a keyring entry exactly where `keyring:SERVICE/ACCOUNT`
    /// sources read it (the backend the policy's [keyring] table selects, unless --backend).
    Keyring {
        #[command(subcommand)]
        action: KeyringAction,
    },
    /// Resolve one secret id as the daemon would and print which source answered, the value's
    /// length and a fingerprint keyed with this host's key (in the state directory, e.g.
    /// ~/.local/state/buildbroker/fingerprint.key): equal values print equal fingerprints, and
    /// the fingerprint reveals nothing without the key. Never prints the value. Exit 0 resolved,
    /// 1 not, 2 bad input.
    Resolve {
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The secret id, as in `RUN --mount=type=secret,id=ID`.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum KeyringAction {
    /// Store a value. It is read from stdin: typed with echo off on a terminal, or piped
    /// (`op read … | buildbroker keyring set ci/token`); one trailing newline is removed
    /// unless --raw. Never pass a value as an argument.
    Set {
        #[command(flatten)]
        entry: KeyringEntryArgs,
        /// Store stdin byte for byte (keep a trailing newline).
        #[arg(long)]
        raw: bool,
    },
    /// Show where the entry lives, its length and its keyed fingerprint (as `resolve` prints
    /// it); never the value.
    /// Exit 1 when there is no such entry.
    GetInfo {
        #[command(flatten)]
        entry: KeyringEntryArgs,
    },
    /// Remove the entry. Exit 1 when there was none.
    Delete {
        #[command(flatten)]
        entry: KeyringEntryArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct KeyringEntryArgs {
    /// The entry, as in the source URI: SERVICE/ACCOUNT (a leading "keyring:" is accepted).
    #[arg(value_name = "SERVICE/ACCOUNT")]
    pub entry: String,
    /// Which keyring (default: the policy's [keyring] backend, normally auto).
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendArg {
    Auto,
    SecretService,
    Kernel,
}

pub fn main(cli: Cli) -> ExitCode {
    init_tracing(cli.log_format);
    let env = HostEnv::current();
    match cli.command {
        Command::Serve { config } => serve(config, env),
        Command::Check {
            config,
            dockerfiles,
            build_args,
            format,
        } => check(config, dockerfiles, &build_args, format, &env),
        Command::Resolve { config, id } => resolve(config, &id, &env),
        Command::Keyring { action } => crate::cli::keyring::run(action, &env),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // The AWS SDK logs whole response bodies here at trace level, secret values included,
        // when LOG_SENSITIVE_BODIES=true is in the environment: that target never gets through.
        .add_directive(
            "aws_smithy_runtime::client::orchestrator::http=off"
                .parse()
                .expect("a valid directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A single-threaded runtime for the one-shot commands (`resolve`, `keyring`).
fn small_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("buildbroker: cannot start the async runtime: {e}");
            None
        }
    }
}

fn load_policy(config: Option<PathBuf>, env: &HostEnv) -> Option<Policy> {
    match Policy::load(config.as_deref(), env) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}

/// Core dumps could hold secrets: turn them off for this process before any secret exists.
/// Every command that handles values calls it first: `serve`, `resolve`, `keyring`.
fn disable_core_dumps() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, none) {
        tracing::warn!(error = %e, "cannot disable core dumps (RLIMIT_CORE)");
    }
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable");
    }
}

/// Raises the soft open-file limit to the hard one: every session holds at least two
/// connections (client and engine) and systemd's default soft limit is 1024, which would cap
/// a sidecar at a few hundred concurrent sessions. (Go's runtime, and so dockerd, does the same.)
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
        }
    }
}

fn serve(config: Option<PathBuf>, env: HostEnv) -> ExitCode {
    disable_core_dumps();
    raise_open_file_limit();
    // Before any thread exists: taking systemd's sockets edits the environment.
    let activated = match crate::systemd::take_activated() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("buildbroker: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(policy) = load_policy(config, &env) else {
        return ExitCode::from(2);
    };
    if policy.server.metrics_listen.is_some() || activated.metrics.is_some() {
        crate::metrics::enable();
    }
    // The main runtime accepts, handles signals and serves `/metrics`; every accepted
    // connection (both APIs and the SSH agent sockets) runs on a connection thread (see
    // [`crate::connection_threads`]), one per core unless the policy says otherwise.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("buildbroker: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = policy.server.worker_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN)
    });
    let threads = match crate::connection_threads::ConnectionThreads::start(threads) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("buildbroker: cannot start the connection threads: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async {
        let listen = policy.server.listen.clone();
        let upstream = policy.server.upstream.clone();
        let buildkit_listen = policy.server.buildkit_listen.clone();
        let buildkit_upstream = policy.server.buildkit_upstream.clone();
        let origin = policy.origin.clone();
        let socket_group = policy.server.socket_group;
        let metrics_listen = policy.server.metrics_listen;
        let euid = env.euid;
        // The broker first: it refuses a policy file another user could have written before
        // anything of that policy is acted on.
        let broker = match Broker::new(policy, env) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                eprintln!("buildbroker: {e}");
                return ExitCode::from(2);
            }
        };
        crate::metrics::policy_ids(&broker.policy());
        let generation = broker.current();
        for tls in [&generation.upstream_tls, &generation.buildkit_upstream_tls] {
            if let Some(Err(e)) = tls {
                eprintln!("buildbroker: {e}");
                return ExitCode::from(2);
            }
        }
        drop(generation);
        // Signals are caught before any socket exists: a SIGTERM sent as soon as a client can
        // connect must drain, not kill the process.
        let health = Arc::new(crate::health::Health::new(broker.clone()));
        let shutdown = CancellationToken::new();
        // Loaded once per API (ALPN differs: none for the Docker API, h2 for gRPC), shared by
        // that API's tcp listeners, re-read on SIGHUP.
        let has_tcp = |l: &[crate::config::Endpoint]| {
            l.iter().any(|e| matches!(e, crate::config::Endpoint::Tcp(_)))
        };
        let mut acceptors = Vec::new();
        let mut tls_for = |endpoints: &[crate::config::Endpoint], alpn: Vec<Vec<u8>>| {
            match (&broker.policy().server.tls, has_tcp(endpoints)) {
                (Some(files), true) => crate::tls::TlsAcceptor::load(files, alpn)
                    .map(|a| {
                        let a = Arc::new(a);
                        acceptors.push(a.clone());
                        Some(a)
                    })
                    .map_err(|e| format!("[server.tls]: {e}")),
                _ => Ok(None),
            }
        };
        let docker_tls = tls_for(&listen, Vec::new());
        let buildkit_tls = tls_for(&buildkit_listen, vec![b"h2".to_vec()]);
        let (docker_tls, buildkit_tls) = match (docker_tls, buildkit_tls) {
            (Ok(d), Ok(b)) => (d, b),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("buildbroker: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = spawn_signal_handlers(broker.clone(), health.clone(), shutdown.clone(), acceptors) {
            eprintln!("buildbroker: cannot install signal handlers: {e}");
            return ExitCode::from(2);
        }
        let agent_sockets = match crate::ssh::socket::bind(&broker.policy(), euid) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("buildbroker: ssh agent socket: {e}");
                return ExitCode::from(2);
            }
        };
        let listeners = bind_or_take(
            Api::DockerEngine,
            &listen,
            activated.docker,
            euid,
            socket_group,
            docker_tls,
        )
        .await;
        let listeners = match listeners {
            Ok(mut docker) => bind_or_take(
                Api::BuildKit,
                &buildkit_listen,
                activated.buildkit,
                euid,
                socket_group,
                buildkit_tls,
            )
            .await
            .map(|buildkit| {
                docker.extend(buildkit);
                docker
            }),
            Err(e) => Err(e),
        };
        let listeners = match listeners {
            Ok(l) => l,
            Err(e) => {
                eprintln!("buildbroker: {e}");
                return ExitCode::from(2);
            }
        };
        let metrics_listener = match (activated.metrics, metrics_listen) {
            (Some(l), _) => l
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(l))
                .map(Some)
                .map_err(|e| format!("socket activation: the metrics socket: {e}")),
            (None, Some(addr)) => tokio::net::TcpListener::bind(addr)
                .await
                .map(Some)
                .map_err(|e| format!("[server] metrics_listen: cannot listen on {addr}: {e}")),
            (None, None) => Ok(None),
        };
        let metrics_listener = match metrics_listener {
            Ok(l) => l,
            Err(e) => {
                eprintln!("buildbroker: {e}");
                return ExitCode::from(2);
            }
        };
        tokio::spawn(broker.clone().sweep_cache(std::time::Duration::from_secs(5)));
        let addrs = listeners
            .iter()
            .filter(|(api, _)| *api == Api::DockerEngine)
            .map(|(_, l)| l.describe())
            .collect::<Vec<_>>()
            .join(", ");
        let buildkit = listeners
            .iter()
            .filter(|(api, _)| *api == Api::BuildKit)
            .map(|(_, l)| l.describe())
            .collect::<Vec<_>>()
            .join(", ");
        let buildkit = match &buildkit_upstream {
            Some(up) if !buildkit.is_empty() => {
                format!("; the BuildKit API on {buildkit}, upstream {up}")
            }
            _ => String::new(),
        };
        let agents = agent_sockets
            .iter()
            .map(|l| format!("; ssh agent {} on {}", l.id, l.path().display()))
            .collect::<String>();
        let metrics = match &metrics_listener {
            Some(l) => match l.local_addr() {
                Ok(a) => format!("; metrics on http://{a}"),
                Err(_) => "; metrics on".to_string(),
            },
            None => String::new(),
        };
        if let Some(l) = metrics_listener {
            // Not joined below: /readyz keeps answering "not ready" while the API drains.
            tokio::spawn(crate::health::run(l, health.clone()));
        }
        // A SIGTERM that came while binding has already begun the drain: stay unready.
        if !shutdown.is_cancelled() {
            health.set_serving(true);
        }
        let workers = threads.len();
        tracing::info!(policy = %origin, workers, "buildbroker ready: serving the Docker Engine API on {addrs}, upstream {upstream}{buildkit}{agents}{metrics}");
        crate::systemd::ready(&format!("serving the Docker Engine API on {addrs}"));
        tokio::join!(
            crate::server::run(listeners, threads.clone(), broker.clone(), shutdown.clone()),
            crate::ssh::socket::run(agent_sockets, threads.clone(), broker, shutdown),
        );
        ExitCode::SUCCESS
    });
    // Stops the connection threads: whatever outlived the drain is dropped there. Neither
    // runtime waits more than a moment for blocking work (a stalled read) at exit.
    drop(threads);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if code == ExitCode::SUCCESS {
        tracing::info!("buildbroker stopped");
    }
    code
}

/// Binds `[server] listen`: unix sockets as [`crate::server::bind`] does, tcp addresses with
/// the TLS acceptor (none: `insecure_tcp`, which the policy allows only on loopback).
async fn bind_listeners(
    listen: &[crate::config::Endpoint],
    euid: u32,
    socket_group: Option<u32>,
    tls: Option<Arc<crate::tls::TlsAcceptor>>,
) -> Result<Vec<crate::listen::Listener>, String> {
    use crate::listen::{Listener, TcpEndpoint};
    let mut unix = crate::server::bind(listen, euid, socket_group)
        .map_err(|e| e.to_string())?
        .into_iter();
    let mut out = Vec::new();
    for endpoint in listen {
        match endpoint {
            crate::config::Endpoint::Unix(_) => out.push(Listener::Unix(
                unix.next().expect("one bound socket per unix endpoint"),
            )),
            crate::config::Endpoint::Tcp(hostport) => {
                let addr: std::net::SocketAddr = hostport.parse().map_err(|_| {
                    format!("cannot listen on tcp://{hostport}: not an IP address and port")
                })?;
                let bound = TcpEndpoint::bind(addr, tls.clone())
                    .await
                    .map_err(|e| format!("cannot listen on tcp://{hostport}: {e}"))?;
                out.push(Listener::Tcp(bound));
            }
        }
    }
    Ok(out)
}

/// Re-reads `[server.tls]` of the policy in force; the old certificates stay on any error.
fn reload_tls(broker: &Broker, tls: &crate::tls::TlsAcceptor) {
    match &broker.policy().server.tls {
        Some(files) => match tls.reload(files) {
            Ok(()) => tracing::info!("TLS certificates reloaded; new connections use them"),
            Err(e) => tracing::error!(
                "TLS certificates not reloaded, the previous ones stay in force: {e}"
            ),
        },
        None => tracing::warn!(
            "[server.tls] was removed; tcp listeners keep their certificates until the next restart"
        ),
    }
}

/// The listeners of one API: the sockets systemd passed under its name if any, else the
/// policy's addresses bound by [`bind_listeners`] (tcp ones with `tls`).
async fn bind_or_take(
    api: Api,
    endpoints: &[crate::config::Endpoint],
    activated: Vec<(String, std::os::unix::net::UnixListener)>,
    euid: u32,
    socket_group: Option<u32>,
    tls: Option<Arc<crate::tls::TlsAcceptor>>,
) -> Result<Vec<(Api, crate::listen::Listener)>, String> {
    let bound = if activated.is_empty() {
        bind_listeners(endpoints, euid, socket_group, tls).await?
    } else {
        tracing::info!(
            "socket activation: serving the sockets systemd passed for {api} instead of the policy's addresses"
        );
        activated
            .into_iter()
            .map(|(name, l)| {
                crate::server::BoundListener::activated(&name, l)
                    .map(crate::listen::Listener::Unix)
                    .map_err(|e| format!("socket activation: fd {name:?}: {e}"))
            })
            .collect::<Result<_, _>>()?
    };
    Ok(bound.into_iter().map(|l| (api, l)).collect())
}

fn spawn_signal_handlers(
    broker: Arc<Broker>,
    health: Arc<crate::health::Health>,
    shutdown: CancellationToken,
    tls: Vec<Arc<crate::tls::TlsAcceptor>>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
                _ = hup.recv() => {
                    crate::systemd::reloading();
                    match broker.reload() {
                        Ok(g) => {
                            crate::metrics::reload(true);
                            crate::metrics::policy_ids(&g.policy);
                            tracing::info!(policy = %g.policy.origin, secrets = g.policy.secrets.len(), ssh = g.policy.ssh.len(), "policy reloaded");
                            crate::systemd::ready("policy reloaded");
                        }
                        Err(e) => {
                            crate::metrics::reload(false);
                            tracing::error!("policy reload rejected, the previous policy stays in force:\n{e}");
                            crate::systemd::ready("policy reload rejected; the previous policy stays in force");
                        }
                    }
                    // Certificates are re-read even when the policy file did not change (a
                    // rotation only replaces the PEM files).
                    for acceptor in &tls {
                        reload_tls(&broker, acceptor);
                    }
                }
            }
        }
        health.set_serving(false);
        crate::systemd::stopping();
        shutdown.cancel();
    });
    Ok(())
}

fn check(
    config: Option<PathBuf>,
    dockerfiles: Vec<PathBuf>,
    build_args: &[String],
    format: CheckFormat,
    env: &HostEnv,
) -> ExitCode {
    let mut args = std::collections::BTreeMap::new();
    for a in build_args {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                args.insert(k.to_string(), v.to_string());
            }
            _ => {
                eprintln!("--build-arg {a:?}: expected NAME=VALUE");
                return ExitCode::from(2);
            }
        }
    }
    let Some(policy) = load_policy(config, env) else {
        return ExitCode::from(2);
    };
    if format == CheckFormat::Text {
        println!(
            "{}: ok ({} secret ids, {} ssh ids, unknown secrets: {})",
            policy.origin,
            policy.secrets.len(),
            policy.ssh.len(),
            policy.server.unknown_secrets
        );
        if matches!(policy.origin, PolicyOrigin::Embedded) {
            println!("(no policy file found; checked the embedded default)");
        }
    }
    #[derive(serde::Serialize)]
    struct Located<'a> {
        file: String,
        #[serde(flatten)]
        finding: &'a dockerfile::Finding,
    }
    let mut violations = 0;
    let mut unusable = false;
    let mut all = Vec::new();
    for path in &dockerfiles {
        let text = match std::fs::read(path) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) => {
                eprintln!("{}: cannot read: {e}", path.display());
                unusable = true;
                continue;
            }
        };
        let read = dockerfile::read(&text, dockerfile::ArgValues::Given(&args));
        for f in dockerfile::check(&policy, &read) {
            if f.severity == Severity::Violation {
                violations += 1;
            }
            all.push((path.display().to_string(), f));
        }
    }
    match format {
        CheckFormat::Text => {
            for (file, f) in &all {
                println!(
                    "{file}:{}:{}: {}: {}",
                    f.line, f.column, f.severity, f.message
                );
            }
        }
        CheckFormat::Json => {
            let located: Vec<Located<'_>> = all
                .iter()
                .map(|(file, finding)| Located {
                    file: file.clone(),
                    finding,
                })
                .collect();
            match serde_json::to_string_pretty(&located) {
                Ok(j) => println!("{j}"),
                Err(e) => {
                    eprintln!("cannot write the findings as JSON: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    if unusable {
        ExitCode::from(2)
    } else if violations > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn resolve(config: Option<PathBuf>, id: &str, env: &HostEnv) -> ExitCode {
    disable_core_dumps();
    let Some(policy) = load_policy(config, env) else {
        return ExitCode::from(2);
    };
    let Some(runtime) = small_runtime() else {
        return ExitCode::from(2);
    };
    let generation = Generation::new(policy);
    let answer = runtime.block_on(answer(&generation, id, None));
    let print_attempts = |attempts: &[Attempt]| {
        for a in attempts {
            let what = match &a.outcome {
                AttemptOutcome::Found => "found".to_string(),
                AttemptOutcome::Missing(why) => format!("missing: {why}"),
                AttemptOutcome::Failed(e) if e.transient => format!("transient error: {e}"),
                AttemptOutcome::Failed(e) => format!("error: {e}"),
            };
            println!("  {:<40} {what}", a.source.to_string());
        }
    };
    // What the operator sees (the whole story), then what a build's output would show.
    let not_resolved = |attempts: &[Attempt], message: &str, shown: String| {
        print_attempts(attempts);
        println!("{id}: not resolved: {message}");
        println!("{id}: builds fail with: {shown}");
        ExitCode::from(1)
    };
    let level = generation.policy.server.build_errors;
    match answer {
        Answer::Denied => {
            println!(
                "{id}: not in the policy, and unknown_secrets = \"deny\": builds get NotFound"
            );
            ExitCode::from(1)
        }
        Answer::Value {
            value,
            source,
            attempts,
            listed,
            minted,
            ..
        } => {
            if !listed {
                println!(
                    "{id}: not in the policy; inside a build it is asked of the build client's --secret flags"
                );
            }
            print_attempts(&attempts);
            println!(
                "{id}: resolved from {source} ({} bytes, {})",
                value.len(),
                fingerprint::describe(env, value.expose())
            );
            if let Some(m) = minted {
                println!(
                    "{id}: {}",
                    describe_minted(&m, std::time::SystemTime::now())
                );
            }
            ExitCode::SUCCESS
        }
        Answer::NotFound { attempts } => {
            print_attempts(&attempts);
            println!("{id}: not resolved (optional: builds skip the mount)");
            ExitCode::from(1)
        }
        Answer::RequiredMissing { message, attempts } => {
            let shown = secret_failure_for_build(id, true, &attempts, &message, level);
            not_resolved(&attempts, &message, shown)
        }
        Answer::Failed { message, attempts } => {
            let shown = secret_failure_for_build(id, false, &attempts, &message, level);
            not_resolved(&attempts, &message, shown)
        }
        Answer::InputMissing {
            input,
            message,
            attempts,
        } => {
            let shown = template_failure_for_build(id, &input, &attempts, &message, level);
            not_resolved(&attempts, &message, shown)
        }
    }
}

/// One line about a minted credential: whose it is, the access key id's last four characters
/// and when it expires. Never the secret key or the session token (they are only in the value).
pub fn describe_minted(m: &crate::source::Minted, now: std::time::SystemTime) -> String {
    let expiry = match (m.expires, m.remaining(now)) {
        (Some(at), Some(left)) => format!(
            "expires {} (in {})",
            humantime::format_rfc3339_seconds(at),
            humantime::format_duration(std::time::Duration::from_secs(left.as_secs()))
        ),
        _ => "expiry not known (temporary credentials from the daemon's environment)".into(),
    };
    format!(
        "credentials of {}: access key id ending {}, {expiry}",
        m.identity(),
        m.key_id_last4,
    )
}
