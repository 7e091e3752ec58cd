//! A real OTLP receiver for tests, on the official protobuf definitions:
//! gRPC (tonic server of opentelemetry-proto's services) and HTTP/protobuf
//! (POST /v1/traces, /v1/metrics), in plain text or over TLS, optionally
//! requiring a header. It records everything it receives, and the headers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

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
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// How a receiver serves: TLS with this certificate, a required header.
#[derive(Clone, Default)]
pub struct Serve {
    /// Server certificate and key (PEM).
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// (lower-case name, value) every request must carry.
    pub require: Option<(String, String)>,
    /// Mutual TLS: clients must show a certificate this CA (PEM) signed.
    pub client_ca: Option<Vec<u8>>,
}

#[derive(Clone, Default)]
pub struct Received {
    pub traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    pub metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    /// Headers (lower-case names) of every request that reached a handler.
    pub headers: Arc<Mutex<Vec<HashMap<String, String>>>>,
    /// Requests refused for a missing or wrong required header.
    pub refused: Arc<Mutex<u64>>,
    require: Option<(String, String)>,
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

impl Received {
    /// Record the headers; false when the required one is missing.
    fn admit(&self, headers: HashMap<String, String>) -> bool {
        let ok = match &self.require {
            Some((k, v)) => headers.get(k) == Some(v),
            None => true,
        };
        self.headers.lock().unwrap().push(headers);
        if !ok {
            *self.refused.lock().unwrap() += 1;
        }
        ok
    }

    fn admit_grpc<T>(&self, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let headers = req
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        if self.admit(headers) {
            Ok(())
        } else {
            Err(tonic::Status::unauthenticated(
                "missing or wrong credentials",
            ))
        }
    }

    /// Headers of requests to a path-less gRPC service or an HTTP path.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .lock()
            .unwrap()
            .iter()
            .filter_map(|h| h.get(name).cloned())
            .collect()
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.admit_grpc(&req)?;
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
        self.admit_grpc(&req)?;
        self.metrics.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

fn acceptor(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key).unwrap();
    let b = rustls::ServerConfig::builder();
    let b = match client_ca {
        None => b.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots.add(c.unwrap()).unwrap();
            }
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap(),
            )
        }
    };
    let mut cfg = b.with_single_cert(chain, key).unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Serve gRPC on `listener` in the background.
pub fn serve_grpc(listener: tokio::net::TcpListener, r: Received) -> tokio::task::JoinHandle<()> {
    serve_grpc_with(listener, r, Serve::default())
}

/// Serve gRPC (gzip accepted) on `listener`, over TLS when `how` says so.
pub fn serve_grpc_with(
    listener: tokio::net::TcpListener,
    mut r: Received,
    how: Serve,
) -> tokio::task::JoinHandle<()> {
    use tonic::codec::CompressionEncoding::Gzip;
    r.require = how.require.clone();
    tokio::spawn(async move {
        let router = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r.clone()).accept_compressed(Gzip))
            .add_service(MetricsServiceServer::new(r).accept_compressed(Gzip));
        match how.tls {
            None => {
                let _ = router
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await;
            }
            Some((cert, key)) => {
                // TLS in front (as a collector's would be), h2 inside.
                let tls = acceptor(&cert, &key, how.client_ca.as_deref(), &[b"h2"]);
                let incoming = tls_incoming(listener, tls);
                let _ = router.serve_with_incoming(incoming).await;
            }
        }
    })
}

/// Accepted TLS connections as a stream; failed handshakes are skipped.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(s) = tls.accept(s).await {
                    let _ = tx.send(Ok(s)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Serve HTTP/protobuf on `listener` in the background.
pub fn serve_http(listener: tokio::net::TcpListener, r: Received) -> tokio::task::JoinHandle<()> {
    serve_http_with(listener, r, Serve::default())
}

/// Serve HTTP/protobuf (gzip bodies accepted) on `listener`, over TLS when
/// `how` says so.
pub fn serve_http_with(
    listener: tokio::net::TcpListener,
    mut r: Received,
    how: Serve,
) -> tokio::task::JoinHandle<()> {
    r.require = how.require.clone();
    let tls = how
        .tls
        .map(|(c, k)| acceptor(&c, &k, how.client_ca.as_deref(), &[b"http/1.1"]));
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (r, tls) = (r.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => http_conn(s, r).await,
                    Some(t) => {
                        if let Ok(s) = t.accept(s).await {
                            http_conn(s, r).await
                        }
                    }
                }
            });
        }
    })
}

/// One request on one connection.
async fn http_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, r: Received) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let (head_end, headers, path) = loop {
        let n = match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let headers: HashMap<String, String> = head
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
                })
                .collect();
            break (i + 4, headers, path);
        }
    };
    let len = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let gzip = headers.get("content-encoding").map(String::as_str) == Some("gzip");
    let status = if !r.admit(headers) {
        "401 Unauthorized"
    } else {
        let raw = &buf[head_end..head_end + len];
        let body = if gzip {
            use std::io::Read as _;
            let mut out = Vec::new();
            match flate2::read::GzDecoder::new(raw).read_to_end(&mut out) {
                Ok(_) => out,
                Err(_) => Vec::new(),
            }
        } else {
            raw.to_vec()
        };
        let ok = match path.as_str() {
            "/v1/traces" => ExportTraceServiceRequest::decode(body.as_slice())
                .map(|m| r.traces.lock().unwrap().push(m))
                .is_ok(),
            "/v1/metrics" => ExportMetricsServiceRequest::decode(body.as_slice())
                .map(|m| r.metrics.lock().unwrap().push(m))
                .is_ok(),
            _ => false,
        };
        if ok { "200 OK" } else { "400 Bad Request" }
    };
    let _ = s
        .write_all(
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let _ = s.shutdown().await;
}

/// Serve a receiver (`protocol` "grpc", else HTTP/protobuf) on a free
/// loopback port while `run(endpoint)` runs on a blocking thread; returns
/// what `run` returned and what the receiver got.
pub fn while_receiving<T: Send + 'static>(
    protocol: &str,
    run: impl FnOnce(String) -> T + Send + 'static,
) -> (T, Received) {
    while_receiving_with(protocol, Serve::default(), run)
}

/// The same, served as `how` says (`https://` endpoint with TLS).
pub fn while_receiving_with<T: Send + 'static>(
    protocol: &str,
    how: Serve,
    run: impl FnOnce(String) -> T + Send + 'static,
) -> (T, Received) {
    let grpc = protocol == "grpc";
    crate::rt().block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if how.tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{}", l.local_addr().unwrap().port());
        let r = Received::default();
        let _server = if grpc {
            serve_grpc_with(l, r.clone(), how)
        } else {
            serve_http_with(l, r.clone(), how)
        };
        let out = tokio::task::spawn_blocking(move || run(endpoint))
            .await
            .unwrap();
        (out, r)
    })
}
