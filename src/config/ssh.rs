//! The `[ssh.<id>]` tables of the policy: which keys an ssh id exposes to builds, where they
//! come from, where they may be used, and whether the id is also served as a plain agent socket.
//!
//! An id is exactly one of:
//!
//! - a **filtered upstream agent**: `agent = "env:SSH_AUTH_SOCK"` (or a socket path) and
//!   `keys = [...]`, the fingerprints (`SHA256:…`, as `ssh-add -l` prints them) or
//!   `comment:TEXT` matches of the upstream keys it may expose. These expose plain keys only: a
//!   certificate (which carries principals, validity and extensions of its own) is exposed only
//!   when listed as `cert:SHA256:…`, the fingerprint of its key as `ssh-add -l` prints it;
//! - **broker-held keys**: `private_keys = [...]`, one secret source per key (any `sources`
//!   kind: `file:`, `env:`, and whatever `source.rs` knows), OpenSSH or PEM, with an optional
//!   `passphrase` source for encrypted ones.
//!
//! Either may add `hosts = [...]` (destination constraints: host key fingerprints, or host names
//! looked up in the `known_hosts` file it names), `socket = PATH` (a standalone agent socket) and
//! `allow_sha1 = true` (sign `ssh-rsa` SHA-1 requests, refused by default).
//! Like the rest of `config`, nothing here reads a key, a socket or a known_hosts file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
use ssh_key::Fingerprint;
use toml::Spanned;

use super::{Collector, Endpoint, HostEnv};
use crate::source::{SourceSpec, expand_home};

/// What the policy says about one ssh id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRule {
    /// Where the id's keys come from and which of them it exposes.
    pub keys: SshKeys,
    /// Destination constraints: when not empty, a key of this id signs only on agent
    /// connections bound (`session-bind@openssh.com`) to one of these hosts.
    pub hosts: Vec<HostRule>,
    /// The known_hosts file that host-name entries of `hosts` are resolved against.
    pub known_hosts: Option<PathBuf>,
    /// A standalone agent socket serving this id (`--ssh id=PATH` with any builder, `ssh-add -l`).
    pub socket: Option<PathBuf>,
    /// Whether RSA keys may sign SHA-1 (`ssh-rsa`) requests, those without the rsa-sha2-256/512
    /// flags. Off by default: OpenSSH stopped offering them in 8.8; only old servers need it.
    pub allow_sha1: bool,
    /// How a Dockerfile may mount it (`mode`, `uid`, `gid`, `targets`, `mount_required`).
    pub mount: super::MountRules,
    /// Only these callers may use the id (`None`: every caller `[access]` allows); others get
    /// NotFound, audited as denied.
    pub clients: Option<Vec<crate::access::ClientMatch>>,
}

/// The two kinds of ssh id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshKeys {
    /// An existing agent whose keys are filtered: only matching keys are listed or used.
    Upstream {
        agent: AgentSocket,
        allow: Vec<KeyMatch>,
    },
    /// Private keys buildbroker loads from secret sources and holds in memory.
    Held {
        /// One source per key; every key must load.
        private_keys: Vec<SourceSpec>,
        /// Decrypts encrypted keys (OpenSSH or PKCS#8).
        passphrase: Option<SourceSpec>,
    },
}

/// Where an upstream agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSocket {
    /// The socket path is the daemon's environment variable NAME, read when a build connects.
    Env(String),
    Path(PathBuf),
}

impl fmt::Display for AgentSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentSocket::Env(name) => write!(f, "env:{name}"),
            AgentSocket::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One entry of `keys`: which upstream keys an id exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMatch {
    /// `SHA256:…`: the key with this fingerprint.
    Fingerprint(Fingerprint),
    /// `comment:TEXT`: keys whose comment is exactly TEXT (a convenience; fingerprints are
    /// what cannot be faked by whoever adds keys to the upstream agent).
    Comment(String),
    /// `cert:SHA256:…`: certificates whose key has this fingerprint. The two forms above never
    /// expose a certificate, even one for a listed key: a certificate grants what its CA and
    /// principals say, which listing the bare key did not consent to.
    Certificate(Fingerprint),
}

