use std::collections::BTreeMap;

use super::filesync::{FileSyncDecoder, SyncedFile, frame};
use super::*;
use crate::proto::fsutil::{Packet, PacketType, Stat};

fn given(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// (line, column, kind, id, required, mode, uid) of each mount, read with `args`.
fn summary(
    text: &str,
    args: ArgValues<'_>,
) -> Vec<(usize, usize, &'static str, String, String, String, String)> {
    let d = read(text, args);
    assert_eq!(d.errors, vec![], "unexpected syntax errors");
    d.mounts
        .iter()
        .map(|m| {
            let show = |r: &Resolved<u32>, octal: bool| match r {
                Resolved::Known(v) if octal => format!("{v:o}"),
                Resolved::Known(v) => v.to_string(),
                Resolved::Unknown(w) => format!("?{w}"),
            };
            (
                m.line,
                m.column,
                m.kind.as_str(),
                m.id.to_string(),
                match &m.required {
                    Resolved::Known(b) => b.to_string(),
                    Resolved::Unknown(w) => format!("?{w}"),
                },
                show(&m.mode, true),
                show(&m.uid, false),
            )
        })
        .collect()
}

fn s(v: &str) -> String {
    v.to_string()
}

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
fn finds_every_secret_and_ssh_mount_with_defaults_and_flag_positions() {
    let none = BTreeMap::new();
    assert_eq!(
        summary(SEED, ArgValues::Given(&none)),
        vec![
            (
                3,
                5,
                "secret",
                s("pypi_token"),
                s("true"),
                s("400"),
                s("1000")
            ),
            (6, 5, "secret", s("npm_token"), s("false"), s("400"), s("0")),
            (6, 38, "secret", s(".netrc"), s("false"), s("400"), s("0")),
            (8, 5, "ssh", s("github"), s("false"), s("600"), s("0")),
            (8, 32, "ssh", s("default"), s("false"), s("600"), s("0")),
        ]
    );
    let d = read(SEED, ArgValues::Unknown);
    assert_eq!(
        d.mounts[2].target.as_ref().map(Word::to_string).as_deref(),
        Some("/root/.netrc")
    );
    assert_eq!(
        d.mounts[1].target.as_ref().map(Word::to_string).as_deref(),
        Some("/run/secrets/npm_token")
    );
    assert_eq!(
        d.mounts[4].target.as_ref().map(Word::to_string).as_deref(),
        Some("/run/buildkit/ssh_agent.1")
    );
}

#[test]
fn escape_directive_changes_the_continuation_character() {
    let text =
        "# escape=`\nFROM x\nRUN --mount=type=secret,id=a `\n  --mount=type=secret,id=b true\n";
    let ids: Vec<String> = read(text, ArgValues::Unknown)
        .mounts
        .into_iter()
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(ids, vec!["a", "b"]);
}

#[test]
fn a_comment_ends_the_directives() {
    // `# escape=` after another comment is an ordinary comment (parser/directives.go).
    let text = "# hello\n# escape=`\nFROM x\nRUN --mount=type=secret,id=a \\\n  --mount=type=secret,id=b true\n";
    assert_eq!(read(text, ArgValues::Unknown).mounts.len(), 2);
    let d = read(
        "# syntax=docker/dockerfile:1.7\nFROM x\n",
        ArgValues::Unknown,
    );
    assert_eq!(d.syntax.as_deref(), Some("docker/dockerfile:1.7"));
}

#[test]
fn comments_and_empty_lines_inside_continuations() {
    let text = "FROM x\nRUN --mount=type=secret,id=a \\\n# a comment\n\n    --mount=type=secret,id=b,mode=0440 \\\n  true\n";
    let none = BTreeMap::new();
    assert_eq!(
        summary(text, ArgValues::Given(&none)),
        vec![
            (2, 5, "secret", s("a"), s("false"), s("400"), s("0")),
            (5, 5, "secret", s("b"), s("false"), s("440"), s("0")),
        ]
    );
}

#[test]
fn heredoc_bodies_are_not_instructions() {
    let text = "FROM x\nRUN --mount=type=secret,id=a <<EOF\nRUN --mount=type=secret,id=inside\nEOF\n\
                RUN <<-'END' cat <<OTHER\n\tRUN --mount=type=secret,id=in2\n\tEND\nRUN --mount=type=secret,id=in3\nOTHER\n\
                RUN --mount=type=secret,id=b true\n";
    let ids: Vec<(usize, String)> = read(text, ArgValues::Unknown)
        .mounts
        .into_iter()
        .map(|m| (m.line, m.id.to_string()))
        .collect();
    assert_eq!(ids, vec![(2, s("a")), (10, s("b"))]);
    // Not heredocs: shell arithmetic, here-strings, `<<` inside a word.
    let text =
        "FROM x\nRUN echo $((1<<2)) && cat <<< hi && x=a<<b\nRUN --mount=type=secret,id=c true\n";
    assert_eq!(read(text, ArgValues::Unknown).mounts.len(), 1);
}

#[test]
fn json_form_run_and_quoted_flags() {
    let text = "FROM x\nRUN --mount=type=secret,id=a,required [\"cat\", \"/run/secrets/a\"]\n\
                RUN --mount=\"type=secret,id=b,required=True\" --network=none true\n";
    let none = BTreeMap::new();
    assert_eq!(
        summary(text, ArgValues::Given(&none)),
        vec![
            (2, 5, "secret", s("a"), s("true"), s("400"), s("0")),
            (3, 5, "secret", s("b"), s("true"), s("400"), s("0")),
        ]
    );
}

#[test]
fn every_spelling_of_the_fields() {
    let text = "FROM x\n\
        RUN --mount=type=secret,dst=/etc/tok,required=1,mode=0440,uid=10,gid=20 true\n\
        RUN --mount=TYPE=Secret,destination=/a/b/c,required=false true\n\
        RUN --mount=type=secret,id=e,env=TOKEN true\n\
        RUN --mount=type=ssh,id=gh,target=/ssh.sock,mode=0666,required=t true\n";
    let d = read(text, ArgValues::Unknown);
    assert_eq!(d.errors, vec![]);
    let m = &d.mounts;
    assert_eq!(m[0].id.to_string(), "tok");
    assert_eq!(m[0].mode, Resolved::Known(0o440));
    assert_eq!(m[0].gid, Resolved::Known(20));
    assert_eq!(m[1].id.to_string(), "c");
    assert_eq!(m[1].required, Resolved::Known(false));
    assert_eq!(m[2].target, None);
    assert_eq!(
        m[2].env.as_ref().map(Word::to_string).as_deref(),
        Some("TOKEN")
    );
    assert_eq!(m[3].kind, MountKind::Ssh);
    assert_eq!(m[3].mode, Resolved::Known(0o666));
    assert_eq!(m[3].required, Resolved::Known(true));
}

#[test]
fn malformed_mounts_are_located_errors_and_the_rest_is_read() {
    let d = read(
        "FROM x\nRUN --mount=type=secret,id=a,mode=rw true\n\nRUN  --mount=type=secret true\nRUN --mount=type=secret,id=c,color=red true\nRUN --mount=type=secret,id=ok true\n",
        ArgValues::Unknown,
    );
    let errs: Vec<(usize, usize, bool)> = d
        .errors
        .iter()
        .map(|e| (e.line, e.column, e.message.is_empty()))
        .collect();
    assert_eq!(errs, vec![(2, 5, false), (4, 6, false), (5, 5, false)]);
    assert!(
        d.errors[0].message.contains("octal"),
        "{}",
        d.errors[0].message
    );
    assert!(d.errors[1].message.contains("id= or target="));
    assert!(d.errors[2].message.contains("color"));
    assert_eq!(d.mounts.len(), 1);
    // Mode spellings BuildKit's strconv.ParseUint(v, 8, 32) refuses are refused here too.
    assert_eq!(
        read(
            "FROM x\nRUN --mount=type=secret,id=a,mode=0o400 true\n",
            ArgValues::Unknown
        )
        .errors
        .len(),
        1
    );
}

#[test]
fn other_mount_types_are_ignored() {
    let d = read(
        "FROM x\nRUN --mount=type=cache,target=/c,mode=0777 --mount=type=bind,source=.,target=/s --mount=type=tmpfs,target=/t,size=10 true\n",
        ArgValues::Unknown,
    );
    assert_eq!((d.mounts.len(), d.errors.len()), (0, 0));
}

const ARGS: &str = "ARG STAGE=prod\nARG GLOBAL_ONLY=g\n\
FROM x AS base\n\
ARG STAGE\n\
ENV TOKEN_DIR=/run/tok\n\
ARG UID=1000\n\
RUN --mount=type=secret,id=token_${STAGE},target=$TOKEN_DIR/t,uid=$UID true\n\
RUN --mount=type=secret,id=${GLOBAL_ONLY:-none} true\n\
FROM base AS child\n\
RUN --mount=type=secret,id=c,target=${TOKEN_DIR}/c,uid=${UID:-7} true\n\
FROM x\n\
RUN --mount=type=secret,id=d,target=${TOKEN_DIR:-/other}/d true\n\
ARG NODEFAULT\n\
RUN --mount=type=secret,id=n_$NODEFAULT true\n";

#[test]
fn args_take_build_args_then_defaults_and_scopes() {
    let none = BTreeMap::new();
    let d = read(ARGS, ArgValues::Given(&none));
    let ids: Vec<String> = d.mounts.iter().map(|m| m.id.to_string()).collect();
    // A global ARG is not visible in a stage that does not redeclare it (so the base image's
    // ENV may define it: unknown); ENV is inherited by `FROM base`, ARG is not; an ARG with
    // no value stays unknown.
    assert_eq!(
        ids,
        vec!["token_prod", "${GLOBAL_ONLY}", "c", "d", "n_${NODEFAULT}"]
    );
    assert_eq!(d.mounts[0].uid, Resolved::Known(1000));
    assert_eq!(
        d.mounts[0].target.as_ref().unwrap().to_string(),
        "/run/tok/t"
    );
    assert_eq!(
        d.mounts[2].target.as_ref().unwrap().to_string(),
        "/run/tok/c"
    );
    // UID is an ARG of `base`, not inherited: the child's image ENV might set it.
    assert!(matches!(d.mounts[2].uid, Resolved::Unknown(_)));
    // A fresh `FROM x`: its image may set TOKEN_DIR, so the default is not assumed.
    assert_eq!(
        d.mounts[3].target.as_ref().unwrap().to_string(),
        "${TOKEN_DIR}/d"
    );

    let args = given(&[("STAGE", "dev"), ("NODEFAULT", "x"), ("UID", "5")]);
    let d = read(ARGS, ArgValues::Given(&args));
    let ids: Vec<String> = d.mounts.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(ids, vec!["token_dev", "${GLOBAL_ONLY}", "c", "d", "n_x"]);
    assert_eq!(d.mounts[0].uid, Resolved::Known(5));
}

#[test]
fn at_build_time_every_arg_is_unknown_and_ids_are_patterns() {
    let d = read(ARGS, ArgValues::Unknown);
    let m = &d.mounts[0];
    assert_eq!(m.id.to_string(), "token_${STAGE}");
    assert!(m.id.matches("token_prod") && m.id.matches("token_") && !m.id.matches("tok"));
    assert!(matches!(m.uid, Resolved::Unknown(_)));
    // ENV made only of literals stays known.
    assert_eq!(
        m.target.as_ref().unwrap().known().as_deref(),
        Some("/run/tok/t")
    );
}

#[test]
fn words_expand_quote_and_match() {
    use super::words::{Vars, expand};
    let mut vars = Vars::new();
    vars.insert("A".into(), Word::literal("x"));
    vars.insert("E".into(), Word::literal(""));
    vars.insert("U".into(), Word::unknown("U"));
    let e = |t: &str| expand(t, &vars, '\\').map(|w| w.to_string());
    assert_eq!(e("a$A-${A}").unwrap(), "ax-x");
    assert_eq!(e("'$A'\"$A\"").unwrap(), "$Ax");
    assert_eq!(e("\\$A").unwrap(), "$A");
    assert_eq!(e("${E:-d}${E-d}${A:+p}${E:+p}").unwrap(), "dp");
    assert_eq!(e("${MISSING}").unwrap(), "${MISSING}");
    assert_eq!(e("${U:-d}").unwrap(), "${U}");
    assert_eq!(e("$").unwrap(), "$");
    assert!(e("${A").is_err() && e("'x").is_err() && e("${A%x}").is_err());
    let w = expand("a${U}b${U}c", &vars, '\\').unwrap();
    assert!(w.matches("abc") && w.matches("a1b2c") && w.matches("abbbc") && !w.matches("ab"));
    assert_eq!(w.base_name().to_string(), "a${U}b${U}c");
    assert_eq!(
        expand("/x/${U}/y", &vars, '\\')
            .unwrap()
            .base_name()
            .to_string(),
        "y"
    );
}

fn stat(path: &str, mode: u32) -> Packet {
    Packet {
        r#type: PacketType::PacketStat as i32,
        stat: Some(Stat {
            path: path.into(),
            mode,
            ..Stat::default()
        }),
        id: 0,
        data: Vec::new(),
    }
}

fn packet(t: PacketType, id: u32, data: &[u8]) -> Packet {
    Packet {
        r#type: t as i32,
        stat: None,
        id,
        data: data.to_vec(),
    }
}

/// The sequence captured from buildx 0.13.1 → dockerd 26.1 for `-f sub/Build.dockerfile`:
/// STAT, empty STAT, DATA, empty DATA, FIN (the daemon's REQ travels the other way).
fn captured_stream(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in [
        stat("Build.dockerfile", 0o644),
        stat(".dockerignore", 0o644),
        stat("sub", 1 << 31 | 0o755),
        packet(PacketType::PacketStat, 0, b""),
        packet(PacketType::PacketData, 0, &body[..body.len() / 2]),
        packet(PacketType::PacketData, 0, &body[body.len() / 2..]),
        packet(PacketType::PacketData, 0, b""),
        packet(PacketType::PacketFin, 0, b""),
    ] {
        out.extend(frame(&p));
    }
    out
}

#[test]
fn decoder_rebuilds_files_whatever_the_frame_boundaries() {
    let body = b"FROM x\nRUN --mount=type=secret,id=a true\n";
    let stream = captured_stream(body);
    for chunk in [1, 2, 3, 5, 7, 64, stream.len()] {
        let mut d = FileSyncDecoder::new();
        let mut files = Vec::new();
        for piece in stream.chunks(chunk) {
            files.extend(d.feed(piece));
        }
        assert_eq!(
            files,
            vec![SyncedFile {
                path: "Build.dockerfile".into(),
                data: body.to_vec()
            }],
            "chunk {chunk}"
        );
        assert_eq!(d.failure(), None);
        // The daemon did not ask for .dockerignore; directories are never asked for.
        assert_eq!(d.unrequested(), vec![".dockerignore"]);
    }
}

#[test]
fn decoder_stops_on_input_it_cannot_follow() {
    let mut d = FileSyncDecoder::new();
    assert!(d.feed(&[1, 0, 0, 0, 1, 0]).is_empty());
    assert!(d.failure().unwrap().contains("compressed"));
    let mut d = FileSyncDecoder::new();
    d.feed(&[0, 0xff, 0xff, 0xff, 0xff]);
    assert!(d.failure().unwrap().contains("size"));
    let mut d = FileSyncDecoder::new();
    d.feed(&frame(&packet(PacketType::PacketData, 9, b"x")));
    assert!(d.failure().unwrap().contains("never announced"));
    let mut d = FileSyncDecoder::new();
    d.feed(&[0, 0, 0, 0, 2, 0xff, 0xff]);
    assert!(d.failure().is_some());
}

#[test]
fn decoder_refuses_oversized_files_without_keeping_them() {
    let mut d = FileSyncDecoder::new();
    d.feed(&frame(&stat("Dockerfile", 0o644)));
    d.feed(&frame(&packet(PacketType::PacketStat, 0, b"")));
    let chunk = vec![b'#'; 32 * 1024];
    for _ in 0..(filesync::MAX_FILE / chunk.len() + 1) {
        assert!(
            d.feed(&frame(&packet(PacketType::PacketData, 0, &chunk)))
                .is_empty()
        );
    }
    assert!(
        d.feed(&frame(&packet(PacketType::PacketData, 0, b"")))
            .is_empty()
    );
}

#[test]
fn session_dockerfiles_skip_ignore_files_and_keep_problems() {
    let seen = SessionDockerfiles::default();
    let ignore = IgnoreFiles::default();
    seen.record("Build.dockerfile.dockerignore", b"*", &ignore);
    seen.record(
        "Build.dockerfile",
        b"FROM x\nRUN --mount=type=secret,id=a true\n",
        &ignore,
    );
    seen.sync_unrequested(&["Dockerfile.dockerignore", "Other"], &ignore);
    let (read, problems) = seen.snapshot();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].name, "Build.dockerfile");
    assert_eq!(read[0].read.mounts.len(), 1);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].contains("Other"));
}

