//! Reads a Dockerfile the way BuildKit's dockerfile frontend does, as far as secret and ssh
//! mounts go: parser directives (`# escape=`, `# syntax=`), continuation lines (with comments
//! and empty lines inside them), heredocs (`<<EOF`, `<<-EOF`, quoted), JSON-form RUN, several
//! `--mount` flags per RUN, multi-stage files, and `ARG`/`ENV` expansion in mount options with
//! BuildKit's scoping (global args, args redeclared in a stage, `ENV` inherited by
//! `FROM <stage>`).
//!
//! Sources: buildkit `frontend/dockerfile/parser/parser.go` (lines, directives, heredocs),
//! `instructions/commands_runmount.go` (mount fields: `parseMount`),
//! `dockerfile2llb/convert_runmount.go` (defaults: secret id = base name of the target,
//! target = `/run/secrets/<id>`, ssh id `default`, modes 0400/0600, uid/gid 0).
//!
//! Pure text processing. A value that depends on a variable the reader cannot know stays a
//! named unknown ([`Word`]): it is never guessed.

use std::collections::BTreeMap;

use super::words::{Vars, Word, expand};

/// Which build arg values the reader may count on.
#[derive(Debug, Clone, Copy)]
pub enum ArgValues<'a> {
    /// `buildbroker check`: the `--build-arg` values given, else each ARG's default.
    Given(&'a BTreeMap<String, String>),
    /// Inside a build: none. `--build-arg` may override any default where buildbroker cannot
    /// see it, so every ARG is unknown.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Secret,
    Ssh,
}

impl MountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Secret => "secret",
            MountKind::Ssh => "ssh",
        }
    }
}

/// A mount option's value: known, or depending on variables the reader cannot know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved<T> {
    Known(T),
    /// The option as written, expanded as far as possible.
    Unknown(Word),
}

/// A `--mount` flag of type secret or ssh, with BuildKit's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// 1-based line and column of the `--mount` flag.
    pub line: usize,
    pub column: usize,
    pub kind: MountKind,
    pub id: Word,
    /// Where the file (secret) or agent socket (ssh) appears; `None` for a secret mounted only
    /// as an environment variable (`env=` without `target=`).
    pub target: Option<Word>,
    /// `env=NAME`: the secret also (or only) becomes this environment variable.
    pub env: Option<Word>,
    pub required: Resolved<bool>,
    pub mode: Resolved<u32>,
    pub uid: Resolved<u32>,
    pub gid: Resolved<u32>,
}

/// A mount flag or instruction the reader cannot understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// What the reader found in one Dockerfile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dockerfile {
    /// The `# syntax=` directive: another frontend (an image) parses the file in the build.
    pub syntax: Option<String>,
    /// Every secret and ssh mount, in file order.
    pub mounts: Vec<Mount>,
    pub errors: Vec<SyntaxError>,
}

/// One logical instruction: its text (continuation lines joined) and where each piece of it
/// came from, for locations.
struct Instruction<'t> {
    text: String,
    /// (offset in `text`, 1-based line, byte offset in that line, the line).
    pieces: Vec<(usize, usize, usize, &'t str)>,
}

impl Instruction<'_> {
    /// Line and column (1-based, in characters) of byte `offset` of the text.
    fn locate(&self, offset: usize) -> (usize, usize) {
        let (at, line, start, raw) = self
            .pieces
            .iter()
            .rev()
            .find(|p| p.0 <= offset)
            .copied()
            .unwrap_or((0, 1, 0, ""));
        let byte = (start + offset - at).min(raw.len());
        let column = raw
            .get(..byte)
            .map_or(byte, |prefix| prefix.chars().count())
            + 1;
        (line, column)
    }
}

/// `# key=value` at the top of the file (parser/directives.go).
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim().strip_prefix('#')?;
    let (key, value) = rest.split_once('=')?;
    let key = key.trim();
    if key.is_empty()
        || !key.chars().next()?.is_ascii_alphabetic()
        || !key.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.trim().to_string()))
}

