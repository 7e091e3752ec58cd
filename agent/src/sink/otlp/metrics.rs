//! The agent's metrics as OpenTelemetry SDK instruments (monotonic
//! counters, explicit-bucket histograms, two gauges: queue depth and open
//! spans). Labels
//! come from small fixed sets (toolchain kind, outcome, errno name, finding
//! code): never pids, paths or argv, so cardinality stays far below the
//! SDK's per-metric limit (2000 series; beyond it, an overflow series).

use std::collections::HashMap;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Gauge, Histogram, Meter},
};

use super::model::kv_str;
use crate::{
    pipeline::Output,
    render::{Metric, MetricKind as Kind, metric},
};

/// Seconds: from 100 µs to 2 min.
const DURATION_BOUNDS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0,
];

/// The instrument of one of the signals' metrics.
enum Instrument {
    Counter(Counter<u64>),
    Histogram(Histogram<f64>),
}

pub struct Instruments {
    /// The signals' metrics, by name: each signal's records say what they
    /// measure (`render::Record::measure`).
    signals: HashMap<&'static str, Instrument>,
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

/// The agent's own metrics (its totals and levels).
const SELF: [Metric; 9] = [
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

/// Every metric the agent exports: the signals' and its own.
pub fn all() -> impl Iterator<Item = &'static Metric> {
    crate::signal::metrics().chain(SELF.iter())
}

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
        let signals = crate::signal::metrics()
            .filter_map(|x| match x.kind {
                Kind::Counter => Some((x.name, Instrument::Counter(counter(*x)))),
                Kind::Histogram => Some((x.name, Instrument::Histogram(hist(*x)))),
                Kind::Gauge => None,
            })
            .collect();
        Self {
            signals,
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

fn labels(labels: &[(&'static str, &str)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| l(k, *v)).collect()
}

/// A signal measured on a metric `signal::metrics()` does not list, or
/// with the wrong kind of instrument: caught in every debug build (the
/// integration tests run one), where a struct field used to be checked by
/// the compiler.
fn unlisted(m: &Metric) {
    debug_assert!(
        false,
        "{} ({:?}) is not among signal::metrics()",
        m.name, m.kind
    );
}

impl crate::render::Meter for Instruments {
    fn add(&self, m: &Metric, n: u64, l: &[(&'static str, &str)]) {
        match self.signals.get(m.name) {
            Some(Instrument::Counter(c)) => c.add(n, &labels(l)),
            _ => unlisted(m),
        }
    }
    fn record(&self, m: &Metric, v: f64, l: &[(&'static str, &str)]) {
        match self.signals.get(m.name) {
            Some(Instrument::Histogram(h)) => h.record(v, &labels(l)),
            _ => unlisted(m),
        }
    }
}

impl Instruments {
    /// Measure one output: its signal's record says on what.
    pub fn observe(&self, o: &Output) {
        o.with_record(|r| r.measure(self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let exported: Vec<String> = all().flat_map(prometheus_names).collect();
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
        for m in all() {
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
