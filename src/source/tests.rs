use std::io::Write;

use super::*;

fn ctx() -> ResolveContext<'static> {
    static RUNTIME: std::sync::OnceLock<SourceRuntime> = std::sync::OnceLock::new();
    ResolveContext::without_client(RUNTIME.get_or_init(SourceRuntime::default))
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
    assert_eq!(
        SourceSpec::parse("aws-sm:prod/db#password", home).map(|s| s.kind()),
        Ok("aws-sm")
    );
    assert_eq!(
        SourceSpec::parse("keyring:svc/acct", home),
        Ok(SourceSpec::Keyring(KeyringSpec {
            service: "svc".into(),
            account: "acct".into()
        }))
    );
}

#[test]
fn display_round_trips() {
    for text in [
        "env:X",
        "file:/a/b",
        "client",
        "keyring:svc/acct",
        "exec:op read x",
    ] {
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
    assert!(err.message.contains("directory"), "{}", err.message);
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
        err.message.contains("512001 bytes") && err.message.contains("512000-byte limit"),
        "{}",
        err.message
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

/// Writes an executable shell script and returns an `exec:` spec running it with `args`.
fn script(dir: &std::path::Path, name: &str, body: &str, args: &str) -> SourceSpec {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    SourceSpec::parse(&format!("exec:{} {args}", path.display()), None).unwrap()
}

#[tokio::test]
async fn exec_value_strips_exactly_one_newline_and_sees_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let spec = script(
        dir.path(),
        "ok",
        "printf '%s:%s\\n\\n' \"$1\" \"$BUILDBROKER_SECRET_ID\"",
        "first-arg",
    );
    match lookup(&spec, "my_id", ctx()).await {
        Ok(Lookup::Found(v)) => assert_eq!(v.expose(), b"first-arg:my_id\n"),
        _ => panic!("expected the program's stdout"),
    }
    let crlf = script(dir.path(), "crlf", "printf 'v\\r\\n'", "");
    match lookup(&crlf, "x", ctx()).await {
        Ok(Lookup::Found(v)) => assert_eq!(v.expose(), b"v"),
        _ => panic!("expected the program's stdout"),
    }
}

#[tokio::test]
async fn exec_exit_2_falls_through_to_the_next_source() {
    let dir = tempfile::tempdir().unwrap();
    let missing = script(dir.path(), "missing", "echo 'no such item' >&2; exit 2", "");
    let found = script(dir.path(), "found", "printf second", "");
    let r = resolve_chain(&[missing, found], "x", ctx()).await;
    let (i, v) = r.value.expect("the second source answers");
    assert_eq!((i, v.expose()), (1, &b"second"[..]));
    assert!(
        r.attempts[0]
            .to_string()
            .contains("exited 2 (not found): no such item"),
        "{}",
        r.attempts[0]
    );
}

#[tokio::test]
async fn exec_failure_carries_stderr_never_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let spec = script(
        dir.path(),
        "fail",
        "printf 'TOP-SECRET-STDOUT'; echo 'vault: permission denied' >&2; exit 1",
        "",
    );
    let err = lookup(&spec, "x", ctx())
        .await
        .err()
        .expect("exit 1 is an error");
    assert!(
        err.message
            .contains("exited with status 1: vault: permission denied"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("TOP-SECRET-STDOUT"));
    assert!(!err.transient);
}

#[tokio::test]
async fn exec_stderr_in_errors_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let spec = script(
        dir.path(),
        "noisy",
        "head -c 100000 /dev/zero | tr '\\0' e >&2; exit 3",
        "",
    );
    let err = lookup(&spec, "x", ctx())
        .await
        .err()
        .expect("exit 3 is an error");
    assert!(
        err.message.len() < 4096 + 200,
        "{} bytes",
        err.message.len()
    );
}

#[tokio::test]
async fn exec_timeout_kills_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("still-running");
    let spec = script(
        dir.path(),
        "slow",
        &format!("sleep 3; touch {}", marker.display()),
        "",
    );
    let runtime = SourceRuntime::new(SourceSettings {
        exec_timeout: std::time::Duration::from_millis(500),
        ..SourceSettings::default()
    });
    let started = std::time::Instant::now();
    let err = lookup(&spec, "x", ResolveContext::without_client(&runtime))
        .await
        .err()
        .expect("timeout");
    // At the timeout, well before the program would have ended (with room for a loaded CI).
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_millis(2500), "{took:?}");
    assert!(
        err.message.contains("timed out after 500ms and was killed"),
        "{}",
        err.message
    );
    assert!(err.transient);
    std::thread::sleep(std::time::Duration::from_millis(3500));
    assert!(!marker.exists(), "the program was killed, not left running");
}

