//! How a lookup reads: a line with its answer or rcode, or a JSON object
//! (`dns_lookup`).

use serde::Serialize;

use super::DnsReport;
use crate::render::{Record, Style, clock, json_line, paint, rfc3339, unix_ns};

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
