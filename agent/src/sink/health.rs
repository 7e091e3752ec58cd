//! `/readyz` (programs attached) and `/healthz` (pipeline flowing: the ring
//! buffer reader and the consumer loop both ran within the last 30 s), for
//! Kubernetes probes. A tiny HTTP/1.1 responder; nothing else is served.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{clock::unix_secs, events::Stats};

const STALE_SECS: u64 = 30;

#[derive(Clone)]
pub struct Health {
    ready: bool,
    loop_beat: Arc<AtomicU64>,
    stats: Arc<Stats>,
}

impl Health {
    pub fn new(ready: bool, stats: Arc<Stats>) -> Self {
        Self {
            ready,
            loop_beat: Arc::new(AtomicU64::new(unix_secs())),
            stats,
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
            _ => (404, "not found\n".into()),
        }
    }
}

pub async fn serve(addr: &str, h: Health) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--health-addr {addr}: {e}"))?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n =
                    match tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf))
                        .await
                    {
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
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
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
    }
}
