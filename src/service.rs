//! The gRPC services buildbroker answers itself inside an intercepted session.

pub mod mounts;
pub mod secrets;
pub mod ssh;
