//! `file:PATH` — a file's whole content, read at request time with the size cap applied while
//! reading (a huge file is never loaded whole).

use std::io::ErrorKind;
use std::path::Path;

use tokio::io::AsyncReadExt;

use super::{Lookup, SourceError};
use crate::secret::{MAX_SECRET_BYTES, SecretBytes};

pub async fn lookup(path: &Path) -> Result<Lookup, SourceError> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Lookup::Missing("no such file".into()));
        }
        Err(e) => return Err(SourceError(format!("cannot open: {e}"))),
    };
    let meta = file
        .metadata()
        .await
        .map_err(|e| SourceError(format!("cannot stat: {e}")))?;
    if meta.is_dir() {
        return Err(SourceError("is a directory, expected a file".into()));
    }
    if meta.len() > MAX_SECRET_BYTES as u64 {
        return Err(SourceError(format!(
            "file is {} bytes, over the {MAX_SECRET_BYTES}-byte limit that buildx and BuildKit accept",
            meta.len()
        )));
    }
    // Allocate once for the size we expect, so no reallocation leaves an unzeroized copy
    // behind, and never read past that capacity: a file that grew meanwhile is an error.
    let capacity = meta.len() as usize + 1;
    let mut value = SecretBytes::with_capacity(capacity);
    let mut file = file;
    loop {
        let buf = value.buffer_mut();
        if buf.len() == capacity {
            return Err(SourceError(
                "file changed size while being read; try again".into(),
            ));
        }
        let mut window = (&mut file).take((capacity - buf.len()) as u64);
        let n = window
            .read_buf(buf)
            .await
            .map_err(|e| SourceError(format!("cannot read: {e}")))?;
        if n == 0 {
            return Ok(Lookup::Found(value));
        }
    }
}
