//! Values after variable expansion, where some variables may have no value the reader can
//! know: a build arg without a default (or, at build time, any build arg, since `--build-arg`
//! can override its default where buildbroker cannot see it) and anything the base image's
//! `ENV` defines. Such a part stays a named unknown, so an id like `token_${STAGE}` is a
//! pattern a requested id can be matched against, and a `mode=$MODE` is reported as
//! unresolved rather than guessed.
//!
//! Expansion follows BuildKit's shell-word rules (`frontend/dockerfile/shell/lex.go`) for what
//! mount options use: `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`,
//! `${NAME+word}`, single quotes (no expansion), double quotes, and the escape character.

use std::collections::BTreeMap;
use std::fmt;

/// One piece of an expanded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// The value of this variable, which the reader cannot know.
    Unknown(String),
}

/// An expanded value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Word {
    parts: Vec<Part>,
}

impl Word {
    pub fn literal(text: impl Into<String>) -> Word {
        let mut w = Word::default();
        w.push_text(&text.into());
        w
    }

    pub fn unknown(name: impl Into<String>) -> Word {
        Word {
            parts: vec![Part::Unknown(name.into())],
        }
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(Part::Text(last)) = self.parts.last_mut() {
            last.push_str(text);
        } else {
            self.parts.push(Part::Text(text.to_string()));
        }
    }

    fn push_char(&mut self, c: char) {
        let mut b = [0u8; 4];
        self.push_text(c.encode_utf8(&mut b));
    }

    /// This word followed by `other`.
    pub fn join(mut self, other: &Word) -> Word {
        self.append(other);
        self
    }

    fn append(&mut self, other: &Word) {
        for p in &other.parts {
            match p {
                Part::Text(t) => self.push_text(t),
                Part::Unknown(_) => self.parts.push(p.clone()),
            }
        }
    }

    /// The value, when every part of it is known.
    pub fn known(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Unknown(_) => return None,
            }
        }
        Some(out)
    }

    /// The variables whose values are missing.
    pub fn unknowns(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Unknown(n) => Some(n.as_str()),
                Part::Text(_) => None,
            })
            .collect()
    }

    /// Whether `value` is one of the values this word can take: each unknown part may stand
    /// for any text, including none.
    pub fn matches(&self, value: &str) -> bool {
        fn go(parts: &[Part], value: &str) -> bool {
            match parts.split_first() {
                None => value.is_empty(),
                Some((Part::Text(t), rest)) => {
                    value.strip_prefix(t.as_str()).is_some_and(|v| go(rest, v))
                }
                Some((Part::Unknown(_), rest)) => value
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([value.len()])
                    .any(|i| go(rest, &value[i..])),
            }
        }
        go(&self.parts, value)
    }

    /// The last path element (`path.Base`), for ids defaulting to the target's base name.
    pub fn base_name(&self) -> Word {
        let mut out = Word::default();
        for p in self.parts.iter().rev() {
            match p {
                Part::Text(t) => match t.trim_end_matches('/').rsplit_once('/') {
                    Some((_, tail)) => {
                        out.parts.insert(0, Part::Text(tail.to_string()));
                        return out;
                    }
                    None => out.parts.insert(0, p.clone()),
                },
                Part::Unknown(_) => out.parts.insert(0, p.clone()),
            }
        }
        out
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            match p {
                Part::Text(t) => f.write_str(t)?,
                Part::Unknown(n) => write!(f, "${{{n}}}")?,
            }
        }
        Ok(())
    }
}

/// The variables in scope at one instruction: name → value.
pub type Vars = BTreeMap<String, Word>;

/// Expands `text` in `vars`; a variable not in `vars` is unknown (the base image may define it).
pub fn expand(text: &str, vars: &Vars, escape: char) -> Result<Word, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    let out = expand_until(&chars, &mut pos, vars, escape, None)?;
    Ok(out)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands from `pos` to the end, or to an unquoted `stop` character (consumed).
fn expand_until(
    chars: &[char],
    pos: &mut usize,
    vars: &Vars,
    escape: char,
    stop: Option<char>,
) -> Result<Word, String> {
    let mut out = Word::default();
    let mut in_double = false;
    while *pos < chars.len() {
        let c = chars[*pos];
        *pos += 1;
        if !in_double && Some(c) == stop {
            return Ok(out);
        }
        match c {
            c if c == escape => match chars.get(*pos) {
                Some(&next) => {
                    *pos += 1;
                    if in_double && !matches!(next, '$' | '"') && next != escape {
                        out.push_char(c);
                    }
                    out.push_char(next);
                }
                None => out.push_char(c),
            },
            '\'' if !in_double => {
                let start = *pos;
                while *pos < chars.len() && chars[*pos] != '\'' {
                    *pos += 1;
                }
                if *pos == chars.len() {
                    return Err("unterminated single quote".into());
                }
                out.push_text(&chars[start..*pos].iter().collect::<String>());
                *pos += 1;
            }
            '"' => in_double = !in_double,
            '$' => out.append(&variable(chars, pos, vars, escape)?),
            c => out.push_char(c),
        }
    }
    if in_double {
        return Err("unterminated double quote".into());
    }
    if let Some(s) = stop {
        return Err(format!("missing '{s}'"));
    }
    Ok(out)
}

/// The value of the variable reference after a `$` at `pos`.
fn variable(chars: &[char], pos: &mut usize, vars: &Vars, escape: char) -> Result<Word, String> {
    let lookup = |name: &str| vars.get(name).cloned();
    match chars.get(*pos) {
        Some('{') => {
            *pos += 1;
            let start = *pos;
            while *pos < chars.len() && is_name_char(chars[*pos]) {
                *pos += 1;
            }
            let name: String = chars[start..*pos].iter().collect();
            if name.is_empty() {
                return Err("bad substitution: expected a variable name after ${".into());
            }
            let value = lookup(&name);
            match chars.get(*pos) {
                Some('}') => {
                    *pos += 1;
                    Ok(value.unwrap_or_else(|| Word::unknown(&name)))
                }
                Some(':') | Some('-') | Some('+') => {
                    let colon = chars[*pos] == ':';
                    if colon {
                        *pos += 1;
                    }
                    let op = chars.get(*pos).copied();
                    if !matches!(op, Some('-') | Some('+')) {
                        return Err(format!(
                            "unsupported modifier in ${{{name}...}}: only :-, -, :+ and + are read"
                        ));
                    }
                    *pos += 1;
                    let word = expand_until(chars, pos, vars, escape, Some('}'))?;
                    let Some(value) = value else {
                        return Ok(Word::unknown(&name));
                    };
                    let Some(text) = value.known() else {
                        return Ok(Word::unknown(&name));
                    };
                    // A variable in `vars` is set; `:` also treats the empty value as unset.
                    let set = !(colon && text.is_empty());
                    Ok(match (op, set) {
                        (Some('-'), true) => value,
                        (Some('-'), false) => word,
                        (_, true) => word,
                        (_, false) => Word::default(),
                    })
                }
                _ => Err(format!("missing '}}' after ${{{name}")),
            }
        }
        Some(&c) if is_name_char(c) && !c.is_ascii_digit() => {
            let start = *pos;
            while *pos < chars.len() && is_name_char(chars[*pos]) {
                *pos += 1;
            }
            let name: String = chars[start..*pos].iter().collect();
            Ok(lookup(&name).unwrap_or_else(|| Word::unknown(name)))
        }
        _ => Ok(Word::literal("$")),
    }
}
