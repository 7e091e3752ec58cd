//! A JSON record serialised straight from its Rust value, every string
//! value scrubbed on the way out: the same result as building a
//! `serde_json::Value`, running [`super::json`] over it and printing it,
//! without the tree (a map and a `String` per key and value: most of the
//! agent's allocations on a busy event stream).
//!
//! Hand-written because it is a hook into serde_json's writer: its
//! `Formatter` sees each string as fragments and escapes, so this one
//! gathers them, scrubs the whole string, and writes it escaped. Keys are
//! ours and pass unchanged, as in [`super::json`].

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};

use super::{ArgvMode, argv_mode, value};

/// Serialise `v` as one compact JSON line with every string value scrubbed
/// (an `argv` array is left as it is under `--argv full`: it was already
/// made what the user asked for).
pub fn to_line<T: Serialize + ?Sized>(v: &T) -> String {
    to_line_as(v, argv_mode())
}

pub(super) fn to_line_as<T: Serialize + ?Sized>(v: &T, mode: ArgvMode) -> String {
    let mut out = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        Scrubbing {
            full_argv: mode == ArgvMode::Full,
            ..Scrubbing::default()
        },
    );
    if v.serialize(&mut ser).is_err() {
        // Only a type whose Serialize fails (a map with non-string keys):
        // none of ours. Say so rather than write half a record.
        return r#"{"type":"error","error":"record not serialisable"}"#.to_string();
    }
    // serde_json writes UTF-8 only (strings are `str`, escapes are ASCII).
    String::from_utf8(out).unwrap_or_default()
}

#[derive(Default)]
struct Scrubbing {
    full_argv: bool,
    /// Inside a string: its text so far (escapes decoded).
    text: Option<String>,
    /// Spare buffer for the next string (one allocation serves them all).
    spare: String,
    in_key: bool,
    /// The value about to start is the one of key `argv`, under `--argv full`.
    next_exempt: bool,
    /// Per open array or object: its strings are left as they are.
    exempt: Vec<bool>,
}

impl Scrubbing {
    fn exempt_now(&self) -> bool {
        self.next_exempt || self.exempt.last().copied().unwrap_or(false)
    }

    fn open(&mut self) {
        let e = self.exempt_now();
        self.exempt.push(e);
        self.next_exempt = false;
    }
}

/// Write `s` as a JSON string (quoted, escaped) with serde_json's own escaping.
fn write_str<W: ?Sized + Write>(w: &mut W, s: &str) -> io::Result<()> {
    let mut ser = serde_json::Serializer::new(w);
    s.serialize(&mut ser).map_err(io::Error::other)
}

impl Formatter for Scrubbing {
    fn begin_string<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        let mut t = std::mem::take(&mut self.spare);
        t.clear();
        self.text = Some(t);
        Ok(())
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        _w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if let Some(t) = self.text.as_mut() {
            t.push_str(fragment);
        }
        Ok(())
    }

    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        _w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let c = match escape {
            CharEscape::Quote => '"',
            CharEscape::ReverseSolidus => '\\',
            CharEscape::Solidus => '/',
            CharEscape::Backspace => '\u{8}',
            CharEscape::FormFeed => '\u{c}',
            CharEscape::LineFeed => '\n',
            CharEscape::CarriageReturn => '\r',
            CharEscape::Tab => '\t',
            CharEscape::AsciiControl(b) => char::from(b),
        };
        if let Some(t) = self.text.as_mut() {
            t.push(c);
        }
        Ok(())
    }

    fn end_string<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        let t = self.text.take().unwrap_or_default();
        let r = if self.in_key {
            // Decided here, used by the value that follows the key.
            self.next_exempt = self.full_argv && t == "argv";
            write_str(w, &t)
        } else {
            let exempt = self.exempt_now();
            self.next_exempt = false;
            write_str(w, &if exempt { t.as_str().into() } else { value(&t) })
        };
        self.spare = t;
        r
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.in_key = true;
        CompactFormatter.begin_object_key(w, first)
    }

    fn end_object_key<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.in_key = false;
        CompactFormatter.end_object_key(w)
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        // A number, bool or null was the value: nothing else is exempt.
        self.next_exempt = false;
        CompactFormatter.end_object_value(w)
    }

    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open();
        CompactFormatter.begin_array(w)
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.exempt.pop();
        CompactFormatter.end_array(w)
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open();
        CompactFormatter.begin_object(w)
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.exempt.pop();
        CompactFormatter.end_object(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// What the Value path makes: the reference.
    fn via_value(v: &Value, mode: ArgvMode) -> String {
        let mut v = v.clone();
        super::super::json_as(&mut v, mode);
        v.to_string()
    }

    fn records() -> Vec<Value> {
        vec![
            json!({
                "type": "exec",
                "argv": ["curl", "-H", "Authorization: Bearer abcdefghijklmnop1234", "https://u:pw@x.test/?token=s3cret"],
                "env": {"GOPROXY": "https://user:hunter2@proxy.corp/", "GOFLAGS": "-mod=mod"},
                "quote\"key": "tab\there \"quoted\" back\\slash \u{1} nl\n",
                "n": 1, "f": 1.5, "b": true, "nil": null,
                "nested": {"argv": ["x", "--password=hunter22"], "deep": [[{"k": "ghp_abcdefghijklmnopqrstuvwxyz0123456789"}]]},
                "after": "DB_PASSWORD=hunter2",
            }),
            json!(["plain", {"argv": "https://a:b@c.test"}, "api_key=zzzzzzzzzzzz"]),
            json!("https://x:y@z.test"),
            json!({}),
            json!({"argv": 3, "next": "TOKEN=abc123456"}),
        ]
    }

    #[test]
    fn same_as_scrubbing_the_value_tree() {
        for mode in [ArgvMode::Full, ArgvMode::Scrubbed] {
            for r in records() {
                assert_eq!(to_line_as(&r, mode), via_value(&r, mode), "{mode:?}");
            }
        }
    }

    #[test]
    fn secrets_do_not_leave_and_keys_stay() {
        let line = to_line_as(&records()[0], ArgvMode::Scrubbed);
        for secret in [
            "hunter2",
            "s3cret",
            "abcdefghijklmnop1234",
            "ghp_abcdefghij",
        ] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
        assert!(line.contains(r#""quote\"key""#), "{line}");
        let v: Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["n"], 1);
        assert_eq!(v["nested"]["argv"][0], "x");
    }
}