#[tokio::test]
async fn exec_output_over_the_cap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = script(dir.path(), "big", "head -c 600000 /dev/zero", "");
    let err = lookup(&spec, "x", ctx()).await.err().expect("too big");
    assert!(
        err.message.contains("more than the 512000-byte limit"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn exec_missing_program_is_a_clear_error() {
    let spec = SourceSpec::parse("exec:/nonexistent/op read x", None).unwrap();
    let err = lookup(&spec, "x", ctx())
        .await
        .err()
        .expect("no such program");
    assert!(
        err.message.starts_with("cannot run /nonexistent/op:"),
        "{}",
        err.message
    );
}

#[test]
fn exec_parse_splits_on_whitespace() {
    let spec = SourceSpec::parse("exec:op  read op://ci/pypi/token", None).unwrap();
    assert_eq!(
        spec,
        SourceSpec::Exec(ExecSpec {
            program: "op".into(),
            args: vec!["read".into(), "op://ci/pypi/token".into()]
        })
    );
    assert_eq!(spec.to_string(), "exec:op read op://ci/pypi/token");
    assert!(SourceSpec::parse("exec:", None).is_err());
    assert!(SourceSpec::parse("exec:   ", None).is_err());
}

/// The state letter of a process from /proc/PID/stat, or `None` once it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Waits until `pid` is gone or a zombie (dead, waiting for whoever reaps orphans here).
fn wait_dead(pid: u32) -> bool {
    for _ in 0..100 {
        match process_state(pid) {
            None | Some('Z') | Some('X') => return true,
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    false
}

#[tokio::test]
async fn exec_timeout_kills_a_grandchild_that_holds_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The program itself exits at once; the sleep it started keeps stdout open. Before process
    // groups, the read waited for that sleep (30 s), far past the timeout.
    let exits = script(
        dir.path(),
        "leaves-a-child",
        &format!("sleep 30 & echo $! > {}; exit 0", pids.display()),
        "",
    );
    // The program waits for its child: both must die.
    let waits = script(
        dir.path(),
        "waits-for-a-child",
        &format!("sleep 30 & echo $! $$ > {}; wait", pids.display()),
        "",
    );
    // A second: time for the programs to start and write their pids on a loaded CI machine.
    let runtime = SourceRuntime::new(SourceSettings {
        exec_timeout: std::time::Duration::from_secs(1),
        ..SourceSettings::default()
    });
    let ctx = ResolveContext::without_client(&runtime);
    for (spec, says) in [
        (&exits, "kept its output open"),
        (&waits, "was killed with its process group"),
    ] {
        let started = std::time::Instant::now();
        let err = lookup(spec, "x", ctx).await.err().expect("a timeout");
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(5),
            "returned after {took:?}, not at the 1s timeout"
        );
        assert!(err.message.contains(says), "{}", err.message);
        assert!(
            err.message.contains("timed out after 1s"),
            "{}",
            err.message
        );
        let text = std::fs::read_to_string(&pids).unwrap();
        for pid in text.split_whitespace() {
            let pid: u32 = pid.parse().unwrap();
            assert!(wait_dead(pid), "process {pid} outlived the timeout");
        }
    }
}

#[tokio::test]
async fn exec_dropped_request_kills_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let spec = script(
        dir.path(),
        "slow",
        &format!("sleep 30 & echo $! $$ > {}; wait", pids.display()),
        "",
    );
    // A build that went away drops the request future mid-run, once the program and its
    // child are both running (their pids written).
    let mut request = Box::pin(lookup(&spec, "x", ctx()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        tokio::select! {
            _ = &mut request => panic!("the program ended by itself"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
        }
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        if text.ends_with('\n') && text.split_whitespace().count() == 2 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the program never wrote its pids"
        );
    };
    drop(request);
    for pid in text.split_whitespace() {
        let pid: u32 = pid.parse().unwrap();
        assert!(wait_dead(pid), "process {pid} outlived the dropped request");
    }
}

#[tokio::test]
async fn file_source_refuses_a_fifo_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // No writer ever opens it: a blocking open would wait forever.
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        lookup(&SourceSpec::File(fifo.clone()), "x", ctx()),
    )
    .await
    .expect("returns at once, no hung thread")
    .err()
    .expect("a FIFO is an error");
    assert!(
        err.message
            .contains("is a FIFO (named pipe), not a regular file"),
        "{}",
        err.message
    );
    assert!(err.message.contains(&fifo.display().to_string()));
    assert!(!err.transient);
    let dev = lookup(&SourceSpec::File("/dev/null".into()), "x", ctx())
        .await
        .err()
        .expect("a device is an error");
    assert!(
        dev.message.contains("a character device"),
        "{}",
        dev.message
    );
}

