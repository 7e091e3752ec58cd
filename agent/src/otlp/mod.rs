//! OTLP export of traces and metrics (to an OpenTelemetry Collector, Tempo,
//! Jaeger, ...). Off unless an endpoint is configured.
//!
//! Owns: turning outputs into spans and metrics and shipping them without
//! ever slowing the kernel → user pipeline: span building is synchronous and
//! cheap; sending happens in background tasks behind a bounded queue.

pub mod config;
pub mod export;
pub mod metrics;
pub mod model;
pub mod spans;

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::Notify;

pub use config::{OtlpConfig, Protocol};
use export::{SpanQueue, Transport};

use crate::{collector::Collector, proctable::ProcTable, run::Output};

pub struct Otlp {
    builder: spans::SpanBuilder,
    queue: Arc<SpanQueue>,
    registry: Arc<Mutex<metrics::Registry>>,
    transport: Arc<Transport>,
    resource: Resource,
    stop: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    start_unix_ns: u64,
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Otlp {
    /// Start the exporter tasks (inside a tokio runtime).
    pub fn start(cfg: OtlpConfig, clock_offset_ns: i128) -> Result<Self, export::ExportError> {
        let resource = model::resource(&cfg.service_name, &cfg.resource);
        let interval = cfg.metrics_interval;
        let transport = Arc::new(Transport::new(cfg)?);
        let queue = Arc::new(SpanQueue::default());
        let registry = Arc::new(Mutex::new(metrics::Registry::default()));
        let stop = Arc::new(Notify::new());
        let start_unix_ns = now_unix_ns();
        let mut tasks = vec![tokio::spawn(export::run_span_exporter(
            transport.clone(),
            queue.clone(),
            resource.clone(),
            stop.clone(),
        ))];
        {
            let (t, r, res, q, stop) = (
                transport.clone(),
                registry.clone(),
                resource.clone(),
                queue.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stop.notified() => return,
                    }
                    let req = match r.lock() {
                        Ok(reg) => reg.request(&res, start_unix_ns, now_unix_ns()),
                        Err(_) => return,
                    };
                    let points = req
                        .resource_metrics
                        .iter()
                        .flat_map(|rm| &rm.scope_metrics)
                        .map(|sm| sm.metrics.len() as u64)
                        .sum::<u64>();
                    match tokio::time::timeout(Duration::from_secs(5), t.send_metrics(req)).await {
                        Ok(Ok(())) => {
                            q.stats
                                .metric_points_exported
                                .fetch_add(points, Ordering::Relaxed);
                        }
                        _ => {
                            // Cumulative: the next interval carries the same totals.
                            q.stats
                                .metric_exports_failed
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        Ok(Self {
            builder: spans::SpanBuilder::new(clock_offset_ns),
            queue,
            registry,
            transport,
            resource,
            stop,
            tasks,
            start_unix_ns,
        })
    }

    pub fn observe(&mut self, o: &Output, table: &ProcTable) {
        if let Ok(mut r) = self.registry.lock() {
            r.observe(o);
        }
        for s in self.builder.observe(o, table) {
            self.queue.push(s);
        }
    }

    /// Self-metrics from the collector and the exporter.
    pub fn update_self(&self, c: &Collector) {
        let Ok(mut r) = self.registry.lock() else {
            return;
        };
        let st = &self.queue.stats;
        r.set(
            "agent.events.received",
            "{event}",
            vec![],
            c.stats.received.load(Ordering::Relaxed) as f64,
        );
        for (cause, n) in c.lost() {
            r.set(
                "agent.events.lost",
                "{event}",
                vec![("cause", cause.name().into())],
                n as f64,
            );
        }
        r.set(
            "agent.events.decode_errors",
            "{event}",
            vec![],
            c.stats.decode_errors.load(Ordering::Relaxed) as f64,
        );
        r.set(
            "agent.export.spans",
            "{span}",
            vec![("result", "exported".into())],
            st.spans_exported.load(Ordering::Relaxed) as f64,
        );
        r.set(
            "agent.export.spans",
            "{span}",
            vec![("result", "dropped".into())],
            st.spans_dropped.load(Ordering::Relaxed) as f64,
        );
        r.set(
            "agent.export.metric_points",
            "{point}",
            vec![],
            st.metric_points_exported.load(Ordering::Relaxed) as f64,
        );
        r.set(
            "agent.export.queue_depth",
            "{span}",
            vec![],
            st.queue_depth.load(Ordering::Relaxed) as f64,
        );
        r.set(
            "agent.processes.open_spans",
            "{span}",
            vec![],
            self.builder.open_count() as f64,
        );
    }

    pub fn stats_json(&self) -> serde_json::Value {
        let st = &self.queue.stats;
        serde_json::json!({
            "spans_exported": st.spans_exported.load(Ordering::Relaxed),
            "spans_dropped": st.spans_dropped.load(Ordering::Relaxed),
            "export_failures": st.export_failures.load(Ordering::Relaxed),
            "metric_points_exported": st.metric_points_exported.load(Ordering::Relaxed),
            "metric_exports_failed": st.metric_exports_failed.load(Ordering::Relaxed),
            "queue_depth": st.queue_depth.load(Ordering::Relaxed),
        })
    }

    /// Close open spans, try to send what is queued and the final metrics,
    /// all within `deadline` whatever the endpoint does.
    pub async fn shutdown(mut self, deadline: Duration) -> serde_json::Value {
        let t0 = tokio::time::Instant::now();
        for s in self.builder.close_all(now_unix_ns()) {
            self.queue.push(s);
        }
        self.stop.notify_waiters();
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.queue.reclaim_inflight();
        let half = deadline / 2;
        export::flush(&self.transport, &self.queue, &self.resource, half).await;
        let left = deadline.saturating_sub(t0.elapsed());
        let req = match self.registry.lock() {
            Ok(r) => Some(r.request(&self.resource, self.start_unix_ns, now_unix_ns())),
            Err(_) => None,
        };
        if let Some(req) = req {
            let _ = tokio::time::timeout(left, self.transport.send_metrics(req)).await;
        }
        let dropped = self.queue.stats.spans_dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, "OTLP: spans dropped (endpoint down or too slow)");
        }
        self.stats_json()
    }
}
