//! The agent's metrics as OpenTelemetry SDK instruments (monotonic
//! counters, explicit-bucket histograms, two gauges: queue depth and open
//! spans). Labels
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
    /// Self-metrics: totals the agent keeps, exported as monotonic sums
    /// (a dashboard's `rate()` works on them), and two levels as gauges.
    pub events_received: Total,
    pub events_lost: Total,
    pub decode_errors: Total,
    pub tcp_unreported: Total,
    pub export_spans: Total,
    pub export_points: Total,
    pub queue_depth: Gauge<u64>,
    pub open_spans: Gauge<u64>,
    pub files_skipped: Total,
}

/// A monotonic counter fed from a running total the agent already keeps:
/// each tick adds what the total grew by since the last, per label value.
/// (An observable counter would need the totals behind a callback the SDK
/// calls on its own thread; these totals live on the event loop.)
pub struct Total {
    counter: Counter<u64>,
    label: &'static str,
    seen: std::sync::Mutex<Vec<(&'static str, u64)>>,
}

impl Total {
    /// Set the total for one label value (`""` for the unlabelled series).
    pub fn set(&self, value: &'static str, total: u64) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let last = match seen.iter_mut().find(|(v, _)| *v == value) {
            Some((_, last)) => last,
            None => {
                seen.push((value, 0));
                let n = seen.len() - 1;
                &mut seen[n].1
            }
        };
        // A total never shrinks; one that did was reset: count it anew.
        let grew = total.checked_sub(*last).unwrap_or(total);
        *last = total;
        if grew > 0 {
            let attrs = if value.is_empty() {
                vec![]
            } else {
                vec![l(self.label, value)]
            };
            self.counter.add(grew, &attrs);
        }
    }
}

fn l(k: &'static str, v: impl Into<String>) -> KeyValue {
    kv_str(k, v)
}

/// What a metric is, for the instrument and for the checks that docs and
/// the Grafana dashboard name only what is exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Histogram,
    Gauge,
}

#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub kind: Kind,
}

const fn metric(name: &'static str, unit: &'static str, kind: Kind) -> Metric {
    Metric { name, unit, kind }
}

const EXEC_COUNT: Metric = metric("agent.exec.count", "{exec}", Kind::Counter);
const EXEC_FAILURES: Metric = metric("agent.exec.failures", "{exec}", Kind::Counter);
const PROCESS_DURATION: Metric = metric("agent.process.duration", "s", Kind::Histogram);
const TCP_DURATION: Metric = metric("agent.tcp.connect.duration", "s", Kind::Histogram);
const TCP_FAILURES: Metric = metric("agent.tcp.connect.failures", "{connection}", Kind::Counter);
const SYN_RETRANSMITS: Metric = metric("agent.tcp.syn_retransmits", "{segment}", Kind::Counter);
const DNS_DURATION: Metric = metric("agent.dns.lookup.duration", "s", Kind::Histogram);
const DNS_FAILURES: Metric = metric("agent.dns.failures", "{lookup}", Kind::Counter);
const TLS_DURATION: Metric = metric("agent.tls.handshake.duration", "s", Kind::Histogram);
const TLS_FAILURES: Metric = metric("agent.tls.failures", "{handshake}", Kind::Counter);
const FINDINGS: Metric = metric("agent.findings", "{finding}", Kind::Counter);
const EVENTS_RECEIVED: Metric = metric("agent.events.received", "{event}", Kind::Counter);
const EVENTS_LOST: Metric = metric("agent.events.lost", "{event}", Kind::Counter);
const DECODE_ERRORS: Metric = metric("agent.events.decode_errors", "{event}", Kind::Counter);
const TCP_UNREPORTED: Metric = metric(
    "agent.tcp.connect.unreported",
    "{connection}",
    Kind::Counter,
);
const EXPORT_SPANS: Metric = metric("agent.export.spans", "{span}", Kind::Counter);
const EXPORT_POINTS: Metric = metric("agent.export.metric_points", "{point}", Kind::Counter);
const QUEUE_DEPTH: Metric = metric("agent.export.queue_depth", "{span}", Kind::Gauge);
const OPEN_SPANS: Metric = metric("agent.processes.open_spans", "{span}", Kind::Gauge);
const FILES_SKIPPED: Metric = metric("agent.file_analysis.skipped", "{job}", Kind::Counter);

