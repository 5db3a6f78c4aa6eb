//! Logging: tracing to stderr, human-readable or JSON, filtered by `RUST_LOG` or `log.filter`;
//! and, in [`traces`], OpenTelemetry traces exported over OTLP when configured.
//!
//! A callback's lines run inside a `callback` span that carries its store id once it is stored,
//! and every delivery line names the same id, so one callback's story can be followed by that id
//! (JSON lines include the span's fields). What is logged is decided where it happens; the rule
//! everywhere is that tokens, AES keys and decrypted message content never appear at info level.
//!
//! Caller bytes reach some fields (an unknown account's path, a `MsgId`, a rejection's excerpt),
//! so escaping is done here, once, for every line whatever its source: the text format writes
//! each field with [`SafeFields`], the JSON format through [`JsonSafe`]. Either way one event is
//! one line, and no caller can forge a line, move the cursor of a terminal or reorder the text.

pub mod traces;

use std::fmt::{self, Write as _};
use std::io;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

use crate::escape::{Escaping, is_unsafe};

/// Logs one event at a level chosen at run time: tracing's macros take a constant level.
macro_rules! event_at {
    ($level:expr, $($event:tt)+) => {
        match $level {
            tracing::Level::ERROR => tracing::error!($($event)+),
            tracing::Level::WARN => tracing::warn!($($event)+),
            tracing::Level::INFO => tracing::info!($($event)+),
            tracing::Level::DEBUG => tracing::debug!($($event)+),
            _ => tracing::trace!($($event)+),
        }
    };
}
pub(crate) use event_at;

/// How log lines are written: text for people, JSON (one object a line) for collectors.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; a second call does nothing. JSON lines carry
/// `instance_name` (the instance's stable name), so a collector of several instances' lines
/// can tell them apart; text lines name it once, at start.
pub fn init(format: LogFormat, filter: &str, instance_name: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_writer(io::stderr)
            .fmt_fields(SafeFields)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .with_writer(Instance::named(instance_name))
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// The text format's fields, event and span alike: `name=value` separated by spaces. A string
/// field is quoted and escaped as before (`account="main"`); a `%` or `?` field is written bare
/// when it is one plain token (`status=500`, `error=…` without spaces) and quoted and escaped
/// otherwise, so a value can neither end its line nor pass for more fields; the message is
/// written with its unsafe characters escaped.
#[derive(Debug, Clone, Copy, Default)]
pub struct SafeFields;

impl<'a> MakeVisitor<Writer<'a>> for SafeFields {
    type Visitor = SafeVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> SafeVisitor<'a> {
        SafeVisitor {
            writer,
            result: Ok(()),
            empty: true,
        }
    }
}

/// Writes one set of fields for [`SafeFields`].
#[derive(Debug)]
pub struct SafeVisitor<'a> {
    writer: Writer<'a>,
    result: fmt::Result,
    empty: bool,
}

impl SafeVisitor<'_> {
    /// The separator before every field but the first; `log.*` fields (a `log` crate record's
    /// metadata, already shown in the line) and failed writes are skipped.
    fn begin(&mut self, field: &Field) -> Option<&'static str> {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return None;
        }
        if !self.empty {
            self.result = self.writer.write_char(' ');
        }
        self.empty = false;
        Some(name.strip_prefix("r#").unwrap_or(name))
    }
}

impl Visit for SafeVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let Some(name) = self.begin(field) else {
            return;
        };
        self.result = if name == "message" {
            Escaping(&mut self.writer).write_str(value)
        } else {
            // Debug quotes and escapes every control, separator and bidi character.
            write!(self.writer, "{name}={value:?}")
        };
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let Some(name) = self.begin(field) else {
            return;
        };
        if name == "message" {
            self.result = write!(Escaping(&mut self.writer), "{value:?}");
            return;
        }
        let text = format!("{value:?}");
        let plain = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '='));
        self.result = if plain {
            write!(self.writer, "{name}={text}")
        } else {
            write!(self.writer, "{name}={text:?}")
        };
    }
}

impl VisitOutput<fmt::Result> for SafeVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for SafeVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// The JSON format's writer. serde_json escapes the C0 controls, `"` and `\`, but writes C1
/// controls, the line and paragraph separators and bidi controls as they are; this writes them
/// as `\uXXXX` escapes. They can only stand inside JSON strings, so each line stays the same JSON
/// value. Each event arrives whole (one `write_all` of one formatted line).
#[derive(Debug)]
pub struct JsonSafe<W>(pub W);

/// Makes the JSON format's writer: [`JsonSafe`] over stderr, each line opening with this
/// instance's `instance_name`.
#[derive(Debug, Clone)]
struct Instance {
    /// `{"instance_name":"…",`: what a line's opening `{` is replaced with.
    opening: std::sync::Arc<str>,
}

