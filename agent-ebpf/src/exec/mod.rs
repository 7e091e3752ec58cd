//! Exec and exit tracing.
//!
//! `sys_enter_execve(at)` keeps only the caller's pointers, name and the start
//! time ([`ExecStart`], keyed by thread id). A successful exec is completed at
//! `sched_process_exec`, where the kernel has just laid the new program's argv
//! and environment out contiguously on its stack (`mm->arg_start..env_end`):
//! argv is one read, the environment strings one more, and the allow-list
//! filter then runs on that copy without a helper call per variable. A failed
//! exec is completed at `sys_exit_execve(at)`, while the caller's pointers are
//! still valid, by reading them one by one. Either way the event leaves
//! through the ring buffer with only the used bytes.
//!
//! Without the `task_struct`/`mm_struct` offsets (no BTF) the whole event is
//! built at `sys_enter` instead ([`EXEC_INFLIGHT_FULL`]), as slow as it sounds.

use core::ffi::c_void;

use agent_common::{
    ARG_LEN, ARGV_MAX, ARGV0_LEN, DATA_LEN, ENV_BLOCK, ENV_KEY_LEN, ENV_PREFIX_WORDS,
    EXEC_F_ARGV_FAULT, EXEC_F_ARGV_TRUNCATED, EXEC_F_ENV_FAULT, EXEC_F_ENV_SKIPPED,
    EXEC_F_ENV_TRUNCATED, EXEC_F_EXECVEAT, EXEC_F_FILENAME_IS_EXE, EXEC_F_FILENAME_TRUNCATED,
    EXEC_F_NO_ENTER, EXEC_SLOTS, EnvKey, EventKind, ExecEvent, ExecFixed, ExecStart, FILENAME_LEN,
    LostCause, MAX_ARGS, MAX_ENV_SCAN, TOOL_QUIET, TOOL_TRACK,
};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TracePointContext,
};

use crate::{
    AGENT_TGID, ENV_ALL_EXECS, MM_START_STACK_OFF, TASK_MM_OFF, TOOLS, TRACKED, count_lost,
    current_task, emit, emit_now, foreign_uid, inserted, is_tracked, parent_tgid, tp_field,
};

mod args;
mod decide;
mod env;
mod strings;
mod tail;

use args::read_argv;
use decide::{D_ENV, D_TRACK, D_WAKE, decide, park};
use env::{read_env, read_new_env};
use strings::{add_flags, bounded, copy_user_str, keep_string};
use tail::{JOB_FAILED, JOB_FULL, env_then};

/// Exec attempts between `sys_enter` and completion, in slot `tid %
/// EXEC_SLOTS` and owned by `tid` (0: free). An array rather than a hash
/// map: its lookups are inlined by the verifier, with no helper call and no
/// lock, which is most of what `sys_enter` costs. Two threads whose ids share
/// a slot and exec at the same moment: the first one's completion finds the
/// slot taken and is reported without its start (`EXEC_F_NO_ENTER`, counted).
/// An exec that fails after the point of no return leaves its slot to be
/// overwritten.
#[map]
pub(super) static EXEC_START: Array<ExecStart> = Array::with_max_entries(EXEC_SLOTS, 0);

/// Fallback without the mm offsets: whole events built at `sys_enter`. The
/// loader shrinks it to one entry when it is not used.
#[map]
pub(super) static EXEC_INFLIGHT_FULL: HashMap<u32, ExecEvent> = HashMap::with_max_entries(4096, 0);

/// Scratch space to build an event larger than the BPF stack.
#[map]
pub(super) static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

pub(super) const DATA_MASK: usize = DATA_LEN - 1;

const _: () = assert!(DATA_LEN.is_power_of_two());

// Offsets in the syscalls:sys_enter_execve(at) tracepoint formats (stable ABI).
pub(super) const EXECVE_FILENAME: usize = 16;

pub(super) const EXECVE_ARGV: usize = 24;

pub(super) const EXECVE_ENVP: usize = 32;

pub(super) const EXECVEAT_FILENAME: usize = 24;

pub(super) const EXECVEAT_ARGV: usize = 32;

pub(super) const EXECVEAT_ENVP: usize = 40;

