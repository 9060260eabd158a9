//! SSH agent forwarding through buildbroker, end to end: real `docker buildx build` → the
//! real `buildbroker` → the test bed's dockerd, with OpenSSH everywhere (`ssh-agent`, `sshd`
//! on loopback high ports, and `ssh`/`ssh-add` inside the build). Builds that log in use
//! `--network=host` to reach the sshd.

use std::os::unix::fs::PermissionsExt;

use crate::harness::*;
use crate::sshbed::*;

/// A Dockerfile on the ssh image: the context's files land in `/` (`kh` is the known_hosts
/// file, `/kh`), the RUN line runs `script` with `mounts`, and everything the script writes
/// under `/o` is exported.
fn dockerfile(mounts: &str, script: &str) -> String {
    format!(
        "FROM {SSH_IMAGE}\nCOPY . /\nRUN {mounts} mkdir -p /o; {script}\n\
         FROM scratch\nCOPY --from=0 /o /\n"
    )
}

fn known_hosts(servers: &[&Sshd]) -> String {
    servers.iter().map(|s| s.known_hosts_line()).collect()
}

/// Asserts a login written by `Sshd::login` reached `server`'s forced command.
#[track_caller]
fn assert_logged_in(build: &BuildResult, out: &str, server: &str) {
    assert_eq!(
        build.text(&format!("{out}.rc")).trim(),
        "0",
        "{out}: ssh failed: {}",
        build.text(&format!("{out}.err"))
    );
    assert_eq!(build.text(out), format!("hello-from-{server}\n"), "{out}");
}

/// Asserts a login written by `Sshd::login` was refused (ssh exits 255, nothing ran).
#[track_caller]
fn assert_refused(build: &BuildResult, out: &str) {
    assert_eq!(
        build.text(&format!("{out}.rc")).trim(),
        "255",
        "{out}: ssh should have been refused; it printed {:?}",
        build.text(out)
    );
    assert!(!build.text(out).contains("hello-from"), "{out}");
}

#[test]
fn filtered_upstream_agent_lists_and_signs_only_the_allowed_key() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let allowed = Key::new(dir.path(), "allowed-key", "");
    let other = Key::new(dir.path(), "other-key", "");
    let agent = Agent::start(dir.path());
    agent.add(&allowed);
    agent.add(&other);
    // The server accepts both keys and says which one logged in.
    let sshd = Sshd::start_with_key_commands(
        "server",
        &format!(
            "command=\"echo as-allowed\" {}\ncommand=\"echo as-other\" {}\n",
            allowed.public, other.public
        ),
    );
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[ssh.default]\nagent = \"env:SSH_AUTH_SOCK\"\nkeys = [\"{}\"]\n",
            allowed.fingerprint
        ),
        env: vec![("SSH_AUTH_SOCK", agent.socket.to_str().unwrap())],
        ..Default::default()
    });
    let ssh = |extra: &str, out: &str| {
        format!(
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/kh \
             -o LogLevel=ERROR {extra} -p {} root@127.0.0.1 > {out} 2>&1; echo $? > {out}.rc",
            sshd.port
        )
    };
    let build = Build::new(dockerfile(
        "--mount=type=ssh,required=true",
        &format!(
            "ssh-add -l > /o/keys; {}; {}",
            ssh("", "/o/default"),
            // Ask for the other key explicitly: ssh only uses agent keys the agent lists.
            ssh("-o IdentitiesOnly=yes -i /other.pub", "/o/other")
        ),
    ))
    .file("kh", known_hosts(&[&sshd]))
    .file("other.pub", other.public.clone())
    .network("host")
    .run(&broker);
    build.assert_ok();

    let keys = build.text("keys");
    assert_eq!(keys.lines().count(), 1, "exactly one key listed: {keys}");
    assert!(keys.contains(&allowed.fingerprint), "{keys}");
    assert!(!keys.contains(&other.fingerprint), "{keys}");
    assert_eq!(
        build.text("default.rc").trim(),
        "0",
        "{}",
        build.text("default")
    );
    assert_eq!(build.text("default"), "as-allowed\n");
    assert_eq!(
        build.text("other.rc").trim(),
        "255",
        "{}",
        build.text("other")
    );
    assert!(!build.text("other").contains("as-other"));

    // The upstream agent still holds both keys; the audit names the allowed key and the host.
    let upstream = agent.list();
    assert!(
        upstream.contains(&allowed.fingerprint) && upstream.contains(&other.fingerprint),
        "{upstream}"
    );
    let audit = broker.audit();
    let signed: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"event\":\"ssh\"") && l.contains("\"decision\":\"signed\""))
        .collect();
    assert_eq!(signed.len(), 1, "{audit}");
    assert!(signed[0].contains(&allowed.fingerprint), "{audit}");
    assert!(signed[0].contains(&sshd.host_key.fingerprint), "{audit}");
    assert!(signed[0].contains("\"id\":\"default\""), "{audit}");
    assert!(!audit.contains(&other.fingerprint), "{audit}");
}

