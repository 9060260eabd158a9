//! End-to-end tests: real `docker buildx build` → the real `buildbroker` binary → the test
//! bed's real dockerd (BuildKit 0.13). See harness.rs for how each piece is started.

mod harness;
#[path = "../support/kernel_keyring.rs"]
mod kernel_keyring;
#[path = "../aws/moto.rs"]
#[allow(dead_code)]
mod moto;
#[path = "../support/secret_service.rs"]
mod secret_service;

mod bad_input;
mod client_env;
mod container;
mod faults;
mod isolation;
mod lifecycle;
mod load;
mod mounts;
mod no_leaks;
mod ops;
mod planted;
mod remote;
mod secrets;
mod sources;
mod ssh;
mod sshbed;
mod templates;
mod tls;
