//! What live mode and `agent trace` share once the programs are loaded:
//! announcing what is attached, the TLS-library probes, the loss counters,
//! the privilege drop, the exporter, the shutdown signal.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::options::RunOptions;
use crate::{
    bpf::{Collector, CollectorOptions, hooks::Choice},
    events::{self, EventRx, Losses, Stats},
    pipeline::Output,
    signal::tls::probes::{TlsProbes, UprobeAt, UprobeAttacher},
    sink::output,
};

/// Shutdown must finish within 2 s even with the endpoint down.
pub(super) const OTLP_SHUTDOWN: Duration = Duration::from_millis(600);

/// Start the exporter (after privileges are dropped: its threads inherit them).
pub(super) fn start_otlp(
    opts: &RunOptions,
    offset: i128,
    root: Option<(u32, crate::sink::otlp::RootSpan)>,
) -> anyhow::Result<Option<crate::sink::otlp::Otlp>> {
    match &opts.otlp {
        None => Ok(None),
        Some(cfg) => {
            let o = crate::sink::otlp::Otlp::start(cfg, offset, root)
                .map_err(|e| anyhow::anyhow!("OTLP exporter: {e}"))?;
            let to = |e: crate::sink::otlp::Exporter, s: &crate::sink::otlp::config::Signal| match e
            {
                crate::sink::otlp::Exporter::Otlp => s.endpoint.clone(),
                other => other.name().to_string(),
            };
            tracing::info!(
                traces = %to(cfg.traces_exporter, &cfg.traces),
                metrics = %to(cfg.metrics_exporter, &cfg.metrics),
                protocol = cfg.traces.protocol.name(),
                "exporting OTLP"
            );
            Ok(Some(o))
        }
    }
}

pub(super) fn print_line(s: &str) {
    output::emit(s);
}

/// The TLS signal's uprobe requests, done on the loaded programs.
impl UprobeAttacher for Collector {
    fn tls_uprobes(&self) -> bool {
        Collector::tls_uprobes(self)
    }
    fn attach_uprobe(
        &mut self,
        group: u64,
        program: &str,
        at: UprobeAt<'_>,
        target: &std::path::Path,
    ) -> Result<(), String> {
        use aya::programs::uprobe::UProbeAttachLocation as L;
        let at = match at {
            UprobeAt::Symbol(s) => L::Symbol(s),
            UprobeAt::Offset(o) => L::AbsoluteOffset(o),
        };
        Collector::attach_uprobe(self, group, program, at, target).map_err(|e| e.to_string())
    }
    fn release_uprobes(&mut self, group: u64) {
        Collector::release_uprobes(self, group)
    }
}

/// The agent's instrumentation of the kernel: the loaded programs, the
/// TLS-library uprobes put on while it runs, and the reader's counters.
pub(super) struct Instrumentation {
    pub collector: Collector,
    pub tls: TlsProbes,
    pub stats: Arc<Stats>,
}

impl Instrumentation {
    /// Load and attach (the reader already running); see [`events::start`].
    pub fn start(
        opts: &CollectorOptions,
        proc_root: &std::path::Path,
    ) -> anyhow::Result<(Instrumentation, EventRx)> {
        let (collector, rx) = events::start(opts, 65_536, proc_root)?;
        let stats = rx.stats();
        Ok((
            Instrumentation {
                collector,
                tls: TlsProbes::default(),
                stats,
            },
            rx,
        ))
    }

    /// Every loss counter, now.
    pub fn losses(&self) -> Losses {
        Losses::read(&self.collector, &self.stats)
    }

    /// An event before the pipeline sees it: a Go program's probe goes on at
    /// once at its exec (tools, tracked trees) or its first ClientHello
    /// (any other process).
    pub fn before_analysis(
        &mut self,
        ev: &crate::events::Event,
        table: &crate::process::table::ProcTable,
        proc_root: &std::path::Path,
    ) {
        match ev {
            crate::events::Event::Exec(e) => {
                self.tls.on_exec_early(&mut self.collector, e, proc_root)
            }
            crate::events::Event::Wire(w)
                if w.kind == crate::events::WireKind::Tls && w.egress && !w.data.is_empty() =>
            {
                let exe = table
                    .get(w.tgid)
                    .and_then(|p| p.current())
                    .map(|e| e.exe.as_str());
                self.tls
                    .on_tls_client(&mut self.collector, w.tgid, exe, proc_root)
            }
            crate::events::Event::Exit(x) => self.tls.forget_client(x.tgid),
            _ => {}
        }
    }

    /// A program started: put the crypto/tls probe on a Go program's file
    /// (once per file), the OpenSSL probes on the libssl files it may `dlopen`.
    pub fn on_output(&mut self, o: &Output, proc_root: &std::path::Path) {
        if let Output::Exec { exec, analysis } = o {
            let go = analysis.identity.go_version.is_some();
            self.tls.on_exec(&mut self.collector, exec, go, proc_root);
        }
    }