#[test]
fn seed_pattern_two_ids_each_reach_only_their_forge() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    // github: a key buildbroker holds, pinned to the github server by known_hosts name.
    // gitlab: a key in an upstream agent, pinned to the gitlab server by host key fingerprint.
    let github_key = Key::new(dir.path(), "github-deploy", "");
    let gitlab_key = Key::new(dir.path(), "gitlab-deploy", "");
    let agent = Agent::start(dir.path());
    agent.add(&gitlab_key);
    // Both servers accept both keys: only the policy keeps each id to its own forge.
    let authorized = format!("{}\n{}\n", github_key.public, gitlab_key.public);
    let github = Sshd::start("github", &authorized);
    let gitlab = Sshd::start("gitlab", &authorized);
    let kh = known_hosts(&[&github, &gitlab]);
    let kh_path = write_file(dir.path(), "known_hosts", kh.as_bytes());
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[ssh.github]\nprivate_keys = [\"file:{}\"]\nhosts = [\"{}\"]\nknown_hosts = \"{}\"\n\
             [ssh.gitlab]\nagent = \"{}\"\nkeys = [\"{}\"]\nhosts = [\"{}\"]\n",
            github_key.path.display(),
            github.host_name(),
            kh_path.display(),
            agent.socket.display(),
            gitlab_key.fingerprint,
            gitlab.host_key.fingerprint,
        ),
        ..Default::default()
    });
    let script = [
        github.login("/run/gh.sock", "/o/gh-github"),
        gitlab.login("/run/gh.sock", "/o/gh-gitlab"),
        gitlab.login("/run/gl.sock", "/o/gl-gitlab"),
        github.login("/run/gl.sock", "/o/gl-github"),
    ]
    .join("; ");
    let build = Build::new(dockerfile(
        "--mount=type=ssh,id=github,target=/run/gh.sock,required=true \
         --mount=type=ssh,id=gitlab,target=/run/gl.sock,required=true",
        &script,
    ))
    .file("kh", kh)
    .network("host")
    .run(&broker);
    build.assert_ok();
    assert_logged_in(&build, "gh-github", "github");
    assert_logged_in(&build, "gl-gitlab", "gitlab");
    assert_refused(&build, "gh-gitlab");
    assert_refused(&build, "gl-github");

    let audit = broker.audit();
    for (id, key, host) in [
        ("github", &github_key, &github),
        ("gitlab", &gitlab_key, &gitlab),
    ] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(&format!("\"id\":\"{id}\""))
                    && l.contains(&key.fingerprint)
                    && l.contains(&host.host_key.fingerprint)
                    && l.contains("\"decision\":\"signed\"")),
            "{id}: {audit}"
        );
    }
    assert!(
        !audit.contains("\"decision\":\"refused\""),
        "keys are hidden, never tried: {audit}"
    );
}

