//! Rendered secrets: `[secrets.<id>] template = "machine git.example login ci password {{git_token}}\n"`.
//!
//! A template is literal text with `{{other_id}}` placeholders, each replaced by the value of
//! another policy id, resolved through that id's own sources, cache and caller scoping (the
//! resolver does that). Literal text is kept byte-exact; `{{{{` stands for a literal `{{`.
//! Parsing and the load-time checks (unknown ids, cycles) are pure and live here; rendering
//! writes into one zeroizing buffer of exactly the final size, so no copy of an input or of
//! the result is left behind. Nothing here may format a value.

use std::collections::{BTreeMap, BTreeSet};

use crate::secret::{SecretBytes, SecretFill};

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// The value of this policy id.
    Placeholder(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

/// A problem in a template's text, at a byte offset into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            literal.push_str(&rest[..open]);
            let after = &rest[open..];
            if let Some(tail) = after.strip_prefix("{{{{") {
                literal.push_str("{{");
                offset += open + 4;
                rest = tail;
                continue;
            }
            let inner = &after[2..];
            let Some(close) = inner.find("}}") else {
                return Err(TemplateError {
                    offset: offset + open,
                    message:
                        "\"{{\" without a closing \"}}\" (write \"{{{{\" for a literal \"{{\")"
                            .into(),
                });
            };
            let id = inner[..close].trim();
            if id.is_empty() || id.contains(['{', '}']) {
                return Err(TemplateError {
                    offset: offset + open,
                    message: format!(
                        "expected a secret id between \"{{{{\" and \"}}}}\"; got {:?}",
                        &inner[..close]
                    ),
                });
            }
            if id.ends_with('?') {
                return Err(TemplateError {
                    offset: offset + open,
                    message: format!(
                        "{{{{{id}}}}}: there are no optional placeholders; a template renders whole or fails naming the missing id"
                    ),
                });
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Placeholder(id.to_string()));
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// The ids the template needs, in order of first use.
    pub fn inputs(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Placeholder(id) if seen.insert(id.as_str()) => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Renders with `value(id)` for each placeholder (every input must be present).
    pub fn render<'v>(&self, value: impl Fn(&str) -> &'v SecretBytes) -> SecretBytes {
        let len: usize = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Literal(text) => text.len(),
                Part::Placeholder(id) => value(id).len(),
            })
            .sum();
        let mut fill = SecretFill::new(len);
        for part in &self.parts {
            let bytes = match part {
                Part::Literal(text) => text.as_bytes(),
                Part::Placeholder(id) => value(id).expose(),
            };
            let spare = fill.spare().expect("sized to fit every part");
            spare[..bytes.len()].copy_from_slice(bytes);
            fill.advance(bytes.len());
        }
        fill.finish()
    }
}

/// Template ids that reach themselves through their placeholders: each cycle once, as the path
/// from its first template back to it (`a → b → a`).
pub fn cycles(templates: &BTreeMap<&str, &Template>) -> Vec<Vec<String>> {
    fn visit<'a>(
        id: &'a str,
        templates: &BTreeMap<&'a str, &'a Template>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        out: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == id) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            cycle.push(id.to_string());
            out.push(cycle);
            return;
        }
        if done.contains(id) {
            return;
        }
        let Some(template) = templates.get(id) else {
            return;
        };
        path.push(id);
        for input in template.inputs() {
            visit(input, templates, path, done, out);
        }
        path.pop();
        done.insert(id);
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for id in templates.keys() {
        visit(id, templates, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Part {
        Part::Literal(s.into())
    }
    fn ph(s: &str) -> Part {
        Part::Placeholder(s.into())
    }

    #[test]
    fn parses_placeholders_literals_and_escapes() {
        let t =
            Template::parse("machine h login u password {{ tok }}\n{{{{x}} {{a}}{{b}}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                lit("machine h login u password "),
                ph("tok"),
                lit("\n{{x}} "),
                ph("a"),
                ph("b")
            ]
        );
        assert_eq!(t.inputs(), vec!["tok", "a", "b"]);
        assert_eq!(Template::parse("").unwrap().parts, vec![]);
        assert_eq!(
            Template::parse("}} alone { and {").unwrap().parts,
            vec![lit("}} alone { and {")]
        );
    }

    #[test]
    fn errors_say_where() {
        for (text, offset, needle) in [
            ("ab{{tok", 2, "without a closing"),
            ("x {{}}", 2, "expected a secret id"),
            ("{{{{ ok }} then {{ opt? }}", 16, "no optional placeholders"),
        ] {
            let e = Template::parse(text).unwrap_err();
            assert_eq!(e.offset, offset, "{text}: {e:?}");
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
    }

    #[test]
    fn renders_byte_exact_in_one_buffer() {
        let t = Template::parse("//reg/:_authToken={{npm}}\n{{{{literal\n").unwrap();
        let npm = SecretBytes::new(b"tok\xff\x00en".to_vec());
        let out = t.render(|_| &npm);
        assert_eq!(
            out.expose(),
            b"//reg/:_authToken=tok\xff\x00en\n{{literal\n"
        );
    }

    #[test]
    fn finds_cycles_and_ignores_plain_inputs() {
        let a = Template::parse("{{b}}").unwrap();
        let b = Template::parse("{{c}} {{plain}}").unwrap();
        let c = Template::parse("{{a}}").unwrap();
        let d = Template::parse("{{d}}").unwrap();
        let ok = Template::parse("{{plain}}").unwrap();
        let map: BTreeMap<&str, &Template> =
            [("a", &a), ("b", &b), ("c", &c), ("d", &d), ("ok", &ok)].into();
        assert_eq!(
            cycles(&map),
            vec![
                vec!["a".to_string(), "b".into(), "c".into(), "a".into()],
                vec!["d".to_string(), "d".into()]
            ]
        );
    }
}
