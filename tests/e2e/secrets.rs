//! Secrets reach real builds from the policy, with no `--secret` flags.

use crate::harness::*;

const BASE: &str = BASE_IMAGE;

#[test]
fn seed_pattern_gets_exact_bytes_mode_and_owner_without_flags() {
    if skip() {
        return;
    }
    // Bytes that a shell or a text-only path would mangle: newline inside, trailing space, UTF-8.
    let value = "pypi-AgEIcHlwaS5vcmc é\nline2 ";
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.pypi_token]\nsources = [\"env:PYPI_TOKEN\"]\nrequired = true\n",
        env: vec![("PYPI_TOKEN", value)],
        ..Default::default()
    });
    let build = Build::new(format!(
        "FROM {BASE}\n\
         RUN --mount=type=secret,id=pypi_token,required=true,mode=0400,uid=1000 \
             stat -c '%a %u' /run/secrets/pypi_token > /meta && cat /run/secrets/pypi_token > /value\n\
         FROM scratch\nCOPY --from=0 /meta /value /\n"
    ))
    .run(&broker);
    build.assert_ok();
    assert_eq!(build.text("meta"), "400 1000\n");
    assert_eq!(build.file("value"), value.as_bytes());
    let audit = broker.audit();
    assert!(
        audit.contains("\"id\":\"pypi_token\"")
            && audit.contains("\"decision\":\"served\"")
            && audit.contains("\"source\":\"env\""),
        "audit: {audit}"
    );
}

#[test]
fn several_secrets_custom_targets_env_file_and_fallback_chain() {
    if skip() {
        return;
    }
    let files = tempfile::tempdir().unwrap();
    let gh = write_file(files.path(), "gh", b"ghp_from_file");
    let netrc = write_file(
        files.path(),
        "netrc",
        b"machine example.com login u password p\n",
    );
    let aws = write_file(
        files.path(),
        "aws",
        b"[default]\naws_access_key_id = AKIAFAKE\n",
    );
    let policy = format!(
        "[secrets.npm_token]\nsources = [\"env:NPM_TOKEN\"]\n\
         [secrets.github_token]\nsources = [\"file:{}\"]\n\
         [secrets.netrc]\nsources = [\"file:{}\"]\n\
         [secrets.aws]\nsources = [\"env:AWS_CREDS_NOT_SET\", \"file:{}/missing\", \"file:{}\"]\n",
        gh.display(),
        netrc.display(),
        files.path().display(),
        aws.display()
    );
    let broker = Broker::start(BrokerOptions {
        policy: &policy,
        env: vec![("NPM_TOKEN", "npm_from_env")],
        ..Default::default()
    });
    let build = Build::new(format!(
        "FROM {BASE}\n\
         RUN --mount=type=secret,id=npm_token --mount=type=secret,id=github_token \
             --mount=type=secret,id=netrc,target=/root/.netrc \
             --mount=type=secret,id=aws,target=/root/.aws/credentials \
             mkdir /o && cat /run/secrets/npm_token > /o/npm && cat /run/secrets/github_token > /o/gh \
             && cat /root/.netrc > /o/netrc && cat /root/.aws/credentials > /o/aws\n\
         FROM scratch\nCOPY --from=0 /o /\n"
    ))
    .run(&broker);
    build.assert_ok();
    assert_eq!(build.text("npm"), "npm_from_env");
    assert_eq!(build.text("gh"), "ghp_from_file");
    assert_eq!(
        build.text("netrc"),
        "machine example.com login u password p\n"
    );
    assert_eq!(
        build.text("aws"),
        "[default]\naws_access_key_id = AKIAFAKE\n"
    );
    // The fallback chain was walked: the first two sources had nothing.
    assert!(
        broker.audit().contains(
            "\"id\":\"aws\",\"source\":\"file\",\"value_owner\":\"broker\",\"decision\":\"served\""
        ),
        "{}",
        broker.audit()
    );
}

#[test]
fn unknown_ids_come_from_the_client_flag_under_client_mode() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        server: "unknown_secrets = \"client\"",
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "extra", b"from-the-flag");
    let build = Build::new(format!(
        "FROM {BASE}\nRUN --mount=type=secret,id=extra,required=true cat /run/secrets/extra > /v\nFROM scratch\nCOPY --from=0 /v /\n"
    ))
    .arg(format!("--secret=id=extra,src={}", f.display()))
    .run(&broker);
    build.assert_ok();
    assert_eq!(build.text("v"), "from-the-flag");
    assert!(
        broker
            .audit()
            .contains("\"id\":\"extra\",\"source\":\"client\",\"value_owner\":\"session\",\"decision\":\"served\""),
        "{}",
        broker.audit()
    );
}

