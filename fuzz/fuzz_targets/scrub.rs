//! The secret scrubber on arbitrary text, with the invariant that a planted
//! marker never survives: the input is split at its first NUL into a
//! "shape" and the rest; the marker is planted in every secret position the
//! shape's byte selects (URL password, option value, header credential,
//! NAME=value, query parameter), among arbitrary words.
#![no_main]

use agent_parse::scrub;

const MARK: &str = "Zx9SECRETq";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Never panics on anything.
    let _ = scrub::value(&text);
    let words: Vec<String> = text.split(' ').map(str::to_string).collect();
    let _ = scrub::scrub_argv(&words);
    // Any text in a record: the direct writer and the Value tree agree.
    let rec = serde_json::json!({"t": &*text, "a": [&*text, {"argv": &words}]});
    let mut tree = rec.clone();
    scrub::json(&mut tree);
    assert_eq!(scrub::ser::to_line(&rec), tree.to_string());
    // Planted: arbitrary text around one secret of a chosen form.
    let (shape, around) = match data.split_first() {
        Some((s, rest)) => (*s, String::from_utf8_lossy(rest).into_owned()),
        None => return,
    };
    // The text around holds no marker of its own: removed after the
    // whitespace is (removing either can join a new marker, so repeat).
    let mut around: String = around.chars().filter(|c| !c.is_whitespace()).take(40).collect();
    while around.contains(MARK) {
        around = around.replace(MARK, "");
    }
    // A password holds no raw `?`, `#` or `/` (RFC 3986 wants them
    // %-encoded; a "password" with `://` reads as a nested URL, documented).
    let pw: String = around.chars().filter(|c| !"?#/".contains(*c)).collect();
    let planted = match shape % 8 {
        0 => format!("https://u:{pw}{MARK}@host/p"),
        1 => format!("--password={MARK}"),
        2 => format!("-H Authorization: Bearer {MARK}"),
        3 => format!("GITHUB_TOKEN={MARK}"),
        4 => format!("https://h/x?access_token={MARK}&a={around}"),
        5 => format!("curl -u {around}:{MARK} h"),
        6 => format!("--token {MARK}"),
        _ => format!("http.extraHeader=Authorization: Basic {MARK}"),
    };
    let line = format!("{around} {planted} {around}");
    let out = scrub::value(&line);
    assert!(!out.contains(MARK), "{line:?} -> {out:?}");
    // No over-redaction: a redaction never crosses whitespace, so the
    // words after the secret come out as they do alone (unless they open
    // a quote, which a secret value may run to, or are an option, whose
    // meaning depends on the program before it).
    if !around.contains(['"', '\'']) && !around.starts_with('-') {
        let tail = scrub::value(&around);
        assert!(
            out.ends_with(&format!(" {tail}")),
            "the words after the secret changed: {line:?} -> {out:?}"
        );
    }
    let argv: Vec<String> = line.split(' ').map(str::to_string).collect();
    let out = scrub::scrub_argv(&argv).join(" ");
    assert!(!out.contains(MARK), "argv {argv:?} -> {out:?}");
    // A JSON record written straight from its value (escapes, nesting):
    // no marker, and the same line the Value tree gives once scrubbed.
    // (An argv array is scrubbed as a command line before it is put in a
    // record, as the records do: its words alone lack their context.)
    let rec = serde_json::json!({
        "type": "x", "v": line, "a": [line, {"k": line}], "argv": scrub::scrub_argv(&argv),
    });
    let out = scrub::ser::to_line(&rec);
    assert!(!out.contains(MARK), "json {out}");
    let mut tree = rec.clone();
    scrub::json(&mut tree);
    assert_eq!(out, tree.to_string());
});
