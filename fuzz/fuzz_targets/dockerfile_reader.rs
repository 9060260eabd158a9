//! The Dockerfile reader on any text, in both argument modes, and the mount rules on whatever
//! it finds: no panic, and every mount located inside the text.
#![no_main]

use std::collections::BTreeMap;

use buildbroker::config::{HostEnv, Policy, PolicyOrigin};
use buildbroker::dockerfile::{ArgValues, check, read};
use libfuzzer_sys::fuzz_target;

const POLICY: &str = "[server]\nupstream = \"unix:///var/run/docker.sock\"\n\
    [secrets.a]\nsources = [\"env:A\"]\nmode = 0o400\nuid = 1\ngid = 2\ntargets = [\"/a\", \"env:A\"]\nmount_required = true\n\
    [mounts.secrets]\nuid = 0\n[mounts.ssh]\nmode = 0o600\n";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count().max(1);
    let policy = Policy::parse(POLICY, PolicyOrigin::Embedded, &HostEnv::default()).unwrap();
    let mut args = BTreeMap::new();
    args.insert("A".to_string(), "x".to_string());
    for mode in [ArgValues::Unknown, ArgValues::Given(&args)] {
        let d = read(&text, mode);
        for m in &d.mounts {
            assert!(m.line >= 1 && m.line <= lines, "mount at line {} of {lines}", m.line);
            let _ = m.id.matches("a");
        }
        let _ = check(&policy, &d);
    }
});
