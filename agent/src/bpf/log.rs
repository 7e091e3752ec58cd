//! Kernel-side diagnostics (`--bpf-log LEVEL`): why a program returned
//! early, which map insert failed, which event was lost, written by the
//! programs through aya-log and forwarded to the agent's own log.
//!
//! Off by default. The level is a load-time constant (`AYA_LOG_LEVEL`), so
//! with it off the verifier prunes every log call and the programs verify
//! to the same instruction counts as without aya-log (docs/architecture.md).

use std::os::fd::AsRawFd as _;

use tokio::io::unix::AsyncFd;

/// The `--bpf-log` levels, as aya-log numbers them (0: off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum BpfLogLevel {
    #[default]
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// The `tracing` target of forwarded records (`AGENT_LOG` can name it).
pub const TARGET: &str = "agent::bpf_log";

/// Hands aya-log records to `tracing`, marked as the kernel's.
pub struct BpfLog;

impl log::Log for BpfLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &log::Record<'_>) {
        match r.level() {
            log::Level::Error => tracing::error!(target: TARGET, "bpf: {}", r.args()),
            log::Level::Warn => tracing::warn!(target: TARGET, "bpf: {}", r.args()),
            log::Level::Info => tracing::info!(target: TARGET, "bpf: {}", r.args()),
            log::Level::Debug => tracing::debug!(target: TARGET, "bpf: {}", r.args()),
            log::Level::Trace => tracing::trace!(target: TARGET, "bpf: {}", r.args()),
        }
    }

    fn flush(&self) {}
}

pub type Logger = aya_log::EbpfLogger<BpfLog>;

/// Take the programs' log ring (`AYA_LOGS`) when logging is on.
pub fn take(ebpf: &mut aya::Ebpf, level: BpfLogLevel) -> Option<Logger> {
    if level == BpfLogLevel::Off {
        return None;
    }
    match aya_log::EbpfLogger::init_with_logger(ebpf, BpfLog) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("--bpf-log: the programs' log ring is not available: {e}");
            None
        }
    }
}

/// Forward the programs' records to the agent's log, on a task of its own,
/// as they come.
pub fn forward(logger: Logger) -> std::io::Result<()> {
    let fd = logger.as_raw_fd();
    // SAFETY: the logger owns its ring's map fd, which stays open and
    // unchanged for as long as the AsyncFd owns the logger.
    let mut afd =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = afd.readable_mut().await else {
                tracing::warn!(fd, "--bpf-log: polling the log ring failed; stopped");
                return;
            };
            // aya-log unwraps on a record it cannot parse; ours are written
            // by our own programs, but a panic must not go unnoticed.
            let inner = guard.get_inner_mut();
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.flush()));
            if ok.is_err() {
                tracing::warn!("--bpf-log: a kernel log record did not parse; stopped");
                return;
            }
            guard.clear_ready();
        }
    });
    Ok(())
}
