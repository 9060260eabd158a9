//! The policy TOML loader on any text: no panic; every rejection renders as an error message.
#![no_main]

use buildbroker::config::{HostEnv, Policy, PolicyOrigin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = HostEnv {
        euid: 1000,
        docker_host: None,
        xdg_runtime_dir: Some("/run/user/1000".into()),
        xdg_config_home: None,
        home: Some("/home/u".into()),
        buildbroker_config: None,
    };
    let origin = PolicyOrigin::File("/etc/buildbroker/policy.toml".into());
    if let Err(errors) = Policy::parse(text, origin, &env) {
        assert!(!errors.to_string().is_empty());
    }
});
