//! Sending OTLP requests: gRPC (tonic) or HTTP/protobuf (a small HTTP/1.1
//! client), behind a bounded queue that drops the oldest spans first,
//! retries with backoff, counts every drop, and never makes shutdown wait
//! longer than its deadline.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient},
        trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    },
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::Notify,
};

use super::config::{OtlpConfig, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("{0} answered {1}")]
    Status(String, String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(String),
}

/// Export counters (agent self-metrics).
#[derive(Debug, Default)]
pub struct ExportStats {
    pub spans_exported: AtomicU64,
    pub spans_dropped: AtomicU64,
    pub metric_points_exported: AtomicU64,
    pub metric_exports_failed: AtomicU64,
    pub export_failures: AtomicU64,
    pub queue_depth: AtomicU64,
}

/// Maximum spans waiting; beyond it the oldest are dropped.
pub const QUEUE_CAP: usize = 8192;
const BATCH: usize = 512;
const BACKOFF_MAX: Duration = Duration::from_secs(15);

pub struct Transport {
    cfg: OtlpConfig,
    grpc: Option<tonic::transport::Channel>,
}

fn split_http_url(url: &str) -> Result<(String, String), ExportError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ExportError::Other(format!("not an http:// URL: {url}")))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') || hostport.starts_with('[') && hostport.contains("]:")
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((hostport, path.to_string()))
}

impl Transport {
    pub fn new(cfg: OtlpConfig) -> Result<Self, ExportError> {
        let grpc = match cfg.protocol {
            Protocol::Grpc => {
                let ep = tonic::transport::Endpoint::from_shared(cfg.traces_endpoint.clone())
                    .map_err(|e| {
                        ExportError::Other(format!("endpoint {}: {e}", cfg.traces_endpoint))
                    })?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(cfg.timeout);
                Some(ep.connect_lazy())
            }
            Protocol::HttpProtobuf => None,
        };
        Ok(Self { cfg, grpc })
    }

    fn with_headers<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        for (k, v) in &self.cfg.headers {
            if let (Ok(k), Ok(v)) = (
                k.to_ascii_lowercase()
                    .parse::<tonic::metadata::MetadataKey<_>>(),
                v.parse(),
            ) {
                req.metadata_mut().insert(k, v);
            }
        }
        req
    }

    async fn http_post(&self, url: &str, body: Vec<u8>) -> Result<(), ExportError> {
        let (hostport, path) = split_http_url(url)?;
        let work = async {
            let mut s = tokio::net::TcpStream::connect(&hostport)
                .await
                .map_err(|e| ExportError::Connect(hostport.clone(), e.to_string()))?;
            let mut head = format!(
                "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in &self.cfg.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            s.write_all(head.as_bytes())
                .await
                .map_err(|e| ExportError::Other(e.to_string()))?;
            s.write_all(&body)
                .await
                .map_err(|e| ExportError::Other(e.to_string()))?;
            let mut resp = Vec::new();
            let mut buf = [0u8; 1024];
            // The status line is all we need.
            while !resp.windows(2).any(|w| w == b"\r\n") && resp.len() < 8192 {
                let n = s
                    .read(&mut buf)
                    .await
                    .map_err(|e| ExportError::Other(e.to_string()))?;
                if n == 0 {
                    break;
                }
                resp.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&resp);
            let status = line.split_whitespace().nth(1).unwrap_or("").to_string();
            if status.starts_with('2') {
                Ok(())
            } else {
                Err(ExportError::Status(
                    url.to_string(),
                    format!("HTTP {status}"),
                ))
            }
        };
        tokio::time::timeout(self.cfg.timeout, work)
            .await
            .map_err(|_| ExportError::Timeout(self.cfg.timeout))?
    }

    pub async fn send_traces(&self, req: ExportTraceServiceRequest) -> Result<(), ExportError> {
        match &self.grpc {
            Some(ch) => {
                let mut c = TraceServiceClient::new(ch.clone());
                c.export(self.with_headers(req))
                    .await
                    .map(|_| ())
                    .map_err(|s| {
                        ExportError::Status(
                            self.cfg.traces_endpoint.clone(),
                            s.message().to_string(),
                        )
                    })
            }
            None => {
                self.http_post(&self.cfg.traces_endpoint, req.encode_to_vec())
                    .await
            }
        }
    }

    pub async fn send_metrics(&self, req: ExportMetricsServiceRequest) -> Result<(), ExportError> {
        if self.cfg.metrics_endpoint.is_empty() {
            return Ok(());
        }
        match &self.grpc {
            Some(ch) => {
                let mut c = MetricsServiceClient::new(ch.clone());
                c.export(self.with_headers(req))
                    .await
                    .map(|_| ())
                    .map_err(|s| {
                        ExportError::Status(
                            self.cfg.metrics_endpoint.clone(),
                            s.message().to_string(),
                        )
                    })
            }
            None => {
                self.http_post(&self.cfg.metrics_endpoint, req.encode_to_vec())
                    .await
            }
        }
    }
}

