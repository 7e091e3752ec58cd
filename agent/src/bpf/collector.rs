//! The kernel → user stage: loads and attaches the programs, drains the ring
//! buffer into decoded events on a bounded channel, and keeps the counters
//! that make losses visible (kernel-side drops by cause, decode errors).
//!
//! Owns: the `Ebpf` instance for the agent's lifetime and the reader task.
//! Must not: interpret events.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use agent_common::LostCause;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    bpf::hooks::Choice,
    bpf::loader::{self, Attached, Globals, KernelInfo, LoadError},
    events::{self, Event},
};

/// Environment variables that may leave the kernel by default.
pub const DEFAULT_ENV_ALLOW: &[&str] = &[
    "PATH",
    "GOROOT",
    "GOPATH",
    "GOBIN",
    "GOTOOLCHAIN",
    "GOFLAGS",
    "GOPROXY",
    "GOSUMDB",
    "GONOSUMDB",
    "GONOPROXY",
    "GOPRIVATE",
    "GOWORK",
    "GO111MODULE",
    "GOMODCACHE",
    "GOCACHE",
    "CGO_ENABLED",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "CONDA_SHLVL",
    "CONDA_EXE",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONHOME",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PYENV_VERSION",
    "PYENV_ROOT",
    "GOENV_VERSION",
    "RBENV_VERSION",
    "NODENV_VERSION",
    "LD_LIBRARY_PATH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "Http_Proxy",
    "Https_Proxy",
    "No_Proxy",
    "ALL_PROXY",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HOME",
    // W3C trace context (OpenTelemetry's environment carrier): a span's
    // parent when the process runs inside an instrumented CI job.
    "TRACEPARENT",
    "TRACESTATE",
];

/// What the collector loads and how.
#[derive(Clone, Debug)]
pub struct CollectorOptions {
    /// Environment variable names that may leave the kernel.
    pub env_allow: Vec<String>,
    /// Command names whose process trees the kernel tracks.
    pub tools: Vec<String>,
    /// Established connections from untracked processes faster than this
    /// (without retransmits) are only counted in the kernel; 0 sends all.
    pub tcp_quiet_ns: u64,
    /// Track the processes the agent itself starts (`agent trace`).
    pub track_own_children: bool,
    /// Read every exec's environment (`--all-execs`), not only those of
    /// toolchain trees and [`ENV_CLIENTS`].
    pub env_all_execs: bool,
}

/// Programs a build runs by the hundred, which make no TLS handshake: their
/// execs do not wake the reader and skip the environment, which is their
/// parent's ([`crate::process::table::ProcTable::env_of`] looks there; see
/// [`agent_common::TOOL_QUIET`]).
pub const QUIET_TOOLS: &[&str] = &[
    // Go's own tools ($GOROOT/pkg/tool/<os_arch>/).
    "compile", "asm", "link", "cgo", "vet", "buildid", "pack", "cover",
    // cgo's C toolchain.
    "gcc", "cc", "cc1", "cc1plus", "as", "ld", "collect2", "ar", "clang",
];

/// Network clients outside toolchain trees whose environment the kernel
/// still reads: their connection and TLS findings cite proxies, CA files
/// and index URLs from it. Every other untracked exec skips the
/// environment (most of an exec's BPF time).
pub const ENV_CLIENTS: &[&str] = &[
    "curl",
    "wget",
    "git",
    "git-remote-http",
    "git-remote-https",
    "openssl",
    "node",
    "npm",
    "npx",
    "cargo",
    "rustup",
    "apt",
    "apt-get",
    "ssh",
];

impl CollectorOptions {
    /// Defaults: built-in allow-list, default tools, 100 ms quiet threshold.
    pub fn defaults() -> Self {
        Self {
            env_allow: DEFAULT_ENV_ALLOW.iter().map(|s| s.to_string()).collect(),
            tools: crate::signal::exec::AnalysisConfig::default().tools,
            tcp_quiet_ns: DEFAULT_TCP_QUIET_NS,
            track_own_children: false,
            env_all_execs: false,
        }
    }
}

/// Below this set-up time a routine connection is not worth an event.
pub const DEFAULT_TCP_QUIET_NS: u64 = 100_000_000;

/// Counters shared between the reader and whoever reports them.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Unix seconds of the reader's last pass over the ring buffer.
    pub reader_beat: AtomicU64,
}