#[test]
fn foreign_files_rule() {
    use file::{Foreign, Step, StepKind, foreign_in};
    let step = |path: &str, uid, mode, kind| Step {
        path: path.into(),
        uid,
        mode,
        kind,
    };
    let d = StepKind::Directory;
    let f = StepKind::File;
    let l = StepKind::Symlink;
    let root_dirs = [step("/", 0, 0o40755, d), step("/etc", 0, 0o40755, d)];
    let ok = [&root_dirs[..], &[step("/etc/x", 0, 0o100600, f)]].concat();
    assert_eq!(foreign_in(&ok), None);
    // A file of another user.
    let theirs = [&root_dirs[..], &[step("/etc/x", 1001, 0o100600, f)]].concat();
    assert_eq!(
        foreign_in(&theirs),
        Some(Foreign::Owner {
            path: "/etc/x".into(),
            uid: 1001
        })
    );
    // Root's file, but group-writable.
    let writable = [&root_dirs[..], &[step("/etc/x", 0, 0o100620, f)]].concat();
    assert!(matches!(
        foreign_in(&writable),
        Some(Foreign::Writable { mode: 0o620, .. })
    ));
    // Root's file in another user's home: they can rename it and put their own there.
    let in_home = [
        step("/", 0, 0o40755, d),
        step("/home", 0, 0o40755, d),
        step("/home/ci", 1001, 0o40700, d),
        step("/home/ci/x", 0, 0o100600, f),
    ];
    assert!(matches!(
        foreign_in(&in_home),
        Some(Foreign::Owner { uid: 1001, .. })
    ));
    // A world-writable directory without the sticky bit.
    let open_dir = [
        step("/", 0, 0o40755, d),
        step("/srv", 0, 0o40777, d),
        step("/srv/x", 0, 0o100600, f),
    ];
    assert!(matches!(
        foreign_in(&open_dir),
        Some(Foreign::Writable { .. })
    ));
    // Sticky /tmp: root's own file there stays root's.
    let tmp = [
        step("/", 0, 0o40755, d),
        step("/tmp", 0, 0o41777, d),
        step("/tmp/x", 0, 0o100600, f),
    ];
    assert_eq!(foreign_in(&tmp), None);
    // ... but a symlink another user put there is theirs to repoint.
    let planted = [
        step("/", 0, 0o40755, d),
        step("/tmp", 0, 0o41777, d),
        step("/tmp/link", 1001, 0o120777, l),
        step("/etc/shadow", 0, 0o100640, f),
    ];
    assert!(matches!(
        foreign_in(&planted),
        Some(Foreign::Owner { uid: 1001, .. })
    ));
    // Root's own symlink: its 0777 bits mean nothing.
    let own_link = [
        step("/", 0, 0o40755, d),
        step("/etc/link", 0, 0o120777, l),
        step("/etc/x", 0, 0o100600, f),
    ];
    assert_eq!(foreign_in(&own_link), None);
}

/// The `statfs` magic of the file system `p` is on.
fn fs_magic(p: &std::path::Path) -> u64 {
    let dir = std::fs::File::open(p).unwrap();
    rustix::fs::fstatfs(&dir).unwrap().f_type as u64
}

/// The read mode [`file::ReadModes`] should settle on for a file on `p`'s file system.
fn expected_mode(p: &std::path::Path) -> file::ReadMode {
    match fs_magic(p) {
        0x0102_1994 | 0x8584_58f6 => file::ReadMode::Memory,
        0xEF53 | 0x5846_5342 | 0x9123_683E => file::ReadMode::LocalDisk,
        _ => file::ReadMode::Pool,
    }
}

