//! The FileSync packet decoder on any byte stream, cut at every boundary the input picks: no
//! panic, and never more than its bounds kept.
#![no_main]

use buildbroker::dockerfile::filesync::{FileSyncDecoder, MAX_FILE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so frame boundaries land anywhere.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut).max(1);
    let mut d = FileSyncDecoder::new();
    for piece in rest.chunks(chunk) {
        for file in d.feed(piece) {
            assert!(file.data.len() <= MAX_FILE);
        }
    }
    let _ = d.unrequested();
    let _ = d.failure();
});
