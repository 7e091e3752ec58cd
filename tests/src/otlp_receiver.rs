//! A real OTLP receiver for tests, on the official protobuf definitions:
//! gRPC (tonic server of opentelemetry-proto's services) and HTTP/protobuf
//! (POST /v1/traces, /v1/metrics). It records everything it receives.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    trace::v1::Span,
};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Clone, Default)]
pub struct Received {
    pub traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    pub metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

impl Received {
    pub fn spans(&self) -> Vec<Span> {
        self.traces
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }

    pub fn metric_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .metrics
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| sm.metrics.iter().map(|m| m.name.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn resource_attr(&self, key: &str) -> Option<String> {
        let t = self.traces.lock().unwrap();
        let r = t.first()?.resource_spans.first()?.resource.as_ref()?;
        r.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| match &a.value.as_ref()?.value {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                    Some(s.clone())
                }
                _ => None,
            })
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Serve gRPC on `listener` in the background.
pub fn serve_grpc(listener: tokio::net::TcpListener, r: Received) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r.clone()))
            .add_service(MetricsServiceServer::new(r))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    })
}

/// Serve HTTP/protobuf on `listener` in the background.
pub fn serve_http(listener: tokio::net::TcpListener, r: Received) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                let (head_end, len, path) = loop {
                    let n = match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_string();
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        break (i + 4, len, path);
                    }
                };
                while buf.len() < head_end + len {
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let body = &buf[head_end..head_end + len];
                let ok = match path.as_str() {
                    "/v1/traces" => ExportTraceServiceRequest::decode(body)
                        .map(|m| r.traces.lock().unwrap().push(m))
                        .is_ok(),
                    "/v1/metrics" => ExportMetricsServiceRequest::decode(body)
                        .map(|m| r.metrics.lock().unwrap().push(m))
                        .is_ok(),
                    _ => false,
                };
                let status = if ok { "200 OK" } else { "400 Bad Request" };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    })
}

/// Serve a receiver (`protocol` "grpc", else HTTP/protobuf) on a free
/// loopback port while `run(endpoint)` runs on a blocking thread; returns
/// what `run` returned and what the receiver got.
pub fn while_receiving<T: Send + 'static>(
    protocol: &str,
    run: impl FnOnce(String) -> T + Send + 'static,
) -> (T, Received) {
    let grpc = protocol == "grpc";
    crate::rt().block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
        let r = Received::default();
        let _server = if grpc {
            serve_grpc(l, r.clone())
        } else {
            serve_http(l, r.clone())
        };
        let out = tokio::task::spawn_blocking(move || run(endpoint))
            .await
            .unwrap();
        (out, r)
    })
}
