//! Caller text made safe to show: in a log line, in an error message, in an answer.
//!
//! A caller controls the bytes of its request, and some of them end up quoted (an unknown entity,
//! an unknown account, a `MsgId`). Written as they are, a newline would start a line that looks
//! like one of ours, a terminal escape would repaint the screen of whoever tails the log, and a
//! bidi control would reorder what they read. [`is_unsafe`] names those characters; the text log
//! format escapes them in every field ([`crate::telemetry`]), the JSON format writes them as
//! `\uXXXX`, and errors quote caller text only as a short [`Excerpt`].
//! Pure functions, no I/O.

use std::fmt;

/// How much of a message that may quote a caller (a parser's, a connection's) an error keeps.
pub const MESSAGE_EXCERPT: usize = 80;

/// Characters never written as themselves: C0 and C1 controls (newlines and terminal escapes
/// among them), the Unicode line and paragraph separators, and the bidi controls that change the
/// order in which a line is displayed.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Writes `c`, an [`is_unsafe`] character, as a Rust-style escape: `\n`, `\r`, `\t`, `\u{85}`.
pub fn write_escape(out: &mut impl fmt::Write, c: char) -> fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c => write!(out, "\\u{{{:x}}}", u32::from(c)),
    }
}

/// A `fmt::Write` that passes text through with every [`is_unsafe`] character escaped.
#[derive(Debug)]
pub struct Escaping<W>(pub W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some((at, c)) = rest.char_indices().find(|&(_, c)| is_unsafe(c)) {
            self.0.write_str(&rest[..at])?;
            write_escape(&mut self.0, c)?;
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// Caller text quoted in an error: at most a given number of characters (then `…`), with every
/// [`is_unsafe`] character escaped and `\` doubled, so it is one line and reads back
/// unambiguously. The only way caller text enters a rejection's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt(String);

impl Excerpt {
    pub fn new(text: &str, max_chars: usize) -> Excerpt {
        let mut out = String::with_capacity(text.len().min(max_chars * 2) + 3);
        let mut chars = text.chars();
        for c in chars.by_ref().take(max_chars) {
            if c == '\\' {
                out.push_str("\\\\");
            } else if is_unsafe(c) {
                let _ = write_escape(&mut out, c);
            } else {
                out.push(c);
            }
        }
        if chars.next().is_some() {
            out.push('…');
        }
        Excerpt(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    #[test]
    fn line_breaks_terminal_escapes_and_bidi_controls_are_unsafe() {
        for c in [
            '\n', '\r', '\t', '\0', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}',
            '\u{202e}', '\u{2066}', '\u{200f}',
        ] {
            assert!(is_unsafe(c), "{c:?}");
        }
        for c in [' ', 'a', '"', '\\', '中', '…', '\u{a0}'] {
            assert!(!is_unsafe(c), "{c:?}");
        }
    }

    #[test]
    fn escaping_writer_escapes_only_unsafe_characters() {
        let mut out = String::new();
        write!(Escaping(&mut out), "a\nb\u{1b}[2J 中\u{2028}\\").unwrap();
        assert_eq!(out, "a\\nb\\u{1b}[2J 中\\u{2028}\\");
    }

    #[test]
    fn excerpts_are_short_escaped_and_marked_when_cut() {
        assert_eq!(Excerpt::new("xxe", 32).as_str(), "xxe");
        let forged = "x\n2026-01-01T00:00:00.000000Z ERROR FORGED account=\"admin\"";
        let excerpt = Excerpt::new(forged, 24);
        assert_eq!(excerpt.as_str(), "x\\n2026-01-01T00:00:00.00…");
        assert!(!excerpt.as_str().contains('\n'));
        // A literal backslash-n from the caller is not mistaken for an escaped newline.
        assert_eq!(Excerpt::new("a\\nb", 8).as_str(), "a\\\\nb");
        assert_eq!(Excerpt::new("中文", 1).as_str(), "中…");
    }
}
