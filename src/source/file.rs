//! `file:PATH` — a file's whole content, read at request time with the size cap applied while
//! reading (a huge file is never loaded whole).
//!
//! The read runs as one blocking task (open, stat and read together) rather than three
//! `tokio::fs` hops: measured in `benches/get_secret.rs`, this is what keeps a file-backed
//! GetSecret near the env-backed one.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use super::{Lookup, SourceError};
use crate::secret::{MAX_SECRET_BYTES, SecretFill};

pub async fn lookup(path: &Path) -> Result<Lookup, SourceError> {
    let path: PathBuf = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_capped(&path))
        .await
        .map_err(|e| SourceError::transient(format!("file read task failed: {e}")))?
}

fn read_capped(path: &Path) -> Result<Lookup, SourceError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Lookup::Missing("no such file".into()));
        }
        Err(e) => return Err(SourceError::permanent(format!("cannot open: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| SourceError::permanent(format!("cannot stat: {e}")))?;
    if meta.is_dir() {
        return Err(SourceError::permanent("is a directory, expected a file"));
    }
    if meta.len() > MAX_SECRET_BYTES as u64 {
        return Err(SourceError::permanent(format!(
            "file is {} bytes, over the {MAX_SECRET_BYTES}-byte limit that buildx and BuildKit accept",
            meta.len()
        )));
    }
    // Allocate once for the size we expect, so no reallocation leaves an unzeroized copy
    // behind, and never read past that capacity: a file that grew meanwhile is an error.
    let mut fill = SecretFill::new(meta.len() as usize + 1);
    loop {
        let Some(spare) = fill.spare() else {
            return Err(SourceError::transient(
                "file changed size while being read; try again",
            ));
        };
        match file.read(spare) {
            Ok(0) => break,
            Ok(n) => fill.advance(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(SourceError::permanent(format!("cannot read: {e}"))),
        }
    }
    Ok(Lookup::Found(fill.finish()))
}
