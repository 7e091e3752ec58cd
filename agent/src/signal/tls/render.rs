//! How a handshake reads: a line with its version and verdict, or a JSON
//! object (`tls_handshake`) with the cipher's IANA name.

use agent_parse::tls::{Side, Verdict, alert_name, verdict_reason};
use opentelemetry_semantic_conventions::attribute as semconv;
use serde::Serialize;

use super::{LibNote, TlsReport, cipher_name};
use crate::render::{
    AttrValue::{Int, Str},
    Meter, Metric, MetricKind, Record, SpanDesc, Style, clock, json_line, metric, paint, rfc3339,
    unix_ns,
};

pub const TLS_DURATION: Metric = metric("agent.tls.handshake.duration", "s", MetricKind::Histogram);
pub const TLS_FAILURES: Metric = metric("agent.tls.failures", "{handshake}", MetricKind::Counter);
/// The tls signal's metrics.
pub const METRICS: &[Metric] = &[TLS_DURATION, TLS_FAILURES];

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
    fn span(&self) -> Option<SpanDesc<'_>> {
        let report = self.report;
        let failed = !matches!(report.verdict, Verdict::Completed);
        if !(self.analysed || failed || !report.findings.is_empty()) {
            return None;
        }
        // `server.address` is the name the client asked for (the SNI) when
        // it sent one, as the conventions want it (they retired
        // `tls.client.server_name` for it); the IP is the peer's address.
        let server = match &report.sni {
            Some(sni) => sni.clone(),
            None => report.server.ip().to_string(),
        };
        let mut attributes = vec![
            (semconv::SERVER_ADDRESS, Str(server)),
            (semconv::SERVER_PORT, Int(report.server.port() as i64)),
            (
                semconv::NETWORK_PEER_ADDRESS,
                Str(report.server.ip().to_string()),
            ),
            (semconv::NETWORK_PEER_PORT, Int(report.server.port() as i64)),
            (semconv::NETWORK_TRANSPORT, Str("tcp".into())),
            (semconv::PROCESS_PID, Int(report.owner.pid as i64)),
            ("agent.tls.local_side", Str(report.local.name().into())),
            ("agent.tls.offered_versions", Str(report.offered.join(","))),
        ];
        if let Some(v) = &report.version {
            attributes.push((semconv::TLS_PROTOCOL_NAME, Str("tls".into())));
            attributes.push((
                semconv::TLS_PROTOCOL_VERSION,
                Str(v.trim_start_matches("TLS ").to_string()),
            ));
        }
        if let Some(c) = report.cipher_suite {
            attributes.push((semconv::TLS_CIPHER, Str(cipher_name(c))));
        }
        let error = failed.then(|| {
            let why = verdict_reason(&report.verdict);
            attributes.push((semconv::ERROR_TYPE, Str(why.clone())));
            format!("TLS handshake: {why}")
        });
        Some(SpanDesc {
            name: "tls handshake",
            pid: report.owner.pid,
            start_ns: report.start_ns,
            end_ns: report.end_ns,
            attributes,
            error,
            findings: &report.findings,
        })
    }
    fn measure(&self, m: &dyn Meter) {
        let report = self.report;
        let result = verdict_reason(&report.verdict);
        let ok = result == "completed";
        let secs = report.end_ns.saturating_sub(report.start_ns) as f64 / 1e9;
        let label = if ok { "completed" } else { "failed" };
        m.record(&TLS_DURATION, secs, &[("result", label)]);
        if !ok {
            m.add(&TLS_FAILURES, 1, &[("reason", &result)]);
        }
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
