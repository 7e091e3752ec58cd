//! The ring-buffer reader: drains the kernel's records into decoded events
//! on a bounded channel, in batches, and counts what could not be decoded.
//!
//! Owns: the reader task and its counters. Must not: interpret events.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use bytes::BytesMut;
use tokio::{io::unix::AsyncFd, sync::mpsc};

use super::Event;

/// Counters shared between the reader and whoever reports them.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Unix seconds of the reader's last pass over the ring buffer.
    pub reader_beat: AtomicU64,
}

/// Longest an event waits in the ring buffer before userspace reads it.
pub const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(50);
const MAX_BATCH: usize = 4096;
/// Wire payloads are cut from buffers of this size.
const PAYLOAD_CHUNK: usize = 64 << 10;

/// The collector's event stream. The reader hands over whole batches (one
/// wakeup of the consumer per drain of the ring, not one per event); this
/// gives them out one event at a time.
pub struct EventRx {
    rx: mpsc::Receiver<Vec<Event>>,
    pending: std::vec::IntoIter<Event>,
    stats: Arc<Stats>,
}

impl EventRx {
    /// The next event; None once the reader has stopped. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.pending.next() {
                return Some(ev);
            }
            self.pending = self.rx.recv().await?.into_iter();
        }
    }

    /// The reader's counters (records received, undecodable, its heartbeat).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// True when every event received so far has been handed out: a good
    /// moment to write what was rendered from them.
    pub fn caught_up(&self) -> bool {
        self.pending.len() == 0 && self.rx.is_empty()
    }
}

/// A tool's or tracked tree's exec: its working directory, read now. The
/// kernel woke us for it, so the process is usually still there; by the
/// time its exec is analysed (after the events before it), a tool that
/// fails at once (`go version` switching toolchains against a proxy that
/// refuses) has exited, and so has the shell that started it.
fn note_cwd(ev: &mut Event, proc_root: &Path) {
    if let Event::Exec(e) = ev
        && e.ok()
        && e.env_read
    {
        e.cwd = super::cwd_of(proc_root, e.tgid);
    }
}

/// Read up to MAX_BATCH records; true when more may remain.
fn drain(
    ring: &mut RingBuf<MapData>,
    batch: &mut Vec<Event>,
    stats: &Stats,
    proc_root: &Path,
    payloads: &mut BytesMut,
) -> bool {
    while let Some(item) = ring.next() {
        stats.received.fetch_add(1, Ordering::Relaxed);
        // Room for the largest payload, in chunks: one allocation serves
        // many records, and is reused once their slices are dropped.
        if payloads.capacity() < agent_common::WIRE_CAP_TLS {
            payloads.reserve(PAYLOAD_CHUNK);
        }
        match super::decode_into(&item, payloads) {
            Ok(mut ev) => {
                note_cwd(&mut ev, proc_root);
                batch.push(ev)
            }
            Err(e) => {
                stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "undecodable record");
            }
        }
        if batch.len() >= MAX_BATCH {
            return true;
        }
    }
    false
}

/// Start reading `ring`; at most `channel` events wait between the reader
/// and the consumer. `proc_root` is where processes are (`/proc`, or the
/// host's in a pod).
pub(super) fn spawn(
    ring: RingBuf<MapData>,
    channel: usize,
    proc_root: PathBuf,
) -> std::io::Result<EventRx> {
    let stats = Arc::new(Stats::default());
    let (tx, rx) = mpsc::channel((channel / MAX_BATCH).max(2));
    spawn_reader(ring, tx, stats.clone(), proc_root)?;
    Ok(EventRx {
        rx,
        pending: Vec::new().into_iter(),
        stats,
    })
}

fn spawn_reader(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<Event>>,
    stats: Arc<Stats>,
    proc_root: PathBuf,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for as long as
    // the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
    tokio::spawn(async move {
        let mut payloads = BytesMut::new();
        loop {
            // The kernel side wakes us when 64 KiB become pending (and for a
            // tool's exec); a short timer drains the rest, so an event waits
            // at most DRAIN_TICK. Awake, we drain until the ring is empty.
            let mut batch = Vec::new();
            stats
                .reader_beat
                .store(crate::clock::unix_secs(), Ordering::Relaxed);
            let timed_out = match tokio::time::timeout(DRAIN_TICK, fd.readable_mut()).await {
                Ok(Ok(mut guard)) => {
                    if !drain(
                        guard.get_inner_mut(),
                        &mut batch,
                        &stats,
                        &proc_root,
                        &mut payloads,
                    ) {
                        guard.clear_ready();
                    }
                    false
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "ring buffer poll failed; stopping the reader");
                    return;
                }
                Err(_) => true,
            };
            if timed_out {
                drain(fd.get_mut(), &mut batch, &stats, &proc_root, &mut payloads);
            }
            // Backpressure: a slow consumer fills the ring, which the kernel counts.
            if !batch.is_empty() && tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Fork;

    fn fork(n: u32) -> Event {
        Event::Fork(Fork {
            parent_tgid: 1,
            child_pid: n,
            ktime_ns: 0,
        })
    }

    #[tokio::test]
    async fn batches_come_out_one_event_at_a_time_in_order() {
        let (tx, rx) = mpsc::channel(4);
        let mut rx = EventRx {
            rx,
            pending: Vec::new().into_iter(),
            stats: Default::default(),
        };
        assert!(rx.caught_up());
        tx.send(vec![fork(1), fork(2)]).await.expect("send");
        tx.send(vec![fork(3)]).await.expect("send");
        assert!(!rx.caught_up());
        assert_eq!(rx.recv().await, Some(fork(1)));
        assert!(
            !rx.caught_up(),
            "one event of the first batch and a batch still wait"
        );
        assert_eq!(rx.recv().await, Some(fork(2)));
        assert!(!rx.caught_up(), "a batch still waits in the channel");
        assert_eq!(rx.recv().await, Some(fork(3)));
        assert!(rx.caught_up());
        drop(tx);
        assert_eq!(
            rx.recv().await,
            None,
            "the stream ends when the reader stops"
        );
    }
}