pub(super) const SYS_EXIT_RET: usize = 16;

// sched:sched_process_exec
pub(super) const SCHED_EXEC_FILENAME_LOC: usize = 8;

pub(super) const SCHED_EXEC_OLD_PID: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn exec_enter_tp(ctx: TracePointContext) -> u32 {
    let _ = try_exec_enter(&ctx, EXECVE_FILENAME, EXECVE_ARGV, EXECVE_ENVP, 0);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn execat_enter_tp(ctx: TracePointContext) -> u32 {
    let _ = try_exec_enter(
        &ctx,
        EXECVEAT_FILENAME,
        EXECVEAT_ARGV,
        EXECVEAT_ENVP,
        EXEC_F_EXECVEAT,
    );
    0
}

/// Attached to `sys_exit_execve` and `sys_exit_execveat` (same record layout).
#[tracepoint(category = "syscalls", name = "sys_exit_execve")]
pub fn exec_exit_tp(ctx: TracePointContext) -> u32 {
    let _ = try_exec_exit(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn exec_sched_tp(ctx: TracePointContext) -> u32 {
    let _ = try_exec_sched(&ctx);
    0
}

/// An exec the agent does not record: its own, or (`--uid`) another real
/// uid's. The uid is only read when a filter is set; the same answer at
/// `sys_enter`, `sys_exit` and `sched_process_exec`, since exec keeps the
/// real uid (a set-uid program changes the effective one).
#[inline(always)]
pub(super) fn unrecorded(tgid: u32) -> bool {
    tgid == AGENT_TGID.load() || foreign_uid()
}

/// Whether the new program's argv/env can be read at `sched_process_exec`.
#[inline(always)]
pub(super) fn mm_layout_known() -> bool {
    TASK_MM_OFF.load() != 0 && MM_START_STACK_OFF.load() != 0
}

#[inline(always)]
pub(super) fn try_exec_enter(
    ctx: &TracePointContext,
    filename_off: usize,
    argv_off: usize,
    envp_off: usize,
    flags: u32,
) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    if unrecorded(tgid) {
        return Ok(());
    }
    // SAFETY: offsets from the tracepoint's stable format.
    let filename: u64 = unsafe { tp_field(ctx, filename_off) };
    // SAFETY: as above.
    let argv: u64 = unsafe { tp_field(ctx, argv_off) };
    // SAFETY: as above.
    let envp: u64 = unsafe { tp_field(ctx, envp_off) };
    if !mm_layout_known() {
        let mut start = ExecStart::empty(flags);
        // SAFETY: helper without preconditions.
        start.enter_ns = unsafe { bpf_ktime_get_boot_ns() };
        start.filename = filename;
        start.argv = argv;
        start.envp = envp;
        start.comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
        return enter_full(ctx, &start, tid, tgid);
    }
    let Some(s) = EXEC_START.get_ptr_mut(tid & (EXEC_SLOTS - 1)) else {
        // Unreachable: the index is masked to the array's size.
        count_lost(LostCause::Scratch);
        return Ok(());
    };
    // SAFETY: a slot of the array, valid for this program's run. Its owner is
    // written last, and cleared first, so a reader never takes a half-written
    // record as ours (see EXEC_START for the one race left).
    unsafe {
        core::ptr::write_volatile(&raw mut (*s).tid, 0);
        (*s).enter_ns = bpf_ktime_get_boot_ns();
        (*s).filename = filename;
        (*s).argv = argv;
        (*s).envp = envp;
        (*s).flags = flags;
        (*s).comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
        // argv[0]: a `#!` script's new argv replaces it with the interpreter.
        let a0 = bpf_probe_read_user(argv as *const u64).unwrap_or_default();
        let n = if a0 == 0 {
            -1
        } else {
            generated::bpf_probe_read_user_str(
                (*s).argv0.as_mut_ptr() as *mut c_void,
                ARGV0_LEN as u32,
                a0 as *const c_void,
            )
        };
        if n < 0 {
            (*s).argv0[0] = 0;
        }
        core::ptr::write_volatile(&raw mut (*s).tid, tid);
    }
    Ok(())
}

/// The start record of `tid`, if its slot still holds it; frees the slot.
#[inline(always)]
pub(super) fn take_start(tid: u32) -> Option<ExecStart> {
    let s = EXEC_START.get_ptr_mut(tid & (EXEC_SLOTS - 1))?;
    // SAFETY: a slot of the array, valid for this program's run.
    unsafe {
        if core::ptr::read_volatile(&raw const (*s).tid) != tid {
            return None;
        }
        let copy = *s;
        core::ptr::write_volatile(&raw mut (*s).tid, 0);
        Some(copy)
    }
}

/// Fill the fixed part of `ev` except `exe`, `ret`, `ppid` and the data lengths.
#[inline(always)]
pub(super) fn begin_event(ev: &mut ExecEvent, tid: u32, tgid: u32, start: &ExecStart) {
    let f = &mut ev.fixed;
    f.hdr.kind = EventKind::Exec as u32;
    f.hdr.pid = tid;
    f.hdr.tgid = tgid;
    f.hdr.ppid = 0;
    f.enter_ns = start.enter_ns;
    f.hdr.ktime_ns = start.enter_ns;
    // SAFETY: helper without preconditions.
    f.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let ugid = bpf_get_current_uid_gid();
    f.uid = ugid as u32;
    f.gid = (ugid >> 32) as u32;
    f.ret = 0;
    f.flags = start.flags;
    f.argc = 0;
    f.argv_len = 0;
    f.envc = 0;
    f.env_len = 0;
    f.filename[0] = 0;
    f.exe[0] = 0;
    f.comm = start.comm;
}

/// Read the caller's filename string (still valid: the exec has not replaced its memory).
#[inline(always)]
pub(super) fn read_caller_filename(ev: &mut ExecEvent, filename: u64) {
    let f = &mut ev.fixed;
    // SAFETY: user pointer; the helper faults safely.
    let n = unsafe {
        generated::bpf_probe_read_user_str(
            f.filename.as_mut_ptr() as *mut c_void,
            FILENAME_LEN as u32,
            filename as *const c_void,
        )
    };
    if n < 0 {
        f.filename[0] = 0;
    } else if n as usize >= FILENAME_LEN {
        f.flags |= EXEC_F_FILENAME_TRUNCATED;
    }
}

/// The caller's filename and argv, read through its pointers (its
/// environment follows in [`tail::exec_env_tail`]).
#[inline(always)]
pub(super) fn read_caller_args(ev: &mut ExecEvent, start: &ExecStart) {
    read_caller_filename(ev, start.filename);
    read_argv(ev, start.argv as *const *const u8);
}

/// No-BTF fallback: the whole event at `sys_enter`.
#[inline(always)]
pub(super) fn enter_full(
    ctx: &TracePointContext,
    start: &ExecStart,
    tid: u32,
    tgid: u32,
) -> Result<(), i64> {
    let Some(ev) = scratch_event() else {
        return Err(0);
    };
    begin_event(ev, tid, tgid, start);
    read_caller_args(ev, start);
    env_then(ctx, ev, start.envp, JOB_FULL);
    Ok(())
}

/// Send the used prefix of `ev` to userspace (`now`: wake the reader).
#[inline(always)]
pub(super) fn output_exec(ev: &ExecEvent, now: bool) {
    let mut used = ev.fixed.argv_len as usize + ev.fixed.env_len as usize;
    if used > DATA_LEN + ARG_LEN {
        used = DATA_LEN + ARG_LEN;
    }
    let len = core::mem::size_of::<ExecFixed>() + used;
    // SAFETY: `len` <= size_of::<ExecEvent>(), and `ev` points to that many readable bytes.
    let bytes = unsafe { core::slice::from_raw_parts(ev as *const ExecEvent as *const u8, len) };
    if now {
        emit_now(bytes);
    } else {
        emit(bytes);
    }
}

#[inline(always)]
pub(super) fn try_exec_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    // SAFETY: offset from the tracepoint's stable format.
    let ret: i64 = unsafe { tp_field(ctx, SYS_EXIT_RET) };
    if ret == 0 {
        // Success was reported at sched_process_exec (the entry is gone).
        return Ok(());
    }
    if let Some(start) = take_start(tid) {
        let Some(ev) = scratch_event() else {
            return Err(0);
        };
        begin_event(ev, tid, (id >> 32) as u32, &start);
        ev.fixed.ret = ret as i32;
        read_caller_args(ev, &start);
        env_then(ctx, ev, start.envp, JOB_FAILED);
        return Ok(());
    }
    let Some(ev) = EXEC_INFLIGHT_FULL.get_ptr_mut(&tid) else {
        if !unrecorded((id >> 32) as u32) {
            count_lost(LostCause::ExecNoEnter);
        }
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program's run.
    let ev = unsafe { &mut *ev };
    ev.fixed.ret = ret as i32;
    finish_failed(ev);
    let _ = EXEC_INFLIGHT_FULL.remove(&tid);
    Ok(())
}

#[inline(always)]
pub(super) fn finish_failed(ev: &mut ExecEvent) {
    // SAFETY: helper without preconditions.
    ev.fixed.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.fixed.hdr.ppid = parent_tgid(current_task());
    output_exec(ev, false);
}

#[inline(always)]
pub(super) fn try_exec_sched(ctx: &TracePointContext) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if unrecorded(tgid) {
        return Ok(());
    }
    // SAFETY: offsets from the tracepoint's stable format.
    let old_pid: u32 = unsafe { tp_field(ctx, SCHED_EXEC_OLD_PID) };
    // SAFETY: as above.
    let loc: u32 = unsafe { tp_field(ctx, SCHED_EXEC_FILENAME_LOC) };
    let name_ptr = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);

    let (ev, full, parked) = if mm_layout_known() {
        let Some(ev) = scratch_event() else {
            return Err(0);
        };
        let start = match take_start(old_pid) {
            Some(s) => s,
            None => {
                count_lost(LostCause::ExecNoEnter);
                ExecStart::empty(EXEC_F_NO_ENTER)
            }
        };
        begin_event(ev, old_pid, tgid, &start);
        // bprm->filename is the caller's string for execve (for execveat it
        // is /dev/fd/N/… or the absolute path): not sent twice; the field
        // carries the caller's argv[0] instead.
        ev.fixed.flags |= EXEC_F_FILENAME_IS_EXE;
        // SAFETY: ARGV0_LEN <= FILENAME_LEN; both are plain byte arrays.
        unsafe {
            core::ptr::copy_nonoverlapping(
                start.argv0.as_ptr(),
                ev.fixed.filename.as_mut_ptr(),
                ARGV0_LEN,
            )
        };
        let layout = read_new_image(ev);
        // The environment costs most of an exec's time here (two reads of
        // up to 16 KiB and a scan of every entry): read it only where a
        // rule or a span will look at it.
        let d = decide(tgid, ev);
        // Parked in map memory across the scan: kept in a register, each
        // value of it would be walked through the scan by the verifier on
        // its own, and the program grows past its 1M-instruction budget.
        let Some(parked) = park(d) else {
            return Err(0);
        };
        if let Some(l) = layout {
            if d & D_ENV != 0 || ENV_ALL_EXECS.load() != 0 {
                read_new_env(ev, l);
            } else {
                ev.fixed.flags |= EXEC_F_ENV_SKIPPED;
            }
        }
        (ev, false, Some(parked))
    } else {
        match EXEC_INFLIGHT_FULL.get_ptr_mut(&old_pid) {
            // SAFETY: map value pointer valid for this program's run.
            Some(ev) => (unsafe { &mut *ev }, true, None),
            None => {
                count_lost(LostCause::ExecNoEnter);
                let Some(ev) = scratch_event() else {
                    return Err(0);
                };
                let start = ExecStart::empty(EXEC_F_NO_ENTER);
                begin_event(ev, old_pid, tgid, &start);
                (ev, false, None)
            }
        }
    };
    let f = &mut ev.fixed;
    f.hdr.tgid = tgid;
    f.ret = 0;
    // SAFETY: helper without preconditions.
    f.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    f.hdr.ppid = parent_tgid(current_task());
    // SAFETY: name_ptr points into the tracepoint record; the helper checks the read.
    let n = unsafe {
        generated::bpf_probe_read_kernel_str(
            f.exe.as_mut_ptr() as *mut c_void,
            f.exe.len() as u32,
            name_ptr as *const c_void,
        )
    };
    if n < 0 {
        f.exe[0] = 0;
    }
    let d = match parked {
        // SAFETY: our per-CPU scan slot, written by `park` in this run.
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) as u8,
        None => decide(tgid, ev),
    };
    output_exec(ev, d & D_WAKE != 0);
    if full {
        let _ = EXEC_INFLIGHT_FULL.remove(&old_pid);
    }
    if d & D_TRACK != 0 {
        inserted(TRACKED.insert(&tgid, &1, 0), LostCause::TrackedInsertFailed);
    }
    Ok(())
}

