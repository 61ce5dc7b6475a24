//! `template::parse`: never panics, round-trips its text, errors point at real text.
#![no_main]

use aws_vault::reference;
use aws_vault::template::{self, Segment, TemplateError};
use libfuzzer_sys::fuzz_target;

const START: &str = "{vault://";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match template::parse(s) {
        Ok(t) => {
            let text: String = t
                .segments
                .iter()
                .map(|x| match x {
                    Segment::Literal(l) | Segment::Reference { text: l, .. } => l.as_str(),
                })
                .collect();
            assert_eq!(text, s, "segments must concatenate to the input");
            for pair in t.segments.windows(2) {
                assert!(!matches!(pair, [Segment::Literal(_), Segment::Literal(_)]));
            }
            for seg in &t.segments {
                match seg {
                    Segment::Literal(l) => assert!(!l.is_empty() && !l.contains(START)),
                    Segment::Reference { text, reference } => {
                        assert_eq!(reference::parse(text).as_ref(), Ok(reference))
                    }
                }
            }
            let rendered = t
                .render(|r| Some(r.name.clone()))
                .expect("every value given");
            assert!(rendered.len() <= s.len());
            assert_eq!(t.render(|_| None::<&str>).is_err(), t.has_references());
        }
        Err(TemplateError::Unterminated { at }) => {
            let tail = s.get(at..).expect("offset on a char boundary");
            assert!(tail.starts_with(START) && !tail.contains('}'));
        }
        Err(TemplateError::Reference { text, error }) => {
            assert!(s.contains(&text));
            assert_eq!(reference::parse(&text), Err(error));
        }
    }
});
