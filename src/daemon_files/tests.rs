//! The checks, table-tested on plain metadata, and the real calls on a temporary directory.
//! The tests run as root (as CI does): they chown to uid 65534 to play another user.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;

use super::*;

const OTHER: u32 = 65534;

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn dir_meta(uid: u32, mode: u32) -> Meta {
    Meta {
        file_type: FileType::Directory,
        mode,
        uid,
        dev: 0,
        ino: 0,
        nlink: 2,
    }
}

#[test]
fn the_directory_rules() {
    let p = Path::new("/x");
    // (owner, mode, passes as the holder, passes as an ancestor), daemon uid 1000
    let table = [
        (1000, 0o700, true, true),
        (1000, 0o755, true, true),
        (1000, 0o775, false, true), // group-writable: not for the holder
        (1000, 0o777, false, false),
        (1000, 0o1777, false, true), // sticky like /tmp: fine above, never the holder
        (0, 0o755, false, true),     // root's: fine above, not ours to hold a socket
        (0, 0o1777, false, true),
        (1001, 0o755, false, false), // another user's
    ];
    for (uid, mode, holder, ancestor) in table {
        let m = dir_meta(uid, mode);
        assert_eq!(
            check_holder(&m, p, 1000).is_ok(),
            holder,
            "holder {uid} {mode:o}"
        );
        assert_eq!(
            check_ancestor(&m, p, 1000).is_ok(),
            ancestor,
            "ancestor {uid} {mode:o}"
        );
    }
}

#[test]
fn refusals_name_the_path_and_the_fix() {
    let e = check_holder(&dir_meta(1000, 0o777), Path::new("/run/x"), 1000).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("/run/x") && m.contains("chmod go-w /run/x"),
        "{m}"
    );
    let e = check_holder(&dir_meta(0, 0o755), Path::new("/run/x"), 1000).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("uid 0") && m.contains("chown 1000 /run/x"),
        "{m}"
    );
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("bb-df-").tempdir().unwrap()
}

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn missing_directories_are_made_with_exact_modes_whatever_the_umask() {
    let t = tmp();
    let deep = t.path().join("a/b/c");
    open_dir(
        &deep,
        euid(),
        Some(Create {
            mode: 0o750,
            group: Some(0),
        }),
    )
    .unwrap();
    assert_eq!(mode_of(&t.path().join("a")), 0o755);
    assert_eq!(mode_of(&deep), 0o750);
    assert_eq!(std::fs::metadata(&deep).unwrap().gid(), 0);
}

#[test]
fn a_world_writable_or_foreign_directory_is_refused_and_left_alone() {
    let t = tmp();
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = open_dir(
        &open,
        euid(),
        Some(Create {
            mode: 0o750,
            group: None,
        }),
    )
    .unwrap_err();
    assert!(matches!(e, PathError::Writable { .. }), "{e}");
    assert_eq!(mode_of(&open), 0o777, "nothing chmod-ed");

    let theirs = t.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(OTHER), None).unwrap();
    let e = open_dir(&theirs, euid(), None).unwrap_err();
    assert!(e.to_string().contains("uid 65534"), "{e}");
    assert_eq!(
        std::fs::metadata(&theirs).unwrap().uid(),
        OTHER,
        "nothing chown-ed"
    );
}

#[test]
fn symlinks_on_the_way_are_followed_only_when_root_or_we_made_them() {
    let t = tmp();
    let real = t.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink("real", t.path().join("ours")).unwrap();
    open_dir(&t.path().join("ours"), euid(), None).unwrap();
    // A relative link with .. resolves too.
    std::fs::create_dir(t.path().join("sub")).unwrap();
    std::os::unix::fs::symlink("../real", t.path().join("sub/up")).unwrap();
    open_dir(&t.path().join("sub/up"), euid(), None).unwrap();

    let planted = t.path().join("planted");
    std::os::unix::fs::symlink(&real, &planted).unwrap();
    std::os::unix::fs::lchown(&planted, Some(OTHER), None).unwrap();
    let e = open_dir(
        &planted.join("x"),
        euid(),
        Some(Create {
            mode: 0o750,
            group: None,
        }),
    )
    .unwrap_err();
    assert!(matches!(e, PathError::UntrustedSymlink { .. }), "{e}");
    assert!(!real.join("x").exists(), "nothing made through the link");
}

fn spec() -> SocketSpec {
    SocketSpec {
        mode: 0o660,
        group: Some(0),
        dir_mode: 0o750,
    }
}

#[tokio::test]
async fn a_socket_is_bound_with_its_mode_and_group_and_removed_when_dropped() {
    let t = tmp();
    let path = t.path().join("run/docker.sock");
    let (listener, file) = bind_socket(&path, euid(), spec()).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), 0);
    std::os::unix::net::UnixStream::connect(&path).expect("reachable at its final path");
    // The private bind directory is gone.
    let names: Vec<_> = std::fs::read_dir(t.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("docker.sock")]);
    drop(listener);
    drop(file);
    assert!(!path.exists());
}

