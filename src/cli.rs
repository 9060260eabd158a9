//! The command line (design.md §8): `serve`, `check`, `resolve`.
//!
//! Exit codes: `check` returns 0 when clean, 1 when a Dockerfile violates the policy, 2 when its
//! input is unusable (a broken policy file, an unreadable Dockerfile). `resolve` returns 0 when
//! the id resolves, 1 when it does not, 2 on unusable input. `serve` returns 0 after a clean
//! drain and 2 when it cannot start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::config::{HostEnv, Policy, PolicyOrigin};
use crate::dockerfile::{self, Severity};
use crate::policy::{SecretDecision, decide_secret};
use crate::source::{AttemptOutcome, ResolveContext, SourceRuntime, resolve_chain};

const ABOUT: &str = "Brokers build secrets for docker buildx: a Docker Engine API endpoint that answers \
BuildKit's secret requests from a policy, so builds need no --secret flags and nothing touches disk.";

const AFTER_HELP: &str = "\
Quick start:
  buildbroker serve                              # embedded default policy
  export DOCKER_HOST=unix://$XDG_RUNTIME_DIR/buildbroker/docker.sock   # (root: /run/buildbroker/docker.sock)
  PYPI_TOKEN=… docker buildx build .             # RUN --mount=type=secret,id=pypi_token gets it

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
    /// the upstream engine, answer secret requests. SIGHUP reloads the policy (a bad file is
    /// rejected and the old policy stays); SIGTERM/SIGINT drain and exit 0.
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
    },
    /// Resolve one secret id as the daemon would and print which source answered, the value's
    /// length and a short hash. Never prints the value. Exit 0 resolved, 1 not, 2 bad input.
    Resolve {
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The secret id, as in `RUN --mount=type=secret,id=ID`.
        id: String,
    },
}

pub fn main(cli: Cli) -> ExitCode {
    init_tracing(cli.log_format);
    let env = HostEnv::current();
    match cli.command {
        Command::Serve { config } => serve(config, env),
        Command::Check {
            config,
            dockerfiles,
        } => check(config, dockerfiles, &env),
        Command::Resolve { config, id } => resolve(config, &id, &env),
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

fn serve(config: Option<PathBuf>, env: HostEnv) -> ExitCode {
    disable_core_dumps();
    let Some(policy) = load_policy(config, &env) else {
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("buildbroker: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        let listen = policy.server.listen.clone();
        let upstream = policy.server.upstream.clone();
        let origin = policy.origin.clone();
        let broker = match Broker::new(policy, env) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                eprintln!("buildbroker: {e}");
                return ExitCode::from(2);
            }
        };
        let listeners = match crate::server::bind(&listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("buildbroker: {e}");
                return ExitCode::from(2);
            }
        };
        let shutdown = CancellationToken::new();
        if let Err(e) = spawn_signal_handlers(broker.clone(), shutdown.clone()) {
            eprintln!("buildbroker: cannot install signal handlers: {e}");
            return ExitCode::from(2);
        }
        let addrs = listen.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
        tracing::info!(policy = %origin, "buildbroker ready: serving the Docker Engine API on {addrs}, upstream {upstream}");
        crate::server::run(listeners, broker, shutdown).await;
        tracing::info!("buildbroker stopped");
        ExitCode::SUCCESS
    })
}

fn spawn_signal_handlers(broker: Arc<Broker>, shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
                _ = hup.recv() => match broker.reload() {
                    Ok(p) => tracing::info!(policy = %p.origin, secrets = p.secrets.len(), "policy reloaded"),
                    Err(e) => tracing::error!("policy reload rejected, the previous policy stays in force:\n{e}"),
                },
            }
        }
        shutdown.cancel();
    });
    Ok(())
}

fn check(config: Option<PathBuf>, dockerfiles: Vec<PathBuf>, env: &HostEnv) -> ExitCode {
    let Some(policy) = load_policy(config, env) else {
        return ExitCode::from(2);
    };
    println!(
        "{}: ok ({} secret ids, {} ssh ids, unknown secrets: {:?})",
        policy.origin,
        policy.secrets.len(),
        policy.ssh.len(),
        policy.server.unknown_secrets
    );
    if matches!(policy.origin, PolicyOrigin::Embedded) {
        println!("(no policy file found; checked the embedded default)");
    }
    let mut violations = 0;
    let mut unusable = false;
    for path in &dockerfiles {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", path.display());
                unusable = true;
                continue;
            }
        };
        let mounts = match dockerfile::mounts(&text) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{}:{}: {}", path.display(), e.line, e.message);
                unusable = true;
                continue;
            }
        };
        for f in dockerfile::check(&policy, &mounts) {
            if f.severity == Severity::Violation {
                violations += 1;
            }
            println!(
                "{}:{}: {}: {}",
                path.display(),
                f.line,
                f.severity,
                f.message
            );
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
    let Some(policy) = load_policy(config, env) else {
        return ExitCode::from(2);
    };
    let (sources, required) = match decide_secret(&policy, id) {
        SecretDecision::Resolve {
            sources,
            required,
            listed,
        } => {
            if !listed {
                println!(
                    "{id}: not in the policy; inside a build it is asked of the build client's --secret flags"
                );
            }
            (sources, required)
        }
        SecretDecision::Deny => {
            println!(
                "{id}: not in the policy, and unknown_secrets = \"deny\": builds get NotFound"
            );
            return ExitCode::from(1);
        }
    };
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
    let source_runtime = SourceRuntime::new(policy.sources.clone());
    let ctx = ResolveContext {
        runtime: &source_runtime,
        client: None,
    };
    let chain = runtime.block_on(resolve_chain(sources, id, ctx));
    for a in &chain.attempts {
        let what = match &a.outcome {
            AttemptOutcome::Found => "found".to_string(),
            AttemptOutcome::Missing(why) => format!("missing: {why}"),
            AttemptOutcome::Failed(why) if why.transient => format!("transient error: {why}"),
            AttemptOutcome::Failed(why) => format!("error: {why}"),
        };
        println!("  {:<40} {what}", a.source.to_string());
    }
    match chain.value {
        Some((i, value)) => {
            println!(
                "{id}: resolved from {} ({} bytes, sha256:{}…)",
                sources[i],
                value.len(),
                value.short_hash()
            );
            ExitCode::SUCCESS
        }
        None => {
            let required = if required {
                " (required: builds fail)"
            } else {
                " (optional: builds skip the mount)"
            };
            println!("{id}: not resolved{required}");
            ExitCode::from(1)
        }
    }
}