#[test]
fn destination_constraint_signs_for_the_allowed_sshd_and_not_the_other() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new(dir.path(), "deploy", "");
    let allowed = Sshd::start("allowed", &format!("{}\n", key.public));
    let other = Sshd::start("other", &format!("{}\n", key.public));
    // The same key twice: `pinned` may only sign for the allowed server, `free` anywhere —
    // so a refusal through `pinned` is the constraint, not the server.
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[ssh.pinned]\nprivate_keys = [\"file:{k}\"]\nhosts = [\"{fp}\"]\n\
             [ssh.free]\nprivate_keys = [\"file:{k}\"]\n",
            k = key.path.display(),
            fp = allowed.host_key.fingerprint,
        ),
        ..Default::default()
    });
    let script = [
        allowed.login("/run/pinned.sock", "/o/pinned-allowed"),
        other.login("/run/pinned.sock", "/o/pinned-other"),
        other.login("/run/free.sock", "/o/free-other"),
        // Unbound signing: ssh-keygen -Y sign asks the agent directly, with no session-bind.
        "echo data > /tmp/d; SSH_AUTH_SOCK=/run/pinned.sock ssh-keygen -Y sign -n file -f /key.pub /tmp/d \
         > /o/unbound 2>&1; echo $? > /o/unbound.rc"
            .to_string(),
    ]
    .join("; ");
    let build = Build::new(dockerfile(
        "--mount=type=ssh,id=pinned,target=/run/pinned.sock,required=true \
         --mount=type=ssh,id=free,target=/run/free.sock,required=true",
        &script,
    ))
    .file("kh", known_hosts(&[&allowed, &other]))
    .file("key.pub", key.public.clone())
    .network("host")
    .run(&broker);
    build.assert_ok();
    assert_logged_in(&build, "pinned-allowed", "allowed");
    assert_refused(&build, "pinned-other");
    assert_logged_in(&build, "free-other", "other");
    assert_ne!(
        build.text("unbound.rc").trim(),
        "0",
        "an unbound signature with a constrained key must be refused: {}",
        build.text("unbound")
    );

    let audit = broker.audit();
    assert!(
        audit.lines().any(|l| l.contains("\"id\":\"pinned\"")
            && l.contains("\"decision\":\"refused\"")
            && l.contains("not bound to a host")),
        "the unbound sign is audited as refused: {audit}"
    );
    assert!(
        !audit.lines().any(|l| l.contains("\"id\":\"pinned\"")
            && l.contains("\"decision\":\"signed\"")
            && l.contains(&other.host_key.fingerprint)),
        "{audit}"
    );
    assert!(
        broker
            .log()
            .contains("ssh id's keys hidden on this connection"),
        "bound to the other server, the pinned key was not even listed"
    );
}

#[test]
fn broker_held_encrypted_key_authenticates_and_never_reaches_the_logs() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let passphrase = unique_secret("passphrase");
    let key = Key::new(dir.path(), "held", &passphrase);
    let sshd = Sshd::start("held", &format!("{}\n", key.public));
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[ssh.deploy]\nprivate_keys = [\"file:{}\"]\npassphrase = \"env:DEPLOY_PASSPHRASE\"\n",
            key.path.display()
        ),
        env: vec![("DEPLOY_PASSPHRASE", &passphrase)],
        rust_log: "trace",
        ..Default::default()
    });
    let build = Build::new(dockerfile(
        "--mount=type=ssh,id=deploy,required=true",
        &format!(
            "ssh-add -l > /o/keys; {}",
            sshd.login("$SSH_AUTH_SOCK", "/o/login")
        ),
    ))
    .file("kh", known_hosts(&[&sshd]))
    .network("host")
    .run(&broker);
    build.assert_ok();
    assert_logged_in(&build, "login", "held");
    assert!(build.text("keys").contains(&key.fingerprint));

    // The private key's base64 body, line by line, and the passphrase: nowhere.
    let private = std::fs::read_to_string(&key.path).unwrap();
    let body: Vec<&str> = private
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(body.len() >= 3, "{private}");
    let log = broker.log();
    assert!(log.contains("TRACE"), "the broker ran at trace level");
    for (what, text) in [
        ("broker trace log", log.as_str()),
        ("audit log", &broker.audit()),
        ("buildx output", &build.log()),
    ] {
        for line in &body {
            assert!(!text.contains(line), "private key material in the {what}");
        }
        assert!(!text.contains(&passphrase), "passphrase in the {what}");
    }
}