/// A file on a memory file system is read inline once seen there; one on any other file
/// system keeps going through the blocking pool. Inline or not, the same checks and answers.
#[tokio::test]
async fn files_on_memory_file_systems_are_read_inline_after_the_first_read() {
    let shm = std::path::Path::new("/dev/shm");
    assert_eq!(
        expected_mode(shm),
        file::ReadMode::Memory,
        "the test needs /dev/shm on tmpfs"
    );
    let dir = tempfile::tempdir_in(shm).unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, b"in-memory\n").unwrap();
    let spec = SourceSpec::File(path.clone());
    assert_eq!(file::read_modes().of(&path), file::ReadMode::Pool);
    for _ in 0..3 {
        match lookup(&spec, "x", ctx()).await {
            Ok(Lookup::Found(v)) => assert_eq!(v.expose(), b"in-memory\n"),
            _ => panic!("expected the file's bytes"),
        }
        assert_eq!(
            file::read_modes().of(&path),
            file::ReadMode::Memory,
            "seen on tmpfs"
        );
        assert_eq!(
            file::pool_reads(&path),
            1,
            "only the first read in the pool"
        );
    }
    // Replaced by a FIFO: still refused at once, inline or not.
    std::fs::remove_file(&path).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let err = lookup(&spec, "x", ctx())
        .await
        .err()
        .expect("a FIFO is refused");
    assert!(err.message.contains("FIFO"), "{}", err.message);

    // The crate's own directory: whatever it is on, the record agrees with statfs.
    let elsewhere = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let path = elsewhere.path().join("token");
    std::fs::write(&path, b"on disk").unwrap();
    assert!(
        lookup(&SourceSpec::File(path.clone()), "x", ctx())
            .await
            .is_ok()
    );
    assert_eq!(
        file::read_modes().of(&path),
        expected_mode(elsewhere.path())
    );
}

/// A directory on a local disk file system (ext4, xfs, btrfs), where `file:` reads inline
/// what the page cache holds; the test bed's machines have one.
fn local_disk_dir() -> tempfile::TempDir {
    // The checkout last: a root test run in a user's checkout would meet root's owner rule.
    let candidates = ["/var/tmp", "/tmp", env!("CARGO_MANIFEST_DIR")];
    let dir = candidates
        .iter()
        .map(std::path::Path::new)
        .find(|p| expected_mode(p) == file::ReadMode::LocalDisk)
        .unwrap_or_else(|| {
            panic!("the test needs one of {candidates:?} on ext4, xfs or btrfs (a local disk)")
        });
    tempfile::tempdir_in(dir).unwrap()
}