impl Instance {
    fn named(name: &str) -> Instance {
        let name = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".to_owned());
        Instance {
            opening: format!("{{\"instance_name\":{name},").into(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Instance {
    type Writer = JsonSafe<Named<io::Stderr>>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonSafe(Named {
            out: io::stderr(),
            opening: self.opening.clone(),
        })
    }
}

/// A writer that puts `opening` in place of the `{` that opens each JSON line (the formatter
/// writes a line with one `write_all`).
#[derive(Debug)]
pub struct Named<W> {
    out: W,
    opening: std::sync::Arc<str>,
}

impl<W: io::Write> io::Write for Named<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match buf.strip_prefix(b"{") {
            Some(rest) => {
                let mut line = Vec::with_capacity(self.opening.len() + rest.len());
                line.extend_from_slice(self.opening.as_bytes());
                line.extend_from_slice(rest);
                self.out.write_all(&line)
            }
            None => self.out.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: io::Write> io::Write for JsonSafe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // The characters escaped here are U+0080..U+009F (0xC2 …), U+061C (0xD8 …) and
        // U+200E..U+2069 (0xE2 …); most lines contain none of these lead bytes.
        if !buf.iter().any(|b| matches!(b, 0xC2 | 0xD8 | 0xE2)) {
            return self.0.write_all(buf);
        }
        let Ok(text) = std::str::from_utf8(buf) else {
            return self.0.write_all(buf);
        };
        let mut out = String::with_capacity(buf.len() + 16);
        for c in text.chars() {
            if !c.is_ascii() && is_unsafe(c) {
                // All of them are in the Basic Multilingual Plane: one \u escape each.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            } else {
                out.push(c);
            }
        }
        self.0.write_all(out.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    const FORGED: &str =
        "a\n2026-01-01T00:00:00.000000Z ERROR FORGED x=\"y\"\u{1b}[2J\u{85}\u{2028}\u{202e}";

    #[test]
    fn text_fields_cannot_forge_a_line_or_a_field() {
        let sink = Sink::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(sink.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(SafeFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("callback", account = FORGED);
            let _entered = span.enter();
            tracing::info!(
                shown = %FORGED,
                debugged = ?FORGED,
                plain = %"token",
                n = 5,
                r#type = "t",
                "message {FORGED}"
            );
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        for c in ['\u{1b}', '\u{85}', '\u{2028}', '\u{202e}'] {
            assert!(!text.contains(c), "{c:?} in {text:?}");
        }
        let escaped =
            r#"a\n2026-01-01T00:00:00.000000Z ERROR FORGED x=\"y\"\u{1b}[2J\u{85}\u{2028}\u{202e}"#;
        assert!(
            text.contains(&format!("callback{{account=\"{escaped}\"}}")),
            "{text}"
        );
        assert!(text.contains(&format!("shown=\"{escaped}\"")), "{text}");
        assert!(text.contains("plain=token n=5 type=\"t\""), "{text}");
        assert!(
            text.contains(r#"message a\n2026-01-01T00:00:00.000000Z ERROR FORGED x="y"\u{1b}[2J"#),
            "{text}"
        );
    }

    #[test]
    fn json_lines_are_one_line_each_with_every_unsafe_character_escaped() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || JsonSafe(writer.clone()))
            .json()
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(shown = %FORGED, "message {FORGED}");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        for c in ['\u{1b}', '\u{85}', '\u{2028}', '\u{202e}'] {
            assert!(!text.contains(c), "{c:?} in {text:?}");
        }
        let line: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(line["fields"]["shown"], FORGED);
        assert_eq!(line["fields"]["message"], format!("message {FORGED}"));
    }

    #[test]
    fn json_writer_escapes_c1_separators_and_bidi_inside_strings() {
        let mut out = Vec::new();
        let line = serde_json::json!({ "fields": { "message": FORGED } }).to_string() + "\n";
        JsonSafe(&mut out).write_all(line.as_bytes()).unwrap();
        let written = String::from_utf8(out).unwrap();
        for c in ['\u{1b}', '\u{85}', '\u{2028}', '\u{202e}'] {
            assert!(!written.contains(c), "{c:?} in {written:?}");
        }
        assert!(written.contains(r"\u0085\u2028\u202e"), "{written}");
        let parsed: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(parsed["fields"]["message"], FORGED, "the same JSON value");
        let mut plain = Vec::new();
        JsonSafe(&mut plain)
            .write_all(b"{\"a\":\"\xe4\xb8\xad\"}\n")
            .unwrap();
        assert_eq!(plain, b"{\"a\":\"\xe4\xb8\xad\"}\n");
    }
}