#[test]
fn add_remove_and_lock_from_a_build_are_refused() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let allowed = Key::new(dir.path(), "allowed-key", "");
    let agent = Agent::start(dir.path());
    agent.add(&allowed);
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[ssh.default]\nagent = \"{}\"\nkeys = [\"{}\"]\n",
            agent.socket.display(),
            allowed.fingerprint
        ),
        ..Default::default()
    });
    let intruder = Key::new(dir.path(), "intruder", "");
    let step = |cmd: &str, out: &str| format!("{cmd} > /o/{out} 2>&1; echo $? > /o/{out}.rc");
    let script = [
        "chmod 600 /intruder".to_string(),
        step("ssh-add /intruder", "add"),
        step("ssh-add -D", "remove_all"),
        step("ssh-add -d /intruder.pub", "remove"),
        "printf '#!/bin/sh\\necho hunter2\\n' > /askpass; chmod +x /askpass".to_string(),
        step(
            "SSH_ASKPASS=/askpass SSH_ASKPASS_REQUIRE=force ssh-add -x",
            "lock",
        ),
        step("ssh-add -l", "list_after"),
    ]
    .join("; ");
    let build = Build::new(dockerfile("--mount=type=ssh,required=true", &script))
        .file("kh", "")
        .file("intruder", std::fs::read(&intruder.path).unwrap())
        .file("intruder.pub", intruder.public.clone())
        .run(&broker);
    build.assert_ok();
    for (out, message) in [
        ("add", "agent refused operation"),
        ("remove_all", "Failed to remove all identities"),
        ("remove", "agent refused operation"),
        ("lock", "Failed to lock agent"),
    ] {
        assert_ne!(
            build.text(&format!("{out}.rc")).trim(),
            "0",
            "{out}: {}",
            build.text(out)
        );
        assert!(
            build.text(out).contains(message),
            "{out}: {}",
            build.text(out)
        );
    }
    let after = build.text("list_after");
    assert_eq!(build.text("list_after.rc").trim(), "0", "{after}");
    assert!(after.contains(&allowed.fingerprint), "{after}");
    assert!(!after.contains(&intruder.fingerprint), "{after}");
    // The upstream agent was not touched.
    let upstream = agent.list();
    assert!(upstream.contains(&allowed.fingerprint), "{upstream}");
    assert!(!upstream.contains(&intruder.fingerprint), "{upstream}");
}

#[test]
fn standalone_socket_serves_buildx_ssh_flag_and_ssh_add_on_the_host() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let allowed = Key::new(dir.path(), "allowed-key", "");
    let other = Key::new(dir.path(), "other-key", "");
    let agent = Agent::start(dir.path());
    agent.add(&allowed);
    agent.add(&other);
    let sshd = Sshd::start("socket", &format!("{}\n", allowed.public));
    let socket = dir.path().join("ci.sock");
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[ssh.ci]\nagent = \"env:SSH_AUTH_SOCK\"\nkeys = [\"{}\"]\nsocket = \"{}\"\n",
            allowed.fingerprint,
            socket.display()
        ),
        env: vec![("SSH_AUTH_SOCK", agent.socket.to_str().unwrap())],
        ..Default::default()
    });
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "agent socket mode");

    // A person on the host.
    let listed = list_agent(&socket);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.contains(&allowed.fingerprint) && listed.contains("allowed-key"),
        "{listed}"
    );

    // Any builder: straight to the engine, buildx's own --ssh provider reads the socket.
    let build = Build::new(dockerfile(
        "--mount=type=ssh,required=true",
        &format!(
            "ssh-add -l > /o/keys; {}",
            sshd.login("$SSH_AUTH_SOCK", "/o/login")
        ),
    ))
    .file("kh", known_hosts(&[&sshd]))
    .arg(format!("--ssh=default={}", socket.display()))
    .network("host")
    .run_against(engine());
    build.assert_ok();
    let keys = build.text("keys");
    assert_eq!(keys.lines().count(), 1, "{keys}");
    assert!(keys.contains(&allowed.fingerprint), "{keys}");
    assert_logged_in(&build, "login", "socket");
    assert!(
        broker
            .audit()
            .lines()
            .any(|l| l.contains("\"via\":\"socket\"")
                && l.contains(&allowed.fingerprint)
                && l.contains("\"decision\":\"signed\"")),
        "{}",
        broker.audit()
    );
}

