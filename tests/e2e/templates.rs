//! Rendered secrets (issue 11): a file composed from other ids at request time reaches the
//! build byte-exact; a template whose input has no value fails the build naming that input.

use sha2::{Digest, Sha256};

use crate::harness::*;

const BASE: &str = BASE_IMAGE;

#[test]
fn a_rendered_netrc_reaches_its_target_byte_exact() {
    if skip() {
        return;
    }
    let token = unique_secret("git-token");
    let files = tempfile::tempdir().unwrap();
    let login = write_file(files.path(), "login", b"ci-bot");
    // Multi-line TOML string: the rendered file ends with a newline, literal braces kept.
    let policy = format!(
        "[secrets.git_token]\nsources = [\"env:GIT_TOKEN\"]\n\
         [secrets.git_login]\nsources = [\"file:{}\"]\n\
         [secrets.netrc]\ntemplate = \"\"\"\nmachine git.example.com login {{{{git_login}}}} password {{{{git_token}}}}\n# {{{{{{{{ kept }}}}\n\"\"\"\n",
        login.display()
    );
    let broker = Broker::start(BrokerOptions {
        policy: &policy,
        env: vec![("GIT_TOKEN", &token)],
        ..Default::default()
    });
    let b = Build::new(format!(
        "FROM {BASE}\nRUN --mount=type=secret,id=netrc,target=/root/.netrc,required=true \
         mkdir /o && cat /root/.netrc > /o/netrc && sha256sum /root/.netrc | cut -d' ' -f1 > /o/sum\n\
         FROM scratch\nCOPY --from=0 /o /\n"
    ))
    .run(&broker);
    b.assert_ok();
    let want = format!("machine git.example.com login ci-bot password {token}\n# {{{{ kept }}}}\n");
    assert_eq!(b.text("netrc"), want);
    let digest: String = Sha256::digest(want.as_bytes())
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    assert_eq!(b.text("sum").trim(), digest, "hash inside the build");
    let audit = broker.audit();
    assert!(
        audit.contains("\"id\":\"netrc\"") && audit.contains("\"source\":\"template\""),
        "{audit}"
    );
}

#[test]
fn a_template_whose_input_is_missing_fails_naming_the_input() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.npm_token]\nsources = [\"env:NPM_TOKEN_NOT_SET\"]\n\
                 [secrets.npmrc]\ntemplate = \"//registry.example/:_authToken={{npm_token}}\\n\"\n",
        ..Default::default()
    });
    // The mount is optional: a template still renders whole or fails.
    let b = Build::new(format!(
        "FROM {BASE}\nRUN --mount=type=secret,id=npmrc,target=/root/.npmrc true\n"
    ))
    .run(&broker);
    assert!(!b.success(), "{}", b.log());
    let log = b.log();
    assert!(
        log.contains("rendered from \\\"npm_token\\\"")
            || log.contains("rendered from \"npm_token\""),
        "{log}"
    );
    assert!(log.contains("env (not found)"), "{log}");
    assert!(
        !log.contains("NPM_TOKEN_NOT_SET"),
        "brief: no variable names\n{log}"
    );
}
