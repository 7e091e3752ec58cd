//! OTLP export of traces and metrics (to an OpenTelemetry Collector, Tempo,
//! Jaeger, Grafana Cloud...) through the OpenTelemetry SDK. Off unless an
//! endpoint is configured.
//!
//! Owns: turning outputs into spans and metrics without ever slowing the
//! kernel → user pipeline. Span building is synchronous and cheap; ended
//! spans go to the SDK's batch processor (its own thread, a bounded queue)
//! and metrics to its periodic reader (its own thread).

pub mod config;
pub mod export;
pub mod metrics;
pub mod model;
pub mod spans;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::{
    metrics::{PeriodicReader, SdkMeterProvider},
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
};

pub use config::{Exporter, OtlpConfig, Protocol};
use export::{Admission, CountingMetrics, CountingSpans, ErrorLog, ExportError, ExportStats};
pub use spans::RootSpan;

use crate::{pipeline::Output, process::table::ProcTable};

/// Run `f` on a new thread; its result arrives on the receiver.
fn off_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if let Err(e) = spawned {
        tracing::debug!("OTLP: no thread for shutdown: {e}");
    }
    rx
}

/// The counting wrappers' shared parts, for either exporter kind.
struct Wrap<'a> {
    stats: &'a Arc<ExportStats>,
    log: &'a Arc<ErrorLog>,
    endpoint: &'a str,
}

impl Wrap<'_> {
    fn spans<E>(&self, inner: E) -> CountingSpans<E> {
        CountingSpans {
            inner,
            stats: self.stats.clone(),
            log: self.log.clone(),
            endpoint: self.endpoint.to_owned(),
        }
    }

    fn metrics<E>(&self, inner: E, cfg: &OtlpConfig) -> PeriodicReader<CountingMetrics<E>>
    where
        CountingMetrics<E>: opentelemetry_sdk::metrics::exporter::PushMetricExporter,
    {
        PeriodicReader::builder(CountingMetrics {
            inner,
            stats: self.stats.clone(),
            log: self.log.clone(),
            endpoint: self.endpoint.to_owned(),
        })
        .with_interval(cfg.metrics_interval)
        .build()
    }
}

pub struct Otlp {
    builder: spans::SpanBuilder,
    instruments: metrics::Instruments,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    stats: Arc<ExportStats>,
    log: Arc<ErrorLog>,
    /// Start-up TLS checks of https:// endpoints, still running.
    probes: Vec<tokio::task::JoinHandle<()>>,
}

impl Otlp {
    /// Start the SDK's providers and exporters (inside the tokio runtime:
    /// the gRPC channel lives on it). Call after privileges are dropped:
    /// the SDK's threads inherit the caller's capabilities.
    /// `root`: `agent trace`'s command pid and the span reserved for it.
    pub fn start(
        cfg: &OtlpConfig,
        clock_offset_ns: i128,
        root: Option<(u32, RootSpan)>,
    ) -> Result<Self, ExportError> {
        // One crypto provider for tonic and reqwest (ring); an error only
        // means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resource = model::resource();
        let stats = Arc::new(ExportStats::default());
        let log = Arc::new(ErrorLog::default());
        let ids = spans::Ids::default();
        let traces = SdkTracerProvider::builder()
            .with_id_generator(ids.clone())
            .with_resource(resource.clone());
        let counting = Wrap {
            stats: &stats,
            log: &log,
            endpoint: &cfg.traces.endpoint,
        };
        let tracer_provider = match cfg.traces_exporter {
            Exporter::Otlp => {
                let inner = counting.spans(export::span_exporter(&cfg.traces)?);
                traces.with_span_processor(Self::admission(cfg, inner, &stats))
            }
            Exporter::Console => {
                let inner = counting.spans(opentelemetry_stdout::SpanExporter::default());
                traces.with_span_processor(Self::admission(cfg, inner, &stats))
            }
            // No processor: spans are built and dropped at their end.
            Exporter::None => traces,
        }
        .build();
        let tracer = {
            use opentelemetry::trace::TracerProvider as _;
            tracer_provider.tracer_with_scope(model::scope())
        };
        let metrics = SdkMeterProvider::builder().with_resource(resource);
        let reader = Wrap {
            stats: &stats,
            log: &log,
            endpoint: &cfg.metrics.endpoint,
        };
        let meter_provider = match cfg.metrics_exporter {
            Exporter::Otlp => {
                metrics.with_reader(reader.metrics(export::metric_exporter(&cfg.metrics)?, cfg))
            }
            Exporter::Console => metrics
                .with_reader(reader.metrics(opentelemetry_stdout::MetricExporter::default(), cfg)),
            Exporter::None => metrics,
        }
        .build();
        let instruments =
            metrics::Instruments::new(&meter_provider.meter_with_scope(model::scope()));
        // One check per distinct https:// endpoint.
        let mut probes = Vec::new();
        let mut seen = Vec::new();
        let otlp = [
            (cfg.traces_exporter, &cfg.traces),
            (cfg.metrics_exporter, &cfg.metrics),
        ];
        for (_, s) in otlp.iter().filter(|(e, _)| *e == Exporter::Otlp) {
            let origin = s.host_port();
            if s.https() && !seen.contains(&origin) {
                seen.push(origin);
                let (s, log) = ((*s).clone(), log.clone());
                probes.push(tokio::spawn(async move {
                    let endpoint = s.endpoint.clone();
                    match export::probe_tls(s).await {
                        Ok(()) => tracing::debug!(%endpoint, "OTLP: TLS handshake ok"),
                        Err(e) => log.report("telemetry", &endpoint, &e),
                    }
                }));
            }
        }
        Ok(Self {
            builder: spans::SpanBuilder::new(tracer, ids, clock_offset_ns, root),
            instruments,
            tracer_provider,
            meter_provider,
            stats,
            log,
            probes,
        })
    }

