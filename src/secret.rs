//! The one type that owns secret bytes.
//!
//! `SecretBytes` has no `Debug`, no `Display`, no `Clone` and no `Serialize`: a secret can only be
//! read through [`SecretBytes::expose`], whose call sites are the places that hand the value to
//! the wire. Its buffer is zeroized when it is dropped. It must never be formatted, logged, put in
//! an error, or written to disk.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The largest value buildx sends (its own cap, 500 KiB); larger values are refused with a clear
/// error rather than truncated.
pub const MAX_SECRET_BYTES: usize = 512_000;

/// Secret bytes, zeroized on drop.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; the buffer is zeroized when the value is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// An empty value with room for `capacity` bytes, for sources that read into it in place
    /// (growing a `Vec` would leave an unzeroized copy behind).
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Zeroizing::new(Vec::with_capacity(capacity)))
    }

    /// The buffer itself, for sources filling a value made by [`SecretBytes::with_capacity`].
    pub(crate) fn buffer_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// The value, for the code that puts it on the wire. Do not format or log it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Hands the bytes to the network stack without a copy: the returned `Bytes` owns this
    /// value, and when hyper/h2 drop it (after writing, or when the stream is reset) the buffer
    /// is zeroized like any other `SecretBytes`.
    pub fn into_wire_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from_owner(WireOwner(self))
    }

    /// A short, non-reversible fingerprint (first 12 hex digits of SHA-256) so users can tell
    /// two values apart without seeing either. `buildbroker resolve` prints it.
    pub fn short_hash(&self) -> String {
        let digest = Sha256::digest(self.expose());
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Lets `Bytes` own a `SecretBytes` (and so zeroize it on drop). Private: nothing else may
/// view secret bytes through `AsRef`.
struct WireOwner(SecretBytes);

impl AsRef<[u8]> for WireOwner {
    fn as_ref(&self) -> &[u8] {
        self.0.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hash_is_stable_and_hides_the_value() {
        let s = SecretBytes::new(b"hunter2".to_vec());
        let h = s.short_hash();
        assert_eq!(h.len(), 12);
        assert_eq!(h, SecretBytes::new(b"hunter2".to_vec()).short_hash());
        assert_ne!(h, SecretBytes::new(b"hunter3".to_vec()).short_hash());
        assert!(!h.contains("hunter2"));
    }

    #[test]
    fn wire_bytes_share_the_buffer_and_release_it() {
        let s = SecretBytes::new(b"on the wire".to_vec());
        let ptr = s.expose().as_ptr();
        let wire = s.into_wire_bytes();
        assert_eq!(&wire[..], b"on the wire");
        assert_eq!(wire.as_ptr(), ptr, "no copy was made");
    }

    #[test]
    fn length_reports_bytes() {
        let s = SecretBytes::new(vec![1, 2, 3]);
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert_eq!(s.expose(), &[1, 2, 3]);
    }
}
