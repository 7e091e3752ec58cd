//! Kernel programs of the agent.
//!
//! Owns: every BPF program and map. Programs are named `<signal>_<hook>` and
//! are thin wrappers over a `try_*` function. The `probe_*` programs do
//! nothing: `agent check` loads and attaches them to learn what this kernel
//! allows.
//! Must not: interpret events (userspace does), or hard-code kernel struct
//! offsets (they arrive as load-time globals computed from the running BTF).
#![no_std]
#![no_main]

mod exec;
mod fs;
mod lineage;
mod probes;
mod tcp;
mod tlslib;
mod wire;

use agent_common::{EVENTS_RING_BYTES, KERNEL_COUNTERS, KernelCounter, LOST_CAUSES, LostCause};
use aya_ebpf::{
    EbpfContext, Global,
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
pub(crate) static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_CAUSES, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_COUNTERS, 0);

/// Command names (`comm`, NUL padded): [`agent_common::TOOL_TRACK`] for those
/// whose processes start a tracked tree, [`agent_common::TOOL_ENV`] for
/// network clients whose environment is read without tracking.
#[map]
pub(crate) static TOOLS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(256, 0);

/// Processes in toolchain trees: set at exec of a tool, inherited at fork,
/// removed at exit; LRU so it can never fill up.
#[map]
pub(crate) static TRACKED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

#[unsafe(no_mangle)]
pub(crate) static TCP_QUIET_NS: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static TRACK_AGENT_CHILDREN: Global<u32> = Global::new(0);
/// `--all-execs`: every exec's environment is read, not only toolchain trees'.
#[unsafe(no_mangle)]
pub(crate) static ENV_ALL_EXECS: Global<u32> = Global::new(0);
/// `--uid`: only this real uid's execs are recorded.
#[unsafe(no_mangle)]
pub(crate) static FILTER_UID: Global<u32> = Global::new(agent_common::NO_UID_FILTER);

/// `--uid` is set and the current task's real uid is another: its execs,
/// forks and exits are not recorded. The uid is read only when a filter is
/// set.
#[inline(always)]
pub(crate) fn foreign_uid() -> bool {
    let want = FILTER_UID.load();
    want != agent_common::NO_UID_FILTER
        && aya_ebpf::helpers::bpf_get_current_uid_gid() as u32 != want
}

/// Count one event handled in the kernel.
#[inline(always)]
pub(crate) fn count(c: KernelCounter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub(crate) fn is_tracked(tgid: u32) -> bool {
    // SAFETY: read-only lookup.
    unsafe { TRACKED.get(&tgid) }.is_some()
}

#[unsafe(no_mangle)]
pub(crate) static AGENT_TGID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static TASK_REAL_PARENT_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static TASK_TGID_OFF: Global<u32> = Global::new(0);
/// `task_struct.pid` (with `tgid` right after it, one read serves both).
#[unsafe(no_mangle)]
pub(crate) static TASK_PID_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static TASK_EXIT_CODE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static TASK_MM_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static MM_START_STACK_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static FORK_CHILD_PID_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static EXIT_GROUP_DEAD_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static SOCK_ERR_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static SKC_NET_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static NET_INUM_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static RETRANS_SKADDR_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static RETRANS_STATE_OFF: Global<u32> = Global::new(0);

/// Count one loss of `cause` on this CPU.
#[inline(always)]
pub(crate) fn count_lost(cause: LostCause) {
    if let Some(slot) = LOST.get_ptr_mut(cause as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *slot += 1 };
    }
    // `--bpf-log warn` and up. Off by default: the level is a load-time
    // constant, so the verifier drops this branch unseen.
    aya_log_ebpf::warn!(&(), "event lost in the kernel: {}", cause.name());
}

/// A map insert's result, and whether it worked: a failure (a hash map
/// full, an LRU map without memory) is counted under `cause` (and logged
/// under `--bpf-log warn` with it).
#[inline(always)]
pub(crate) fn inserted<E>(r: Result<(), E>, cause: LostCause) -> bool {
    match r {
        Ok(()) => true,
        Err(_) => {
            count_lost(cause);
            false
        }
    }
}

/// Pending bytes in the ring buffer at which a writer wakes the reader.
/// Below it no wakeup is sent: userspace drains on a short timer instead,
/// which saves a wakeup (a self-IPI, ~20 µs inside the program on a VM) per
/// event.
const WAKEUP_BYTES: u64 = 64 * 1024;
/// Pending bytes past which every writer wakes the reader: it missed the
/// wakeup at [`WAKEUP_BYTES`] and the ring (8 MiB) is half full.
const URGENT_BYTES: u64 = (agent_common::EVENTS_RING_BYTES / 2) as u64;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Ring-buffer submit flags for a record of `len` bytes: wake the reader
/// once, for the record that takes what is pending past [`WAKEUP_BYTES`]
/// (an awake reader drains until the ring is empty; a wakeup per record
/// while it is busy would only cost each writer an IPI), and again for
/// every record while more than [`URGENT_BYTES`] wait.
#[inline(always)]
pub(crate) fn wake_flags(len: u64) -> u64 {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA);
    if (pending < WAKEUP_BYTES && pending + len >= WAKEUP_BYTES) || pending >= URGENT_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Write `data` to the events ring buffer, counting a loss when it is full.
#[inline(always)]
pub(crate) fn emit<T: ?Sized>(data: &T) {
    emit_flags(data, wake_flags(core::mem::size_of_val(data) as u64));
}

/// [`emit`] waking the reader at once: userspace acts on this record
/// before its program gets far (a toolchain's exec: its TLS probe goes on
/// before its first handshake).
#[inline(always)]
pub(crate) fn emit_now<T: ?Sized>(data: &T) {
    emit_flags(data, BPF_RB_FORCE_WAKEUP);
}

#[inline(always)]
fn emit_flags<T: ?Sized>(data: &T, flags: u64) {
    if EVENTS.output(data, flags).is_err() {
        count_lost(LostCause::RingFull);
    }
}

/// `real_parent->tgid` of `task`, 0 if unknown (offsets not provided or read failed).
#[inline(always)]
pub(crate) fn parent_tgid(task: *const u8) -> u32 {
    let parent_off = TASK_REAL_PARENT_OFF.load() as usize;
    let tgid_off = TASK_TGID_OFF.load() as usize;
    if parent_off == 0 || tgid_off == 0 || task.is_null() {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel validates the address; a fault returns Err.
    let parent: *const u8 =
        match unsafe { bpf_probe_read_kernel(task.add(parent_off) as *const *const u8) } {
            Ok(p) => p,
            Err(_) => return 0,
        };
    if parent.is_null() {
        return 0;
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel(parent.add(tgid_off) as *const u32) }.unwrap_or(0)
}

/// The field of type `T` at `off` in a tracepoint's record, loaded directly
/// from the context. aya's `read_at` goes through `bpf_probe_read_kernel`, a
/// helper call per field; a tracepoint program may simply load from its
/// record, at an offset the verifier sees as a constant.
///
/// # Safety
/// `off` must be a constant (after inlining) inside the record, aligned for `T`.
#[inline(always)]
pub(crate) unsafe fn tp_field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: guaranteed by the caller; the verifier checks the access.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(off) as *const T) }
}

/// The current task as a byte pointer.
#[inline(always)]
pub(crate) fn current_task() -> *const u8 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() as *const u8 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
