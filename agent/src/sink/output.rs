//! What a person or a machine reads: one line per exec/exit/finding (text,
//! colour on a terminal, fits 120 columns) or one JSON object per line with
//! `"type"` first. Every environment value is redacted here, the one place
//! values leave the agent.
//!
//! Owns: rendering. Must not: decide what is shown (the runner does).

use serde_json::{Map, Value, json};

use crate::{
    events::{Exec, Exit, Tcp},
    finding::{Finding, Severity, errno_name},
    signal::exec::ExecAnalysis,
    signal::tcp::{ConnReport, Outcome},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    /// The `agent trace` report as Markdown (records stay text).
    Markdown,
}

#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub format: Format,
    pub color: bool,
    /// boot-time ns → Unix ns.
    pub clock_offset_ns: i128,
}

const WIDTH: usize = 120;

static SINK: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> = std::sync::OnceLock::new();

/// Send every record to `path` instead of stdout (`--output`), so a traced
/// command's own output never mixes with the agent's.
///
/// Opened as `as_user` when the agent was elevated for someone (their
/// filesystem uid, gid and groups decide, so `sudo agent --output /etc/x`
/// cannot write where the user could not, and a file it creates is theirs),
/// never through a symbolic link planted in its place (`O_NOFOLLOW`).
/// Must run before any other thread exists (fsuid and groups are per thread
/// and per process).
pub fn set_output_file(
    path: &std::path::Path,
    as_user: Option<&crate::process::invoker::Invoker>,
) -> std::io::Result<()> {
    let f = open_output(path, as_user)?;
    let _ = SINK.set(std::sync::Mutex::new(f));
    Ok(())
}

fn open_output(
    path: &std::path::Path,
    as_user: Option<&crate::process::invoker::Invoker>,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    std::io::Error::other(format!(
                        "{} is a symbolic link: refused (give the file itself)",
                        path.display()
                    ))
                } else {
                    e
                }
            })
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let Some(u) = as_user.filter(|u| root && u.uid != 0) else {
        return open();
    };
    let saved = crate::app::traced::current_groups();
    let groups: Vec<libc::gid_t> = u.groups.clone();
    // SAFETY: plain credential syscalls on this (only) thread, each undone
    // below; the pointer and length describe `groups`.
    unsafe {
        libc::setgroups(groups.len(), groups.as_ptr());
        libc::setfsgid(u.gid);
        libc::setfsuid(u.uid);
    }
    let r = open();
    // SAFETY: as above: back to root's own filesystem ids and groups.
    unsafe {
        libc::setfsuid(0);
        libc::setfsgid(0);
        libc::setgroups(saved.len(), saved.as_ptr());
    }
    r
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

/// Stands for ESC in what [`paint`] makes; only the sinks turn it into ESC,
/// after every real control character of the data has been escaped.
pub const ESC_MARK: char = '\u{E01B}';

static FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// The format every sink writes (set once at start-up; text by default).
pub fn set_format(f: Format) {
    let _ = FORMAT.set(f);
}

/// The last step of every line the agent writes: secrets scrubbed (text:
/// the line as a value; JSON: every string of the record, before it was
/// serialised by [`json_line`]), control characters made harmless.
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