/// A running collector.
pub struct Collector {
    links: Vec<loader::OwnedLink>,
    tracked: aya::maps::HashMap<MapData, u32, u8>,
    ebpf: Ebpf,
    /// The TLS-library uprobes are loaded (attached per target as found).
    tls_uprobes: bool,
    tls_targets: crate::signal::tls::libs::Targets,
    lost: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    pub attached: Vec<Attached>,
    pub warnings: Vec<String>,
    pub stats: Arc<Stats>,
    /// boot-time ns → Unix ns.
    pub clock_offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec for the duration of the call.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Boot-time clock now, ns: the clock of every kernel event (`bpf_ktime_get_boot_ns`).
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

/// `CLOCK_REALTIME - CLOCK_BOOTTIME`, to turn `bpf_ktime_get_boot_ns` into wall time.
pub fn boot_to_unix_offset() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME)
}

impl Drop for Collector {
    fn drop(&mut self) {
        loader::detach_all(std::mem::take(&mut self.links));
    }
}

impl Collector {
    /// Load, start reading, attach. Events arrive on the returned stream,
    /// which holds at most `channel` events between reader and consumer.
    pub fn start(
        opts: &CollectorOptions,
        channel: usize,
    ) -> Result<(Collector, EventRx), LoadError> {
        let env_allow = &opts.env_allow;
        let kernel = KernelInfo::gather(true);
        let mut globals = Globals::compute(&kernel);
        globals.tcp_quiet_ns = opts.tcp_quiet_ns;
        globals.track_agent_children = u32::from(opts.track_own_children);
        globals.env_all_execs = u32::from(opts.env_all_execs);
        let mut warnings = globals.warnings.clone();
        if let Some(e) = &kernel.tracefs_error {
            warnings.push(e.clone());
        }
        let mut ebpf = loader::open(&globals)?;
        let skipped = loader::set_env_allow(&mut ebpf, env_allow)?;
        loader::set_tools(&mut ebpf, &opts.tools, ENV_CLIENTS, QUIET_TOOLS)?;
        for s in skipped {
            warnings.push(format!(
                "environment variable name {s:?} is longer than {} bytes: not captured",
                agent_common::ENV_KEY_LEN
            ));
        }
        let ring = loader::take_events(&mut ebpf)?;
        let lost = loader::take_lost(&mut ebpf)?;
        let counters = loader::take_counters(&mut ebpf)?;
        let tracked = loader::take_tracked(&mut ebpf)?;
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel((channel / MAX_BATCH).max(2));
        let rx = EventRx {
            rx,
            pending: Vec::new().into_iter(),
        };
        // The reader runs before anything is attached, so nothing waits unread.
        spawn_reader(ring, tx, stats.clone())?;

        let likely = loader::likely_tracepoints(&kernel);
        let probes = loader::probe_all_preloading(&mut ebpf, &kernel, &likely);
        if probes.iter().all(|(_, r)| r.is_err()) {
            let first = probes
                .iter()
                .find_map(|(_, r)| r.as_ref().err().cloned())
                .unwrap_or_default();
            if first.contains("Operation not permitted") || first.contains("os error 1") {
                return Err(LoadError::NotPermitted(first));
            }
        }
        let av = loader::available(&kernel, &probes);
        let mut links = Vec::new();
        let attached = loader::attach_signals(&mut ebpf, &kernel, &av, &mut links);
        let active = attached
            .iter()
            .filter(|a| matches!(a.choice, Choice::Active { .. }))
            .count();
        if active == 0 {
            let reasons: Vec<String> = attached
                .iter()
                .filter_map(|a| match &a.choice {
                    Choice::Unavailable { reason } => Some(format!("{}: {reason}", a.signal)),
                    _ => None,
                })
                .collect();
            return Err(LoadError::NothingAttached(reasons.join("; ")));
        }
        Ok((
            Collector {
                links,
                tracked,
                tls_uprobes: attached.iter().any(|a| {
                    a.signal == "tls_uprobes" && matches!(a.choice, Choice::Active { .. })
                }),
                tls_targets: Default::default(),
                ebpf,
                lost,
                counters,
                attached,
                warnings,
                stats,
                clock_offset_ns: boot_to_unix_offset(),
            },
            rx,
        ))
    }