#[test]
fn check_agent_names_the_id_to_the_build_and_the_missing_socket_to_the_log() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-agent-here.sock");
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[ssh.builder]\nagent = \"{}\"\nkeys = [\"comment:anything\"]\n",
            missing.display()
        ),
        ..Default::default()
    });
    let required = Build::new(dockerfile(
        "--mount=type=ssh,id=builder,required=true",
        "ssh-add -l > /o/keys",
    ))
    .file("kh", "")
    .run(&broker);
    assert!(!required.success(), "{}", required.log());
    let log = required.log();
    assert!(
        log.contains("ssh id \\\"builder\\\"") || log.contains("ssh id \"builder\""),
        "{log}"
    );
    // The socket path is the daemon log's business, not the build output's.
    assert!(!log.contains(missing.to_str().unwrap()), "{log}");
    assert!(broker.log().contains(missing.to_str().unwrap()));

    // An optional mount of the same id is skipped, as BuildKit does for a missing agent.
    let optional = Build::new(dockerfile(
        "--mount=type=ssh,id=builder",
        // The frontend sets SSH_AUTH_SOCK either way; the socket exists only when mounted.
        "test -S \"$SSH_AUTH_SOCK\" && echo mounted > /o/m || echo skipped > /o/m",
    ))
    .file("kh", "")
    .run(&broker);
    optional.assert_ok();
    assert_eq!(optional.text("m"), "skipped\n");
}

#[test]
fn unknown_ids_go_to_the_client_or_are_denied() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new(dir.path(), "client-key", "");
    let agent = Agent::start(dir.path());
    agent.add(&key);
    let flag = format!("--ssh=extra={}", agent.socket.display());
    let list = dockerfile(
        "--mount=type=ssh,id=extra,required=true",
        "ssh-add -l > /o/keys",
    );

    let client = Broker::start(BrokerOptions {
        server: "unknown_ssh = \"client\"",
        ..Default::default()
    });
    let build = Build::new(list.clone())
        .file("kh", "")
        .arg(&flag)
        .run(&client);
    build.assert_ok();
    assert!(
        build.text("keys").contains(&key.fingerprint),
        "relayed to buildx's own provider"
    );

    let deny = Broker::start(BrokerOptions {
        server: "unknown_ssh = \"deny\"",
        ..Default::default()
    });
    let build = Build::new(list).file("kh", "").arg(&flag).run(&deny);
    assert!(!build.success(), "{}", build.log());
    assert!(
        build.log().contains("is not in the policy"),
        "{}",
        build.log()
    );
}

#[test]
fn several_agent_connections_at_once_in_one_run() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new(dir.path(), "busy", "");
    let agent = Agent::start(dir.path());
    agent.add(&key);
    let sshd = Sshd::start("busy", &format!("{}\n", key.public));
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[ssh.default]\nagent = \"{}\"\nkeys = [\"{}\"]\n",
            agent.socket.display(),
            key.fingerprint
        ),
        ..Default::default()
    });
    // Eight logins and eight listings in parallel: sixteen ForwardAgent streams at once.
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8; do ({}) & (ssh-add -l > /o/keys$i) & done; wait",
        sshd.login("$SSH_AUTH_SOCK", "/o/login$i")
    );
    let build = Build::new(dockerfile("--mount=type=ssh,required=true", &script))
        .file("kh", known_hosts(&[&sshd]))
        .network("host")
        .run(&broker);
    build.assert_ok();
    for i in 1..=8 {
        assert_logged_in(&build, &format!("login{i}"), "busy");
        assert!(build.text(&format!("keys{i}")).contains(&key.fingerprint));
    }
    let signed = broker
        .audit()
        .lines()
        .filter(|l| l.contains("\"decision\":\"signed\""))
        .count();
    assert_eq!(signed, 8, "{}", broker.audit());
}

#[test]
fn broker_held_key_from_the_kernel_keyring_authenticates_with_nothing_on_disk() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new(dir.path(), "kernelheld", "");
    let sshd = Sshd::start("kernelheld", &format!("{}\n", key.public));
    let service = crate::kernel_keyring::unique("ssh");
    let private = std::fs::read(&key.path).unwrap();
    let _stored = crate::kernel_keyring::KernelKey::add(&service, "deploy", &private);
    // The key now lives only in the kernel keyring.
    std::fs::remove_file(&key.path).unwrap();
    let broker = Broker::start(BrokerOptions {
        policy: &format!(
            "[keyring]\nbackend = \"kernel\"\n[ssh.deploy]\nprivate_keys = [\"keyring:{service}/deploy\"]\n"
        ),
        rust_log: "trace",
        ..Default::default()
    });
    let build = Build::new(dockerfile(
        "--mount=type=ssh,id=deploy,required=true",
        &sshd.login("$SSH_AUTH_SOCK", "/o/login"),
    ))
    .file("kh", known_hosts(&[&sshd]))
    .network("host")
    .run(&broker);
    build.assert_ok();
    assert_logged_in(&build, "login", "kernelheld");
    let text = String::from_utf8(private).unwrap();
    for line in text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
    {
        assert!(
            !broker.log().contains(line),
            "private key material in the broker's trace log"
        );
    }
}

