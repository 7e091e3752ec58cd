//! How a connection attempt reads: a line with its outcome, duration and
//! SYN retransmits, or a JSON object (`tcp_connect`).

use opentelemetry_semantic_conventions::attribute as semconv;
use serde::Serialize;

use super::{ConnReport, Outcome};
use crate::{
    events::Tcp,
    finding::errno_name,
    render::{
        AttrValue::{Bool, Int, Str},
        Meter, Metric, MetricKind, Record, SpanDesc, Style, clock, json_line, metric, paint,
        rfc3339, unix_ns,
    },
};

pub const TCP_DURATION: Metric = metric("agent.tcp.connect.duration", "s", MetricKind::Histogram);
pub const TCP_FAILURES: Metric = metric(
    "agent.tcp.connect.failures",
    "{connection}",
    MetricKind::Counter,
);
pub const SYN_RETRANSMITS: Metric = metric(
    "agent.tcp.syn_retransmits",
    "{segment}",
    MetricKind::Counter,
);
/// The tcp signal's metrics.
pub const METRICS: &[Metric] = &[TCP_DURATION, TCP_FAILURES, SYN_RETRANSMITS];

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
    fn span(&self) -> Option<SpanDesc<'_>> {
        let (tcp, report) = (self.tcp, self.report);
        let failed = !matches!(report.outcome, Outcome::Established | Outcome::Cancelled);
        if !(self.analysed || failed || !report.findings.is_empty()) {
            return None;
        }
        let mut attributes = vec![
            (semconv::SERVER_ADDRESS, Str(tcp.dst.to_string())),
            (semconv::SERVER_PORT, Int(tcp.dport as i64)),
            (semconv::NETWORK_PEER_ADDRESS, Str(tcp.dst.to_string())),
            (semconv::NETWORK_PEER_PORT, Int(tcp.dport as i64)),
            (semconv::NETWORK_LOCAL_ADDRESS, Str(tcp.src.to_string())),
            (semconv::NETWORK_LOCAL_PORT, Int(tcp.sport as i64)),
            (semconv::NETWORK_TRANSPORT, Str("tcp".into())),
            (
                semconv::NETWORK_TYPE,
                Str(if tcp.dst.is_ipv4() { "ipv4" } else { "ipv6" }.into()),
            ),
            (semconv::PROCESS_PID, Int(tcp.tgid as i64)),
            ("agent.tcp.outcome", Str(report.outcome.name().into())),
            ("agent.tcp.syn_retransmits", Int(tcp.syn_retrans as i64)),
        ];
        let mut error = None;
        if failed {
            // Without BTF the reason is unknown: semconv's fallback value.
            let err = if tcp.err > 0 {
                errno_name(tcp.err)
            } else {
                "_OTHER".to_string()
            };
            error = Some(format!("connect {}: {err}", report.outcome.name()));
            attributes.push((semconv::ERROR_TYPE, Str(err)));
        }
        if let Some(p) = &report.proxy {
            attributes.push(("agent.proxy.variable", Str(p.variable.clone())));
            attributes.push(("agent.proxy.is_destination", Bool(p.is_destination)));
        }
        Some(SpanDesc {
            name: "connect",
            pid: tcp.tgid,
            start_ns: if tcp.no_start {
                tcp.ktime_ns
            } else {
                tcp.start_ns
            },
            end_ns: tcp.ktime_ns,
            attributes,
            error,
            findings: &report.findings,
        })
    }
    fn measure(&self, m: &dyn Meter) {
        let (tcp, report) = (self.tcp, self.report);
        let outcome = report.outcome.name();
        if let Some(d) = tcp.duration_ns() {
            m.record(&TCP_DURATION, d as f64 / 1e9, &[("outcome", outcome)]);
        }
        if !matches!(report.outcome, Outcome::Established | Outcome::Cancelled) {
            m.add(&TCP_FAILURES, 1, &[("reason", outcome)]);
        }
        if tcp.syn_retrans > 0 {
            m.add(&SYN_RETRANSMITS, tcp.syn_retrans as u64, &[]);
        }
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