/// Every metric the agent exports.
pub const ALL: [Metric; 20] = [
    EXEC_COUNT,
    EXEC_FAILURES,
    PROCESS_DURATION,
    TCP_DURATION,
    TCP_FAILURES,
    SYN_RETRANSMITS,
    DNS_DURATION,
    DNS_FAILURES,
    TLS_DURATION,
    TLS_FAILURES,
    FINDINGS,
    EVENTS_RECEIVED,
    EVENTS_LOST,
    DECODE_ERRORS,
    TCP_UNREPORTED,
    EXPORT_SPANS,
    EXPORT_POINTS,
    QUEUE_DEPTH,
    OPEN_SPANS,
    FILES_SKIPPED,
];

impl Instruments {
    pub fn new(m: &Meter) -> Self {
        let counter = |x: Metric| m.u64_counter(x.name).with_unit(x.unit).build();
        let hist = |x: Metric| {
            m.f64_histogram(x.name)
                .with_unit(x.unit)
                .with_boundaries(DURATION_BOUNDS.to_vec())
                .build()
        };
        let gauge = |x: Metric| m.u64_gauge(x.name).with_unit(x.unit).build();
        let total = |x: Metric, label: &'static str| Total {
            counter: counter(x),
            label,
            seen: Default::default(),
        };
        Self {
            exec_count: counter(EXEC_COUNT),
            exec_failures: counter(EXEC_FAILURES),
            process_duration: hist(PROCESS_DURATION),
            tcp_duration: hist(TCP_DURATION),
            tcp_failures: counter(TCP_FAILURES),
            syn_retransmits: counter(SYN_RETRANSMITS),
            dns_duration: hist(DNS_DURATION),
            dns_failures: counter(DNS_FAILURES),
            tls_duration: hist(TLS_DURATION),
            tls_failures: counter(TLS_FAILURES),
            findings: counter(FINDINGS),
            events_received: total(EVENTS_RECEIVED, ""),
            events_lost: total(EVENTS_LOST, "cause"),
            decode_errors: total(DECODE_ERRORS, ""),
            tcp_unreported: total(TCP_UNREPORTED, ""),
            export_spans: total(EXPORT_SPANS, "result"),
            export_points: total(EXPORT_POINTS, ""),
            queue_depth: gauge(QUEUE_DEPTH),
            open_spans: gauge(OPEN_SPANS),
            files_skipped: total(FILES_SKIPPED, "cause"),
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
                let result = agent_parse::tls::verdict_reason(&report.verdict);
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

    /// The name a Prometheus-style backend gives an OTLP metric (the
    /// Collector's and Prometheus's OTLP translation): dots to
    /// underscores, a unit of seconds as `_seconds`, counters `_total`;
    /// annotation units (`{span}`) add nothing.
    fn prometheus_names(m: &Metric) -> Vec<String> {
        let mut base = m.name.replace('.', "_");
        if m.unit == "s" {
            base.push_str("_seconds");
        }
        match m.kind {
            Kind::Counter => vec![format!("{base}_total")],
            Kind::Gauge => vec![base],
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{base}{s}"))
                .collect(),
        }
    }

    #[test]
    fn the_grafana_dashboard_queries_only_exported_metrics() {
        let dashboard = include_str!("../../../../deploy/grafana-dashboard.json");
        let exported: Vec<String> = ALL.iter().flat_map(prometheus_names).collect();
        let mut queried = 0;
        for (i, _) in dashboard.match_indices("agent_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Panel ids and titles are not queries.
            if !dashboard[..i].ends_with(|c: char| "( {".contains(c)) {
                continue;
            }
            queried += 1;
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which the agent does not export: {exported:?}"
            );
        }
        assert!(
            queried >= 8,
            "only {queried} metric names found in the dashboard"
        );
    }

    #[test]
    fn docs_list_every_metric_with_its_kind() {
        let docs = include_str!("../../../../docs/otlp.md");
        for m in ALL {
            let kind = format!("{:?}", m.kind).to_lowercase();
            let row = format!("| `{}` | {kind} | {} |", m.name, m.unit);
            assert!(docs.contains(&row), "docs/otlp.md lacks the row {row}");
        }
    }

    #[test]
    fn a_total_adds_what_it_grew_by() {
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
        let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "t");
        let t = Total {
            counter: meter.u64_counter("t").build(),
            label: "cause",
            seen: Default::default(),
        };
        t.set("a", 5);
        t.set("a", 7);
        t.set("b", 1);
        t.set("a", 2);
        let seen = t.seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen, vec![("a", 2), ("b", 1)]);
    }
}
