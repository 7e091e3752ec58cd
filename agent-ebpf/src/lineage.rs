//! Process lineage: forks (children of tracked processes are tracked from
//! birth) and exits (with their status), the process table's other half.

use agent_common::{EventKind, ExitEvent, ForkEvent, LostCause};
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::{
    AGENT_TGID, EXIT_GROUP_DEAD_OFF, FORK_CHILD_PID_OFF, TASK_EXIT_CODE_OFF, TASK_PID_OFF,
    TASK_TGID_OFF, TRACK_AGENT_CHILDREN, TRACKED, current_task, emit, foreign_uid, inserted,
    is_tracked,
};

/// A raw tracepoint: the kernel's own arguments, without a trace record
/// built first (cheaper than the tracepoint) and without the kernel's BTF
/// parsed in the agent to find the hook (tp_btf: ~19 MiB of heap at
/// start-up). Kernels whose `sched_process_exit` lacks `group_dead` refuse
/// the attach (the program reads a second argument), and the tracepoint
/// below serves.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn exit_raw(ctx: RawTracePointContext) -> i32 {
    // args: (struct task_struct *p, bool group_dead)
    let task: *const u8 = ctx.arg(0);
    let group_dead: u64 = ctx.arg(1);
    emit_exit(task, group_dead & 0xff != 0);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn exit_tp(ctx: TracePointContext) -> u32 {
    let off = EXIT_GROUP_DEAD_OFF.load() as usize;
    let group_dead = if off == 0 {
        // Older kernels lack the field: report the group leader's exit.
        let id = bpf_get_current_pid_tgid();
        id as u32 == (id >> 32) as u32
    } else {
        // SAFETY: offset read from this kernel's tracepoint format at load time.
        unsafe { ctx.read_at::<u8>(off) }.unwrap_or(0) != 0
    };
    emit_exit(current_task(), group_dead);
    0
}

/// Preferred (a raw tracepoint, as `exit_raw`): the child's task is at
/// hand, so a thread clone (the Go runtime starts several per process, a
/// build thousands) is told from a new process and costs nothing further:
/// no event, no `TRACKED` entry that no lookup (by tgid) would ever find
/// and no exit (threads never report `group_dead`) would remove.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn fork_raw(ctx: RawTracePointContext) -> i32 {
    // args: (struct task_struct *parent, struct task_struct *child)
    let child: *const u8 = ctx.arg(1);
    let pid_off = TASK_PID_OFF.load() as usize;
    let tgid_off = TASK_TGID_OFF.load() as usize;
    if pid_off == 0 || tgid_off == 0 {
        // Not chosen without BTF (the option needs it), so never here.
        return 0;
    }
    let ids = if tgid_off == pid_off + 4 {
        // SAFETY: bpf_probe_read_kernel checks the address.
        unsafe { bpf_probe_read_kernel(child.add(pid_off) as *const [u32; 2]) }
    } else {
        // SAFETY: as above.
        unsafe {
            bpf_probe_read_kernel(child.add(pid_off) as *const u32).and_then(|p| {
                bpf_probe_read_kernel(child.add(tgid_off) as *const u32).map(|t| [p, t])
            })
        }
    };
    let Ok([pid, tgid]) = ids else {
        return 0;
    };
    if pid != tgid {
        return 0;
    }
    on_fork(&ctx, pid);
    0
}

/// Without BTF: every clone, threads included (the record does not say
/// which), so each thread reaches userspace as a process of its own.
#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn fork_tp(ctx: TracePointContext) -> u32 {
    let off = FORK_CHILD_PID_OFF.load() as usize;
    if off == 0 {
        return 0;
    }
    // SAFETY: offset read from this kernel's tracepoint format at load time.
    let child: u32 = unsafe { ctx.read_at(off) }.unwrap_or(0);
    on_fork(&ctx, child);
    0
}

#[inline(always)]
fn on_fork<C: EbpfContext>(ctx: &C, child: u32) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        // `agent trace`: the command the agent starts is tracked from birth,
        // before it can exec or touch a file.
        if TRACK_AGENT_CHILDREN.load() != 0 {
            inserted(
                TRACKED.insert(&child, &1, 0),
                LostCause::TrackedInsertFailed,
            );
            aya_log_ebpf::info!(
                ctx,
                "agent trace: its command is pid {}, tracked from its fork",
                child
            );
        }
        return;
    }
    if is_tracked(tgid) {
        inserted(
            TRACKED.insert(&child, &1, 0),
            LostCause::TrackedInsertFailed,
        );
    }
    if foreign_uid() {
        return;
    }
    let mut ev = ForkEvent::default();
    ev.hdr.kind = EventKind::Fork as u32;
    ev.hdr.pid = id as u32;
    ev.hdr.tgid = tgid;
    // SAFETY: helper without preconditions.
    ev.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.child_pid = child;
    emit(&ev);
}

#[inline(always)]
fn emit_exit(task: *const u8, group_dead: bool) {
    if !group_dead {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        return;
    }
    let off = TASK_EXIT_CODE_OFF.load() as usize;
    let exit_code = if off == 0 {
        0
    } else {
        // SAFETY: bpf_probe_read_kernel checks the address.
        unsafe { bpf_probe_read_kernel(task.add(off) as *const u32) }.unwrap_or(0)
    };
    // A delete takes the bucket's lock even for an absent key; the lookup
    // is lock-free, and most exiting processes were never tracked.
    if is_tracked(tgid) {
        let _ = TRACKED.remove(&tgid);
    }
    if foreign_uid() {
        return;
    }
    let mut ev = ExitEvent::default();
    ev.hdr.kind = EventKind::Exit as u32;
    ev.hdr.pid = id as u32;
    ev.hdr.tgid = tgid;
    // The parent is not read (two kernel reads per exit): userspace knows
    // it from the fork or the exec, and nothing it reports at exit uses it.
    ev.hdr.ppid = 0;
    // SAFETY: helper without preconditions.
    ev.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.exit_code = exit_code;
    emit(&ev);
}
