//! What a person or a machine reads: one line per exec/exit/finding (text,
//! colour on a terminal, fits 120 columns) or one JSON object per line with
//! `"type"` first. Every environment value is redacted here, the one place
//! values leave the agent.
//!
//! Owns: where lines go and what makes them safe to show. The records
//! themselves are shaped by their signals (`crate::render::Record`).

use crate::render::{ESC_MARK, Format, Style};

static SINK: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> = std::sync::OnceLock::new();

/// Send every record to `file` instead of stdout (`--output`), so a traced
/// command's own output never mixes with the agent's (opened as the user
/// by `app::outfile`).
pub fn set_output_file(file: std::fs::File) {
    let _ = SINK.set(std::sync::Mutex::new(file));
}

pub fn has_output_file() -> bool {
    SINK.get().is_some()
}

/// Write one record line (to `--output` or stdout). A closed stdout ends output quietly.
pub fn emit(line: &str) {
    use std::io::Write as _;
    let line = safe(line);
    if let Some(m) = SINK.get() {
        if let Ok(mut f) = m.lock() {
            let _ = writeln!(f, "{line}");
        }
        return;
    }
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
}

static FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// The format every sink writes (set once at start-up; text by default).
/// `--color auto`, by the conventions: no colour into `--output FILE`;
/// `NO_COLOR` set to anything but the empty string disables it
/// (no-color.org), `CLICOLOR_FORCE` set and not `0` forces it
/// (bixense.com/clicolors); else colour when stdout is a terminal.
pub fn auto_color(
    stdout_tty: bool,
    to_file: bool,
    no_color: Option<&std::ffi::OsStr>,
    clicolor_force: Option<&std::ffi::OsStr>,
) -> bool {
    if to_file || no_color.is_some_and(|v| !v.is_empty()) {
        return false;
    }
    if clicolor_force.is_some_and(|v| !v.is_empty() && v != "0") {
        return true;
    }
    stdout_tty
}

pub fn set_format(f: Format) {
    let _ = FORMAT.set(f);
}

/// The last step of every line the agent writes: secrets scrubbed (text:
/// the line as a value; JSON: every string of the record, before it was
/// serialised by [`crate::render::json_line`]), control characters made harmless.
fn safe(s: &str) -> std::borrow::Cow<'_, str> {
    match FORMAT.get().copied().unwrap_or(Format::Text) {
        Format::Text | Format::Markdown => text_safe(s),
        Format::Json => json_safe(s),
    }
}

/// A line of text for a person (records, the report, logs): scrubbed, then
/// [`terminal_safe`].
pub fn text_safe(s: &str) -> std::borrow::Cow<'_, str> {
    match crate::scrub::value(s) {
        std::borrow::Cow::Borrowed(b) => terminal_safe(b),
        std::borrow::Cow::Owned(o) => std::borrow::Cow::Owned(terminal_safe(&o).into_owned()),
    }
}

/// The trace report (text) on stderr, or in `--output` when given.
pub fn emit_report(text: &str) {
    if has_output_file() {
        emit(text);
    } else {
        eprint!("{}", safe(text));
    }
}