    /// Track `tgid` (and, through fork, its future children) in the kernel,
    /// as if it were a tool: `agent trace` does this for the command it runs.
    pub fn track(&mut self, tgid: u32) {
        if let Err(e) = self.tracked.insert(&tgid, &1, 0) {
            tracing::warn!(tgid, error = %e, "could not track the traced command in the kernel");
        }
    }

    /// Attach a TLS-library uprobe to `target` unless that file (by device
    /// and inode) has it already. Ok(true) when newly attached.
    pub fn probe_tls_lib(
        &mut self,
        program: &str,
        symbol: &str,
        target: &std::path::Path,
    ) -> Result<bool, String> {
        if !self.tls_uprobes || !self.tls_targets.first(target) {
            return Ok(false);
        }
        loader::attach_uprobe(&mut self.ebpf, program, symbol, target, &mut self.links)?;
        Ok(true)
    }

    /// Attach the OpenSSL probes to every libssl known to the loader or mapped
    /// by a process now; returns how many files were new.
    pub fn probe_libssl(&mut self, proc_root: &std::path::Path) -> usize {
        if !self.tls_uprobes {
            return 0;
        }
        self.probe_libssl_files(crate::signal::tls::libs::libssl_candidates(proc_root))
    }

    /// A program started: attach the OpenSSL probes to the libssl files in
    /// the directories its loader will search besides the system's (looked
    /// at once per 30 s per directory), before it loads one with `dlopen`.
    /// Through the process's own root while it lives (a container's files).
    pub fn probe_libssl_near(
        &mut self,
        exec: &crate::events::Exec,
        proc_root: &std::path::Path,
    ) -> usize {
        if !self.tls_uprobes || !exec.ok() {
            return 0;
        }
        let root = proc_root.join(exec.tgid.to_string()).join("root");
        self.probe_libssl_for(&exec.exe, &exec.env, &root)
    }

    /// The OpenSSL probes on the libssl files in the directories `exe`'s
    /// loader will search besides the system's, seen through `root` (the
    /// host's files when `root` is gone).
    pub fn probe_libssl_for(
        &mut self,
        exe: &str,
        env: &[(String, String)],
        root: &std::path::Path,
    ) -> usize {
        if !self.tls_uprobes {
            return 0;
        }
        let now = std::time::Instant::now();
        let mut files = Vec::new();
        for dir in crate::signal::tls::libs::library_dirs(exe, env) {
            if !self.tls_targets.dir_due(&dir, now) {
                continue;
            }
            let in_root = root.join(dir.trim_start_matches('/'));
            let found = crate::signal::tls::libs::libssl_in_dir(&in_root);
            files.extend(if found.is_empty() && !root.exists() {
                crate::signal::tls::libs::libssl_in_dir(std::path::Path::new(&dir))
            } else {
                found
            });
        }
        self.probe_libssl_files(files)
    }

    fn probe_libssl_files(&mut self, files: Vec<std::path::PathBuf>) -> usize {
        let mut n = 0;
        for p in files {
            if !self.tls_targets.first(&p) {
                continue;
            }
            n += 1;
            for (program, symbol) in crate::signal::tls::libs::OSSL_PROBES {
                match loader::attach_uprobe(&mut self.ebpf, program, symbol, &p, &mut self.links) {
                    Ok(()) => {
                        tracing::debug!(path = %p.display(), symbol, "OpenSSL probe attached")
                    }
                    Err(e) => {
                        tracing::debug!(path = %p.display(), symbol, error = %e, "OpenSSL probe not attached")
                    }
                }
            }
        }
        n
    }

    /// Attach the Go crypto/tls probe to the program `pid` runs (`exe` when
    /// the process is gone). Binaries without a symbol table are skipped.
    pub fn probe_go(&mut self, pid: u32, exe: &str, proc_root: &std::path::Path) {
        // The file by a path that outlives the process (short-lived programs
        // are often gone by now): the host path, else the process's own view
        // (a container's file, while the process lives).
        let host = std::path::PathBuf::from(exe);
        let target = if !exe.is_empty() && host.is_file() {
            host
        } else {
            proc_root.join(pid.to_string()).join("exe")
        };
        self.probe_go_file(&target);
    }

