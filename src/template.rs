//! Header templates: literal text with any number of vault references, e.g.
//! `Bearer {vault://aws/api/token}`. Kong only resolves a field whose whole value is one
//! reference; templates go further. A reference starts at `{vault://` and ends at the first
//! `}` after it; everything else is literal (`{`, `}` and `{VAULT://` included).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fmt;

use crate::reference::{self, ParseError, Reference};

/// A reference in a template starts where a reference does.
const START: &str = reference::PREFIX;

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Literal(String),
    Reference {
        /// The full `{vault://...}` text, as written.
        text: String,
        reference: Reference,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// In order; never an empty literal, never two literals in a row.
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// A `{vault://` with no `}` after it; `at` is the byte offset of its `{`.
    Unterminated { at: usize },
    /// A delimited reference that does not parse.
    Reference { text: String, error: ParseError },
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Unterminated { at } => write!(f, "unterminated reference at byte {at}"),
            TemplateError::Reference { text, error } => {
                write!(f, "invalid reference {text}: {error}")
            }
        }
    }
}

impl std::error::Error for TemplateError {}

/// Split `s` into literal and reference segments; the first bad reference is the error.
pub fn parse(s: &str) -> Result<Template, TemplateError> {
    let mut segments = Vec::new();
    let mut rest = s;
    while let Some((literal, tail)) = rest.split_once(START) {
        push_literal(&mut segments, literal);
        let at = s.len() - tail.len() - START.len();
        let (inner, after) = tail
            .split_once('}')
            .ok_or(TemplateError::Unterminated { at })?;
        let text = format!("{START}{inner}}}");
        match reference::parse(&text) {
            Ok(reference) => segments.push(Segment::Reference { text, reference }),
            Err(error) => return Err(TemplateError::Reference { text, error }),
        }
        rest = after;
    }
    push_literal(&mut segments, rest);
    Ok(Template { segments })
}

fn push_literal(segments: &mut Vec<Segment>, text: &str) {
    // Literals only ever sit between references, so skipping empty ones keeps them unique.
    if !text.is_empty() {
        segments.push(Segment::Literal(text.to_owned()));
    }
}

