//! The secret's bytes appear nowhere: not in the image, its history, the build cache, the
//! broker's trace-level log or buildx's output.

use std::process::Command;

use sha2_check::sha256_hex;

use crate::harness::*;

mod sha2_check {
    /// SHA-256 via the host's sha256sum, so the test does not trust the crate under test.
    pub fn sha256_hex(data: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}

#[test]
fn secret_bytes_are_not_in_image_history_cache_or_logs() {
    if skip() {
        return;
    }
    let value = unique_secret("leak");
    let broker = Broker::start(BrokerOptions {
        policy: "[secrets.tok]\nsources = [\"env:TOK\"]\nrequired = true\n",
        env: vec![("TOK", &value)],
        rust_log: "trace",
        ..Default::default()
    });
    let tag = format!("buildbroker-test/leak:{}", std::process::id());
    let build = Build::new(format!(
        "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id=tok sha256sum /run/secrets/tok | cut -d' ' -f1 > /hash\n"
    ))
    .tag(&tag)
    .run(&broker);
    build.assert_ok();

    let engine = engine();
    let docker = |args: &[&str]| {
        let out = Command::new("docker")
            .env("DOCKER_HOST", engine)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let saved = docker(&["save", &tag]);
    let history = docker(&["history", "--no-trunc", &tag]);
    let root = String::from_utf8(docker(&["info", "--format", "{{.DockerRootDir}}"])).unwrap();
    docker(&["rmi", &tag]);

    // Positive control: the secret did reach the build (its hash is in the image).
    let expected_hash = sha256_hex(value.as_bytes());
    assert!(
        contains_bytes(&saved, expected_hash.as_bytes()),
        "the image should hold the secret's hash"
    );

    let needle = value.as_bytes();
    assert!(
        !contains_bytes(&saved, needle),
        "secret found in `docker save`"
    );
    assert!(
        !contains_bytes(&history, needle),
        "secret found in `docker history`"
    );
    assert!(
        !contains_bytes(build.log().as_bytes(), needle),
        "secret found in buildx output"
    );
    let log = broker.log();
    assert!(log.contains("TRACE"), "the broker ran at trace level");
    assert!(
        !contains_bytes(log.as_bytes(), needle),
        "secret found in the broker's trace log"
    );
    assert!(
        !contains_bytes(broker.audit().as_bytes(), needle),
        "secret found in the audit log"
    );
    assert!(broker.audit().contains("\"id\":\"tok\""));

    // The engine's own storage (build cache, snapshots, metadata).
    // Other tests build concurrently, so files may vanish under grep (exit 2, "no such
    // file"): what counts is that no file was listed as containing the value.
    let grep = Command::new("grep")
        .args(["-rlFs", "--", &value])
        .arg(root.trim())
        .output()
        .unwrap();
    assert_ne!(
        grep.status.code(),
        Some(0),
        "grep found the secret in the engine's data root"
    );
    assert!(
        grep.stdout.is_empty(),
        "secret found in the engine's data root: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

/// design.md §11: no secret bytes in a core image of the broker taken after builds finished.
/// The value comes from a file (an env: value would sit in the process environment block for
/// the daemon's whole life, by design), the Dockerfile only hashes it, and the file is removed
/// before the core is taken, so any copy in the image is one the broker kept. A template
/// renders it into a file too, so the rendered copy is searched for as well.
#[test]
fn secret_bytes_are_not_in_a_core_image_of_the_broker_after_builds() {
    if skip() {
        return;
    }
    let value = unique_secret("core");
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "token", value.as_bytes());
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[secrets.tok]\nsources = [\"file:{}\"]\n[secrets.cached]\nsources = [\"file:{}\"]\ncache_ttl = \"100ms\"\n\
             [secrets.rendered]\ntemplate = \"machine h password {{{{tok}}}}\\n\"\n",
            file.display(),
            file.display()
        ),
        ..Default::default()
    });
    let rendered = format!("machine h password {value}\n");
    for (id, expected) in [
        ("tok", value.as_str()),
        ("cached", value.as_str()),
        ("rendered", rendered.as_str()),
        ("tok", value.as_str()),
    ] {
        let expected_hash = sha256_hex(expected.as_bytes());
        let build = Build::new(format!(
            "FROM {BASE_IMAGE}\nRUN --mount=type=secret,id={id},required=true sha256sum /run/secrets/{id} | cut -d' ' -f1 > /h\nFROM scratch\nCOPY --from=0 /h /\n"
        ))
        .run(&broker);
        build.assert_ok();
        assert_eq!(
            build.text("h").trim(),
            expected_hash,
            "the secret reached the build"
        );
    }
    std::fs::remove_file(&file).unwrap();
    // Let the cached entry expire and the 5 s sweep drop it.
    std::thread::sleep(std::time::Duration::from_secs(6));

    let core_prefix = dir.path().join("core");
    let out = Command::new("gcore")
        .arg("-o")
        .arg(&core_prefix)
        .arg(broker.pid().to_string())
        .output()
        .expect("gcore (package gdb) must be installed: run tests/testbed/setup.sh");
    let core_path = dir.path().join(format!("core.{}", broker.pid()));
    assert!(
        core_path.exists(),
        "gcore made no core: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let core = std::fs::read(&core_path).unwrap();
    assert!(
        core.len() > 1_000_000,
        "a real core image ({} bytes)",
        core.len()
    );
    // Positive control: the core holds the broker's memory (the policy text names the file).
    assert!(
        contains_bytes(&core, file.display().to_string().as_bytes()),
        "the core should contain the policy's file path"
    );
    assert!(
        !contains_bytes(&core, value.as_bytes()),
        "secret bytes found in the broker's core image"
    );
}
