use super::*;
use crate::config::{HostEnv, PolicyOrigin};

const SEED: &str = r#"FROM python:3.12-slim
# a comment
RUN --mount=type=secret,id=pypi_token,required=true,mode=0400,uid=1000 \
    PIP_INDEX_URL=https://__token__:$(cat /run/secrets/pypi_token)@pypi.example/simple pip install x
RUN --mount=type=cache,target=/root/.cache \
    --mount=type=secret,id=npm_token --mount=type=secret,target=/root/.netrc \
    echo hi
run --mount=type=ssh,id=github --mount=type=ssh ssh-add -l
COPY . .
RUN echo --mount=type=secret,id=not_a_flag
"#;

#[test]
fn finds_every_secret_and_ssh_mount_with_defaults() {
    let m = mounts(SEED).unwrap();
    let summary: Vec<(usize, MountKind, &str, bool, u32, u32)> = m
        .iter()
        .map(|m| (m.line, m.kind, m.id.as_str(), m.required, m.mode, m.uid))
        .collect();
    assert_eq!(
        summary,
        vec![
            (3, MountKind::Secret, "pypi_token", true, 0o400, 1000),
            (5, MountKind::Secret, "npm_token", false, 0o400, 0),
            (5, MountKind::Secret, ".netrc", false, 0o400, 0),
            (8, MountKind::Ssh, "github", false, 0o600, 0),
            (8, MountKind::Ssh, "default", false, 0o600, 0),
        ]
    );
}

#[test]
fn escape_directive_changes_the_continuation_character() {
    let text =
        "# escape=`\nFROM x\nRUN --mount=type=secret,id=a `\n  --mount=type=secret,id=b true\n";
    let ids: Vec<String> = mounts(text).unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, vec!["a", "b"]);
}

#[test]
fn malformed_mount_is_a_located_error() {
    let e = mounts("FROM x\nRUN --mount=type=secret,id=a,mode=rw true\n").unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.message.contains("octal"), "{}", e.message);
    let e = mounts("FROM x\n\nRUN --mount=type=secret true\n").unwrap_err();
    assert_eq!(e.line, 3);
}

fn policy(unknown: &str) -> Policy {
    let text = format!(
        "[server]\nunknown_secrets = \"{unknown}\"\nunknown_ssh = \"{unknown}\"\n\
         [secrets.pypi_token]\nsources = [\"env:T\"]\nmode = 0o440\nuid = 1000\ngid = 1000\n"
    );
    Policy::parse(&text, PolicyOrigin::Embedded, &HostEnv::default()).unwrap()
}

#[test]
fn checks_mode_uid_gid_and_unknown_ids() {
    let text = "FROM x\n\
        RUN --mount=type=secret,id=pypi_token,mode=0400,uid=1000,gid=1000 true\n\
        RUN --mount=type=secret,id=pypi_token,mode=0644,uid=0,gid=1000 true\n\
        RUN --mount=type=secret,id=other,required=true true\n\
        RUN --mount=type=secret,id=other2 true\n";
    let m = mounts(text).unwrap();

    let deny = check(&policy("deny"), &m);
    let violations: Vec<(usize, &str)> = deny
        .iter()
        .filter(|f| f.severity == Severity::Violation)
        .map(|f| (f.line, f.message.as_str()))
        .collect();
    assert_eq!(violations.len(), 3, "{deny:#?}");
    assert_eq!(violations[0].0, 3);
    assert!(violations[0].1.contains("mode 0644") && violations[0].1.contains("at most 0440"));
    assert!(violations[1].1.contains("uid 0") && violations[1].1.contains("only uid 1000"));
    assert_eq!(violations[2].0, 4);
    assert!(violations[2].1.contains("required secret \"other\""));
    assert!(
        deny.iter()
            .any(|f| f.line == 5 && f.severity == Severity::Note)
    );

    let client = check(&policy("client"), &m);
    assert_eq!(
        client
            .iter()
            .filter(|f| f.severity == Severity::Violation)
            .count(),
        2
    );
}