impl Template {
    /// Each reference as (its text, parsed), in order; repeats are not merged.
    pub fn references(&self) -> impl Iterator<Item = (&str, &Reference)> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Reference { text, reference } => Some((text.as_str(), reference)),
            Segment::Literal(_) => None,
        })
    }

    /// Render with `lookup` giving each reference's value (anything string-like). Returns
    /// the text of the first reference it has no value for.
    pub fn render<F, V>(&self, mut lookup: F) -> Result<String, &str>
    where
        F: FnMut(&Reference) -> Option<V>,
        V: AsRef<str>,
    {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Reference { text, reference } => {
                    out.push_str(lookup(reference).ok_or(text.as_str())?.as_ref())
                }
            }
        }
        Ok(out)
    }

    pub fn has_references(&self) -> bool {
        self.references().next().is_some()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.into())
    }

    fn rf(s: &str) -> Segment {
        Segment::Reference {
            text: s.into(),
            reference: reference::parse(s).unwrap(),
        }
    }

    fn segs(s: &str) -> Vec<Segment> {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}")).segments
    }

    /// The template written back out: must give the input again.
    fn unparse(t: &Template) -> String {
        t.segments
            .iter()
            .map(|s| match s {
                Segment::Literal(x) | Segment::Reference { text: x, .. } => x.as_str(),
            })
            .collect()
    }

    #[test]
    fn literal_only_and_empty() {
        assert_eq!(segs(""), []);
        assert!(!parse("").unwrap().has_references());
        assert_eq!(segs("plain"), [lit("plain")]);
        // Not references: braces alone, other case, a space, a missing slash.
        for s in [
            "{}",
            "}{",
            "{VAULT://aws/s}",
            "{ vault://aws/s}",
            "{vault:/aws/s}",
            "{vault",
        ] {
            assert_eq!(segs(s), [lit(s)], "{s}");
            assert!(!parse(s).unwrap().has_references());
        }
    }

    #[test]
    fn one_reference() {
        let r = "{vault://aws/api/token}";
        assert_eq!(segs(r), [rf(r)]);
        assert_eq!(
            segs("Bearer {vault://aws/api/token}"),
            [lit("Bearer "), rf(r)]
        );
        assert_eq!(segs("{vault://aws/api/token};x"), [rf(r), lit(";x")]);
        let t = parse("a}{vault://aws/api/token}}b").unwrap();
        assert_eq!(t.segments, [lit("a}"), rf(r), lit("}b")]);
        assert!(t.has_references());
        let refs: Vec<_> = t.references().collect();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].0, r);
        assert_eq!(refs[0].1.resource, "api");
    }

    #[test]
    fn two_references() {
        let (a, b) = ("{vault://aws/u/user}", "{vault://env/p/pass#1}");
        assert_eq!(segs(&format!("{a}:{b}")), [rf(a), lit(":"), rf(b)]);
        assert_eq!(segs(&format!("{a}{b}")), [rf(a), rf(b)]);
        assert_eq!(
            segs(&format!("x{a}{a}y")),
            [lit("x"), rf(a), rf(a), lit("y")]
        );
        let t = parse(&format!("Basic {a}:{b}")).unwrap();
        let texts: Vec<&str> = t.references().map(|(text, _)| text).collect();
        assert_eq!(texts, [a, b]);
    }

    #[test]
    fn first_closing_brace_ends_a_reference() {
        // The `{vault://` inside is just path text; the first `}` closes.
        let t = "{vault://a/{vault://b/c}}";
        assert_eq!(segs(t), [rf("{vault://a/{vault://b/c}"), lit("}")]);
        assert_eq!(segs(t)[0], rf("{vault://a/{vault://b/c}"));
        let Segment::Reference { reference, .. } = &segs(t)[0] else {
            panic!()
        };
        assert_eq!(
            (reference.resource.as_str(), reference.key.as_deref()),
            ("{vault:/b", Some("c"))
        );
    }

    #[test]
    fn unterminated() {
        let e = parse("Bearer {vault://aws/api/token").unwrap_err();
        assert_eq!(e, TemplateError::Unterminated { at: 7 });
        assert_eq!(e.to_string(), "unterminated reference at byte 7");
        // Byte offsets, not chars; an earlier good reference does not help.
        assert_eq!(
            parse("é{vault://aws/s} {vault://").unwrap_err(),
            TemplateError::Unterminated { at: 18 }
        );
        assert_eq!(
            parse("{vault://").unwrap_err(),
            TemplateError::Unterminated { at: 0 }
        );
    }

    #[test]
    fn invalid_reference() {
        let e = parse("x {vault://env} y").unwrap_err();
        assert_eq!(
            e,
            TemplateError::Reference {
                text: "{vault://env}".into(),
                error: ParseError::MissingPath
            }
        );
        assert_eq!(
            e.to_string(),
            "invalid reference {vault://env}: missing path"
        );
        assert_eq!(
            parse("{vault://aws/s#x}").unwrap_err().to_string(),
            "invalid reference {vault://aws/s#x}: invalid version"
        );
        // The first bad one is reported.
        assert_eq!(
            parse("{vault://aws/s}{vault://}{vault://env/}").unwrap_err(),
            TemplateError::Reference {
                text: "{vault://}".into(),
                error: ParseError::MissingHost
            }
        );
    }

    #[test]
    fn render() {
        let t = parse("Basic {vault://aws/c/user}:{vault://aws/c/pass}!").unwrap();
        let got = t.render(|r| r.key.clone().map(|k| k.to_uppercase()));
        assert_eq!(got.as_deref(), Ok("Basic USER:PASS!"));
        let values = [("user", "u"), ("pass", "p")];
        let got = t.render(|r| {
            values
                .iter()
                .find(|(k, _)| Some(*k) == r.key.as_deref())
                .map(|(_, v)| *v)
        });
        assert_eq!(got.as_deref(), Ok("Basic u:p!"));
        // The first missing value is the error; lookup is called in order and stops there.
        let mut seen = Vec::new();
        let got = t.render(|r| {
            seen.push(r.key.clone());
            None::<&str>
        });
        assert_eq!(got, Err("{vault://aws/c/user}"));
        assert_eq!(seen, [Some("user".to_string())]);
        let got = t.render(|r| (r.key.as_deref() == Some("user")).then_some("u"));
        assert_eq!(got, Err("{vault://aws/c/pass}"));
        // No references: the literal back, lookup never called.
        let plain = parse("just text").unwrap();
        assert_eq!(
            plain.render(|_| -> Option<&str> { panic!() }).as_deref(),
            Ok("just text")
        );
        assert_eq!(parse("").unwrap().render(|_| Some("x")).as_deref(), Ok(""));
    }

    #[test]
    fn never_panics() {
        #[rustfmt::skip]
        const PIECES: &[&str] = &[
            "{vault://aws/s/k}", "{vault://u@env:1/a%2Fb/}", "{vault://aws/s?ttl=1#0x2}",
            "{", "}", "{vault://", "{VAULT://", "aws/", "env", "/", "%", "%FF", "+", "#", "1",
            "#x", "?", "a=b", ";", "@", ":", " ", "é", "\u{0}", "x",
        ];
        let mut state: u64 = 0x7e57;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let (mut ok, mut refs) = (0, 0);
        for _ in 0..20_000 {
            let len = next() % 12;
            let s: String = (0..len).map(|_| PIECES[next() % PIECES.len()]).collect();
            match parse(&s) {
                Ok(t) => {
                    ok += 1;
                    refs += t.references().count();
                    assert_eq!(unparse(&t), s);
                    for pair in t.segments.windows(2) {
                        assert!(
                            !matches!(pair, [Segment::Literal(_), Segment::Literal(_)]),
                            "{s:?}"
                        );
                    }
                    assert!(!t.segments.contains(&lit("")), "{s:?}");
                    let all = t.render(|r| Some(r.name.clone())).unwrap();
                    assert!(all.len() <= s.len(), "{s:?}");
                    let none = t.render(|_| None::<String>);
                    assert_eq!(none.is_err(), t.has_references(), "{s:?}");
                }
                Err(TemplateError::Unterminated { at }) => {
                    let tail = &s[at..];
                    assert!(tail.starts_with(START) && !tail.contains('}'), "{s:?}");
                }
                Err(TemplateError::Reference { text, error }) => {
                    assert!(s.contains(&text), "{s:?}");
                    assert_eq!(reference::parse(&text), Err(error), "{s:?}");
                }
            }
        }
        // The generator must reach both outcomes often enough to mean something.
        assert!(ok > 1_000 && refs > 500, "ok={ok} refs={refs}");
    }
}