/// Reads every secret and ssh mount of `text`.
pub fn read(text: &str, args: ArgValues<'_>) -> Dockerfile {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Dockerfile::default();
    let mut escape = '\\';
    let mut i = 0;
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i]) else {
            break;
        };
        match key.as_str() {
            "escape" => match value.as_str() {
                "\\" | "`" => escape = value.chars().next().unwrap_or('\\'),
                _ => out.errors.push(SyntaxError {
                    line: i + 1,
                    column: 1,
                    message: format!("# escape={value}: expected \\ or `"),
                }),
            },
            "syntax" => out.syntax = Some(value),
            _ => {}
        }
        i += 1;
    }

    let mut state = Stages::new(args);
    let mut current: Option<Instruction<'_>> = None;
    while i < lines.len() {
        let raw = lines[i];
        i += 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            // Comments and empty lines inside a continuation are skipped too (parser.go).
            continue;
        }
        let start = if current.is_none() {
            raw.len() - raw.trim_start().len()
        } else {
            0
        };
        let end = raw.trim_end();
        let (body_end, continues) = match end.strip_suffix(escape) {
            Some(b) => (b.len(), true),
            None => (end.len(), false),
        };
        let ins = current.get_or_insert_with(|| Instruction {
            text: String::new(),
            pieces: Vec::new(),
        });
        ins.pieces.push((ins.text.len(), i, start, raw));
        ins.text
            .push_str(raw.get(start..body_end.max(start)).unwrap_or(""));
        if continues {
            continue;
        }
        let ins = current.take().expect("set above");
        let terminators = state.instruction(&ins, escape, &mut out);
        // Heredoc bodies are not instructions: skip to each terminator in turn.
        for (name, strip_tabs) in terminators {
            while i < lines.len() {
                let l = lines[i];
                i += 1;
                let l = if strip_tabs {
                    l.trim_start_matches('\t')
                } else {
                    l
                };
                if l == name {
                    break;
                }
            }
        }
    }
    if let Some(ins) = current {
        state.instruction(&ins, escape, &mut out);
    }
    out
}

/// Variables in scope as the file is read.
struct Stages<'a> {
    args: ArgValues<'a>,
    /// ARGs declared before the first FROM.
    global: Vars,
    /// Inside a stage: its variables.
    stage: Option<Stage>,
    /// The ENV of each stage so far, by name (lowercase), for `FROM <stage>`.
    stage_env: Vec<(Option<String>, Vars)>,
}

#[derive(Default)]
struct Stage {
    /// Everything expansion sees: ARG and ENV.
    vars: Vars,
    /// What ENV set, which a later `FROM <this stage>` inherits (ARGs are not inherited).
    env: Vars,
}

impl<'a> Stages<'a> {
    fn new(args: ArgValues<'a>) -> Self {
        Stages {
            args,
            global: Vars::new(),
            stage: None,
            stage_env: Vec::new(),
        }
    }

    fn vars(&self) -> &Vars {
        self.stage.as_ref().map_or(&self.global, |s| &s.vars)
    }

