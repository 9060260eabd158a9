//! `env:NAME` — a variable of the daemon's own environment, read at request time.
//!
//! The process environment block itself keeps its copy for the life of the process; that copy
//! is outside our control (documented in SECURITY.md). The copy made here is owned by
//! [`SecretBytes`] and zeroized after the answer.

use std::os::unix::ffi::OsStringExt;

use super::{Lookup, SourceError};
use crate::secret::SecretBytes;

pub fn lookup(name: &str) -> Result<Lookup, SourceError> {
    match std::env::var_os(name) {
        Some(v) => Ok(Lookup::Found(SecretBytes::new(v.into_vec()))),
        None => Ok(Lookup::Missing("not set".into())),
    }
}
