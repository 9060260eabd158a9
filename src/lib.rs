//! # buildbroker
//!
//! A daemon between `docker buildx build` and the BuildKit daemon that answers the build's
//! secret and ssh-agent requests from a policy, so builds get tokens, credentials and exactly
//! the ssh keys they should without `--secret`/`--ssh` flags, without files on disk, and with
//! every decision audited.
//!
//! A tour, in the order a request travels:
//!
//! - [`server`] binds the unix listeners and runs one accept loop for both APIs, and hands each
//!   connection to one of the [`connection_threads`]; [`proxy`] relays the Docker
//!   Engine API to the real engine and checks each peer with [`access`]; [`peers`] counts live
//!   connections and sessions per uid and closes them when a reload revokes a peer.
//!   [`daemon_files`] makes every socket and file the daemon creates so that another user
//!   cannot plant or redirect it.
//! - `POST /session` goes to [`session`]: buildbroker becomes the h2 server towards the daemon
//!   and the h2 client towards buildx; `session::router` sends `Secrets/GetSecret` to
//!   [`service::secrets`], `SSH/CheckAgent` and `SSH/ForwardAgent` to [`service::ssh`], and
//!   relays everything else, except that the Dockerfile's file sync is read as it passes
//!   (`session::dockerfile_watch`), so both services can hold the build's mounts to the
//!   policy's mount rules ([`policy::mounts`]) before they answer.
//! - The docker-container driver reaches BuildKit through a `buildctl dial-stdio` exec: [`exec`]
//!   demultiplexes its stream and [`control`] relays the BuildKit Control API over it, handing
//!   each `Control/Session` to the same [`session`] core.
//! - buildx's remote driver speaks the Control API to [`buildkit_endpoint`] (`[server]
//!   buildkit_listen`), which checks the peer and dials `buildkit_upstream` (a buildkitd, or the
//!   engine's own `/grpc`); the same [`control`] relay and [`session`] core take it from there.
//! - Layers, one way: transports ([`proxy`], [`exec`], [`buildkit_endpoint`], [`control`]) →
//!   session core ([`session`]) → [`service`]s → decisions ([`resolver`], [`policy`],
//!   [`cache`]) → [`source`]s → shared types ([`channel`], [`secret`]).
//! - [`resolver`] answers one secret request: [`policy`] decides (pure functions) what an id
//!   means, [`cache`] may hold a value for slow sources, [`source`] resolves it from env, files,
//!   the OS keyring, programs or the build client; [`secret::SecretBytes`] owns the value, in
//!   pages of its own kept out of core files and swap, and zeroizes it. [`template`]
//!   renders ids whose rule is a `template` of other ids' values.
//! - [`ssh`] is the per-id filtered agent (upstream agent or broker-held keys, destination
//!   constraints, standalone agent sockets), spoken with ssh-agent-lib.
//! - [`audit`] records every decision, never a value. [`config`] turns the policy TOML into a
//!   checked [`config::Policy`]; [`dockerfile`] reads `RUN --mount` flags (for builds and
//!   for `buildbroker check`) and the FileSync stream the Dockerfile arrives on.
//! - [`systemd`] takes socket-activated listeners and tells the service manager when the
//!   daemon is ready, reloading or stopping; [`health`] serves `/healthz`, `/readyz` and the
//!   Prometheus [`metrics`] on `[server] metrics_listen`.
//! - [`cli`] is the command line: `serve`, `check`, `resolve`, `keyring`.
//! - [`zeroize_alloc`] is the daemon's global allocator: every freed heap block is zeroed, so
//!   copies of a value inside dependencies (h2, the AWS SDK) do not outlive their buffers.

pub mod access;
pub mod audit;
pub mod broker;
pub mod buildkit_endpoint;
pub mod cache;
pub mod channel;
pub mod cli;
pub mod config;
pub mod connection_threads;
pub mod control;
pub mod daemon_files;
pub mod dockerfile;
pub mod exec;
pub mod health;
pub mod listen;
pub mod metrics;
pub mod peers;
pub mod policy;
pub mod proxy;
pub mod resolver;
pub mod secret;
pub mod server;
pub mod service;
pub mod session;
pub mod source;
pub mod ssh;
pub mod systemd;
pub mod template;
pub mod tls;
pub mod zeroize_alloc;

/// Code generated from `proto/` at build time.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    pub mod secrets {
        tonic::include_proto!("moby.buildkit.secrets.v1");
    }
    pub mod sshforward {
        tonic::include_proto!("moby.sshforward.v1");
    }
    pub mod control {
        tonic::include_proto!("moby.buildkit.v1");
    }
    pub mod fsutil {
        tonic::include_proto!("fsutil.types");
    }
}