impl fmt::Display for KeyMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyMatch::Fingerprint(fp) => write!(f, "{fp}"),
            KeyMatch::Comment(c) => write!(f, "comment:{c}"),
            KeyMatch::Certificate(fp) => write!(f, "cert:{fp}"),
        }
    }
}

/// One entry of `hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// `SHA256:…`: a host key fingerprint, as `ssh-keygen -lf` prints it.
    Fingerprint(Fingerprint),
    /// A host name or known_hosts-style pattern (`github.com`, `[127.0.0.1]:2222`,
    /// `*.example.com`), resolved to host keys through `known_hosts`.
    Name(String),
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostRule::Fingerprint(fp) => write!(f, "{fp}"),
            HostRule::Name(n) => f.write_str(n),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsh {
    agent: Option<Spanned<String>>,
    keys: Option<Spanned<Vec<Spanned<String>>>>,
    private_keys: Option<Spanned<Vec<Spanned<String>>>>,
    passphrase: Option<Spanned<String>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    known_hosts: Option<Spanned<String>>,
    socket: Option<Spanned<String>>,
    #[serde(default)]
    allow_sha1: bool,
    mode: Option<Spanned<u32>>,
    uid: Option<u32>,
    gid: Option<u32>,
    targets: Option<Vec<Spanned<String>>>,
    mount_required: Option<bool>,
    clients: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Checks every `[ssh.<id>]` table; problems go to the collector.
pub(super) fn check(
    raw: &BTreeMap<Spanned<String>, Spanned<RawSsh>>,
    listen: &[Endpoint],
    env: &HostEnv,
    c: &mut Collector<'_>,
) -> BTreeMap<String, SshRule> {
    let home = env.home.as_deref();
    let mut out = BTreeMap::new();
    let mut sockets: BTreeSet<PathBuf> = BTreeSet::new();
    for (id_spanned, table) in raw {
        let id = id_spanned.get_ref();
        let rule = table.get_ref();
        if id.is_empty() {
            c.push(id_spanned.span(), "[ssh]: an ssh id must not be empty");
        }
        let keys = match (&rule.agent, &rule.private_keys) {
            (Some(_), Some(pk)) => {
                c.push(
                    pk.span(),
                    format!("[ssh.{id}]: `agent` and `private_keys` exclude each other: an id either filters an upstream agent or holds its own keys"),
                );
                None
            }
            (None, None) => {
                c.push(
                    table.span(),
                    format!("[ssh.{id}]: expected `agent = \"env:SSH_AUTH_SOCK\"` (a filtered upstream agent, with `keys`) or `private_keys = [\"file:~/.ssh/deploy\"]` (keys held by buildbroker)"),
                );
                None
            }
            (Some(agent), None) => check_upstream(id, agent, rule, home, c),
            (None, Some(private_keys)) => check_held(id, private_keys, rule, home, c),
        };

        let mut hosts = Vec::new();
        for h in &rule.hosts {
            match parse_host_rule(h.get_ref()) {
                Ok(r) => hosts.push(r),
                Err(m) => c.push(h.span(), format!("[ssh.{id}] hosts: {m}")),
            }
        }
        let known_hosts = rule.known_hosts.as_ref().and_then(|k| {
            let p = expand_home(k.get_ref(), home);
            if !p.is_absolute() {
                c.push(
                    k.span(),
                    format!(
                        "[ssh.{id}] known_hosts: expected an absolute path or one starting with ~/; got {:?}",
                        k.get_ref()
                    ),
                );
                return None;
            }
            if rule.hosts.is_empty() {
                c.push(
                    k.span(),
                    format!("[ssh.{id}] known_hosts: only used to resolve the host names in `hosts`, and this id has none"),
                );
            }
            Some(p)
        });
        if rule.known_hosts.is_none()
            && let Some(name) = rule
                .hosts
                .iter()
                .find(|h| matches!(parse_host_rule(h.get_ref()), Ok(HostRule::Name(_))))
        {
            c.push(
                name.span(),
                format!(
                    "[ssh.{id}] hosts: {:?} is a host name; add known_hosts = \"~/.ssh/known_hosts\" to resolve it to host keys, or give its host key fingerprint (SHA256:…)",
                    name.get_ref()
                ),
            );
        }

        let socket = rule.socket.as_ref().and_then(|s| {
            let p = expand_home(s.get_ref(), home);
            if !p.is_absolute() {
                c.push(
                    s.span(),
                    format!(
                        "[ssh.{id}] socket: expected an absolute path or one starting with ~/; got {:?}",
                        s.get_ref()
                    ),
                );
                return None;
            }
            if listen.contains(&Endpoint::Unix(p.clone())) {
                c.push(
                    s.span(),
                    format!("[ssh.{id}] socket: {} is also a [server] listen address", p.display()),
                );
            }
            if !sockets.insert(p.clone()) {
                c.push(
                    s.span(),
                    format!("[ssh.{id}] socket: {} is already the socket of another ssh id", p.display()),
                );
            }
            Some(p)
        });

        let mount = super::mounts::check(
            &format!("[ssh.{id}]"),
            rule.mode.as_ref(),
            rule.uid,
            rule.gid,
            rule.targets.as_ref(),
            rule.mount_required,
            c,
        );
        let clients = rule
            .clients
            .as_ref()
            .map(|l| super::tls::check_clients(l, &format!("[ssh.{id}]"), c));
        if let Some(keys) = keys {
            out.insert(
                id.clone(),
                SshRule {
                    clients,
                    keys,
                    hosts,
                    known_hosts,
                    socket,
                    allow_sha1: rule.allow_sha1,
                    mount,
                },
            );
        }
    }
    out
}

fn check_upstream(
    id: &str,
    agent: &Spanned<String>,
    rule: &RawSsh,
    home: Option<&str>,
    c: &mut Collector<'_>,
) -> Option<SshKeys> {
    let socket = match parse_agent_socket(agent.get_ref(), home) {
        Ok(s) => Some(s),
        Err(m) => {
            c.push(agent.span(), format!("[ssh.{id}] agent: {m}"));
            None
        }
    };
    if let Some(p) = &rule.passphrase {
        c.push(
            p.span(),
            format!("[ssh.{id}] passphrase: only for `private_keys`; an upstream agent holds its keys already decrypted"),
        );
    }
    let mut allow = Vec::new();
    match &rule.keys {
        None => c.push(
            agent.span(),
            format!("[ssh.{id}]: an upstream agent needs `keys = [\"SHA256:…\"]`, the keys it may expose (`ssh-add -l` prints their fingerprints)"),
        ),
        Some(keys) if keys.get_ref().is_empty() => c.push(
            keys.span(),
            format!("[ssh.{id}] keys: expected at least one fingerprint (SHA256:…), comment:TEXT or cert:SHA256:…; an empty list exposes nothing"),
        ),
        Some(keys) => {
            for k in keys.get_ref() {
                match parse_key_match(k.get_ref()) {
                    Ok(m) => allow.push(m),
                    Err(m) => c.push(k.span(), format!("[ssh.{id}] keys: {m}")),
                }
            }
        }
    }
    Some(SshKeys::Upstream {
        agent: socket?,
        allow,
    })
}

fn check_held(
    id: &str,
    private_keys: &Spanned<Vec<Spanned<String>>>,
    rule: &RawSsh,
    home: Option<&str>,
    c: &mut Collector<'_>,
) -> Option<SshKeys> {
    if let Some(keys) = &rule.keys {
        c.push(
            keys.span(),
            format!("[ssh.{id}] keys: only for `agent` (it filters the upstream agent's keys); every key in `private_keys` is exposed"),
        );
    }
    if private_keys.get_ref().is_empty() {
        c.push(
            private_keys.span(),
            format!("[ssh.{id}] private_keys: expected at least one source such as \"file:~/.ssh/deploy\""),
        );
    }
    let mut sources = Vec::new();
    for s in private_keys.get_ref() {
        match parse_key_source(s.get_ref(), home) {
            Ok(spec) => sources.push(spec),
            Err(m) => c.push(s.span(), format!("[ssh.{id}] private_keys: {m}")),
        }
    }
    let passphrase =
        rule.passphrase
            .as_ref()
            .and_then(|p| match parse_key_source(p.get_ref(), home) {
                Ok(spec) => Some(spec),
                Err(m) => {
                    c.push(p.span(), format!("[ssh.{id}] passphrase: {m}"));
                    None
                }
            });
    Some(SshKeys::Held {
        private_keys: sources,
        passphrase,
    })
}

/// A secret source for key material. `client` is refused: the build client's `--secret`
/// provider is only reachable inside a session, and a standalone socket has none.
fn parse_key_source(text: &str, home: Option<&str>) -> Result<SourceSpec, String> {
    match SourceSpec::parse(text, home)? {
        SourceSpec::Client => Err(
            "client is not a source for ssh keys (the build's own --ssh flag is `unknown_ssh = \"client\"`); use file:, env: or another secret source".into(),
        ),
        spec => Ok(spec),
    }
}

/// `env:NAME` or an absolute socket path.
pub fn parse_agent_socket(text: &str, home: Option<&str>) -> Result<AgentSocket, String> {
    if let Some(name) = text.strip_prefix("env:") {
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        return if valid {
            Ok(AgentSocket::Env(name.to_string()))
        } else {
            Err(format!(
                "expected env:NAME with NAME made of letters, digits and _; got {text:?}"
            ))
        };
    }
    let p = expand_home(text, home);
    if p.is_absolute() {
        Ok(AgentSocket::Path(p))
    } else {
        Err(format!(
            "expected \"env:SSH_AUTH_SOCK\" or an absolute agent socket path; got {text:?}"
        ))
    }
}

/// `SHA256:…`, `comment:TEXT` or `cert:SHA256:…`.
pub fn parse_key_match(text: &str) -> Result<KeyMatch, String> {
    if let Some(fp) = text.strip_prefix("cert:") {
        return parse_fingerprint(fp).map(KeyMatch::Certificate).map_err(|_| {
            format!("expected cert:SHA256:… with the fingerprint of the certificate's key as `ssh-add -l` prints it; got {text:?}")
        });
    }
    if let Some(comment) = text.strip_prefix("comment:") {
        return if comment.is_empty() {
            Err("expected comment:TEXT with a non-empty TEXT".into())
        } else {
            Ok(KeyMatch::Comment(comment.to_string()))
        };
    }
    parse_fingerprint(text).map(KeyMatch::Fingerprint).map_err(|_| {
        format!(
            "expected a SHA256 fingerprint as `ssh-add -l` prints it (SHA256:…), comment:TEXT or cert:SHA256:…; got {text:?}"
        )
    })
}

/// `SHA256:…`, or a host name / known_hosts pattern.
pub fn parse_host_rule(text: &str) -> Result<HostRule, String> {
    if text.starts_with("SHA256:") {
        return parse_fingerprint(text)
            .map(HostRule::Fingerprint)
            .map_err(|_| {
                format!("expected a SHA256 host key fingerprint as `ssh-keygen -lf` prints it; got {text:?}")
            });
    }
    let valid = !text.is_empty()
        && !text.starts_with('!')
        && !text.starts_with("|1|")
        && !text.contains([',', ' ', '\t']);
    if valid {
        Ok(HostRule::Name(text.to_string()))
    } else {
        Err(format!(
            "expected a host key fingerprint (SHA256:…) or one host name or pattern such as github.com, *.example.com or [127.0.0.1]:2222; got {text:?}"
        ))
    }
}

fn parse_fingerprint(text: &str) -> Result<Fingerprint, ssh_key::Error> {
    if !text.starts_with("SHA256:") {
        return Err(ssh_key::Error::FormatEncoding);
    }
    Fingerprint::from_str(text)
}