#[tokio::test]
async fn a_dead_socket_of_ours_is_replaced_a_live_one_refused() {
    let t = tmp();
    let path = t.path().join("s.sock");
    drop(UnixListener::bind(&path).unwrap()); // dead, ours
    let (_l, _f) = bind_socket(&path, euid(), spec()).unwrap();
    let e = bind_socket(&path, euid(), spec()).err().unwrap();
    assert!(matches!(e, PathError::InUse { .. }), "{e}");
}

#[test]
fn a_foreign_dead_socket_a_symlink_and_a_plain_file_are_refused_untouched() {
    let t = tmp();
    let sock = t.path().join("theirs.sock");
    drop(UnixListener::bind(&sock).unwrap());
    std::os::unix::fs::lchown(&sock, Some(OTHER), None).unwrap();
    let e = bind_socket(&sock, euid(), spec()).err().unwrap();
    assert!(
        matches!(e, PathError::ForeignSocket { .. }) && e.to_string().contains("uid 65534"),
        "{e}"
    );
    assert!(sock.exists());

    let target = t.path().join("target");
    std::fs::write(&target, b"keep").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = t.path().join("link.sock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = bind_socket(&link, euid(), spec()).err().unwrap();
    assert!(matches!(e, PathError::Symlink { .. }), "{e}");
    assert_eq!(mode_of(&target), 0o600);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");

    let e = bind_socket(&target, euid(), spec()).err().unwrap();
    assert!(matches!(e, PathError::NotASocket { .. }), "{e}");
}

#[test]
fn a_too_long_socket_path_is_refused_before_anything_is_made() {
    let long = PathBuf::from(format!("/tmp/{}/s.sock", "x".repeat(120)));
    let e = bind_socket(&long, euid(), spec()).err().unwrap();
    assert!(matches!(e, PathError::TooLong { .. }), "{e}");
}

#[test]
fn the_log_appends_and_refuses_what_it_must_not_write() {
    let t = tmp();
    let log = t.path().join("logs/audit.jsonl");
    {
        let mut f = open_log(&log, euid()).unwrap();
        std::io::Write::write_all(&mut f, b"one\n").unwrap();
    }
    assert_eq!(mode_of(&log), 0o600);
    {
        let mut f = open_log(&log, euid()).unwrap();
        std::io::Write::write_all(&mut f, b"two\n").unwrap();
    }
    assert_eq!(
        std::fs::read(&log).unwrap(),
        b"one\ntwo\n",
        "appended, never truncated"
    );

    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o620)).unwrap();
    let e = open_log(&log, euid()).err().unwrap();
    assert!(e.to_string().contains("chmod g-w"), "{e}");
    assert_eq!(mode_of(&log), 0o620, "nothing chmod-ed");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o600)).unwrap();

    std::os::unix::fs::chown(&log, Some(OTHER), None).unwrap();
    let e = open_log(&log, euid()).err().unwrap();
    assert!(e.to_string().contains("uid 65534"), "{e}");
    std::os::unix::fs::chown(&log, Some(euid()), None).unwrap();

    std::fs::hard_link(&log, t.path().join("logs/second")).unwrap();
    let e = open_log(&log, euid()).err().unwrap();
    assert!(matches!(e, PathError::HardLinked { links: 2, .. }), "{e}");

    let fifo = t.path().join("logs/fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let e = open_log(&fifo, euid()).err().unwrap();
    assert!(matches!(e, PathError::NotARegularFile { .. }), "{e}");

    let target = t.path().join("precious");
    std::fs::write(&target, b"untouched").unwrap();
    let link = t.path().join("logs/link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = open_log(&link, euid()).err().unwrap();
    assert!(matches!(e, PathError::Symlink { .. }), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"untouched");
}

#[test]
fn a_root_daemon_wants_a_policy_only_root_can_change() {
    let t = tmp();
    let dir = t.path().join("etc");
    std::fs::create_dir(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "").unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();
    check_policy_file(&policy, 0).unwrap();

    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o664)).unwrap();
    let e = check_policy_file(&policy, 0).unwrap_err();
    assert!(e.to_string().contains("chmod g-w"), "{e}");
    assert!(
        check_policy_file(&policy, 1000).is_ok(),
        "non-root daemons are not held to it"
    );
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o644)).unwrap();

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    let e = check_policy_file(&policy, 0).unwrap_err();
    assert!(e.to_string().contains(&*dir.to_string_lossy()), "{e}");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    std::os::unix::fs::chown(&policy, Some(OTHER), None).unwrap();
    assert!(check_policy_file(&policy, 0).is_err());
    std::os::unix::fs::chown(&policy, Some(0), None).unwrap();

    // A root-owned link to a root-owned file is fine; another user's link is not.
    let link = t.path().join("link.toml");
    std::os::unix::fs::symlink(&policy, &link).unwrap();
    check_policy_file(&link, 0).unwrap();
    std::os::unix::fs::lchown(&link, Some(OTHER), None).unwrap();
    assert!(matches!(
        check_policy_file(&link, 0),
        Err(PathError::UntrustedSymlink { .. })
    ));
}
