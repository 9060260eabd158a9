//! `buildbroker keyring set|get-info|delete SERVICE/ACCOUNT`: manage entries exactly where
//! `keyring:` sources read them, so users never learn a backend's attribute names. Values come
//! from stdin only (echo off on a terminal) and are never printed.

mod crate_store;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use super::fingerprint;
use super::{
    BackendArg, KeyringAction, KeyringEntryArgs, disable_core_dumps, load_policy, small_runtime,
};
use crate::config::HostEnv;
use crate::secret::{MAX_SECRET_BYTES, SecretBytes, SecretFill};
use crate::source::{KeyringBackend, KeyringSpec, SourceRuntime, SourceSettings};

pub fn run(action: KeyringAction, env: &HostEnv) -> ExitCode {
    disable_core_dumps();
    let entry = match &action {
        KeyringAction::Set { entry, .. }
        | KeyringAction::GetInfo { entry }
        | KeyringAction::Delete { entry } => entry,
    };
    let Some((spec, settings)) = prepare(entry, env) else {
        return ExitCode::from(2);
    };
    let Some(runtime) = small_runtime() else {
        return ExitCode::from(2);
    };
    let sources = SourceRuntime::new(settings);
    let code = runtime.block_on(async {
        match action {
            KeyringAction::Set { raw, .. } => {
                let value = match read_value(&spec, raw) {
                    Ok(v) => v,
                    Err(message) => {
                        eprintln!("buildbroker: {message}");
                        return ExitCode::from(2);
                    }
                };
                let stored = match on_secret_service(&sources).await {
                    Ok(true) => {
                        let spec2 = spec.clone();
                        with_crate_store(&sources, move |store| {
                            store.set(&spec2, &value).map(|()| value)
                        })
                        .await
                        .map(|value| (KeyringBackend::SecretService, value))
                    }
                    Ok(false) => sources
                        .keyring
                        .store(&spec, &value, &sources.settings)
                        .await
                        .map(|backend| (backend, value))
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match stored {
                    Ok((backend, value)) => {
                        println!(
                            "stored keyring:{spec} in the {backend} ({} bytes, {})",
                            value.len(),
                            fingerprint::describe(env, value.expose())
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("buildbroker: cannot store keyring:{spec}: {e}");
                        ExitCode::from(2)
                    }
                }
            }
            KeyringAction::GetInfo { .. } => {
                let info = match on_secret_service(&sources).await {
                    Ok(true) => {
                        let spec2 = spec.clone();
                        with_crate_store(&sources, move |store| store.info(&spec2)).await
                    }
                    Ok(false) => sources
                        .keyring
                        .info(&spec, &sources.settings)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match info {
                    Ok(Some(info)) => {
                        println!("keyring:{spec}");
                        println!("  backend  {}", info.backend);
                        println!("  where    {}", info.location);
                        println!(
                            "  value    {} bytes, {}",
                            info.value.len(),
                            fingerprint::describe(env, info.value.expose())
                        );
                        ExitCode::SUCCESS
                    }
                    Ok(None) => {
                        let backend = sources
                            .keyring
                            .backend_for(&sources.settings)
                            .await
                            .unwrap_or(KeyringBackend::Auto);
                        println!("keyring:{spec}: no such entry in the {backend}");
                        ExitCode::from(1)
                    }
                    Err(e) => {
                        eprintln!("buildbroker: keyring:{spec}: {e}");
                        ExitCode::from(2)
                    }
                }
            }
            KeyringAction::Delete { .. } => {
                let deleted = match on_secret_service(&sources).await {
                    Ok(true) => {
                        let spec2 = spec.clone();
                        with_crate_store(&sources, move |store| store.delete(&spec2)).await
                    }
                    Ok(false) => sources
                        .keyring
                        .delete(&spec, &sources.settings)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match deleted {
                    Ok(0) => {
                        println!("keyring:{spec}: no such entry");
                        ExitCode::from(1)
                    }
                    Ok(n) => {
                        println!(
                            "removed keyring:{spec} ({n} entr{})",
                            if n == 1 { "y" } else { "ies" }
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("buildbroker: cannot remove keyring:{spec}: {e}");
                        ExitCode::from(2)
                    }
                }
            }
        }
    });
    // A Secret Service call that timed out still holds a blocking thread: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// Whether the entry lives in the Secret Service (else the kernel keyring), as the daemon would
/// choose for these settings.
async fn on_secret_service(sources: &SourceRuntime) -> Result<bool, String> {
    match sources.keyring.backend_for(&sources.settings).await {
        Ok(KeyringBackend::Kernel) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `op` on the `keyring` crate's Secret Service store on a blocking thread. On a terminal
/// the user may be answering an unlock prompt, so the wait is long; otherwise it is the
/// policy's keyring timeout, so a stalled Secret Service cannot hang a script.
async fn with_crate_store<T: Send + 'static>(
    sources: &SourceRuntime,
    op: impl FnOnce(&crate_store::Store) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let limit = if std::io::stdin().is_terminal() {
        Duration::from_secs(300)
    } else {
        sources.settings.keyring_timeout
    };
    let work = tokio::task::spawn_blocking(move || op(&crate_store::Store::open()?));
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!("the Secret Service call failed: {e}")),
        Err(_) => Err(format!(
            "the Secret Service did not answer within {}",
            humantime::format_duration(limit)
        )),
    }
}

/// The entry and the keyring settings: the policy's, with --backend on top.
fn prepare(args: &KeyringEntryArgs, env: &HostEnv) -> Option<(KeyringSpec, SourceSettings)> {
    let text = args.entry.strip_prefix("keyring:").unwrap_or(&args.entry);
    let spec = match KeyringSpec::parse(text) {
        Ok(s) => s,
        Err(m) => {
            eprintln!("buildbroker: {m}");
            return None;
        }
    };
    let mut settings = load_policy(args.config.clone(), env)?.sources;
    if let Some(b) = args.backend {
        settings.keyring_backend = match b {
            BackendArg::Auto => KeyringBackend::Auto,
            BackendArg::SecretService => KeyringBackend::SecretService,
            BackendArg::Kernel => KeyringBackend::Kernel,
        };
    }
    Some((spec, settings))
}

/// Reads the value from stdin: hidden input on a terminal, all of it from a pipe.
fn read_value(spec: &KeyringSpec, raw: bool) -> Result<SecretBytes, String> {
    let stdin = std::io::stdin();
    let mut value = if stdin.is_terminal() {
        eprint!("value for keyring:{spec} (input hidden): ");
        let _ = std::io::stderr().flush();
        let _echo_off = EchoOff::new(&stdin);
        let mut line = String::new();
        let read = stdin.read_line(&mut line);
        eprintln!();
        let mut value = SecretBytes::with_capacity(line.len());
        value.buffer_mut().extend_from_slice(line.as_bytes());
        zeroize::Zeroize::zeroize(&mut line);
        read.map_err(|e| format!("cannot read the value: {e}"))?;
        value
    } else {
        let mut fill = SecretFill::new(MAX_SECRET_BYTES + 2);
        let mut input = stdin.lock();
        loop {
            let Some(spare) = fill.spare() else {
                return Err(format!(
                    "the value is over the {MAX_SECRET_BYTES}-byte limit that buildx and BuildKit accept"
                ));
            };
            match input.read(spare) {
                Ok(0) => break,
                Ok(n) => fill.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read the value from stdin: {e}")),
            }
        }
        fill.finish()
    };
    if !raw {
        value.strip_one_newline();
    }
    if value.is_empty() {
        return Err("refusing to store an empty value (nothing was read from stdin)".into());
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "the value is over the {MAX_SECRET_BYTES}-byte limit that buildx and BuildKit accept"
        ));
    }
    Ok(value)
}

/// Turns terminal echo off until dropped.
struct EchoOff<'a> {
    stdin: &'a std::io::Stdin,
    saved: Option<rustix::termios::Termios>,
}

impl<'a> EchoOff<'a> {
    fn new(stdin: &'a std::io::Stdin) -> Self {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(stdin).ok();
        if let Some(t) = &saved {
            let mut quiet = t.clone();
            quiet.local_modes.remove(LocalModes::ECHO);
            let _ = tcsetattr(stdin, OptionalActions::Now, &quiet);
        }
        EchoOff { stdin, saved }
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ =
                rustix::termios::tcsetattr(self.stdin, rustix::termios::OptionalActions::Now, t);
        }
    }
}
