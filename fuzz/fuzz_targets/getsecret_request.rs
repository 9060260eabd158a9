//! The GetSecret request decoder on any body BuildKit could send: no panic, and an accepted
//! request's frame length always matched its body.
#![no_main]

use buildbroker::service::secrets::decode_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if decode_request(data).is_ok() {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        assert_eq!(len, data.len() - 5);
    }
});