    /// The SDK's batch processor behind our bounded admission (spans and
    /// bytes), exporting through `inner`.
    fn admission<E: opentelemetry_sdk::trace::SpanExporter + 'static>(
        cfg: &OtlpConfig,
        inner: E,
        stats: &Arc<ExportStats>,
    ) -> Admission<BatchSpanProcessor> {
        // The other OTEL_BSP_* are read by the SDK; these two the config
        // resolved (ours where they are unset).
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(cfg.queue_cap)
            .with_scheduled_delay(cfg.span_delay);
        Admission {
            inner: BatchSpanProcessor::builder(inner)
                .with_batch_config(batch.build())
                .build(),
            stats: stats.clone(),
            cap: cfg.queue_cap as u64,
            max_bytes: export::MAX_QUEUE_BYTES,
            warned: Default::default(),
        }
    }

    pub fn observe(&mut self, o: &Output, table: &ProcTable) {
        self.instruments.observe(o);
        self.builder.observe(o, table);
    }

    /// End the spans of processes gone without an exit seen (on the tick).
    pub fn expire_spans(&mut self, proc_root: &std::path::Path) {
        let n = self.builder.expire(proc_root);
        if n > 0 {
            tracing::debug!(n, "spans of processes gone without an exit ended");
        }
    }

    /// Self-metrics from the collector and the exporter.
    pub fn update_self(&self, l: &crate::events::Losses) {
        let i = &self.instruments;
        let st = &self.stats;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        i.events_received.set("", l.received);
        for (cause, lost) in &l.kernel {
            i.events_lost.set(cause.name(), *lost);
        }
        i.decode_errors.set("", l.decode_errors);
        i.tcp_unreported.set("", l.tcp_quiet);
        i.export_spans.set("exported", n(&st.spans_exported));
        i.export_spans.set("dropped", n(&st.spans_dropped));
        i.export_points.set("", n(&st.metric_points_exported));
        i.queue_depth.record(n(&st.queue_depth), &[]);
        i.open_spans.record(self.builder.open_count() as u64, &[]);
        let g = crate::process::guard::stats();
        for (cause, v) in [
            ("timeout", g.timeouts),
            ("stalled", g.refused_stalled),
            ("busy", g.refused_busy),
        ] {
            i.files_skipped.set(cause, v);
        }
    }

    pub fn stats_json(&self) -> serde_json::Value {
        let st = &self.stats;
        serde_json::json!({
            "spans_exported": st.spans_exported.load(Ordering::Relaxed),
            "spans_dropped": st.spans_dropped.load(Ordering::Relaxed),
            "export_failures": st.export_failures.load(Ordering::Relaxed),
            "metric_points_exported": st.metric_points_exported.load(Ordering::Relaxed),
            "metric_exports_failed": st.metric_exports_failed.load(Ordering::Relaxed),
            "queue_depth": st.queue_depth.load(Ordering::Relaxed),
            "queue_bytes": st.queue_bytes.load(Ordering::Relaxed),
            "spans_open": self.builder.open_count(),
            "spans_expired": self.builder.expired,
            "spans_evicted": self.builder.evicted,
        })
    }

    /// End open spans, then let the SDK flush and shut down, all within
    /// `deadline` whatever the endpoint does: an export stuck on a black
    /// hole is abandoned with its thread.
    pub async fn shutdown(mut self, deadline: Duration) -> serde_json::Value {
        self.builder.close_all();
        let until = tokio::time::Instant::now() + deadline;
        for p in self.probes.drain(..) {
            let _ = tokio::time::timeout_at(until, p).await;
        }
        // Each provider's shutdown blocks on its thread, on a thread of its
        // own, both at once, and we wait for them with our own deadline:
        // opentelemetry_sdk 0.33's SdkMeterProvider::shutdown_with_timeout
        // ignores its timeout (the periodic reader waits 5 s, hard-coded;
        // measured: 5.4 s to stop with the endpoint black-holed).
        let tp = self.tracer_provider.clone();
        let traces = off_thread("otlp-shutdown-t", move || {
            tp.shutdown_with_timeout(deadline)
        });
        let mp = self.meter_provider.clone();
        let metrics = off_thread("otlp-shutdown-m", move || {
            mp.shutdown_with_timeout(deadline)
        });
        for (what, rx) in [("traces", traces), ("metrics", metrics)] {
            match tokio::time::timeout_at(until, rx).await {
                Ok(Ok(r)) => tracing::debug!(what, ?r, "OTLP shut down"),
                _ => tracing::debug!(what, "OTLP shutdown abandoned at the deadline"),
            }
        }
        self.stats.settle();
        let dropped = self.stats.spans_dropped.load(Ordering::Relaxed);
        // After an export error was logged, the count is in the stats only.
        if dropped > 0 && !self.log.said() {
            tracing::warn!(dropped, "OTLP: spans dropped (endpoint down or too slow)");
        }
        self.stats_json()
    }
}
