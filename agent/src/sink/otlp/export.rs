//! The OTLP exporters (opentelemetry-otlp: tonic or HTTP/protobuf, TLS,
//! headers, compression, timeouts, retries with backoff and jitter) and the
//! little the SDK does not do for us:
//! - TLS from the certificate variables (opentelemetry-otlp 0.33 does not
//!   read `OTEL_EXPORTER_OTLP_CERTIFICATE` and the client pair);
//! - counting: the SDK's batch processor counts its drops privately and
//!   logs them only at shutdown, so an admission wrapper keeps its queue
//!   from ever filling (dropping and counting before it would), and
//!   exporter wrappers count what was sent, what failed and what was still
//!   in flight at shutdown, for the agent's self-metrics and `stats`;
//! - at most one log line a minute for all export errors, with a hint
//!   when it is a certificate problem (the SDK's internal logs are off).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::Context;
#[cfg(feature = "otlp-http")]
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_otlp::{RetryPolicy, WithExportConfig as _};
#[cfg(feature = "otlp-grpc")]
use opentelemetry_otlp::{
    WithTonicConfig as _,
    tonic_types::transport::{Certificate, ClientTlsConfig, Identity},
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{Temporality, data::ResourceMetrics, exporter::PushMetricExporter},
    trace::{SpanData, SpanExporter, SpanProcessor},
};

use super::config::{Protocol, Signal};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{signal} exporter for {endpoint}: {source}")]
    Build {
        signal: &'static str,
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("{signal} exporter: {what}: {why}")]
    Tls {
        signal: &'static str,
        what: &'static str,
        why: String,
    },
    #[error("starting the HTTP client: {0}")]
    Thread(String),
    #[error("OTLP over {0}: this agent was built without it")]
    NotBuilt(&'static str),
}

/// Export counters (agent self-metrics and the JSON `stats` line).
#[derive(Debug, Default)]
pub struct ExportStats {
    pub spans_exported: AtomicU64,
    /// Refused by the full queue, lost with a failed export, or not sent by shutdown.
    pub spans_dropped: AtomicU64,
    pub export_failures: AtomicU64,
    pub metric_points_exported: AtomicU64,
    pub metric_exports_failed: AtomicU64,
    /// Ended spans not yet handed to the exporter.
    pub queue_depth: AtomicU64,
    /// Spans in the export under way.
    pub inflight: AtomicU64,
    /// Estimated bytes of the spans in `queue_depth` (see [`span_bytes`]).
    pub queue_bytes: AtomicU64,
}

/// Bytes the span queue holds at most (estimated as [`span_bytes`]), beside
/// its span count: a span of a tool with a huge command line, many events
/// or long findings weighs what it carries, not one slot.
pub const MAX_QUEUE_BYTES: u64 = 8 << 20;

/// What a span weighs in memory, estimated: its strings (name, attribute
/// keys and values, events and their attributes, links) plus a fixed
/// overhead per span, event and attribute for the SDK's structures (sized so
/// that the estimate is what the queue's RSS grew by, measured with 4 KiB
/// command lines: ~5 KiB a span).
pub fn span_bytes(s: &SpanData) -> u64 {
    use opentelemetry::{Array, Value};
    fn value(v: &Value) -> usize {
        match v {
            Value::String(s) => s.as_str().len(),
            Value::Array(Array::String(a)) => a.iter().map(|s| s.as_str().len() + 24).sum(),
            Value::Array(Array::I64(a)) => a.len() * 8,
            Value::Array(Array::F64(a)) => a.len() * 8,
            Value::Array(Array::Bool(a)) => a.len(),
            _ => 8,
        }
    }
    let attrs = |kvs: &[opentelemetry::KeyValue]| -> usize {
        kvs.iter()
            .map(|kv| 64 + kv.key.as_str().len() + value(&kv.value))
            .sum()
    };
    let events: usize = s
        .events
        .iter()
        .map(|e| 96 + e.name.len() + attrs(&e.attributes))
        .sum();
    let links: usize = s.links.iter().map(|l| 64 + attrs(&l.attributes)).sum();
    (1024 + s.name.len() + attrs(&s.attributes) + events + links) as u64
}

