//! Metric aggregation (cumulative counters and explicit-bucket histograms)
//! and their OTLP form. Labels come from small fixed sets (toolchain kind,
//! outcome, errno name, finding code): never pids, paths or argv.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};

use super::model::kv_str;
use crate::{fsview::basename, netdiag::Outcome, run::Output};

type Labels = Vec<(&'static str, String)>;

struct Hist {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    min: f64,
    max: f64,
}

/// Seconds: from 100 µs to 2 min.
const DURATION_BOUNDS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0,
];

#[derive(Default)]
pub struct Registry {
    counters: BTreeMap<(&'static str, Labels), (u64, &'static str)>,
    gauges: BTreeMap<(&'static str, Labels), (f64, &'static str)>,
    hists: BTreeMap<(&'static str, Labels), (Hist, &'static str)>,
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

impl Registry {
    pub fn add(&mut self, name: &'static str, unit: &'static str, labels: Labels, n: u64) {
        self.counters.entry((name, labels)).or_insert((0, unit)).0 += n;
    }

    pub fn set(&mut self, name: &'static str, unit: &'static str, labels: Labels, v: f64) {
        self.gauges.insert((name, labels), (v, unit));
    }

    pub fn record(&mut self, name: &'static str, labels: Labels, v: f64) {
        let (h, _) = self.hists.entry((name, labels)).or_insert((
            Hist {
                bounds: DURATION_BOUNDS,
                counts: vec![0; DURATION_BOUNDS.len() + 1],
                sum: 0.0,
                count: 0,
                min: f64::INFINITY,
                max: 0.0,
            },
            "s",
        ));
        let i = h
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(h.bounds.len());
        h.counts[i] += 1;
        h.sum += v;
        h.count += 1;
        h.min = h.min.min(v);
        h.max = h.max.max(v);
    }

    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .iter()
            .filter(|((n, l), _)| {
                *n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, (c, _))| *c)
            .sum()
    }

    pub fn observe(&mut self, o: &Output) {
        match o {
            Output::Exec { exec, analysis } => {
                let kind = if exec.ok() {
                    toolchain_kind(&exec.exe)
                } else {
                    "other"
                };
                self.add(
                    "agent.exec.count",
                    "{exec}",
                    vec![
                        ("toolchain", kind.into()),
                        ("outcome", if exec.ok() { "ok" } else { "failed" }.into()),
                        ("analysed", analysis.analysed.to_string()),
                    ],
                    1,
                );
                if !exec.ok() {
                    self.add(
                        "agent.exec.failures",
                        "{exec}",
                        vec![("errno", crate::finding::errno_name(exec.errno))],
                        1,
                    );
                }
            }
            Output::Exit {
                name,
                duration_ns: Some(d),
                analysed: true,
                ..
            } => {
                self.record(
                    "agent.process.duration",
                    vec![("toolchain", toolchain_kind(name).into())],
                    *d as f64 / 1e9,
                );
            }
            Output::Tcp { tcp, report, .. } => {
                if let Some(d) = tcp.duration_ns() {
                    self.record(
                        "agent.tcp.connect.duration",
                        vec![("outcome", report.outcome.name().into())],
                        d as f64 / 1e9,
                    );
                }
                if !matches!(report.outcome, Outcome::Established | Outcome::Cancelled) {
                    self.add(
                        "agent.tcp.connect.failures",
                        "{connection}",
                        vec![("reason", report.outcome.name().into())],
                        1,
                    );
                }
                if tcp.syn_retrans > 0 {
                    self.add(
                        "agent.tcp.syn_retransmits",
                        "{segment}",
                        vec![],
                        tcp.syn_retrans as u64,
                    );
                }
            }
            Output::Dns { report, .. } => {
                let rcode = if report.timed_out {
                    "timeout".to_string()
                } else {
                    report.rcode.clone().unwrap_or_default()
                };
                self.record(
                    "agent.dns.lookup.duration",
                    vec![("rcode", rcode.clone())],
                    report.end_ns.saturating_sub(report.start_ns) as f64 / 1e9,
                );
                if rcode != "NOERROR" {
                    self.add("agent.dns.failures", "{lookup}", vec![("rcode", rcode)], 1);
                }
            }
            Output::Tls { report, .. } => {
                let result = crate::tls::verdict_reason(&report.verdict);
                let ok = result == "completed";
                self.record(
                    "agent.tls.handshake.duration",
                    vec![("result", if ok { "completed" } else { "failed" }.into())],
                    report.end_ns.saturating_sub(report.start_ns) as f64 / 1e9,
                );
                if !ok {
                    self.add(
                        "agent.tls.failures",
                        "{handshake}",
                        vec![("reason", result)],
                        1,
                    );
                }
            }
            Output::Finding { finding, .. } => self.add(
                "agent.findings",
                "{finding}",
                vec![
                    ("code", finding.code.into()),
                    ("severity", finding.severity.name().into()),
                ],
                1,
            ),
            _ => {}
        }
    }