/// The span queue shared by the builder (producer) and the exporter task.
#[derive(Default)]
pub struct SpanQueue {
    q: Mutex<VecDeque<Span>>,
    /// The batch being sent: reclaimed if the exporter is stopped mid-send.
    inflight: Mutex<Vec<Span>>,
    notify: Notify,
    pub stats: ExportStats,
}

impl SpanQueue {
    pub fn push(&self, s: Span) {
        let Ok(mut q) = self.q.lock() else { return };
        if q.len() >= QUEUE_CAP {
            q.pop_front();
            self.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(s);
        self.stats
            .queue_depth
            .store(q.len() as u64, Ordering::Relaxed);
        if q.len() >= BATCH {
            self.notify.notify_one();
        }
    }

    fn take(&self, n: usize) -> Vec<Span> {
        let Ok(mut q) = self.q.lock() else {
            return Vec::new();
        };
        let k = n.min(q.len());
        let v: Vec<Span> = q.drain(..k).collect();
        self.stats
            .queue_depth
            .store(q.len() as u64, Ordering::Relaxed);
        v
    }

    /// Put a batch back at the head after a failed export (oldest first stays first).
    fn give_back(&self, mut batch: Vec<Span>) {
        let Ok(mut q) = self.q.lock() else { return };
        while q.len() + batch.len() > QUEUE_CAP && !batch.is_empty() {
            batch.remove(0);
            self.stats.spans_dropped.fetch_add(1, Ordering::Relaxed);
        }
        for s in batch.into_iter().rev() {
            q.push_front(s);
        }
        self.stats
            .queue_depth
            .store(q.len() as u64, Ordering::Relaxed);
    }

    fn set_inflight(&self, b: &[Span]) {
        if let Ok(mut f) = self.inflight.lock() {
            *f = b.to_vec();
        }
    }

    fn clear_inflight(&self) {
        if let Ok(mut f) = self.inflight.lock() {
            f.clear();
        }
    }

    /// Put a batch whose send was interrupted back at the head of the queue.
    pub fn reclaim_inflight(&self) {
        let b = self
            .inflight
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        if !b.is_empty() {
            self.give_back(b);
        }
    }

    pub fn len(&self) -> usize {
        self.q.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn traces_request(resource: &Resource, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(super::model::scope()),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The exporter loop: batches every second (or at BATCH spans), retries
/// with exponential backoff, logs failures at most once per 30 s.
pub async fn run_span_exporter(
    transport: Arc<Transport>,
    queue: Arc<SpanQueue>,
    resource: Resource,
    stop: Arc<Notify>,
) {
    let mut backoff = Duration::from_millis(500);
    let mut last_log: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = queue.notify.notified() => {}
            _ = stop.notified() => return,
        }
        loop {
            let batch = queue.take(BATCH);
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            queue.set_inflight(&batch);
            let sent = transport
                .send_traces(traces_request(&resource, batch.clone()))
                .await;
            queue.clear_inflight();
            match sent {
                Ok(()) => {
                    queue.stats.spans_exported.fetch_add(n, Ordering::Relaxed);
                    backoff = Duration::from_millis(500);
                }
                Err(e) => {
                    queue.stats.export_failures.fetch_add(1, Ordering::Relaxed);
                    if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(error = %e, queued = queue.len() + batch.len(), dropped = queue.stats.spans_dropped.load(Ordering::Relaxed), "OTLP trace export failed; retrying with backoff");
                        last_log = Some(tokio::time::Instant::now());
                    }
                    queue.give_back(batch);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.notified() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
            }
        }
    }
}

/// Last attempt at shutdown: whatever fits before `deadline`; every span
/// not confirmed sent by then is counted as dropped.
pub async fn flush(
    transport: &Transport,
    queue: &SpanQueue,
    resource: &Resource,
    deadline: Duration,
) {
    let pending = queue.take(usize::MAX);
    let total = pending.len() as u64;
    let sent = AtomicU64::new(0);
    let work = async {
        for chunk in pending.chunks(BATCH) {
            if transport
                .send_traces(traces_request(resource, chunk.to_vec()))
                .await
                .is_err()
            {
                return;
            }
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    };
    let _ = tokio::time::timeout(deadline, work).await;
    let sent = sent.load(Ordering::Relaxed);
    queue
        .stats
        .spans_exported
        .fetch_add(sent, Ordering::Relaxed);
    queue
        .stats
        .spans_dropped
        .fetch_add(total - sent, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_drops_the_oldest_and_counts() {
        let q = SpanQueue::default();
        for i in 0..(QUEUE_CAP + 10) {
            q.push(Span {
                name: i.to_string(),
                ..Default::default()
            });
        }
        assert_eq!(q.len(), QUEUE_CAP);
        assert_eq!(q.stats.spans_dropped.load(Ordering::Relaxed), 10);
        let first = q.take(1);
        assert_eq!(first[0].name, "10");
        q.give_back(first);
        assert_eq!(q.take(1)[0].name, "10");
    }

    #[test]
    fn http_urls() {
        assert_eq!(
            split_http_url("http://c:4318/v1/traces").unwrap(),
            ("c:4318".into(), "/v1/traces".into())
        );
        assert_eq!(split_http_url("http://c/v1/traces").unwrap().0, "c:80");
        assert!(split_http_url("https://c").is_err());
    }
}