    /// Handles one instruction; returns the heredoc terminators it opens.
    fn instruction(
        &mut self,
        ins: &Instruction<'_>,
        escape: char,
        out: &mut Dockerfile,
    ) -> Vec<(String, bool)> {
        let words = split_words(&ins.text, escape);
        let Some((_, keyword)) = words.first() else {
            return Vec::new();
        };
        let keyword = keyword.to_ascii_uppercase();
        let rest = &words[1..];
        match keyword.as_str() {
            "FROM" => self.from(rest, escape),
            "ARG" => self.arg(rest, escape, ins, out),
            "ENV" => self.env(rest, &ins.text, escape, ins, out),
            "RUN" => self.run(rest, escape, ins, out),
            _ => {}
        }
        if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            heredocs(rest)
        } else {
            Vec::new()
        }
    }

    fn from(&mut self, words: &[(usize, String)], escape: char) {
        let operands: Vec<&str> = words
            .iter()
            .map(|(_, w)| w.as_str())
            .filter(|w| !w.starts_with("--"))
            .collect();
        let base = operands
            .first()
            .and_then(|w| expand(w, &self.global, escape).ok())
            .and_then(|w| w.known())
            .map(|w| w.to_ascii_lowercase());
        let name = match operands.as_slice() {
            [_, as_kw, name, ..] if as_kw.eq_ignore_ascii_case("as") => {
                Some(name.to_ascii_lowercase())
            }
            _ => None,
        };
        if let (Some(stage), Some(last)) = (&self.stage, self.stage_env.last_mut()) {
            last.1 = stage.env.clone();
        }
        // `FROM <earlier stage>` starts from that stage's image config, ENV included.
        let inherited = base
            .and_then(|b| {
                self.stage_env
                    .iter()
                    .rev()
                    .find(|(name, _)| name.as_deref() == Some(b.as_str()))
                    .map(|(_, env)| env.clone())
            })
            .unwrap_or_default();
        self.stage_env.push((name, Vars::new()));
        self.stage = Some(Stage {
            vars: inherited.clone(),
            env: inherited,
        });
    }

    fn arg(
        &mut self,
        words: &[(usize, String)],
        escape: char,
        ins: &Instruction<'_>,
        out: &mut Dockerfile,
    ) {
        for (offset, word) in words {
            let (name, default) = match word.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d)),
                None => (word.clone(), None),
            };
            let default = match default.map(|d| expand(d, self.vars(), escape)) {
                Some(Ok(w)) => Some(w),
                Some(Err(m)) => {
                    let (line, column) = ins.locate(*offset);
                    out.errors.push(SyntaxError {
                        line,
                        column,
                        message: format!("ARG {name}: {m}"),
                    });
                    None
                }
                None => None,
            };
            let value = match self.args {
                ArgValues::Unknown => Word::unknown(&name),
                ArgValues::Given(given) => match given.get(&name) {
                    Some(v) => Word::literal(v.clone()),
                    None => default
                        .or_else(|| {
                            self.stage
                                .as_ref()
                                .and_then(|_| self.global.get(&name).cloned())
                        })
                        .unwrap_or_else(|| Word::unknown(&name)),
                },
            };
            match &mut self.stage {
                Some(stage) => {
                    stage.vars.insert(name, value);
                }
                None => {
                    self.global.insert(name, value);
                }
            }
        }
    }

    fn env(
        &mut self,
        words: &[(usize, String)],
        text: &str,
        escape: char,
        ins: &Instruction<'_>,
        out: &mut Dockerfile,
    ) {
        let Some(stage) = &mut self.stage else {
            return;
        };
        let mut pairs: Vec<(usize, String, String)> = Vec::new();
        match words.first() {
            // Legacy `ENV NAME value with spaces`.
            Some((offset, first)) if !first.contains('=') => {
                let value_start = words.get(1).map_or(text.len(), |w| w.0);
                pairs.push((
                    *offset,
                    first.clone(),
                    text[value_start..].trim().to_string(),
                ));
            }
            _ => {
                for (offset, w) in words {
                    if let Some((n, v)) = w.split_once('=') {
                        pairs.push((*offset, n.to_string(), v.to_string()));
                    }
                }
            }
        }
        for (offset, name, value) in pairs {
            match expand(&value, &stage.vars, escape) {
                Ok(w) => {
                    stage.env.insert(name.clone(), w.clone());
                    stage.vars.insert(name, w);
                }
                Err(m) => {
                    let (line, column) = ins.locate(offset);
                    out.errors.push(SyntaxError {
                        line,
                        column,
                        message: format!("ENV {name}: {m}"),
                    });
                }
            }
        }
    }

    fn run(
        &mut self,
        words: &[(usize, String)],
        escape: char,
        ins: &Instruction<'_>,
        out: &mut Dockerfile,
    ) {
        let mut ssh_index = 0;
        for (offset, word) in words {
            let Some(flag) = word.strip_prefix("--") else {
                break;
            };
            let Some(value) = flag.strip_prefix("mount=") else {
                continue;
            };
            let (line, column) = ins.locate(*offset);
            match parse_mount(value, self.vars(), escape, ssh_index) {
                Ok(Some(mut m)) => {
                    m.line = line;
                    m.column = column;
                    if m.kind == MountKind::Ssh {
                        ssh_index += 1;
                    }
                    out.mounts.push(m);
                }
                Ok(None) => {}
                Err(message) => out.errors.push(SyntaxError {
                    line,
                    column,
                    message,
                }),
            }
        }
    }
}

/// Splits an instruction into whitespace-separated words, keeping quotes (the parts that read
/// them expand them), with each word's byte offset.
fn split_words(text: &str, escape: char) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut word: Option<(usize, String)> = None;
    let mut quote: Option<char> = None;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if quote.is_none() && c.is_whitespace() {
            out.extend(word.take());
            continue;
        }
        let w = word.get_or_insert_with(|| (i, String::new()));
        w.1.push(c);
        match c {
            c if c == escape && quote != Some('\'') => {
                if let Some((_, next)) = chars.next() {
                    w.1.push(next);
                }
            }
            '"' | '\'' if quote.is_none() => quote = Some(c),
            c if quote == Some(c) => quote = None,
            _ => {}
        }
    }
    out.extend(word);
    out
}

/// The heredoc terminators a RUN/COPY/ADD opens (`<<EOF`, `<<-EOF`, `<<"EOF"`, `<<'EOF'`), in
/// order, with whether leading tabs are stripped from body lines (`<<-`). As in BuildKit's
/// `ParseHeredoc` (parser/parser.go, `^(\d*)<<(-?)([^<]*)$`), a heredoc is a word of its own
/// starting with `<<` (after an optional fd number), so `$((1<<2))` and `<<<` are not.
fn heredocs(words: &[(usize, String)]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for (_, w) in words {
        let Some(rest) = w
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .strip_prefix("<<")
        else {
            continue;
        };
        let (rest, strip_tabs) = match rest.strip_prefix('-') {
            Some(r) => (r, true),
            None => (rest, false),
        };
        if rest.contains('<') {
            continue;
        }
        let name: String = rest.chars().filter(|c| !matches!(c, '"' | '\'')).collect();
        if !name.is_empty() {
            out.push((name, strip_tabs));
        }
    }
    out
}

