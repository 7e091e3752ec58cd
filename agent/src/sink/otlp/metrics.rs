//! The agent's metrics as OpenTelemetry SDK instruments (cumulative
//! counters, explicit-bucket histograms, gauges for self-metrics). Labels
//! come from small fixed sets (toolchain kind, outcome, errno name, finding
//! code): never pids, paths or argv, so cardinality stays far below the
//! SDK's per-metric limit (2000 series; beyond it, an overflow series).

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Histogram, Meter},
};

use super::model::kv_str;
use crate::{pipeline::Output, process::fsview::basename, signal::tcp::Outcome};

/// Seconds: from 100 µs to 2 min.
const DURATION_BOUNDS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0,
];

pub struct Instruments {
    exec_count: Counter<u64>,
    exec_failures: Counter<u64>,
    process_duration: Histogram<f64>,
    tcp_duration: Histogram<f64>,
    tcp_failures: Counter<u64>,
    syn_retransmits: Counter<u64>,
    dns_duration: Histogram<f64>,
    dns_failures: Counter<u64>,
    tls_duration: Histogram<f64>,
    tls_failures: Counter<u64>,
    findings: Counter<u64>,
    /// Self-metrics: cumulative values the agent keeps, set each tick.
    pub events_received: Gauge<f64>,
    pub events_lost: Gauge<f64>,
    pub decode_errors: Gauge<f64>,
    pub tcp_unreported: Gauge<f64>,
    pub export_spans: Gauge<f64>,
    pub export_points: Gauge<f64>,
    pub queue_depth: Gauge<f64>,
    pub open_spans: Gauge<f64>,
    pub files_skipped: Gauge<f64>,
}

fn l(k: &'static str, v: impl Into<String>) -> KeyValue {
    kv_str(k, v)
}

impl Instruments {
    pub fn new(m: &Meter) -> Self {
        let counter =
            |name: &'static str, unit: &'static str| m.u64_counter(name).with_unit(unit).build();
        let hist = |name: &'static str| {
            m.f64_histogram(name)
                .with_unit("s")
                .with_boundaries(DURATION_BOUNDS.to_vec())
                .build()
        };
        let gauge =
            |name: &'static str, unit: &'static str| m.f64_gauge(name).with_unit(unit).build();
        Self {
            exec_count: counter("agent.exec.count", "{exec}"),
            exec_failures: counter("agent.exec.failures", "{exec}"),
            process_duration: hist("agent.process.duration"),
            tcp_duration: hist("agent.tcp.connect.duration"),
            tcp_failures: counter("agent.tcp.connect.failures", "{connection}"),
            syn_retransmits: counter("agent.tcp.syn_retransmits", "{segment}"),
            dns_duration: hist("agent.dns.lookup.duration"),
            dns_failures: counter("agent.dns.failures", "{lookup}"),
            tls_duration: hist("agent.tls.handshake.duration"),
            tls_failures: counter("agent.tls.failures", "{handshake}"),
            findings: counter("agent.findings", "{finding}"),
            events_received: gauge("agent.events.received", "{event}"),
            events_lost: gauge("agent.events.lost", "{event}"),
            decode_errors: gauge("agent.events.decode_errors", "{event}"),
            tcp_unreported: gauge("agent.tcp.connect.unreported", "{connection}"),
            export_spans: gauge("agent.export.spans", "{span}"),
            export_points: gauge("agent.export.metric_points", "{point}"),
            queue_depth: gauge("agent.export.queue_depth", "{span}"),
            open_spans: gauge("agent.processes.open_spans", "{span}"),
            files_skipped: gauge("agent.file_analysis.skipped", "{job}"),
        }
    }
}

/// Bounded toolchain label.
pub fn toolchain_kind(exe: &str) -> &'static str {
    let b = basename(exe);
    if b == "go" || b.starts_with("go1.") || b == "gofmt" || b == "gopls" {
        "go"
    } else if b.starts_with("python") || b.starts_with("pip") {
        "python"
    } else if matches!(b, "conda" | "mamba" | "micromamba") {
        "conda"
    } else {
        "other"
    }
}

impl Instruments {
    pub fn observe(&self, o: &Output) {
        match o {
            Output::Exec { exec, analysis } => {
                let kind = if exec.ok() {
                    toolchain_kind(&exec.exe)
                } else {
                    "other"
                };
                self.exec_count.add(
                    1,
                    &[
                        l("toolchain", kind),
                        l("outcome", if exec.ok() { "ok" } else { "failed" }),
                        l("analysed", analysis.analysed.to_string()),
                    ],
                );
                if !exec.ok() {
                    self.exec_failures
                        .add(1, &[l("errno", crate::finding::errno_name(exec.errno))]);
                }
            }
            Output::Exit {
                name,
                duration_ns: Some(d),
                analysed: true,
                ..
            } => {
                self.process_duration
                    .record(*d as f64 / 1e9, &[l("toolchain", toolchain_kind(name))]);
            }
            Output::Tcp { tcp, report, .. } => {
                let outcome = l("outcome", report.outcome.name());
                if let Some(d) = tcp.duration_ns() {
                    self.tcp_duration.record(d as f64 / 1e9, &[outcome]);
                }
                if !matches!(report.outcome, Outcome::Established | Outcome::Cancelled) {
                    self.tcp_failures
                        .add(1, &[l("reason", report.outcome.name())]);
                }
                if tcp.syn_retrans > 0 {
                    self.syn_retransmits.add(tcp.syn_retrans as u64, &[]);
                }
            }
            Output::Dns { report, .. } => {
                let rcode = if report.timed_out {
                    "timeout".to_string()
                } else {
                    report.rcode.clone().unwrap_or_default()
                };
                self.dns_duration.record(
                    report.end_ns.saturating_sub(report.start_ns) as f64 / 1e9,
                    &[l("rcode", rcode.clone())],
                );
                if rcode != "NOERROR" {
                    self.dns_failures.add(1, &[l("rcode", rcode)]);
                }
            }
            Output::Tls { report, .. } => {
                let result = crate::tls::verdict_reason(&report.verdict);
                let ok = result == "completed";
                self.tls_duration.record(
                    report.end_ns.saturating_sub(report.start_ns) as f64 / 1e9,
                    &[l("result", if ok { "completed" } else { "failed" })],
                );
                if !ok {
                    self.tls_failures.add(1, &[l("reason", result)]);
                }
            }
            Output::Finding { finding, .. } => self.findings.add(
                1,
                &[
                    l("code", finding.code),
                    l("severity", finding.severity.name()),
                ],
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolchain_labels_are_bounded() {
        assert_eq!(toolchain_kind("/usr/lib/go-1.19/bin/go"), "go");
        assert_eq!(toolchain_kind("/x/bin/go1.22.0"), "go");
        assert_eq!(toolchain_kind("/opt/conda/bin/python3.11"), "python");
        assert_eq!(toolchain_kind("/usr/bin/make"), "other");
    }
}