    /// Release the TLS-library probes of files that are gone, and detach
    /// every released link on a blocking thread (each waits for the kernel).
    pub fn sweep_uprobes(&mut self) {
        let n = self.tls.sweep(&mut self.collector);
        let links = self.collector.take_released();
        if !links.is_empty() {
            tracing::debug!(
                files = n,
                links = links.len(),
                "releasing TLS-library probes"
            );
            tokio::task::spawn_blocking(move || crate::bpf::attach::detach_all(links));
        }
    }

    /// The TLS-library probes' counters, for the stats record.
    pub fn uprobe_stats(&self) -> Value {
        let mut v = json!(self.tls.stats());
        v["links"] = json!(self.collector.uprobe_links());
        v["pre_attach"] = json!(self.tls.pre_attach_stats());
        v
    }

    /// Capabilities the running agent needs beyond the runtime set: uprobes
    /// attached later (Go programs and libssl copies seen after start-up)
    /// as perf events need CAP_SYS_ADMIN (kernel/events/core.c,
    /// perf_uprobe_event_init, since the CVE-2025-38466 fix: EACCES with
    /// CAP_PERFMON alone, measured on 6.18); uprobe_multi links (6.6+),
    /// which the hook table prefers, need nothing more.
    pub fn uprobe_caps(&self) -> Vec<u32> {
        if self.collector.tls_uprobes() && !self.collector.tls_uprobe_multi() {
            vec![crate::app::privs::CAP_SYS_ADMIN]
        } else {
            Vec::new()
        }
    }
}

/// Log degraded/missing signals, and announce readiness on stderr (scripts wait for
/// the `agent: watching` line).
pub(super) fn report_attach(c: &Collector) {
    for a in &c.attached {
        match &a.choice {
            Choice::Active {
                degraded: true,
                hook,
                note,
            } => {
                tracing::warn!(signal = a.signal, hook = hook.name(), "degraded: {note}")
            }
            Choice::Unavailable { reason } => {
                tracing::warn!(signal = a.signal, "not collected: {reason}")
            }
            _ => {}
        }
    }
    for w in &c.warnings {
        tracing::warn!("{w}");
    }
    {
        let active: Vec<String> = c
            .attached
            .iter()
            .filter_map(|a| match &a.choice {
                Choice::Active { hook, .. } => Some(format!("{} ({})", a.signal, hook.name())),
                _ => None,
            })
            .collect();
        let off: Vec<&str> = c
            .attached
            .iter()
            .filter(|a| a.choice == Choice::Off)
            .map(|a| a.signal)
            .collect();
        let off = if off.is_empty() {
            String::new()
        } else {
            format!("; without {}", off.join(", "))
        };
        eprintln!("agent: watching {}{off}; Ctrl-C to stop", active.join(", "));
    }
}

/// Loss counters as one JSON object (kernel causes + decode errors).
/// The `stats` record: every loss, the wire signals' counters, the
/// TLS-library probes and the process table's bounds.
pub fn full_stats(l: &Losses, k: &Instrumentation, pipeline: &crate::pipeline::Pipeline) -> Value {
    let mut stats = loss_json(l);
    stats["wire"] = json!(pipeline.wire_stats());
    stats["uprobes"] = k.uprobe_stats();
    stats["process_table"] = pipeline.table_stats();
    stats["file_analysis"] = json!(crate::process::guard::stats());
    stats["agent_memory"] = own_memory();
    stats
}

/// The agent process's resident memory now and at its peak (VmRSS, VmHWM;
/// its file workers are processes of their own), so a user and a test read
/// what the agent cost without measuring from outside.
fn own_memory() -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    json!({"rss_kib": kib("VmRSS:"), "peak_rss_kib": kib("VmHWM:")})
}

pub fn loss_json(l: &Losses) -> Value {
    let mut m = serde_json::Map::new();
    for (cause, n) in &l.kernel {
        m.insert(cause.name().to_string(), json!(n));
    }
    m.insert("decode_errors".into(), json!(l.decode_errors));
    json!({
        "type": "stats",
        "events_received": l.received,
        "tcp_established_counted_in_kernel": l.tcp_quiet,
        "lost": m,
    })
}

pub(super) async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Give the heap's free pages back to the kernel. Start-up parses the BPF
/// object, the kernel's BTF and the host's libraries, then frees it all;
/// glibc keeps freed memory mapped (RSS) until asked. Measured idle RSS:
/// see docs/benchmarks.md. Called once attached and on the 5 s tick.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes an integer and only touches the allocator's
    // own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(super) fn drop_privileges(extra: &[u32]) {
    let keep = crate::app::privs::runtime_set(extra);
    match crate::app::privs::drop_to(keep) {
        Ok(()) => tracing::debug!("capabilities dropped to {keep:#x}"),
        Err(e) => tracing::warn!("could not drop capabilities after start-up: {e}"),
    }
    // Wake the workers now (each applies the drop when it runs a task or
    // parks) rather than at the next event or tick.
    for i in 0..8u64 {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1 + i)).await;
            crate::app::privs::on_thread_hook();
        });
    }
}