/// Go's `strconv.ParseBool`, as BuildKit reads `required=`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Splits a mount spec at commas outside double quotes (BuildKit reads it as one CSV record).
fn csv_fields(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                field.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    out.push(field);
    out
}

fn parse_mount(
    spec: &str,
    vars: &Vars,
    escape: char,
    ssh_index: usize,
) -> Result<Option<Mount>, String> {
    // `--mount="type=secret,id=x"`: the whole value quoted.
    let spec = match spec.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) if !inner.contains('"') => inner,
        _ => spec,
    };
    let mut kind: Option<String> = None;
    let mut id = None;
    let mut target = None;
    let mut env = None;
    let mut required = Resolved::Known(false);
    let mut mode = None;
    let mut uid = Resolved::Known(0);
    let mut gid = Resolved::Known(0);
    let mut unexpected = None;
    for field in csv_fields(spec) {
        let field = field.trim();
        let Some((key, value)) = field.split_once('=') else {
            match field.to_ascii_lowercase().as_str() {
                "" | "readonly" | "ro" | "readwrite" | "rw" => {}
                "required" => required = Resolved::Known(true),
                _ => return Err(format!("--mount field {field:?}: expected key=value")),
            }
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let value = expand(value, vars, escape).map_err(|m| format!("--mount {key}=: {m}"))?;
        let number = |radix: u32, what: &str| -> Result<Resolved<u32>, String> {
            match value.known() {
                Some(v) => u32::from_str_radix(&v, radix)
                    .map(Resolved::Known)
                    .map_err(|_| format!("--mount {key}={v}: expected {what}")),
                None => Ok(Resolved::Unknown(value.clone())),
            }
        };
        match key.as_str() {
            "type" => match value.known() {
                Some(v) => kind = Some(v.to_ascii_lowercase()),
                None => {
                    return Err(format!(
                        "--mount type={value}: the type depends on a variable"
                    ));
                }
            },
            "id" => id = Some(value),
            "target" | "dst" | "destination" => target = Some(value),
            "env" => env = Some(value),
            "required" => {
                required =
                    match value.known() {
                        Some(v) => Resolved::Known(parse_go_bool(&v).ok_or_else(|| {
                            format!("--mount required={v}: expected true or false")
                        })?),
                        None => Resolved::Unknown(value),
                    }
            }
            "mode" => mode = Some(number(8, "an octal mode such as 0400")?),
            "uid" => uid = number(10, "a number")?,
            "gid" => gid = number(10, "a number")?,
            "from" | "source" | "src" | "readonly" | "ro" | "readwrite" | "rw" | "sharing"
            | "size" => {}
            other => unexpected = Some(other.to_string()),
        }
    }
    let kind = match kind.as_deref() {
        Some("secret") => MountKind::Secret,
        Some("ssh") => MountKind::Ssh,
        _ => return Ok(None),
    };
    if let Some(key) = unexpected {
        return Err(format!(
            "--mount=type={}: unexpected key {key:?}",
            kind.as_str()
        ));
    }
    let (id, target) =
        match kind {
            MountKind::Secret => {
                let id = match (id, &target) {
                    (Some(id), _) => id,
                    (None, Some(t)) => t.base_name(),
                    (None, None) => {
                        return Err("--mount=type=secret needs id= or target=".into());
                    }
                };
                let target = match (target, &env) {
                    (Some(t), _) => Some(t),
                    (None, Some(_)) => None,
                    (None, None) => Some(Word::literal("/run/secrets/").join(&id.base_name())),
                };
                (id, target)
            }
            MountKind::Ssh => (
                id.unwrap_or_else(|| Word::literal("default")),
                Some(target.unwrap_or_else(|| {
                    Word::literal(format!("/run/buildkit/ssh_agent.{ssh_index}"))
                })),
            ),
        };
    let default_mode = match kind {
        MountKind::Secret => 0o400,
        MountKind::Ssh => 0o600,
    };
    Ok(Some(Mount {
        line: 0,
        column: 0,
        kind,
        id,
        target,
        env,
        required,
        mode: mode.unwrap_or(Resolved::Known(default_mode)),
        uid,
        gid,
    }))
}