impl ExportStats {
    /// At shutdown: what the processor did not get out is dropped, and an
    /// export still waiting on the endpoint is a failure.
    pub fn settle(&self) {
        let left = self.queue_depth.swap(0, Ordering::Relaxed);
        self.queue_bytes.store(0, Ordering::Relaxed);
        let inflight = self.inflight.swap(0, Ordering::Relaxed);
        self.spans_dropped
            .fetch_add(left + inflight, Ordering::Relaxed);
        if inflight > 0 {
            self.export_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// At most one line per minute for all export errors (a broken endpoint
/// fails every batch of both signals the same way).
#[derive(Debug, Default)]
pub struct ErrorLog {
    last: Mutex<Option<Instant>>,
}

impl ErrorLog {
    /// Has an export error been logged?
    pub fn said(&self) -> bool {
        self.last.lock().is_ok_and(|l| l.is_some())
    }

    pub fn report(&self, what: &str, endpoint: &str, err: &str) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *last = Some(Instant::now());
        let hint = if err.contains("certificate") || err.contains("UnknownIssuer") {
            " (is the collector's CA in OTEL_EXPORTER_OTLP_CERTIFICATE?)"
        } else {
            ""
        };
        tracing::warn!("OTLP: exporting {what} to {endpoint} failed: {err}{hint}");
    }
}

/// Bounds the batch processor's queue from outside (see the module note).
#[derive(Debug)]
pub struct Admission<P> {
    pub inner: P,
    pub stats: Arc<ExportStats>,
    pub cap: u64,
    /// Estimated bytes queued at most ([`MAX_QUEUE_BYTES`]).
    pub max_bytes: u64,
    pub warned: std::sync::atomic::AtomicBool,
}

impl<P: SpanProcessor> SpanProcessor for Admission<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let bytes = span_bytes(&span);
        let st = &self.stats;
        if st.queue_depth.load(Ordering::Relaxed) >= self.cap
            || st.queue_bytes.load(Ordering::Relaxed) + bytes > self.max_bytes
        {
            st.spans_dropped.fetch_add(1, Ordering::Relaxed);
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    cap = self.cap,
                    max_bytes = self.max_bytes,
                    "OTLP: span queue full (endpoint down or too slow): dropping spans, counted in stats"
                );
            }
            return;
        }
        st.queue_depth.fetch_add(1, Ordering::Relaxed);
        st.queue_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what the span exporter sent and lost.
#[derive(Debug)]
pub struct CountingSpans<E> {
    pub inner: E,
    pub stats: Arc<ExportStats>,
    pub log: Arc<ErrorLog>,
    pub endpoint: String,
}