/// Characters a terminal acts on (or that reorder text on screen), beyond
/// the line's own newline and tabs.
fn dangerous(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Text for a terminal: argv, paths, DNS names and SNI are data, so every
/// control character in them is shown escaped (`\x1b`), never acted on. Our
/// own colour (ESC_MARK + `[`digits/`;` + `m`) becomes ESC: data holding
/// ESC_MARK can at worst change a colour, never move the cursor, retitle the
/// window or hide a line.
pub fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    if !s.chars().any(|c| dangerous(c) || c == ESC_MARK) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for (i, c) in s.char_indices() {
        if c == ESC_MARK {
            let rest = &s[i + c.len_utf8()..];
            let sgr = rest.strip_prefix('[').and_then(|r| {
                let n = r.find(|ch: char| !(ch.is_ascii_digit() || ch == ';'))?;
                (r[n..].starts_with('m')).then_some(n)
            });
            if sgr.is_some() {
                out.push('\x1b');
            } else {
                out.push_str("\\u{e01b}");
            }
        } else if dangerous(c) {
            if (c as u32) < 0x100 {
                let _ = write!(out, "\\x{:02x}", c as u32);
            } else {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// JSON lines: serde escapes C0 already; DEL, C1 and bidi overrides are
/// valid raw in JSON but a terminal showing the line may act on them.
pub fn json_safe(s: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    if !s.chars().any(dangerous) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if dangerous(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Lines rendered while a batch of events is handled, written with one call
/// when the batch is done (a write per line cost more than rendering it).
#[derive(Default)]
pub struct Lines(String);

impl Lines {
    pub fn push(&mut self, line: &str) {
        self.0.push_str(line);
        self.0.push('\n');
    }

    /// Write what is held (to `--output` or stdout).
    pub fn flush(&mut self) {
        use std::io::Write as _;
        if self.0.is_empty() {
            return;
        }
        let text = safe(&self.0);
        if let Some(m) = SINK.get() {
            if let Ok(mut f) = m.lock() {
                let _ = f.write_all(text.as_bytes());
            }
        } else {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
        drop(text);
        self.0.clear();
    }
}

/// The line `o` makes, or `None` when it is not shown (outside toolchains
/// without `--all-execs`, and no finding).
pub fn render(style: &Style, o: &crate::pipeline::Output, all_execs: bool) -> Option<String> {
    let json = style.format == Format::Json;
    o.with_record(|r| {
        r.shown(all_execs, json)
            .then(|| if json { r.json(style) } else { r.text(style) })
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use crate::render::{Format, Style, paint};

    #[test]
    fn colour_follows_the_conventions() {
        let (e, one, zero) = (OsStr::new(""), OsStr::new("1"), OsStr::new("0"));
        assert!(auto_color(true, false, None, None));
        assert!(!auto_color(false, false, None, None));
        // An empty NO_COLOR does not disable colour; any other value does.
        assert!(auto_color(true, false, Some(e), None));
        assert!(!auto_color(true, false, Some(one), None));
        assert!(!auto_color(true, false, Some(one), Some(one)));
        // CLICOLOR_FORCE forces it into a pipe, unless empty or 0.
        assert!(auto_color(false, false, None, Some(one)));
        assert!(!auto_color(false, false, None, Some(zero)));
        assert!(!auto_color(false, false, None, Some(e)));
        // Never into --output FILE.
        assert!(!auto_color(true, true, None, Some(one)));
    }

    #[test]
    fn control_characters_of_data_never_reach_the_terminal() {
        // A title change, a line erase and a cursor move planted in argv.
        let hostile = "go\x1b]0;pwned\x07 \x1b[2K\r\x1b[1A x\u{9b}31m \u{202e}gnp.exe";
        let safe = terminal_safe(hostile);
        assert!(!safe.contains('\x1b') && !safe.contains('\r') && !safe.contains('\x07'));
        assert!(!safe.contains('\u{9b}') && !safe.contains('\u{202e}'));
        assert!(safe.contains(r"\x1b]0;pwned\x07"), "{safe}");
        // Our own colour survives, data's fake mark can only be a colour.
        let painted = paint(
            &Style {
                format: Format::Text,
                color: true,
                clock_offset_ns: 0,
            },
            "31",
            "error",
        );
        assert_eq!(terminal_safe(&painted), "\x1b[31merror\x1b[0m");
        assert_eq!(terminal_safe("a\u{E01B}]0;x\x07"), r"a\u{e01b}]0;x\x07");
        assert_eq!(terminal_safe("plain\ttext\n"), "plain\ttext\n");
        // JSON: C1 and bidi become \u escapes, valid inside JSON strings.
        let j = json_safe("{\"a\":\"x\u{9b}y\u{202e}\"}");
        assert_eq!(j, r#"{"a":"x\u009by\u202e"}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&j).is_ok());
    }
    use super::*;
}