    /// Attach the Go crypto/tls probe to the Go program at `target` (once
    /// per file): by symbol, else at the offset Go's function table gives.
    pub fn probe_go_file(&mut self, target: &std::path::Path) {
        let exe = target.display().to_string();
        let exe = exe.as_str();
        let target = target.to_path_buf();
        match self.probe_tls_lib(
            crate::signal::tls::libs::GO_PROGRAM,
            crate::signal::tls::libs::GO_SYMBOL,
            &target,
        ) {
            Ok(true) => tracing::debug!(exe, "Go crypto/tls probe attached"),
            Ok(false) => {}
            Err(e) => {
                // No symbol table (`-ldflags=-s`): the function table Go keeps
                // for its own stack traces still says where the function is.
                // Headers and .gopclntab only, never the whole binary.
                let offset = crate::process::fsview::open_regular(&target)
                    .and_then(|(f, size)| {
                        crate::buildinfo::read_image(&f, size, crate::buildinfo::PCLNTAB_SECTIONS)
                    })
                    .and_then(|b| {
                        crate::buildinfo::go_func_offset(&b, crate::signal::tls::libs::GO_SYMBOL)
                    });
                let r = match offset {
                    Some(off) => loader::attach_uprobe_at(
                        &mut self.ebpf,
                        crate::signal::tls::libs::GO_PROGRAM,
                        aya::programs::uprobe::UProbeAttachLocation::AbsoluteOffset(off),
                        &target,
                        &mut self.links,
                    ),
                    None => Err(e),
                };
                match r {
                    Ok(()) => {
                        tracing::debug!(exe, ?offset, "Go crypto/tls probe attached (pclntab)")
                    }
                    Err(e) => {
                        // Not a TLS program, or the file vanished: try again at its next run.
                        self.tls_targets.forget(&target);
                        tracing::debug!(exe, error = %e, "Go crypto/tls probe not attached")
                    }
                }
            }
        }
    }

    /// Established connections counted in the kernel instead of sent (cumulative).
    pub fn tcp_quiet(&self) -> u64 {
        let i = agent_common::KernelCounter::TcpQuietEstablished as u32;
        self.counters
            .get(&i, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Kernel-side losses by cause (cumulative).
    pub fn lost(&self) -> Vec<(LostCause, u64)> {
        LostCause::ALL
            .iter()
            .copied()
            .zip(loader::read_lost(&self.lost))
            .collect()
    }
}

/// Longest an event waits in the ring buffer before userspace reads it.
pub const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(50);
const MAX_BATCH: usize = 4096;

/// The collector's event stream. The reader hands over whole batches (one
/// wakeup of the consumer per drain of the ring, not one per event); this
/// gives them out one event at a time.
pub struct EventRx {
    rx: mpsc::Receiver<Vec<Event>>,
    pending: std::vec::IntoIter<Event>,
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

    /// True when every event received so far has been handed out: a good
    /// moment to write what was rendered from them.
    pub fn caught_up(&self) -> bool {
        self.pending.len() == 0 && self.rx.is_empty()
    }
}

/// Read up to MAX_BATCH records; true when more may remain.
fn drain(ring: &mut RingBuf<MapData>, batch: &mut Vec<Event>, stats: &Stats) -> bool {
    while let Some(item) = ring.next() {
        stats.received.fetch_add(1, Ordering::Relaxed);
        match events::decode(&item) {
            Ok(ev) => batch.push(ev),
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

fn spawn_reader(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<Event>>,
    stats: Arc<Stats>,
) -> Result<(), LoadError> {
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for as long as
    // the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| LoadError::Map {
            name: "EVENTS",
            msg: format!("registering with the runtime: {e}"),
        })?;
    tokio::spawn(async move {
        loop {
            // The kernel side wakes us when 64 KiB become pending (and for a
            // tool's exec); a short timer drains the rest, so an event waits
            // at most DRAIN_TICK. Awake, we drain until the ring is empty.
            let mut batch = Vec::new();
            stats
                .reader_beat
                .store(crate::sink::health::unix_secs(), Ordering::Relaxed);
            let timed_out = match tokio::time::timeout(DRAIN_TICK, fd.readable_mut()).await {
                Ok(Ok(mut guard)) => {
                    if !drain(guard.get_inner_mut(), &mut batch, &stats) {
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
                drain(fd.get_mut(), &mut batch, &stats);
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
