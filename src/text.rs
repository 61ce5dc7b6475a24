//! Text from outside (requests, configuration, AWS answers) made safe to put
//! in a log line: control characters shown as escapes, never written raw (a
//! `\n` in a secret id must not start a forged log line), and lengths capped
//! (a 60 KB header value is not logged per request).

use std::fmt::Write;

/// Longest log line the filter writes, in characters.
pub const MAX_LOG_LINE: usize = 2048;
/// Longest piece of outside text quoted inside a message, in characters.
pub const MAX_QUOTED: usize = 256;

/// `s` with control characters (C0, DEL, C1) and Unicode line/paragraph
/// separators escaped (`\n`, `\r`, `\t`, `\x1b`, `\u{2028}`), cut to `max`
/// characters of output with `...` appended when cut.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 3);
    let mut shown = 0usize;
    let mut piece = String::new();
    for c in s.chars() {
        piece.clear();
        match c {
            '\n' => piece.push_str("\\n"),
            '\r' => piece.push_str("\\r"),
            '\t' => piece.push_str("\\t"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(piece, "\\x{:02x}", c as u32);
            }
            c if escaped(c) => {
                let _ = write!(piece, "\\u{{{:x}}}", c as u32);
            }
            c => piece.push(c),
        }
        let width = piece.chars().count();
        if shown + width > max {
            out.push_str("...");
            break;
        }
        shown += width;
        out.push_str(&piece);
    }
    out
}

fn escaped(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// A whole log line: [`printable`] with [`MAX_LOG_LINE`].
pub fn log_line(s: &str) -> String {
    let clean = s.len() <= MAX_LOG_LINE && !s.chars().any(escaped);
    if clean {
        s.to_string()
    } else {
        printable(s, MAX_LOG_LINE)
    }
}

/// Outside text quoted in a message: [`printable`] with [`MAX_QUOTED`].
pub fn quoted(s: &str) -> String {
    printable(s, MAX_QUOTED)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            printable("a\nb\r\tc\0\x1b\x7f", 100),
            "a\\nb\\r\\tc\\x00\\x1b\\x7f"
        );
        assert_eq!(printable("x\u{85}y\u{2028}z", 100), "x\\u{85}y\\u{2028}z");
        assert_eq!(printable("héllo", 100), "héllo");
    }

    #[test]
    fn long_text_is_cut() {
        let s = "é".repeat(1000);
        let p = printable(&s, 10);
        assert_eq!(p, format!("{}...", "é".repeat(10)));
        assert_eq!(printable(&"\n".repeat(100), 5), "\\n\\n...");
        assert_eq!(log_line(&"a".repeat(5000)).len(), MAX_LOG_LINE + 3);
        assert_eq!(log_line("plain"), "plain");
        assert!(!log_line("x\n[critical] forged").contains('\n'));
    }
}