/// The per-CPU scratch event (an exec event is larger than the BPF stack);
/// `None`, counted as a scratch loss, cannot happen for index 0.
#[inline(always)]
pub(super) fn scratch_event() -> Option<&'static mut ExecEvent> {
    let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else {
        count_lost(LostCause::Scratch);
        return None;
    };
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs.
    Some(unsafe { &mut *ev })
}

/// `bpf_probe_read_user` of `len` bytes at user address `src` into `dst`;
/// true when it succeeded (on failure the helper zeroes `dst`).
///
/// # Safety
/// `dst` must have room for `len` bytes (the verifier checks it too).
#[inline(always)]
pub(super) unsafe fn read_user(dst: *mut u8, len: usize, src: u64) -> bool {
    // SAFETY: guaranteed by the caller; user memory, the helper faults safely.
    unsafe {
        generated::bpf_probe_read_user(dst as *mut c_void, len as u32, src as *const c_void) == 0
    }
}

/// `v` clamped to `max`, through a volatile slot so the verifier sees the
/// comparison on the register that is then used as a size or offset.
#[inline(always)]
pub(super) fn clamp(v: u64, max: usize) -> usize {
    // SAFETY: reading a local variable.
    let v = unsafe { core::ptr::read_volatile(&v) };
    if v > max as u64 { max } else { v as usize }
}

