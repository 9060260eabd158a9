use std::sync::Arc;

use super::*;
use crate::config::{HostEnv, PolicyOrigin};
use crate::dockerfile::{ArgValues, read};

fn policy(text: &str) -> Policy {
    let env = HostEnv {
        euid: 1000,
        docker_host: Some("unix:///var/run/docker.sock".into()),
        home: Some("/home/u".into()),
        ..HostEnv::default()
    };
    Policy::parse(text, PolicyOrigin::Embedded, &env).unwrap()
}

const POLICY: &str = r#"
[secrets.tok]
sources = ["env:T"]
mode = 0o400
uid = 1000
gid = 1000
targets = ["/run/secrets/tok", "env:TOK"]
mount_required = true

[secrets.free]
sources = ["env:F"]

[ssh.gh]
private_keys = ["file:/k"]
mode = 0o600

[mounts.secrets]
uid = 0
"#;

fn one(line: &str) -> Vec<(&'static str, String)> {
    let d = read(&format!("FROM x\nRUN {line} true\n"), ArgValues::Unknown);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let m = &d.mounts[0];
    let id = m.id.known().unwrap_or_else(|| "tok_x".into());
    check_mount(&policy(POLICY), m, &id)
        .into_iter()
        .map(|v| (v.key, v.problem))
        .collect()
}

#[test]
fn each_rule_in_a_table() {
    let ok = "--mount=type=secret,id=tok,uid=1000,gid=1000,required";
    assert_eq!(one(ok), vec![]);
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "--mount=type=secret,id=tok,uid=1000,gid=1000,required,mode=0444",
            &[("mode", "mounts it with mode=0444, wider than 0400")],
        ),
        // Narrower than the policy's widest is fine.
        (
            "--mount=type=secret,id=tok,uid=1000,gid=1000,required,mode=0",
            &[],
        ),
        (
            "--mount=type=secret,id=tok,uid=0,gid=1000,required",
            &[("uid", "mounts it for uid 0")],
        ),
        (
            "--mount=type=secret,id=tok,uid=1000,gid=1000",
            &[("mount_required", "does not say required=true")],
        ),
        (
            "--mount=type=secret,id=tok,uid=1000,gid=1000,required,target=/tmp/tok",
            &[("targets", "mounts it at /tmp/tok")],
        ),
        (
            "--mount=type=secret,id=tok,uid=1000,gid=1000,required,env=TOK",
            &[],
        ),
        (
            "--mount=type=secret,id=tok,uid=1000,gid=1000,required,env=OTHER",
            &[("targets", "mounts it as the environment variable OTHER")],
        ),
        // The [mounts.secrets] default applies to an id without its own uid.
        (
            "--mount=type=secret,id=free,uid=5",
            &[("uid", "mounts it for uid 5")],
        ),
        ("--mount=type=secret,id=unlisted", &[]),
        ("--mount=type=ssh,id=gh", &[]),
        (
            "--mount=type=ssh,id=gh,mode=0666",
            &[("mode", "mounts it with mode=0666, wider than 0600")],
        ),
    ];
    for (line, want) in cases {
        let want: Vec<(&str, String)> = want.iter().map(|(k, p)| (*k, p.to_string())).collect();
        assert_eq!(one(line), want, "{line}");
    }
}

#[test]
fn rules_name_their_table() {
    let d = read(
        "FROM x\nRUN --mount=type=secret,id=free,uid=5 --mount=type=secret,id=tok,mode=0444,uid=1000,gid=1000,required true\n",
        ArgValues::Unknown,
    );
    let p = policy(POLICY);
    assert_eq!(
        check_mount(&p, &d.mounts[0], "free")[0].rule,
        "[mounts.secrets] uid = 0"
    );
    assert_eq!(
        check_mount(&p, &d.mounts[1], "tok")[0].rule,
        "[secrets.tok] mode = 0o400"
    );
}

#[test]
fn values_from_build_args_are_unresolved_where_a_rule_applies() {
    let v = one("--mount=type=secret,id=tok,uid=$U,gid=1000,required");
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].0, "uid");
    assert!(v[0].1.contains("$U"), "{}", v[0].1);
    // No rule on mode: an unknown mode is not a problem.
    assert_eq!(one("--mount=type=secret,id=free,uid=0,mode=$M"), vec![]);
}

