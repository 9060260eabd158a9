//! Source URIs, templates and the ssh entries' small grammars, one per input line: no panic.
#![no_main]

use buildbroker::config::{parse_agent_socket, parse_host_rule, parse_key_match};
use buildbroker::source::SourceSpec;
use buildbroker::template::Template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        if let Ok(spec) = SourceSpec::parse(line, Some("/home/u")) {
            let _ = spec.to_string();
        }
        let _ = SourceSpec::parse(line, None);
        let _ = Template::parse(line);
        let _ = parse_host_rule(line);
        let _ = parse_key_match(line);
        let _ = parse_agent_socket(line, Some("/home/u"));
    }
});
