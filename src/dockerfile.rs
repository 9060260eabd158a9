//! The Dockerfile, as far as secret and ssh mounts go: [`reader`] finds every
//! `RUN --mount=type=secret|ssh` with BuildKit's syntax and defaults; [`check`] holds a file to
//! the policy for `buildbroker check`; [`filesync`] rebuilds the Dockerfile from the FileSync
//! stream the daemon fetches it with, and [`SessionDockerfiles`] keeps what a session showed
//! for the secret and ssh services, which hold every build to the same rules
//! ([`crate::policy::mounts`]).
//!
//! Pure text and byte processing: no file is read here, no secret value is touched.

mod check;
pub mod filesync;
mod reader;
mod seen;
mod words;

pub use check::{Finding, Severity, check};
pub use reader::{ArgValues, Dockerfile, Mount, MountKind, Resolved, SyntaxError, read};
pub use seen::{IgnoreFiles, ReadDockerfile, SessionDockerfiles};
pub use words::{Part, Word};

#[cfg(test)]
mod tests;