/// Serialise a JSON record for a sink, every string in it scrubbed.
pub fn json_line(mut v: Value) -> String {
    crate::scrub::json(&mut v);
    v.to_string()
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

fn unix_ns(style: &Style, ktime_ns: u64) -> i128 {
    ktime_ns as i128 + style.clock_offset_ns
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let ms = (unix_ns.rem_euclid(1_000_000_000) / 1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn clock(style: &Style, ktime_ns: u64) -> String {
    // HH:MM:SS.mmm of the RFC 3339 string.
    rfc3339(unix_ns(style, ktime_ns))[11..23].to_string()
}

fn paint(style: &Style, code: &str, s: &str) -> String {
    if style.color {
        format!("{ESC_MARK}[{code}m{s}{ESC_MARK}[0m")
    } else {
        s.to_string()
    }
}

fn fit(mut s: String, width: usize) -> String {
    if s.chars().count() > width {
        s = s.chars().take(width.saturating_sub(1)).collect();
        s.push('…');
    }
    s
}

/// Allow-listed environment of an exec, redacted, as a JSON object.
pub fn env_json(e: &Exec) -> Value {
    let mut m = Map::new();
    for (k, v) in &e.env {
        m.entry(k.clone())
            .or_insert_with(|| json!(crate::scrub::env_value(k, v)));
    }
    Value::Object(m)
}

pub fn exec_json(style: &Style, e: &Exec, a: Option<&ExecAnalysis>) -> Value {
    let mut v = json!({
        "type": if e.ok() { "exec" } else { "exec_failed" },
        "time": rfc3339(unix_ns(style, e.ktime_ns)),
        "pid": e.tgid,
        "tid": e.pid,
        "ppid": e.ppid,
        "uid": e.uid,
        "gid": e.gid,
        "cgroup_id": e.cgroup_id,
        "filename": e.filename,
        "exe": e.exe,
        "argv": crate::scrub::argv(&e.argv),
        "env": env_json(e),
        "caller_comm": e.comm,
        "argv_truncated": e.argv_truncated,
        "env_truncated": e.env_truncated,
        "env_read": e.env_read,
        "filename_truncated": e.filename_truncated,
        "entry_missed": e.no_enter,
    });
    if !e.ok() {
        v["errno"] = json!(errno_name(e.errno));
    }
    if let Some(a) = a
        && a.analysed
    {
        v["identity"] = serde_json::to_value(&a.identity).unwrap_or(Value::Null);
        v["toolchain"] = json!(a.toolchain);
        if let Some(c) = &a.cwd {
            v["cwd"] = json!(c);
        }
        if !a.pod.is_empty() {
            v["pod"] = serde_json::to_value(&a.pod).unwrap_or(Value::Null);
        }
        if let Some(shim) = &a.shim {
            v["shim"] = serde_json::to_value(shim).unwrap_or(Value::Null);
        }
        if !a.shadows.is_empty() {
            v["shadows"] = serde_json::to_value(&a.shadows).unwrap_or(Value::Null);
        }
    }
    v
}

pub fn exec_text(style: &Style, e: &Exec, a: Option<&ExecAnalysis>) -> String {
    let args: Vec<String> = crate::scrub::argv(&e.argv);
    let mut cmd = args.join(" ");
    if e.argv_truncated {
        cmd.push_str(" …[argv truncated]");
    }
    if e.no_enter {
        cmd = "(arguments missed)".into();
    }
    let (tag, tail) = if e.ok() {
        let id = a.map(ExecAnalysis::label).unwrap_or_default();
        let id = if id.is_empty() {
            String::new()
        } else {
            format!(" [{id}]")
        };
        (paint(style, "36", "exec "), format!("→ {}{id}", e.exe))
    } else {
        (
            paint(style, "33", "fail "),
            format!("{} {}", errno_name(e.errno), e.filename),
        )
    };
    let head = format!("{} {tag} {:>7} ", clock(style, e.ktime_ns), e.tgid);
    // Keep the resolved binary visible: cut the command first.
    let room = WIDTH
        .saturating_sub(visible_len(&head) + tail.chars().count() + 2)
        .max(12);
    fit(
        format!("{head}{}  {tail}", fit(cmd, room)),
        WIDTH + (head.len() - visible_len(&head)),
    )
}

fn visible_len(s: &str) -> usize {
    // Length without ANSI colour sequences.
    let mut n = 0;
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, ESC_MARK) => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

pub fn exit_json(style: &Style, x: &Exit, duration_ns: Option<u64>) -> Value {
    json!({
        "type": "exit",
        "time": rfc3339(unix_ns(style, x.ktime_ns)),
        "pid": x.tgid,
        "exit_code": x.status(),
        "signal": x.signal(),
        "duration_ms": duration_ns.map(|d| d as f64 / 1e6),
    })
}

pub fn exit_text(style: &Style, x: &Exit, name: &str, duration_ns: Option<u64>) -> String {
    let how = match (x.status(), x.signal()) {
        (Some(0), _) => "exit 0".to_string(),
        (Some(c), _) => paint(style, "31", &format!("exit {c}")),
        (None, Some(s)) => paint(style, "31", &format!("killed by signal {s}")),
        _ => "exit ?".into(),
    };
    let dur = duration_ns
        .map(|d| format!(" after {:.3}s", d as f64 / 1e9))
        .unwrap_or_default();
    fit(
        format!(
            "{} exit  {:>7} {name} {how}{dur}",
            clock(style, x.ktime_ns),
            x.tgid
        ),
        WIDTH + 16,
    )
}

pub fn tcp_json(style: &Style, t: &Tcp, r: &ConnReport) -> Value {
    json!({
        "type": "tcp_connect",
        "time": rfc3339(unix_ns(style, t.ktime_ns)),
        "pid": t.tgid,
        "tid": t.pid,
        "uid": t.uid,
        "comm": t.comm,
        "exe": r.exe,
        "outcome": r.outcome,
        "error": (t.err != 0).then(|| errno_name(t.err)),
        "source": std::net::SocketAddr::new(t.src, t.sport).to_string(),
        "destination": std::net::SocketAddr::new(t.dst, t.dport).to_string(),
        "network_type": if t.dst.is_ipv4() { "ipv4" } else { "ipv6" },
        "netns": t.netns,
        "cgroup_id": t.cgroup_id,
        "duration_ms": t.duration_ns().map(|d| d as f64 / 1e6),
        "syn_retransmits": t.syn_retrans,
        "start_missed": t.no_start,
        "proxy": r.proxy,
    })
}

pub fn tcp_text(style: &Style, t: &Tcp, r: &ConnReport) -> String {
    let name = r
        .exe
        .as_deref()
        .map(crate::process::fsview::basename)
        .unwrap_or(t.comm.as_str());
    let how = match r.outcome {
        Outcome::Established => paint(style, "32", "connected"),
        Outcome::Cancelled => "cancelled".into(),
        other => paint(style, "31", other.name()),
    };
    let dur = t
        .duration_ns()
        .map(|d| format!(" in {:.1} ms", d as f64 / 1e6))
        .unwrap_or_default();
    let retrans = if t.syn_retrans > 0 {
        format!(
            ", {} SYN retransmit{}",
            t.syn_retrans,
            if t.syn_retrans == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    format!(
        "{} tcp   {:>7} {name} → {} {how}{dur}{retrans}",
        clock(style, t.ktime_ns),
        t.tgid,
        std::net::SocketAddr::new(t.dst, t.dport)
    )
}

pub fn finding_json(style: &Style, f: &Finding, ktime_ns: u64) -> Value {
    json!({
        "type": "finding",
        "time": rfc3339(unix_ns(style, ktime_ns)),
        "code": f.code,
        "severity": f.severity,
        "pid": f.pid,
        "summary": f.summary,
        "cause": f.cause,
        "fix": f.fix,
        "evidence": f.evidence,
    })
}

/// A finding for a person: its line, then what caused it and the fix.
pub fn finding_text(style: &Style, f: &Finding, ktime_ns: u64) -> String {
    let mut s = finding_head(style, f, ktime_ns);
    for (label, v) in [("cause", &f.cause), ("fix", &f.fix)] {
        if !v.is_empty() {
            s.push_str(&format!("\n{:19}{label}: {v}", ""));
        }
    }
    s
}

/// The finding's one line: time, severity, pid, code, summary.
pub fn finding_head(style: &Style, f: &Finding, ktime_ns: u64) -> String {
    let sev = match f.severity {
        Severity::Error => paint(style, "1;31", "error"),
        Severity::Warning => paint(style, "1;33", "warn "),
        Severity::Info => paint(style, "1;34", "info "),
    };
    format!(
        "{} {sev} {:>7} {} {}",
        clock(style, ktime_ns),
        f.pid,
        paint(style, "1", f.code),
        f.summary
    )
}

pub fn tls_json(style: &Style, r: &crate::signal::wire::TlsReport) -> Value {
    json!({
        "type": "tls_handshake",
        "time": rfc3339(unix_ns(style, r.end_ns)),
        "pid": r.owner.pid,
        "comm": r.owner.comm,
        "exe": r.owner.exe,
        "local_side": r.local,
        "client": r.client.to_string(),
        "server": r.server.to_string(),
        "sni": r.sni,
        "offered_versions": r.offered,
        "version": r.version,
        "cipher_suite": r.cipher_suite.map(|c| format!("0x{c:04x}")),
        "alpn": r.alpn,
        "verdict": r.verdict,
        "library": r.library.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "duration_ms": r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6,
    })
}

pub fn tls_text(style: &Style, r: &crate::signal::wire::TlsReport) -> String {
    use crate::tls::Verdict;
    let how = match &r.verdict {
        Verdict::Completed => paint(style, "32", "ok"),
        Verdict::Alert { alert } => paint(
            style,
            "31",
            &format!(
                "{} alert {}",
                alert.from.name(),
                crate::tls::alert_name(alert.description)
            ),
        ),
        Verdict::EncryptedAlert { from } => {
            paint(style, "31", &format!("{} encrypted alert", from.name()))
        }
        Verdict::Closed { by, reset } => paint(
            style,
            "31",
            &format!("{} {}", by.name(), if *reset { "reset" } else { "closed" }),
        ),
        Verdict::NotTls { from } => paint(style, "31", &format!("{} not TLS", from.name())),
    };
    format!(
        "{} tls   {:>7} {} → {}{} {} {how} in {:.1} ms",
        clock(style, r.end_ns),
        r.owner.pid,
        r.owner.name(),
        r.server,
        r.sni
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default(),
        r.version.as_deref().unwrap_or("-"),
        r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6
    )
}

pub fn dns_json(style: &Style, r: &crate::signal::wire::DnsReport) -> Value {
    json!({
        "type": "dns_lookup",
        "time": rfc3339(unix_ns(style, r.end_ns)),
        "pid": r.owner.pid,
        "comm": r.owner.comm,
        "exe": r.owner.exe,
        "name": r.name,
        "qtype": r.qtype,
        "resolver": r.server.to_string(),
        "transport": if r.tcp { "tcp" } else { "udp" },
        "rcode": r.rcode,
        "addresses": r.addresses,
        "attempts": r.attempts,
        "timed_out": r.timed_out,
        "duration_ms": r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6,
    })
}

pub fn dns_text(style: &Style, r: &crate::signal::wire::DnsReport) -> String {
    let how = match (&r.rcode, r.timed_out) {
        (_, true) => paint(style, "31", "no answer"),
        (Some(c), _) if c == "NOERROR" => {
            let a: Vec<String> = r.addresses.iter().map(|a| a.to_string()).collect();
            if a.is_empty() {
                "no records".into()
            } else {
                paint(style, "32", &a.join(" "))
            }
        }
        (Some(c), _) => paint(style, "31", c),
        _ => "?".into(),
    };
    format!(
        "{} dns   {:>7} {} {} {} @{} → {how} in {:.1} ms",
        clock(style, r.end_ns),
        r.owner.pid,
        r.owner.name(),
        r.qtype,
        r.name,
        r.server,
        r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6
    )
}

#[cfg(test)]
mod tests {

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
        assert!(serde_json::from_str::<Value>(&j).is_ok());
    }
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-22T11:00:00.250Z
        assert_eq!(
            rfc3339(1_795_345_200_250_000_000),
            "2026-11-22T11:00:00.250Z"
        );
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_fit_and_secrets_do_not_leak() {
        let style = Style {
            format: Format::Text,
            color: false,
            clock_offset_ns: 0,
        };
        let mut e = crate::events::decode(&crate::events::tests::exec_record(
            "/usr/bin/curl",
            "/usr/bin/curl",
            &["curl", "-x", "http://u:secret@proxy:3128", &"a".repeat(300)],
            &["HTTPS_PROXY=http://u:secret@proxy:3128"],
            0,
        ))
        .map(|ev| match ev {
            crate::events::Event::Exec(e) => *e,
            _ => unreachable!(),
        })
        .unwrap();
        let line = exec_text(&style, &e, None);
        assert!(line.chars().count() <= WIDTH, "{}", line.chars().count());
        assert!(!line.contains("secret"));
        let j = exec_json(&style, &e, None).to_string();
        assert!(!j.contains("secret"), "{j}");
        assert!(j.starts_with("{\"type\":\"exec\""), "{j}");
        e.errno = 2;
        assert!(exec_text(&style, &e, None).contains("ENOENT"));
    }
}
