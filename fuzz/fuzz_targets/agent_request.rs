//! The ssh-agent request decoder on any frame a build's `ssh` client could send: no panic.
#![no_main]

use buildbroker::ssh::wire::decode_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_request(data);
});
