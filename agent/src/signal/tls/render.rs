//! How a handshake reads: a line with its version and verdict, or a JSON
//! object (`tls_handshake`) with the cipher's IANA name.

use agent_parse::tls::{Side, Verdict, alert_name};
use serde::Serialize;

use super::{LibNote, TlsReport, cipher_name};
use crate::render::{Record, Style, clock, json_line, paint, rfc3339, unix_ns};

/// A handshake as the sinks print it.
pub struct TlsRecord<'a> {
    pub report: &'a TlsReport,
    /// The process is analysed (toolchain or descendant).
    pub analysed: bool,
}

impl Record for TlsRecord<'_> {
    fn shown(&self, all: bool, _json: bool) -> bool {
        all || self.analysed || !self.report.findings.is_empty()
    }
    fn text(&self, style: &Style) -> String {
        tls_text(style, self.report)
    }
    fn json(&self, style: &Style) -> String {
        json_line(&tls_json(style, self.report))
    }
}

#[derive(Serialize)]
pub struct TlsJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    pid: u32,
    comm: &'a str,
    exe: Option<&'a str>,
    local_side: &'a Side,
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
    sni: Option<&'a str>,
    offered_versions: &'a [String],
    version: Option<&'a str>,
    cipher_suite: Option<String>,
    /// Its IANA name.
    cipher: Option<String>,
    alpn: &'a [String],
    verdict: &'a Verdict,
    library: LibraryJson<'a>,
    duration_ms: f64,
}

/// What the TLS library said, by note key.
struct LibraryJson<'a>(&'a [LibNote]);

impl Serialize for LibraryJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|n| (n.key(), n.text())))
    }
}

pub fn tls_json<'a>(style: &Style, r: &'a TlsReport) -> TlsJson<'a> {
    TlsJson {
        kind: "tls_handshake",
        time: rfc3339(unix_ns(style, r.end_ns)),
        pid: r.owner.pid,
        comm: &r.owner.comm,
        exe: r.owner.exe.as_deref(),
        local_side: &r.local,
        client: r.client,
        server: r.server,
        sni: r.sni.as_deref(),
        offered_versions: &r.offered,
        version: r.version.as_deref(),
        cipher_suite: r.cipher_suite.map(|c| format!("0x{c:04x}")),
        cipher: r.cipher_suite.map(cipher_name),
        alpn: &r.alpn,
        verdict: &r.verdict,
        library: LibraryJson(&r.library),
        duration_ms: r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6,
    }
}

pub fn tls_text(style: &Style, r: &TlsReport) -> String {
    let how = match &r.verdict {
        Verdict::Completed => paint(style, "32", "ok"),
        Verdict::Alert { alert } => paint(
            style,
            "31",
            &format!(
                "{} alert {}",
                alert.from.name(),
                alert_name(alert.description)
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