impl<E: SpanExporter> SpanExporter for CountingSpans<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let bytes: u64 = batch.iter().map(span_bytes).sum();
        let s = &self.stats;
        // saturating: spans from before a processor restart are not counted twice.
        for (counter, by) in [(&s.queue_depth, n), (&s.queue_bytes, bytes)] {
            let _ = counter.try_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(by))
            });
        }
        s.inflight.store(n, Ordering::Relaxed);
        let r = self.inner.export(batch).await;
        s.inflight.store(0, Ordering::Relaxed);
        match &r {
            Ok(()) => {
                s.spans_exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                s.spans_dropped.fetch_add(n, Ordering::Relaxed);
                s.export_failures.fetch_add(1, Ordering::Relaxed);
                self.log.report("spans", &self.endpoint, &e.to_string());
            }
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts what the metric exporter sent and lost.
pub struct CountingMetrics<E> {
    pub inner: E,
    pub stats: Arc<ExportStats>,
    pub log: Arc<ErrorLog>,
    pub endpoint: String,
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetrics<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let points: u64 = metrics
            .scope_metrics()
            .map(|s| s.metrics().count() as u64)
            .sum();
        let r = self.inner.export(metrics).await;
        match &r {
            Ok(()) => {
                self.stats
                    .metric_points_exported
                    .fetch_add(points, Ordering::Relaxed);
            }
            Err(e) => {
                // Cumulative: the next interval carries the same totals.
                self.stats
                    .metric_exports_failed
                    .fetch_add(1, Ordering::Relaxed);
                self.log.report("metrics", &self.endpoint, &e.to_string());
            }
        }
        r
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The SDK's recommended backoff, with more attempts: an endpoint that is
/// down for a few seconds loses nothing (the export timeout still bounds
/// each batch), and one that comes back is used within ~2 s.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::recommended()
        .with_max_retries(16)
        .with_initial_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_max_jitter(Duration::from_millis(200))
}

#[cfg(feature = "otlp-http")]
fn tls_err(s: &Signal, what: &'static str, why: impl std::fmt::Display) -> ExportError {
    ExportError::Tls {
        signal: s.name,
        what,
        why: why.to_string(),
    }
}

/// tonic's TLS: the system roots, plus the configured CA and client pair.
#[cfg(feature = "otlp-grpc")]
fn tonic_tls(s: &Signal) -> ClientTlsConfig {
    let mut t = ClientTlsConfig::new().with_native_roots();
    if let Some((_, ca)) = &s.tls.ca {
        t = t.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = &s.tls.client {
        t = t.identity(Identity::from_pem(cert, key));
    }
    t
}

/// The blocking HTTP client (rustls with the platform's roots, plus the
/// configured CA and client pair). Built on a thread of its own: reqwest's
/// blocking client starts a runtime, which must not happen on a runtime
/// worker (the SDK does the same for its default client).
#[cfg(feature = "otlp-http")]
fn http_client(s: &Signal) -> Result<reqwest::blocking::Client, ExportError> {
    let mut b = reqwest::blocking::Client::builder().timeout(s.timeout);
    if let Some((path, ca)) = &s.tls.ca {
        let certs = reqwest::Certificate::from_pem_bundle(ca)
            .map_err(|e| tls_err(s, "OTEL_EXPORTER_OTLP_CERTIFICATE", format!("{path}: {e}")))?;
        b = b.tls_certs_merge(certs);
    }
    if let Some((cert, key)) = &s.tls.client {
        let mut pem = cert.clone();
        pem.push(b'\n');
        pem.extend_from_slice(key);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| tls_err(s, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE/KEY", e))?;
        b = b.identity(id);
    }
    let name = s.name;
    std::thread::Builder::new()
        .name("otlp-http-init".into())
        .spawn(move || b.build())
        .map_err(|e| ExportError::Thread(e.to_string()))?
        .join()
        .map_err(|_| ExportError::Thread("panicked".into()))?
        .map_err(|e| ExportError::Tls {
            signal: name,
            what: "HTTP client",
            why: e.to_string(),
        })
}

fn build_err(
    s: &Signal,
) -> impl FnOnce(opentelemetry_otlp::ExporterBuildError) -> ExportError + '_ {
    move |source| ExportError::Build {
        signal: s.name,
        endpoint: s.endpoint.clone(),
        source,
    }
}

/// Connect to an `https://` endpoint and complete a TLS handshake with the
/// exporter's trust settings, once at start. Not the SDK's job, and it
/// cannot be: it classifies a certificate failure as retryable, so the
/// error surfaces only when the export timeout (10 s) runs out, or never
/// when `agent trace` ends first. rustls verifies; this only connects.
pub async fn probe_tls(s: Signal) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
    let (host, port) = s.host_port();
    // The system's trust store is files: read off the event loop.
    let mut roots = tokio::task::spawn_blocking(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Some((path, pem)) = &s.tls.ca {
        let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_CERTIFICATE {path}: {e}"))?;
        roots.add_parsable_certificates(certs);
    }
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut cfg = match &s.tls.client {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_CLIENT_KEY: {e}"))?;
            b.with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => b.with_no_client_auth(),
    };
    // What the exporters offer: gRPC servers insist on h2.
    cfg.alpn_protocols = match s.protocol {
        Protocol::Grpc => vec![b"h2".to_vec()],
        Protocol::HttpProtobuf => vec![b"http/1.1".to_vec()],
    };
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map(drop)
            .map_err(|e| format!("TLS handshake: {e}"))
    };
    tokio::time::timeout(s.timeout.min(Duration::from_secs(5)), connect)
        .await
        .map_err(|_| "no answer (timed out)".to_string())?
}

/// The same settings for both signals' builders (they are distinct types).
macro_rules! exporter {
    ($builder:expr, $s:expr) => {{
        let s: &Signal = $s;
        match s.protocol {
            #[cfg(feature = "otlp-grpc")]
            Protocol::Grpc => {
                let mut b = $builder
                    .with_tonic()
                    .with_endpoint(&s.endpoint)
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                    .with_timeout(s.timeout)
                    .with_retry_policy(retry_policy());
                if s.https() {
                    b = b.with_tls_config(tonic_tls(s));
                }
                b.build().map_err(build_err(s))
            }
            #[cfg(feature = "otlp-http")]
            Protocol::HttpProtobuf => $builder
                .with_http()
                .with_endpoint(&s.endpoint)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(s.timeout)
                .with_retry_policy(retry_policy())
                .with_http_client(http_client(s)?)
                .build()
                .map_err(build_err(s)),
            // Refused when the settings were read (config::built).
            #[allow(
                unreachable_patterns,
                reason = "with both transports built every protocol has its arm"
            )]
            p => Err(ExportError::NotBuilt(p.name())),
        }
    }};
}

