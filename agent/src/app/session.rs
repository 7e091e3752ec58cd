//! What live mode and `agent trace` share once the programs are loaded:
//! announcing what is attached, the TLS-library probes, the loss counters,
//! the privilege drop, the exporter, the shutdown signal.

use std::{sync::atomic::Ordering, time::Duration};

use serde_json::{Value, json};

use super::options::RunOptions;
use crate::{bpf::collector::Collector, bpf::hooks::Choice, pipeline::Output, sink::output};

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
            tracing::info!(
                traces = %cfg.traces.endpoint,
                metrics = %cfg.metrics.endpoint,
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

/// A program started: put the crypto/tls probe on a Go program's file (once
/// per file), the OpenSSL probes on the libssl files it may `dlopen`.
pub(super) fn probe_tls_libraries(c: &mut Collector, o: &Output, proc_root: &std::path::Path) {
    if let Output::Exec { exec, analysis } = o
        && exec.ok()
    {
        if analysis.identity.go_version.is_some() {
            c.probe_go(exec.tgid, &exec.exe, proc_root);
            // From the exec in the kernel to the probe in place (the first
            // run of a program races its first handshake against this).
            tracing::debug!(
                exe = %exec.exe,
                ms = crate::bpf::collector::boot_ns().saturating_sub(exec.ktime_ns) as f64 / 1e6,
                "Go program seen: exec to probe attached"
            );
        }
        let n = c.probe_libssl_near(exec, proc_root);
        if n > 0 {
            tracing::debug!(exe = %exec.exe, n, "libssl near a program's start probed");
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
        eprintln!("agent: watching {}; Ctrl-C to stop", active.join(", "));
    }
}

/// Loss counters as one JSON object (kernel causes + decode errors).
pub fn loss_json(c: &Collector) -> Value {
    let mut m = serde_json::Map::new();
    for (cause, n) in c.lost() {
        m.insert(cause.name().to_string(), json!(n));
    }
    m.insert(
        "decode_errors".into(),
        json!(c.stats.decode_errors.load(Ordering::Relaxed)),
    );
    json!({
        "type": "stats",
        "events_received": c.stats.received.load(Ordering::Relaxed),
        "tcp_established_counted_in_kernel": c.tcp_quiet(),
        "lost": m,
    })
}

pub(super) fn total_lost(c: &Collector) -> u64 {
    c.lost()
        .iter()
        .filter(|(cause, _)| *cause != agent_common::LostCause::ExecNoEnter)
        .map(|(_, n)| n)
        .sum::<u64>()
        + c.stats.decode_errors.load(Ordering::Relaxed)
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

/// Capabilities a mode needs beyond the runtime set: uprobes attached later
/// (Go programs and libssl copies seen after start-up) need CAP_SYS_ADMIN
/// for `perf_event_open` here (measured: EACCES with CAP_PERFMON alone).
/// Before the command starts, put the TLS-library probes on every Go
/// program and libssl it can reach (its PATH, GOROOT, the module cache's
/// toolchains, what its command line names): its first handshake is then
/// probed, not only later runs'.
pub(super) fn probe_reachable(
    c: &mut Collector,
    argv: &[String],
    inv: &crate::process::invoker::Invoker,
) {
    if uprobe_caps(c).is_empty() {
        return;
    }
    let t0 = std::time::Instant::now();
    let env: Vec<(String, String)> = inv
        .env
        .iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let reach =
        crate::signal::tls::libs::reachable(argv, &env, inv.cwd.as_deref(), inv.home.as_deref());
    for p in &reach.go {
        c.probe_go_file(p);
    }
    let mut libssl = 0;
    for exe in &reach.libssl_users {
        libssl += c.probe_libssl_for(exe, &env, std::path::Path::new("/"));
    }
    tracing::debug!(
        go = reach.go.len(),
        libssl,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "probed what the command can reach before it starts"
    );
}

/// Live mode, at start-up: the crypto/tls probe on every Go toolchain known
/// on the host (see [`crate::signal::tls::libs::host_go_dirs`]), so a `go` the agent
/// has not seen run yet is probed on its first run.
pub(super) fn probe_host_go(c: &mut Collector, proc_root: &std::path::Path) {
    if uprobe_caps(c).is_empty() {
        return;
    }
    let t0 = std::time::Instant::now();
    let mut n = 0;
    for d in crate::signal::tls::libs::host_go_dirs(proc_root) {
        let go = d.join("go");
        if go.is_file() && crate::signal::tls::libs::is_go_program(&go) {
            c.probe_go_file(&go);
            n += 1;
        }
    }
    tracing::debug!(
        go = n,
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "probed the host's Go toolchains"
    );
}

pub(super) fn uprobe_caps(c: &Collector) -> Vec<u32> {
    let uprobes = c
        .attached
        .iter()
        .any(|a| a.signal == "tls_uprobes" && matches!(a.choice, Choice::Active { .. }));
    if uprobes {
        vec![crate::app::privs::CAP_SYS_ADMIN]
    } else {
        Vec::new()
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