/// One agent-protocol sign request (draft-miller-ssh-agent §3.6) on `socket` for the key or
/// certificate blob `blob` with `flags`; returns the answer's message type and, for a
/// signature (14), the signature algorithm's name.
fn agent_sign(socket: &std::path::Path, blob: &[u8], flags: u32) -> (u8, String) {
    use std::io::{Read, Write};
    let string = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    let mut body = vec![13u8];
    string(&mut body, blob);
    string(&mut body, b"data a server would send");
    body.extend_from_slice(&flags.to_be_bytes());
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(&frame).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).unwrap();
    let algorithm = if answer[0] == 14 {
        // string signature { string algorithm, string blob }
        let name_len = u32::from_be_bytes(answer[5..9].try_into().unwrap()) as usize;
        String::from_utf8_lossy(&answer[9..9 + name_len]).into_owned()
    } else {
        String::new()
    };
    (answer[0], algorithm)
}

/// The binary blob of a `.pub` line (a key or a certificate), as an agent request carries it.
fn blob_of(public_line: &str) -> Vec<u8> {
    use ssh_agent_lib::ssh_encoding::Encode;
    let mut blob = Vec::new();
    if public_line.contains("-cert-v01@openssh.com") {
        ssh_key::Certificate::from_openssh(public_line)
            .unwrap()
            .encode(&mut blob)
            .unwrap();
    } else {
        ssh_key::PublicKey::from_openssh(public_line)
            .unwrap()
            .key_data()
            .encode(&mut blob)
            .unwrap();
    }
    blob
}

const SSH_AGENT_FAILURE: u8 = 5;
const SSH_AGENT_SIGN_RESPONSE: u8 = 14;

#[test]
fn a_certificate_is_exposed_only_when_the_policy_names_it() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let ca = Key::new(dir.path(), "ca", "");
    let user = Key::new(dir.path(), "cert-user", "");
    // ssh-keygen -s writes cert-user-cert.pub, which ssh-add then adds beside the bare key.
    let signed = std::process::Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca.path)
        // A bounded validity: ssh-key 0.6 cannot decode the default "forever" (u64::MAX).
        .args(["-I", "ci", "-n", "git", "-V", "-5m:+1h"])
        .arg(user.path.with_extension("pub"))
        .status()
        .unwrap();
    assert!(signed.success());
    let cert_line = std::fs::read_to_string(dir.path().join("cert-user-cert.pub")).unwrap();
    let agent = Agent::start(dir.path());
    agent.add(&user);
    assert_eq!(agent.list().lines().count(), 2, "{}", agent.list());

    let fp = &user.fingerprint;
    let ids = [
        ("plain", format!("[\"{fp}\"]")),
        ("comment", "[\"comment:cert-user\"]".to_string()),
        ("certified", format!("[\"cert:{fp}\"]")),
        ("both", format!("[\"{fp}\", \"cert:{fp}\"]")),
    ];
    let policy: String = ids
        .iter()
        .map(|(id, keys)| {
            format!(
                "[ssh.{id}]\nagent = \"env:SSH_AUTH_SOCK\"\nkeys = {keys}\nsocket = \"{}\"\n",
                dir.path().join(format!("{id}.sock")).display()
            )
        })
        .collect();
    let broker = Broker::start(BrokerOptions {
        policy: &policy,
        env: vec![("SSH_AUTH_SOCK", agent.socket.to_str().unwrap())],
        ..Default::default()
    });
    let socket = |id: &str| dir.path().join(format!("{id}.sock"));
    let certs = |listing: &str| listing.lines().filter(|l| l.contains("-CERT)")).count();

    // Listing the bare key (by fingerprint or comment) never exposes its certificate.
    for id in ["plain", "comment"] {
        let listed = list_agent(&socket(id));
        assert_eq!(
            listed.lines().count(),
            1,
            "{id}: {listed}\n{}",
            broker.log()
        );
        assert_eq!(certs(&listed), 0, "{id}: {listed}");
    }
    let listed = list_agent(&socket("certified"));
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert_eq!(certs(&listed), 1, "{listed}");
    let listed = list_agent(&socket("both"));
    assert_eq!(listed.lines().count(), 2, "{listed}");

    // Signing: a request naming the certificate is refused unless it is listed, and `cert:`
    // does not expose the bare key either.
    let cert = blob_of(&cert_line);
    let key = blob_of(&user.public);
    assert_eq!(agent_sign(&socket("plain"), &cert, 0).0, SSH_AGENT_FAILURE);
    assert_eq!(
        agent_sign(&socket("comment"), &cert, 0).0,
        SSH_AGENT_FAILURE
    );
    assert_eq!(
        agent_sign(&socket("plain"), &key, 0).0,
        SSH_AGENT_SIGN_RESPONSE
    );
    assert_eq!(
        agent_sign(&socket("certified"), &cert, 0).0,
        SSH_AGENT_SIGN_RESPONSE
    );
    assert_eq!(
        agent_sign(&socket("certified"), &key, 0).0,
        SSH_AGENT_FAILURE
    );
}

