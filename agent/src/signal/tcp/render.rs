//! How a connection attempt reads: a line with its outcome, duration and
//! SYN retransmits, or a JSON object (`tcp_connect`).

use serde::Serialize;

use super::{ConnReport, Outcome};
use crate::{
    events::Tcp,
    finding::errno_name,
    render::{Record, Style, clock, json_line, paint, rfc3339, unix_ns},
};

/// A connection attempt as the sinks print it.
pub struct TcpRecord<'a> {
    pub tcp: &'a Tcp,
    pub report: &'a ConnReport,
    /// The process is analysed (toolchain or descendant).
    pub analysed: bool,
}

impl Record for TcpRecord<'_> {
    fn shown(&self, all: bool, _json: bool) -> bool {
        all || self.analysed || !self.report.findings.is_empty()
    }
    fn text(&self, style: &Style) -> String {
        tcp_text(style, self.tcp, self.report)
    }
    fn json(&self, style: &Style) -> String {
        json_line(&tcp_json(style, self.tcp, self.report))
    }
}

#[derive(Serialize)]
pub struct TcpJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    pid: u32,
    tid: u32,
    uid: u32,
    comm: &'a str,
    exe: Option<&'a str>,
    outcome: &'a Outcome,
    error: Option<String>,
    source: std::net::SocketAddr,
    destination: std::net::SocketAddr,
    network_type: &'static str,
    netns: u32,
    cgroup_id: u64,
    duration_ms: Option<f64>,
    syn_retransmits: u32,
    start_missed: bool,
    proxy: &'a Option<super::ProxyInForce>,
}

pub fn tcp_json<'a>(style: &Style, t: &'a Tcp, r: &'a ConnReport) -> TcpJson<'a> {
    TcpJson {
        kind: "tcp_connect",
        time: rfc3339(unix_ns(style, t.ktime_ns)),
        pid: t.tgid,
        tid: t.pid,
        uid: t.uid,
        comm: &t.comm,
        exe: r.exe.as_deref(),
        outcome: &r.outcome,
        error: (t.err > 0).then(|| errno_name(t.err)),
        source: std::net::SocketAddr::new(t.src, t.sport),
        destination: std::net::SocketAddr::new(t.dst, t.dport),
        network_type: if t.dst.is_ipv4() { "ipv4" } else { "ipv6" },
        netns: t.netns,
        cgroup_id: t.cgroup_id,
        duration_ms: t.duration_ns().map(|d| d as f64 / 1e6),
        syn_retransmits: t.syn_retrans,
        start_missed: t.no_start,
        proxy: &r.proxy,
    }
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