fn seen(name: &str, text: &str) -> Arc<ReadDockerfile> {
    Arc::new(ReadDockerfile {
        name: name.into(),
        read: read(text, ArgValues::Unknown),
    })
}

#[test]
fn verdicts_over_a_session() {
    let p = policy(POLICY);
    let good = seen(
        "Dockerfile",
        "FROM x\nRUN --mount=type=secret,id=tok,uid=1000,gid=1000,required true\n",
    );
    let bad = seen(
        "Other.dockerfile",
        "FROM x\n\nRUN --mount=type=secret,id=${ENVIRONMENT},target=/run/secrets/tok,uid=1000,gid=1000 true\n",
    );
    let decide = |dfs: &[Arc<ReadDockerfile>], problems: &[String], id: &str| {
        decide_mounts(&p, MountKind::Secret, id, dfs, problems)
    };
    assert_eq!(
        decide(std::slice::from_ref(&good), &[], "tok"),
        MountVerdict::Complies
    );
    // Every Dockerfile of the session must comply; the ARG-built id matches as a pattern.
    match decide(&[good.clone(), bad.clone()], &[], "tok") {
        MountVerdict::Refused(r) => {
            assert_eq!((r.dockerfile.as_str(), r.line), ("Other.dockerfile", 3));
            assert_eq!(
                r.message(MountKind::Secret, "tok"),
                "buildbroker: secret \"tok\" refused: Other.dockerfile line 3 does not say required=true, against the policy rule [secrets.tok] mount_required = true"
            );
        }
        v => panic!("{v:?}"),
    }
    // Ids without any rule are never held back, seen or not.
    let bare = policy("[secrets.x]\nsources = [\"env:X\"]\n");
    assert_eq!(
        decide_mounts(&bare, MountKind::Secret, "x", &[], &[]),
        MountVerdict::Complies
    );
    // Not seen: the policy's dockerfile_unseen decides.
    assert!(matches!(
        decide(&[], &[], "tok"),
        MountVerdict::Unseen {
            policy: DockerfileUnseen::Allow,
            ..
        }
    ));
    let strict = policy(&format!("[server]\ndockerfile_unseen = \"deny\"\n{POLICY}"));
    match decide_mounts(&strict, MountKind::Secret, "tok", &[], &[]) {
        MountVerdict::Unseen { policy, why } => {
            assert_eq!(policy, DockerfileUnseen::Deny);
            assert!(why.contains("remote"), "{why}");
        }
        v => panic!("{v:?}"),
    }
    // A problem on another sync of the session makes a compliant one not enough.
    assert!(matches!(
        decide(
            std::slice::from_ref(&good),
            &["the daemon reused X".into()],
            "tok"
        ),
        MountVerdict::Unseen { .. }
    ));
    let broken = seen(
        "Dockerfile",
        "FROM x\nRUN --mount=type=secret,id=a,mode=x true\n",
    );
    match decide(&[broken], &[], "tok") {
        MountVerdict::Unseen { why, .. } => assert!(why.contains("line 2"), "{why}"),
        v => panic!("{v:?}"),
    }
    // An ssh request with an empty id is `default`.
    let ssh = policy("[ssh.default]\nprivate_keys = [\"file:/k\"]\nmode = 0o600\n");
    let wide = seen(
        "Dockerfile",
        "FROM x\nRUN --mount=type=ssh,mode=0666 true\n",
    );
    assert!(matches!(
        decide_mounts(&ssh, MountKind::Ssh, "", &[wide], &[]),
        MountVerdict::Refused(_)
    ));
}

#[test]
fn the_daemons_own_git_ids_are_not_held_to_mount_defaults() {
    let p = policy(&format!("[server]\ndockerfile_unseen = \"deny\"\n{POLICY}"));
    assert_eq!(
        decide_mounts(
            &p,
            MountKind::Secret,
            "GIT_AUTH_TOKEN.example.com",
            &[],
            &[]
        ),
        MountVerdict::Complies
    );
    assert!(matches!(
        decide_mounts(&p, MountKind::Secret, "unlisted", &[], &[]),
        MountVerdict::Unseen { .. }
    ));
}