#[test]
fn sha1_rsa_signatures_are_refused_unless_the_policy_allows_them() {
    if skip() {
        return;
    }
    require_ssh_bed();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rsa-key");
    let made = std::process::Command::new("ssh-keygen")
        .args([
            "-q", "-t", "rsa", "-b", "2048", "-C", "rsa-key", "-N", "", "-f",
        ])
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let listing = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path.with_extension("pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&listing.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    let key = Key {
        path: path.clone(),
        public: public.trim().to_string(),
        fingerprint: fingerprint.clone(),
    };
    let agent = Agent::start(dir.path());
    agent.add(&key);

    let socket = |id: &str| dir.path().join(format!("{id}.sock"));
    let upstream = |id: &str, extra: &str| {
        format!(
            "[ssh.{id}]\nagent = \"env:SSH_AUTH_SOCK\"\nkeys = [\"{fingerprint}\"]\nsocket = \"{}\"\n{extra}",
            socket(id).display()
        )
    };
    let held = |id: &str, extra: &str| {
        format!(
            "[ssh.{id}]\nprivate_keys = [\"file:{}\"]\nsocket = \"{}\"\n{extra}",
            path.display(),
            socket(id).display()
        )
    };
    let policy = [
        upstream("strict", ""),
        upstream("legacy", "allow_sha1 = true\n"),
        held("held", ""),
        held("held_legacy", "allow_sha1 = true\n"),
    ]
    .concat();
    let broker = Broker::start(BrokerOptions {
        policy: &policy,
        env: vec![("SSH_AUTH_SOCK", agent.socket.to_str().unwrap())],
        ..Default::default()
    });
    let blob = blob_of(&key.public);
    // rsa-sha2-256 = 2, rsa-sha2-512 = 4; 0 asks for ssh-rsa (SHA-1).
    for id in ["strict", "held"] {
        assert_eq!(
            agent_sign(&socket(id), &blob, 0),
            (SSH_AGENT_FAILURE, String::new()),
            "{id}"
        );
        assert_eq!(
            agent_sign(&socket(id), &blob, 4),
            (SSH_AGENT_SIGN_RESPONSE, "rsa-sha2-512".to_string()),
            "{id}"
        );
        assert_eq!(
            agent_sign(&socket(id), &blob, 2),
            (SSH_AGENT_SIGN_RESPONSE, "rsa-sha2-256".to_string()),
            "{id}"
        );
    }
    for id in ["legacy", "held_legacy"] {
        assert_eq!(
            agent_sign(&socket(id), &blob, 0),
            (SSH_AGENT_SIGN_RESPONSE, "ssh-rsa".to_string()),
            "{id}: {}",
            broker.log()
        );
    }
    let audit = broker.audit();
    assert!(
        audit.lines().any(|l| l.contains("\"id\":\"strict\"")
            && l.contains("\"decision\":\"refused\"")
            && l.contains("allow_sha1 = true")),
        "{audit}"
    );
}