    pub fn request(
        &self,
        resource: &Resource,
        start_ns: u64,
        now_ns: u64,
    ) -> ExportMetricsServiceRequest {
        let attrs = |l: &Labels| {
            l.iter()
                .map(|(k, v)| kv_str(k, v.clone()))
                .collect::<Vec<_>>()
        };
        let mut metrics: BTreeMap<&'static str, Metric> = BTreeMap::new();
        for ((name, labels), (v, unit)) in &self.counters {
            let m = metrics.entry(name).or_insert_with(|| Metric {
                name: (*name).into(),
                unit: (*unit).into(),
                data: Some(Data::Sum(Sum {
                    data_points: vec![],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            });
            if let Some(Data::Sum(s)) = &mut m.data {
                s.data_points.push(NumberDataPoint {
                    attributes: attrs(labels),
                    start_time_unix_nano: start_ns,
                    time_unix_nano: now_ns,
                    value: Some(number_data_point::Value::AsInt(*v as i64)),
                    ..Default::default()
                });
            }
        }
        for ((name, labels), (v, unit)) in &self.gauges {
            let m = metrics.entry(name).or_insert_with(|| Metric {
                name: (*name).into(),
                unit: (*unit).into(),
                data: Some(Data::Gauge(Gauge {
                    data_points: vec![],
                })),
                ..Default::default()
            });
            if let Some(Data::Gauge(g)) = &mut m.data {
                g.data_points.push(NumberDataPoint {
                    attributes: attrs(labels),
                    time_unix_nano: now_ns,
                    value: Some(number_data_point::Value::AsDouble(*v)),
                    ..Default::default()
                });
            }
        }
        for ((name, labels), (h, unit)) in &self.hists {
            let m = metrics.entry(name).or_insert_with(|| Metric {
                name: (*name).into(),
                unit: (*unit).into(),
                data: Some(Data::Histogram(Histogram {
                    data_points: vec![],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            });
            if let Some(Data::Histogram(hh)) = &mut m.data {
                hh.data_points.push(HistogramDataPoint {
                    attributes: attrs(labels),
                    start_time_unix_nano: start_ns,
                    time_unix_nano: now_ns,
                    count: h.count,
                    sum: Some(h.sum),
                    bucket_counts: h.counts.clone(),
                    explicit_bounds: h.bounds.to_vec(),
                    min: Some(h.min),
                    max: Some(h.max),
                    ..Default::default()
                });
            }
        }
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(super::model::scope()),
                    metrics: metrics.into_values().collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    pub fn points(&self) -> u64 {
        (self.counters.len() + self.gauges.len() + self.hists.len()) as u64
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

    #[test]
    fn histograms_and_counters_become_otlp() {
        let mut r = Registry::default();
        r.record(
            "agent.tcp.connect.duration",
            vec![("outcome", "established".into())],
            0.002,
        );
        r.record(
            "agent.tcp.connect.duration",
            vec![("outcome", "established".into())],
            3.0,
        );
        r.add(
            "agent.findings",
            "{finding}",
            vec![("code", "net.connect_refused".into())],
            2,
        );
        let req = r.request(&Resource::default(), 1, 2);
        let ms = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(ms.len(), 2);
        let h = ms
            .iter()
            .find(|m| m.name == "agent.tcp.connect.duration")
            .unwrap();
        let Some(Data::Histogram(h)) = &h.data else {
            panic!()
        };
        assert_eq!(h.data_points[0].count, 2);
        assert_eq!(h.data_points[0].bucket_counts.iter().sum::<u64>(), 2);
        assert_eq!(
            r.counter("agent.findings", &[("code", "net.connect_refused")]),
            2
        );
    }
}
