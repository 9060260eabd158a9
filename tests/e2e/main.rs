//! End-to-end tests: real `docker buildx build` → the real `buildbroker` binary → the test
//! bed's real dockerd (BuildKit 0.13). See harness.rs for how each piece is started.

mod harness;

mod bad_input;
mod lifecycle;
mod no_leaks;
mod secrets;
mod ssh;
mod sshbed;
