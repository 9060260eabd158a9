//! `aws-sm:` and `aws-credentials:` sources against a real moto_server (design.md §10): the real `buildbroker` binary
//! resolves secrets that the tests seed through the AWS SDK, and real builds get them through
//! the daemon. Tests fail, never skip, when moto or the Docker test bed is missing
//! (`bash tests/testbed/setup.sh` installs both); `BUILDBROKER_SKIP_E2E=1` is the explicit
//! opt-out, as for tests/e2e.

// The end-to-end harness, shared with tests/e2e; this target uses only part of it.
#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;

mod credentials;
mod daemon;
mod moto;
mod resolve;