#[test]
fn ignore_files_come_from_the_follow_paths() {
    let f = |v: &[&str]| {
        IgnoreFiles::from_followpaths(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    let captured = f(&["Build.dockerfile", "Build.dockerfile.dockerignore"]);
    assert!(captured.is_ignore_file("Build.dockerfile.dockerignore"));
    assert!(!captured.is_ignore_file("Build.dockerfile"));
    // `-f evil.dockerignore`: the Dockerfile itself ends in .dockerignore and is still read.
    let evil = f(&["evil.dockerignore", "evil.dockerignore.dockerignore"]);
    assert!(!evil.is_ignore_file("evil.dockerignore"));
    assert!(evil.is_ignore_file("evil.dockerignore.dockerignore"));
    assert!(IgnoreFiles::default().is_ignore_file(".dockerignore"));
}

#[test]
fn oversized_files_are_reported() {
    let mut d = FileSyncDecoder::new();
    d.feed(&frame(&stat("Dockerfile", 0o644)));
    d.feed(&frame(&packet(PacketType::PacketStat, 0, b"")));
    d.feed(&frame(&packet(
        PacketType::PacketData,
        0,
        &vec![b'#'; filesync::MAX_FILE + 1],
    )));
    assert_eq!(d.oversized(), vec!["Dockerfile"]);
}
