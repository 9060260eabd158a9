//! The known_hosts reader on any file text, against host rules of every kind: no panic.
#![no_main]

use std::path::Path;

use buildbroker::config::parse_host_rule;
use buildbroker::ssh::AllowedHosts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let rules: Vec<_> = [
        "github.com",
        "[git.example.com]:2222",
        "10.0.0.7",
        "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
    ]
    .iter()
    .filter_map(|r| parse_host_rule(r).ok())
    .collect();
    let _ = AllowedHosts::resolve(&rules, Some((Path::new("/home/u/.ssh/known_hosts"), &text)));
});
