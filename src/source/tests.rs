use std::io::Write;

use super::*;

fn ctx() -> ResolveContext<'static> {
    ResolveContext::default()
}

#[test]
fn parse_forms() {
    let home = Some("/home/u");
    assert_eq!(
        SourceSpec::parse("env:A_1", home),
        Ok(SourceSpec::Env("A_1".into()))
    );
    assert_eq!(
        SourceSpec::parse("file:/etc/x", home),
        Ok(SourceSpec::File("/etc/x".into()))
    );
    assert_eq!(
        SourceSpec::parse("file:~/.netrc", home),
        Ok(SourceSpec::File("/home/u/.netrc".into()))
    );
    assert_eq!(SourceSpec::parse("client", home), Ok(SourceSpec::Client));
    for bad in [
        "env:",
        "env:1A",
        "env:A-B",
        "file:",
        "file:rel/path",
        "client:x",
        "vault:x",
        "",
    ] {
        assert!(
            SourceSpec::parse(bad, home).is_err(),
            "{bad:?} should be rejected"
        );
    }
    assert!(
        SourceSpec::parse("keyring:svc/acct", home)
            .unwrap_err()
            .contains("not available")
    );
}

#[test]
fn display_round_trips() {
    for text in ["env:X", "file:/a/b", "client"] {
        assert_eq!(SourceSpec::parse(text, None).unwrap().to_string(), text);
    }
}

#[tokio::test]
async fn env_source_reads_the_process_environment() {
    let missing = SourceSpec::Env("BUILDBROKER_TEST_SURELY_UNSET_VARIABLE".into());
    match lookup(&missing, "x", ctx()).await {
        Ok(Lookup::Missing(why)) => assert_eq!(why, "not set"),
        _ => panic!("an unset variable is Missing"),
    }
    // cargo sets CARGO_PKG_NAME in the environment of the test process it runs (the crate
    // forbids unsafe code, so tests cannot call set_var).
    let present = SourceSpec::Env("CARGO_PKG_NAME".into());
    match lookup(&present, "x", ctx()).await {
        Ok(Lookup::Found(v)) => assert_eq!(v.expose(), env!("CARGO_PKG_NAME").as_bytes()),
        _ => panic!("expected the variable's value"),
    }
}

#[tokio::test]
async fn file_source_found_missing_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let spec = SourceSpec::File(path.clone());
    match lookup(&spec, "x", ctx()).await {
        Ok(Lookup::Missing(why)) => assert_eq!(why, "no such file"),
        _ => panic!("missing file should be Missing"),
    }
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"abc\n")
        .unwrap();
    match lookup(&spec, "x", ctx()).await {
        Ok(Lookup::Found(v)) => assert_eq!(v.expose(), b"abc\n"),
        _ => panic!("expected the file's bytes, newline included"),
    }
    let dir_spec = SourceSpec::File(dir.path().to_path_buf());
    let err = lookup(&dir_spec, "x", ctx())
        .await
        .err()
        .expect("a directory is an error");
    assert!(err.0.contains("directory"), "{}", err.0);
}

#[tokio::test]
async fn file_over_the_cap_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MAX_SECRET_BYTES as u64 + 1).unwrap();
    let err = lookup(&SourceSpec::File(path.clone()), "x", ctx())
        .await
        .err()
        .expect("too big");
    assert!(
        err.0.contains("512001 bytes") && err.0.contains("512000-byte limit"),
        "{}",
        err.0
    );
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(MAX_SECRET_BYTES as u64)
        .unwrap();
    match lookup(&SourceSpec::File(path), "x", ctx()).await {
        Ok(Lookup::Found(v)) => assert_eq!(v.len(), MAX_SECRET_BYTES),
        _ => panic!("exactly the cap is allowed"),
    }
}

#[tokio::test]
async fn client_source_outside_a_session_is_missing() {
    assert!(matches!(
        lookup(&SourceSpec::Client, "x", ctx()).await,
        Ok(Lookup::Missing(_))
    ));
}

#[tokio::test]
async fn chain_first_found_wins_and_records_every_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::write(&b, b"from-b").unwrap();
    let sources = vec![
        SourceSpec::Env("BUILDBROKER_TEST_SURELY_UNSET_VARIABLE".into()),
        SourceSpec::File(a),
        SourceSpec::File(b.clone()),
        SourceSpec::File(b),
    ];
    let r = resolve_chain(&sources, "x", ctx()).await;
    let (i, v) = r.value.expect("the third source has it");
    assert_eq!(i, 2);
    assert_eq!(v.expose(), b"from-b");
    assert_eq!(r.attempts.len(), 3, "the chain stops at the first value");
    assert_eq!(
        r.attempts[0].to_string(),
        "env:BUILDBROKER_TEST_SURELY_UNSET_VARIABLE (not set)"
    );
    assert!(r.attempts[1].to_string().ends_with("(no such file)"));
    assert!(matches!(r.attempts[2].outcome, AttemptOutcome::Found));
}