#[test]
fn deny_mode_skips_optional_mounts_and_fails_required_ones() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        server: "unknown_secrets = \"deny\"",
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let f = write_file(dir.path(), "extra", b"from-the-flag");
    let flag = format!("--secret=id=extra,src={}", f.display());

    let optional = Build::new(format!(
        "FROM {BASE}\nRUN --mount=type=secret,id=extra sh -c 'if test -e /run/secrets/extra; then echo present; else echo absent; fi > /v'\nFROM scratch\nCOPY --from=0 /v /\n"
    ))
    .arg(&flag)
    .run(&broker);
    optional.assert_ok();
    assert_eq!(
        optional.text("v"),
        "absent\n",
        "deny mode must not hand out the client's flag"
    );

    let required = Build::new(format!(
        "FROM {BASE}\nRUN --mount=type=secret,id=extra,required=true cat /run/secrets/extra\n"
    ))
    .arg(&flag)
    .run(&broker);
    assert!(
        !required.success(),
        "a required mount of a denied id must fail"
    );
    assert!(
        required.log().contains("secret extra: not found"),
        "{}",
        required.log()
    );
    assert!(
        broker.audit().contains(
            "\"id\":\"extra\",\"source\":null,\"value_owner\":null,\"decision\":\"denied\""
        )
    );
}

#[test]
fn required_secret_without_a_source_fails_naming_id_and_sources() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.deploy_key]\nsources = [\"env:DEPLOY_KEY\", \"file:/nonexistent/deploy_key\"]\nrequired = true\n",
        ..Default::default()
    });
    // The mount itself is optional: the policy's `required` must still fail the build.
    let build = Build::new(format!(
        "FROM {BASE}\nRUN --mount=type=secret,id=deploy_key true\n"
    ))
    .run(&broker);
    assert!(!build.success(), "the build must fail:\n{}", build.log());
    let log = build.log();
    assert!(
        log.contains("\"deploy_key\" is required by policy"),
        "{log}"
    );
    // The build sees the kinds tried and why; the paths stay in the daemon's log.
    assert!(
        log.contains("tried env (not found), file (not found)"),
        "{log}"
    );
    assert!(!log.contains("/nonexistent/deploy_key"), "{log}");
    let daemon = broker.log();
    assert!(daemon.contains("env:DEPLOY_KEY (not set)"), "{daemon}");
    assert!(
        daemon.contains("file:/nonexistent/deploy_key (no such file)"),
        "{daemon}"
    );
}

#[test]
fn copy_context_and_parallel_stages() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.a]\nsources = [\"env:A\"]\n[secrets.b]\nsources = [\"env:B\"]\n",
        env: vec![("A", "value-a"), ("B", "value-b")],
        ..Default::default()
    });
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let build = Build::new(format!(
        "FROM {BASE} AS one\nCOPY hello.txt big.bin /src/\nRUN --mount=type=secret,id=a cat /run/secrets/a /src/hello.txt > /one\n\
         FROM {BASE} AS two\nRUN --mount=type=secret,id=b cat /run/secrets/b > /two\n\
         FROM scratch\nCOPY --from=one /one /src/big.bin /\nCOPY --from=two /two /\n"
    ))
    .file("hello.txt", "+hello from the context")
    .file("big.bin", big.clone())
    .run(&broker);
    build.assert_ok();
    assert_eq!(build.text("one"), "value-a+hello from the context");
    assert_eq!(build.text("two"), "value-b");
    assert!(
        build.file("big.bin") == big,
        "the 3 MB context file must arrive intact through the relay"
    );
}

#[test]
fn five_builds_at_once_through_one_broker() {
    if skip() {
        return;
    }
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.shared]\nsources = [\"env:SHARED\"]\nrequired = true\n",
        env: vec![("SHARED", "shared-value")],
        ..Default::default()
    });
    let host = broker.docker_host();
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let host = host.clone();
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().unwrap();
                let own = format!("own-value-{i}");
                let f = write_file(dir.path(), "own", own.as_bytes());
                let build = Build::new(format!(
                    "FROM {BASE}\nRUN --mount=type=secret,id=shared --mount=type=secret,id=own \
                     sh -c 'cat /run/secrets/shared; echo; cat /run/secrets/own; echo {i}' > /v\nFROM scratch\nCOPY --from=0 /v /\n"
                ))
                .arg(format!("--secret=id=own,src={}", f.display()))
                .run_against(&host);
                build.assert_ok();
                assert_eq!(build.text("v"), format!("shared-value\n{own}{i}\n"));
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a concurrent build failed");
    }
}