pub fn span_exporter(s: &Signal) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    exporter!(opentelemetry_otlp::SpanExporter::builder(), s)
}

pub fn metric_exporter(s: &Signal) -> Result<opentelemetry_otlp::MetricExporter, ExportError> {
    exporter!(opentelemetry_otlp::MetricExporter::builder(), s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::{
        KeyValue,
        trace::{Span as _, Tracer as _, TracerProvider as _},
    };
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// Holds every span it is given (an endpoint that never takes any).
    #[derive(Debug, Default)]
    struct Hold(Mutex<Vec<SpanData>>);

    impl SpanProcessor for Hold {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            if let Ok(mut v) = self.0.lock() {
                v.push(span);
            }
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// The queue is bounded by the bytes its spans carry as well as by
    /// their count: spans of ~2 KiB each (a 1 KiB command line and the
    /// fixed overhead) fill 16 KiB after 7.
    #[test]
    fn the_span_queue_is_bounded_in_bytes() {
        let stats = Arc::new(ExportStats::default());
        let p = SdkTracerProvider::builder()
            .with_span_processor(Admission {
                inner: Hold::default(),
                stats: stats.clone(),
                cap: 1000,
                max_bytes: 16 << 10,
                warned: Default::default(),
            })
            .build();
        let t = p.tracer("t");
        let big = "x".repeat(1024);
        for _ in 0..100 {
            let mut s = t.start("go");
            s.set_attribute(KeyValue::new("process.command_args", big.clone()));
            s.end();
        }
        let queued = stats.queue_depth.load(Ordering::Relaxed);
        let bytes = stats.queue_bytes.load(Ordering::Relaxed);
        let dropped = stats.spans_dropped.load(Ordering::Relaxed);
        assert!((5..10).contains(&queued), "{queued} queued, {bytes} bytes");
        assert!(bytes <= 16 << 10);
        assert_eq!(queued + dropped, 100);
        // Small spans weigh little: ten of them fit.
        stats.queue_bytes.store(0, Ordering::Relaxed);
        stats.queue_depth.store(0, Ordering::Relaxed);
        for _ in 0..10 {
            t.start("sh").end();
        }
        assert_eq!(stats.queue_depth.load(Ordering::Relaxed), 10);
    }
}
