//! Least privilege after start-up: once the programs are attached (and, in
//! `agent trace`, the command started as its user), every capability but
//! those the running agent still uses is dropped, from the effective,
//! permitted, inheritable, ambient and bounding sets, and `no_new_privs` is
//! set, so that the code parsing hostile ELF, TLS and DNS bytes runs with
//! what it needs and no more.
//!
//! Capabilities are per thread: the thread that decides applies the drop at
//! once, and every runtime worker applies it the next time it parks or
//! unparks (hooks installed by the binary); threads created later inherit it.
//!
//! Owns: the kept set and the syscalls. Must not: decide when (the modes do).

use std::sync::atomic::{AtomicU64, Ordering};

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_KILL: u32 = 5;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The set to keep (0 = no drop pending).
static KEEP: AtomicU64 = AtomicU64::new(0);
/// Drops requested so far; each thread remembers the last it applied.
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static APPLIED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[derive(Debug, thiserror::Error)]
pub enum PrivsError {
    #[error("capset: {0}")]
    Capset(std::io::Error),
    #[error("prctl({what}): {source}")]
    Prctl {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What the running agent still needs: loading nothing, attaching uprobes
/// later (BPF, PERFMON), reading other users' binaries and processes'
/// `/proc/<pid>/root` (DAC_READ_SEARCH, SYS_PTRACE); SYS_RESOURCE on kernels
/// before 5.11 (memlock); SYS_ADMIN where there is no CAP_BPF (before 5.8).
/// `extra`: what a mode needs besides (KILL, to signal a traced command's
/// group owned by its user; SYS_ADMIN while uprobes may still be attached:
/// `perf_event_open` of a uprobe failed with EACCES with PERFMON alone on
/// kernel 6.18).
pub fn runtime_set(extra: &[u32]) -> u64 {
    let mut keep = [CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_PERFMON, CAP_BPF]
        .iter()
        .chain(extra)
        .fold(0u64, |m, c| m | (1 << c));
    if cap_last_cap() < CAP_BPF {
        keep |= 1 << CAP_SYS_ADMIN;
    }
    if kernel_before(5, 11) {
        keep |= 1 << CAP_SYS_RESOURCE;
    }
    keep
}

/// The highest capability this kernel knows.
fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn kernel_before(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = rel
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) < (major, minor)
}

/// The calling thread's permitted set.
fn capget() -> Result<u64, PrivsError> {
    rustix::thread::capabilities(None)
        .map(|s| s.permitted.bits())
        .map_err(|e| PrivsError::Capset(e.into()))
}

/// Apply `keep` to the calling thread.
fn apply(keep: u64) -> Result<(), PrivsError> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    let prctl = |what: &'static str| {
        move |e: rustix::io::Errno| PrivsError::Prctl {
            what,
            source: e.into(),
        }
    };
    let permitted = capget()?;
    let keep = keep & permitted;
    // The bounding set first: dropping from it needs CAP_SETPCAP, still ours.
    for c in 0..=cap_last_cap().min(63) {
        if keep & (1 << c) == 0 {
            // EINVAL for a cap the kernel lacks: nothing to drop.
            let _ = rustix::thread::remove_capability_from_bounding_set(
                CapabilitySet::from_bits_retain(1 << c),
            );
        }
    }
    let _ = rustix::thread::clear_ambient_capability_set();
    rustix::thread::set_no_new_privs(true).map_err(prctl("PR_SET_NO_NEW_PRIVS"))?;
    let keep = CapabilitySet::from_bits_retain(keep);
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: keep,
            permitted: keep,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(|e| PrivsError::Capset(e.into()))
}

/// Drop to `keep` now on this thread, and on every runtime worker when it
/// next parks or unparks.
pub fn drop_to(keep: u64) -> Result<(), PrivsError> {
    if !rustix::process::geteuid().is_root() && capget().unwrap_or(0) == 0 {
        return Ok(());
    }
    KEEP.store(keep, Ordering::SeqCst);
    let g = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    apply(keep)?;
    APPLIED.with(|a| a.set(g));
    Ok(())
}

/// Runtime hook (`on_thread_park` / `on_thread_unpark`): apply a pending drop.
pub fn on_thread_hook() {
    let g = GENERATION.load(Ordering::SeqCst);
    if g == 0 || APPLIED.with(|a| a.get()) == g {
        return;
    }
    match apply(KEEP.load(Ordering::SeqCst)) {
        Ok(()) => APPLIED.with(|a| a.set(g)),
        Err(e) => {
            // Tried once per thread and generation; said once.
            APPLIED.with(|a| a.set(g));
            tracing::warn!("dropping capabilities on a worker thread failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_set_keeps_what_the_agent_uses() {
        let s = runtime_set(&[CAP_KILL]);
        for c in [
            CAP_BPF,
            CAP_PERFMON,
            CAP_SYS_PTRACE,
            CAP_DAC_READ_SEARCH,
            CAP_KILL,
        ] {
            assert_ne!(s & (1 << c), 0, "cap {c}");
        }
        for c in [0u32, 1, 6, 7, 12] {
            assert_eq!(s & (1 << c), 0, "cap {c} must go");
        }
    }
}