/// Where a new program's argv and environment are (from its `mm_struct`).
#[derive(Clone, Copy)]
pub(super) struct Layout {
    start_stack: u64,
    arg_start: u64,
    env_start: u64,
    env_end: u64,
}

/// argv of the program that just replaced the caller, from its new stack:
/// `[argc][argv…][0][envp…][0] … strings`, with the strings at
/// `mm->arg_start..arg_end` and `mm->env_start..env_end`; where its
/// environment is, for [`read_new_env`].
#[inline(always)]
pub(super) fn read_new_image(ev: &mut ExecEvent) -> Option<Layout> {
    let task = current_task();
    let mm_off = TASK_MM_OFF.load() as usize;
    let ss_off = MM_START_STACK_OFF.load() as usize;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let Ok(mm) = (unsafe { bpf_probe_read_kernel(task.add(mm_off) as *const *const u8) }) else {
        ev.fixed.flags |= EXEC_F_ARGV_FAULT | EXEC_F_ENV_FAULT;
        return None;
    };
    // start_stack, arg_start, arg_end, env_start, env_end (adjacent, checked by the loader).
    // SAFETY: as above.
    let Ok(r) = (unsafe { bpf_probe_read_kernel(mm.wrapping_add(ss_off) as *const [u64; 5]) })
    else {
        ev.fixed.flags |= EXEC_F_ARGV_FAULT | EXEC_F_ENV_FAULT;
        return None;
    };
    let [start_stack, arg_start, arg_end, env_start, env_end] = r;

    // argv: one read.
    let total = arg_end.wrapping_sub(arg_start);
    if total > ARGV_MAX as u64 {
        ev.fixed.flags |= EXEC_F_ARGV_TRUNCATED;
    }
    let len = clamp(total, ARGV_MAX);
    // SAFETY: len <= ARGV_MAX <= the data area.
    if unsafe { read_user(ev.data.as_mut_ptr(), len, arg_start) } {
        ev.fixed.argv_len = len as u32;
    } else {
        ev.fixed.flags |= EXEC_F_ARGV_FAULT;
        ev.fixed.argv_len = 0;
    }
    Some(Layout {
        start_stack,
        arg_start,
        env_start,
        env_end,
    })
}
