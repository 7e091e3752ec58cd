//! How a lookup reads: a line with its answer or rcode, or a JSON object
//! (`dns_lookup`).

use opentelemetry_semantic_conventions::attribute as semconv;
use serde::Serialize;

use super::DnsReport;
use crate::render::{
    AttrValue::{Int, Str, StrArray},
    Meter, Metric, MetricKind, Record, SpanDesc, Style, clock, json_line, metric, paint, rfc3339,
    unix_ns,
};

pub const DNS_DURATION: Metric = metric("agent.dns.lookup.duration", "s", MetricKind::Histogram);
pub const DNS_FAILURES: Metric = metric("agent.dns.failures", "{lookup}", MetricKind::Counter);
/// The dns signal's metrics.
pub const METRICS: &[Metric] = &[DNS_DURATION, DNS_FAILURES];

/// A lookup as the sinks print it.
pub struct DnsRecord<'a> {
    pub report: &'a DnsReport,
    /// The process is analysed (toolchain or descendant).
    pub analysed: bool,
}

impl Record for DnsRecord<'_> {
    fn shown(&self, all: bool, _json: bool) -> bool {
        all || self.analysed || !self.report.findings.is_empty()
    }
    fn text(&self, style: &Style) -> String {
        dns_text(style, self.report)
    }
    fn json(&self, style: &Style) -> String {
        json_line(&dns_json(style, self.report))
    }
    fn span(&self) -> Option<SpanDesc<'_>> {
        let report = self.report;
        if !(self.analysed || !report.findings.is_empty()) {
            return None;
        }
        let mut attributes = vec![
            (semconv::DNS_QUESTION_NAME, Str(report.name.clone())),
            // Not in the semantic conventions (0.33): ours, in their style.
            ("agent.dns.question.type", Str(report.qtype.clone())),
            (semconv::SERVER_ADDRESS, Str(report.server.ip().to_string())),
            (semconv::SERVER_PORT, Int(report.server.port() as i64)),
            (
                semconv::NETWORK_TRANSPORT,
                Str(if report.tcp { "tcp" } else { "udp" }.into()),
            ),
            (semconv::PROCESS_PID, Int(report.owner.pid as i64)),
            ("agent.dns.attempts", Int(report.attempts as i64)),
            (
                semconv::DNS_ANSWERS,
                StrArray(report.addresses.iter().map(|a| a.to_string()).collect()),
            ),
        ];
        if let Some(rc) = &report.rcode {
            attributes.push(("agent.dns.response_code", Str(rc.clone())));
        }
        let error = match (&report.rcode, report.timed_out) {
            (_, true) => Some("timeout".to_string()),
            (Some(rc), _) if rc != "NOERROR" => Some(rc.clone()),
            _ => None,
        };
        let error = error.map(|e| {
            attributes.push((semconv::ERROR_TYPE, Str(e.clone())));
            format!("lookup {}: {e}", report.name)
        });
        Some(SpanDesc {
            name: "dns query",
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
        let rcode = if report.timed_out {
            "timeout"
        } else {
            report.rcode.as_deref().unwrap_or_default()
        };
        let secs = report.end_ns.saturating_sub(report.start_ns) as f64 / 1e9;
        m.record(&DNS_DURATION, secs, &[("rcode", rcode)]);
        if rcode != "NOERROR" {
            m.add(&DNS_FAILURES, 1, &[("rcode", rcode)]);
        }
    }
}

#[derive(Serialize)]
pub struct DnsJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    pid: u32,
    comm: &'a str,
    exe: Option<&'a str>,
    name: &'a str,
    qtype: &'a str,
    resolver: std::net::SocketAddr,
    transport: &'static str,
    rcode: Option<&'a str>,
    addresses: &'a [std::net::IpAddr],
    attempts: u32,
    timed_out: bool,
    duration_ms: f64,
}

pub fn dns_json<'a>(style: &Style, r: &'a DnsReport) -> DnsJson<'a> {
    DnsJson {
        kind: "dns_lookup",
        time: rfc3339(unix_ns(style, r.end_ns)),
        pid: r.owner.pid,
        comm: &r.owner.comm,
        exe: r.owner.exe.as_deref(),
        name: &r.name,
        qtype: &r.qtype,
        resolver: r.server,
        transport: if r.tcp { "tcp" } else { "udp" },
        rcode: r.rcode.as_deref(),
        addresses: &r.addresses,
        attempts: r.attempts,
        timed_out: r.timed_out,
        duration_ms: r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6,
    }
}

pub fn dns_text(style: &Style, r: &DnsReport) -> String {
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