/// On a local disk, a file seen before is opened and checked inline and read with
/// `RWF_NOWAIT`: from the page cache it is read whole without a hop; evicted from it, the read
/// stops before waiting and the rest is read, on the same descriptor and from where it
/// stopped, where waiting is allowed. Either way the answer is the file's bytes.
#[tokio::test]
async fn files_on_a_local_disk_read_inline_only_what_the_page_cache_holds() {
    let dir = local_disk_dir();
    let path = dir.path().join("token");
    // Three pages and a bit, no two alike, so a read resumed at the wrong offset shows.
    let value: Vec<u8> = (0..12_300u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &value).unwrap();
    let spec = SourceSpec::File(path.clone());
    for reads in 1..=3 {
        match lookup(&spec, "x", ctx()).await {
            Ok(Lookup::Found(v)) => assert_eq!(v.expose(), &value[..]),
            _ => panic!("expected the file's bytes"),
        }
        assert_eq!(file::read_modes().of(&path), file::ReadMode::LocalDisk);
        // The first read learns the file system in the pool; the others stay on the worker.
        assert_eq!(file::pool_reads(&path), 1, "after {reads} reads");
    }

    // Cached: read whole without waiting.
    match file::read_capped(&path, false, file::Place::Inline) {
        file::Outcome::Done(Ok(Lookup::Found(v))) => assert_eq!(v.expose(), &value[..]),
        file::Outcome::Done(_) => panic!("expected the file's bytes"),
        file::Outcome::WouldWait(_) | file::Outcome::Elsewhere => {
            panic!("a cached file was not read inline")
        }
    }

    // Evicted from the page cache except its first `cached` bytes: the inline read stops
    // before waiting, having read exactly what was cached, and the rest is read on the same
    // descriptor from that offset. Whether a real read of an evicted page waits is the
    // kernel's call (a fast disk can finish the readahead the read itself starts before the
    // read looks; CI met 20 evictions in a row read inline under heavy I/O), so the inline read
    // is told where the page cache ends.
    for cached in [0, 4096, 5000] {
        file::CACHED_ONLY.set(Some(cached));
        let outcome = file::read_capped(&path, false, file::Place::Inline);
        file::CACHED_ONLY.set(None);
        let file::Outcome::WouldWait(pending) = outcome else {
            panic!("a file not all in the page cache was read without waiting ({cached} cached)")
        };
        assert_eq!(
            pending.read_so_far(),
            cached,
            "inline, only the cached bytes are read"
        );
        match pending.read(file::Wait::Yes).done() {
            Ok(Lookup::Found(v)) => assert_eq!(v.expose(), &value[..], "{cached} cached"),
            _ => panic!("expected the file's bytes from the rest of the read"),
        }
    }
    // Really evicted (written back first, so its pages are clean), except its first page when
    // `first_page`, read back with readahead off: whichever way the kernel answers the inline
    // read, the bytes are the file's.
    let evict = |first_page: bool| {
        let f = std::fs::File::open(&path).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        if first_page {
            let g = std::fs::File::open(&path).unwrap();
            rustix::fs::fadvise(&g, 0, None, rustix::fs::Advice::Random).unwrap();
            let mut page = [0u8; 4096];
            std::os::unix::fs::FileExt::read_exact_at(&g, &mut page, 0).unwrap();
        }
    };
    for first_page in [false, true] {
        evict(first_page);
        let got = match file::read_capped(&path, false, file::Place::Inline) {
            file::Outcome::WouldWait(pending) => {
                assert!(
                    pending.read_so_far() < value.len(),
                    "stopped inside the file"
                );
                pending.read(file::Wait::Yes).done()
            }
            file::Outcome::Done(got) => got,
            file::Outcome::Elsewhere => panic!("a local disk file was sent elsewhere"),
        };
        match got {
            Ok(Lookup::Found(v)) => assert_eq!(v.expose(), &value[..]),
            _ => panic!("expected the file's bytes after eviction"),
        }
    }
    // And through `lookup`, which hands the rest to the blocking pool: on the same
    // descriptor, from where the inline read stopped.
    for (cached, pool_reads) in [(4096, 2), (0, 3)] {
        file::CACHED_ONLY.set(Some(cached));
        let got = lookup(&spec, "x", ctx()).await;
        file::CACHED_ONLY.set(None);
        match got {
            Ok(Lookup::Found(v)) => assert_eq!(v.expose(), &value[..]),
            _ => panic!("expected the file's bytes"),
        }
        assert_eq!(
            file::pool_reads(&path),
            pool_reads,
            "the rest of the read after {cached} cached bytes went to the pool"
        );
    }
    // With all of it cached (and more), it stays inline.
    file::CACHED_ONLY.set(Some(1 << 20));
    let got = lookup(&spec, "x", ctx()).await;
    file::CACHED_ONLY.set(None);
    assert!(matches!(got, Ok(Lookup::Found(v)) if v.expose() == &value[..]));
    assert_eq!(file::pool_reads(&path), 3, "a cached file stays inline");

    // The path now names a file on tmpfs (through a symlink): the inline read sees another
    // file system and reads it as a memory file system's, without RWF_NOWAIT (which tmpfs may
    // not take) and without giving up on inline reads for the path.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let moved = shm.path().join("token");
    std::fs::write(&moved, b"moved to tmpfs").unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&moved, &path).unwrap();
    // (One of the first reads after the move may take the pool: following a new symlink
    // updates its access time once, and an open from the kernel's caches alone does not write.)
    let before_move = file::pool_reads(&path);
    let mut settled = 0;
    for reads in 1..=5 {
        match lookup(&spec, "x", ctx()).await {
            Ok(Lookup::Found(v)) => assert_eq!(v.expose(), b"moved to tmpfs"),
            _ => panic!("expected the moved file's bytes"),
        }
        assert_eq!(file::read_modes().of(&path), file::ReadMode::Memory);
        match reads {
            1..=2 => {}
            3 => settled = file::pool_reads(&path),
            _ => assert_eq!(
                file::pool_reads(&path),
                settled,
                "read inline after the move"
            ),
        }
    }
    assert!(
        settled - before_move <= 1,
        "{} pool reads after the move",
        settled - before_move
    );

    // And now a file on procfs, read inline on neither: from then on the path goes to the
    // blocking pool whole (what procfs answers, a size of 0 and then more, does not matter).
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/proc/version", &path).unwrap();
    let before = file::pool_reads(&path);
    for _ in 0..3 {
        let _ = lookup(&spec, "x", ctx()).await;
    }
    assert_eq!(file::pool_reads(&path), before + 3);
    assert_eq!(file::read_modes().of(&path), file::ReadMode::Pool);
}
