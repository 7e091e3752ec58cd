//! `/readyz` (programs attached) and `/healthz` (pipeline flowing: the ring
//! buffer reader and the consumer loop both ran within the last 30 s), for
//! Kubernetes probes, and `/stats` (the latest `stats` record as JSON: every
//! loss by cause, wire, uprobe and process-table counters; refreshed every
//! 5 s). A tiny HTTP/1.1 responder; nothing else is served.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{clock::unix_secs, events::Stats};

const STALE_SECS: u64 = 30;
/// Connections to the health endpoint served at once.
const MAX_CONNECTIONS: usize = 256;

#[derive(Clone)]
pub struct Health {
    ready: bool,
    loop_beat: Arc<AtomicU64>,
    stats: Arc<Stats>,
    /// The latest `stats` record, as served at `/stats`.
    latest: Arc<Mutex<String>>,
}

impl Health {
    pub fn new(ready: bool, stats: Arc<Stats>) -> Self {
        Self {
            ready,
            loop_beat: Arc::new(AtomicU64::new(unix_secs())),
            stats,
            latest: Arc::new(Mutex::new("{}\n".into())),
        }
    }

    /// The stats record `/stats` serves from now on.
    pub fn set_stats(&self, v: &serde_json::Value) {
        if let Ok(mut l) = self.latest.lock() {
            *l = format!("{v}\n");
        }
    }

    pub fn beat(&self) {
        self.loop_beat.store(unix_secs(), Ordering::Relaxed);
    }

    /// (status, body) for a path.
    pub fn answer(&self, path: &str) -> (u16, String) {
        let now = unix_secs();
        let reader = self.stats.reader_beat.load(Ordering::Relaxed);
        let consumer = self.loop_beat.load(Ordering::Relaxed);
        match path {
            "/readyz" if self.ready => (200, "ready: programs attached\n".into()),
            "/readyz" => (503, "not ready: no signal attached\n".into()),
            "/healthz" => {
                let stale = |t: u64| now.saturating_sub(t) > STALE_SECS;
                if stale(reader) || stale(consumer) {
                    (
                        503,
                        format!(
                            "unhealthy: reader {}s ago, consumer {}s ago\n",
                            now.saturating_sub(reader),
                            now.saturating_sub(consumer)
                        ),
                    )
                } else {
                    (
                        200,
                        format!(
                            "ok: {} events received\n",
                            self.stats.received.load(Ordering::Relaxed)
                        ),
                    )
                }
            }
            "/stats" => (
                200,
                self.latest
                    .lock()
                    .map(|l| l.clone())
                    .unwrap_or_else(|_| "{}\n".into()),
            ),
            _ => (404, "not found\n".into()),
        }
    }
}

pub async fn serve(addr: &str, h: Health) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--health-addr {addr}: {e}"))?;
    // At most this many connections are served at once (each has 2 s to
    // send its request); the rest wait in the listen backlog.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        let mut last_error: Option<std::time::Instant> = None;
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut s = match l.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors (EMFILE), a connection reset before
                    // accept…: the server stays, says so once a minute, and
                    // lets the cause pass before trying again.
                    if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!("health endpoint: accept failed: {e}; retrying");
                        last_error = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let h = h.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let (code, body) = h.answer(path);
                let reason = match code {
                    200 => "OK",
                    404 => "Not Found",
                    _ => "Service Unavailable",
                };
                let kind = if path == "/stats" {
                    "application/json"
                } else {
                    "text/plain"
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), s
                    .write_all(
                        format!(
                            "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    ))
                    .await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_healthy_mean_something() {
        let stats = Arc::new(Stats::default());
        let h = Health::new(true, stats.clone());
        assert_eq!(h.answer("/readyz").0, 200);
        // The reader never ran: unhealthy.
        assert_eq!(h.answer("/healthz").0, 503);
        stats.reader_beat.store(unix_secs(), Ordering::Relaxed);
        h.beat();
        assert_eq!(h.answer("/healthz").0, 200);
        assert_eq!(Health::new(false, stats).answer("/readyz").0, 503);
        assert_eq!(h.answer("/x").0, 404);
        // The latest stats record, as set by the loop.
        assert_eq!(h.answer("/stats"), (200, "{}\n".to_string()));
        h.set_stats(&serde_json::json!({"lost": {"fs_table_full": 3}}));
        assert_eq!(h.answer("/stats").1, "{\"lost\":{\"fs_table_full\":3}}\n");
    }

    /// Clients that connect and say nothing do not delay a probe.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_clients_cannot_take_the_endpoint_down() {
        let stats = Arc::new(Stats::default());
        stats.reader_beat.store(unix_secs(), Ordering::Relaxed);
        let h = Health::new(true, stats);
        // A free port, then the server on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        serve(&addr, h).await.expect("serve");
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS / 2 {
            idle.push(
                tokio::net::TcpStream::connect(&addr)
                    .await
                    .expect("connect"),
            );
        }
        let t = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
            .await
            .expect("answered within 10 s")
            .expect("read");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        drop(idle);
    }
}
