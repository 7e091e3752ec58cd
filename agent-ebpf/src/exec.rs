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
    EXEC_F_NO_ENTER, EXEC_SLOTS, EnvKey, EventKind, ExecEvent, ExecFixed, ExecStart, ExitEvent,
    FILENAME_LEN, ForkEvent, LostCause, MAX_ARGS, MAX_ENV_SCAN, TOOL_QUIET, TOOL_TRACK,
};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    AGENT_TGID, ENV_ALL_EXECS, EXIT_GROUP_DEAD_OFF, FORK_CHILD_PID_OFF, MM_START_STACK_OFF,
    TASK_EXIT_CODE_OFF, TASK_MM_OFF, TOOLS, TRACK_AGENT_CHILDREN, TRACKED, count_lost,
    current_task, emit, emit_now, is_tracked, parent_tgid, tp_field,
};

/// Allow-listed `NAME=` prefixes, filled by userspace before attach.
#[map]
static ENV_ALLOW: LpmTrie<EnvKey, u8> = LpmTrie::with_max_entries(256, 0);

/// Bitmap of the first two bytes of allow-listed entries (65536 bits): most
/// variables are rejected with one inlined array read, before any LPM lookup.
#[map]
static ENV_PREFIX: Array<u64> = Array::with_max_entries(ENV_PREFIX_WORDS, 0);

/// Environment pointers read per bulk read.
const ENV_CHUNK: usize = 16;

/// Window of environment pointers, refilled every ENV_CHUNK entries.
#[map]
static ENV_PTRS: PerCpuArray<[u64; ENV_CHUNK]> = PerCpuArray::with_max_entries(1, 0);

/// Exec attempts between `sys_enter` and completion, in slot `tid %
/// EXEC_SLOTS` and owned by `tid` (0: free). An array rather than a hash
/// map: its lookups are inlined by the verifier, with no helper call and no
/// lock, which is most of what `sys_enter` costs. Two threads whose ids share
/// a slot and exec at the same moment: the first one's completion finds the
/// slot taken and is reported without its start (`EXEC_F_NO_ENTER`, counted).
/// An exec that fails after the point of no return leaves its slot to be
/// overwritten.
#[map]
static EXEC_START: Array<ExecStart> = Array::with_max_entries(EXEC_SLOTS, 0);

/// Fallback without the mm offsets: whole events built at `sys_enter`. The
/// loader shrinks it to one entry when it is not used.
#[map]
static EXEC_INFLIGHT_FULL: HashMap<u32, ExecEvent> = HashMap::with_max_entries(4096, 0);

/// Per-CPU copy of a new program's environment strings (plus slack so reads
/// at any in-block offset stay in bounds).
#[map]
static ENV_STRINGS: PerCpuArray<[u8; ENV_BLOCK + ARG_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// A new program's `envp[]` (one extra slot for the terminator) and the
/// scan's bounds, which the loop reads back from here on every iteration.
#[repr(C)]
struct EnvScan {
    vec: [u64; MAX_ENV_SCAN as usize + 1],
    /// Room past `vec` for the second read of the vector: the verifier
    /// bounds its start and its length separately.
    _slack: [u64; MAX_ENV_SCAN as usize + 1],
    env_start: u64,
    env_end: u64,
    blen: u64,
    /// Where the new program's `argv[0]` basename starts ([`tool_class`]).
    a0_base: u64,
    /// [`decide`]'s answer, across the scan ([`park`]).
    decision: u64,
}

#[map]
static ENV_VEC: PerCpuArray<EnvScan> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space to build an event larger than the BPF stack.
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

const DATA_MASK: usize = DATA_LEN - 1;
const _: () = assert!(DATA_LEN.is_power_of_two());

/// `off & DATA_MASK`, with the mask kept for the verifier: LLVM would drop it
/// as redundant after a range check the verifier cannot carry over to the
/// pointer, so the value passes through a volatile stack slot first.
#[inline(always)]
fn bounded(off: usize) -> usize {
    // SAFETY: reading a local variable.
    let v = unsafe { core::ptr::read_volatile(&off) };
    v & DATA_MASK
}

// Offsets in the syscalls:sys_enter_execve(at) tracepoint formats (stable ABI).
const EXECVE_FILENAME: usize = 16;
const EXECVE_ARGV: usize = 24;
const EXECVE_ENVP: usize = 32;
const EXECVEAT_FILENAME: usize = 24;
const EXECVEAT_ARGV: usize = 32;
const EXECVEAT_ENVP: usize = 40;
const SYS_EXIT_RET: usize = 16;
// sched:sched_process_exec
const SCHED_EXEC_FILENAME_LOC: usize = 8;
const SCHED_EXEC_OLD_PID: usize = 16;

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

#[btf_tracepoint(function = "sched_process_exit")]
pub fn exit_btf(ctx: BtfTracePointContext) -> i32 {
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

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn fork_tp(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let off = FORK_CHILD_PID_OFF.load() as usize;
    if off == 0 {
        return 0;
    }
    // SAFETY: offset read from this kernel's tracepoint format at load time.
    let child: u32 = unsafe { ctx.read_at(off) }.unwrap_or(0);
    if tgid == AGENT_TGID.load() {
        // `agent trace`: the command the agent starts is tracked from birth,
        // before it can exec or touch a file.
        if TRACK_AGENT_CHILDREN.load() != 0 {
            let _ = TRACKED.insert(&child, &1, 0);
        }
        return 0;
    }
    if is_tracked(tgid) {
        let _ = TRACKED.insert(&child, &1, 0);
    }
    let mut ev = ForkEvent::default();
    ev.hdr.kind = EventKind::Fork as u32;
    ev.hdr.pid = id as u32;
    ev.hdr.tgid = tgid;
    // SAFETY: helper without preconditions.
    ev.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.child_pid = child;
    emit(&ev);
    0
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
    let mut ev = ExitEvent::default();
    ev.hdr.kind = EventKind::Exit as u32;
    ev.hdr.pid = id as u32;
    ev.hdr.tgid = tgid;
    ev.hdr.ppid = parent_tgid(task);
    // SAFETY: helper without preconditions.
    ev.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.exit_code = exit_code;
    emit(&ev);
}

/// Whether the new program's argv/env can be read at `sched_process_exec`.
#[inline(always)]
fn mm_layout_known() -> bool {
    TASK_MM_OFF.load() != 0 && MM_START_STACK_OFF.load() != 0
}

#[inline(always)]
fn try_exec_enter(
    ctx: &TracePointContext,
    filename_off: usize,
    argv_off: usize,
    envp_off: usize,
    flags: u32,
) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    if tgid == AGENT_TGID.load() {
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
        return enter_full(&start, tid, tgid);
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
fn take_start(tid: u32) -> Option<ExecStart> {
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
fn begin_event(ev: &mut ExecEvent, tid: u32, tgid: u32, start: &ExecStart) {
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
fn read_caller_filename(ev: &mut ExecEvent, filename: u64) {
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

/// The caller's argv/env, read through its pointers.
#[inline(always)]
fn read_caller_args(ev: &mut ExecEvent, start: &ExecStart) {
    read_caller_filename(ev, start.filename);
    read_argv(ev, start.argv as *const *const u8);
    read_env(ev, start.envp as *const *const u8);
}

/// No-BTF fallback: the whole event at `sys_enter`.
#[inline(always)]
fn enter_full(start: &ExecStart, tid: u32, tgid: u32) -> Result<(), i64> {
    let Some(ev) = scratch_event() else {
        return Err(0);
    };
    begin_event(ev, tid, tgid, start);
    read_caller_args(ev, start);
    if EXEC_INFLIGHT_FULL.insert(&tid, ev, 0).is_err() {
        count_lost(LostCause::ExecTableFull);
    }
    Ok(())
}

#[inline(always)]
fn read_argv(ev: &mut ExecEvent, argv: *const *const u8) {
    let mut off: usize = 0;
    let mut argc: u32 = 0;
    let mut flags: u32 = 0;
    let mut i: u32 = 0;
    while i < MAX_ARGS {
        // SAFETY: user pointer; the helper faults safely.
        let p: *const u8 = match unsafe { bpf_probe_read_user(argv.add(i as usize)) } {
            Ok(p) => p,
            Err(_) => {
                flags |= EXEC_F_ARGV_FAULT;
                break;
            }
        };
        if p.is_null() {
            break;
        }
        if off >= ARGV_MAX {
            flags |= EXEC_F_ARGV_TRUNCATED;
            break;
        }
        let dst = bounded(off);
        // SAFETY: dst < DATA_LEN and the area has ARG_LEN bytes of slack after DATA_LEN.
        let n = unsafe {
            generated::bpf_probe_read_user_str(
                ev.data.as_mut_ptr().add(dst) as *mut c_void,
                ARG_LEN as u32,
                p as *const c_void,
            )
        };
        if n <= 0 {
            flags |= EXEC_F_ARGV_FAULT;
            break;
        }
        let n = (n as usize) & (ARG_LEN * 2 - 1);
        if n >= ARG_LEN {
            flags |= EXEC_F_ARGV_TRUNCATED;
        }
        off += n;
        argc += 1;
        i += 1;
    }
    if i == MAX_ARGS {
        // SAFETY: as above.
        let next = unsafe { bpf_probe_read_user::<*const u8>(argv.add(MAX_ARGS as usize)) };
        if next.is_ok_and(|p| !p.is_null()) {
            flags |= EXEC_F_ARGV_TRUNCATED;
        }
    }
    if off > ARGV_MAX + ARG_LEN {
        off = ARGV_MAX + ARG_LEN;
    }
    ev.fixed.argc = argc;
    ev.fixed.argv_len = off as u32;
    ev.fixed.flags |= flags;
}

#[inline(always)]
fn read_env(ev: &mut ExecEvent, envp: *const *const u8) {
    let mut off: usize = ev.fixed.argv_len as usize;
    let start = off;
    let mut envc: u32 = 0;
    let mut flags: u32 = 0;
    let Some(win) = ENV_PTRS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs.
    let win = unsafe { &mut *win };
    let mut i: u32 = 0;
    while i < MAX_ENV_SCAN {
        let k = (i as usize) & (ENV_CHUNK - 1);
        if k == 0 {
            // One read for the next ENV_CHUNK pointers; near the end of a
            // mapping it can fail, then the window holds what could be read.
            // SAFETY: the window holds ENV_CHUNK pointers.
            let ok = unsafe {
                read_user(
                    win.as_mut_ptr() as *mut u8,
                    ENV_CHUNK * 8,
                    envp.add(i as usize) as u64,
                )
            };
            if !ok {
                *win = [0u64; ENV_CHUNK];
                // SAFETY: as above.
                win[0] =
                    unsafe { bpf_probe_read_user(envp.add(i as usize) as *const u64) }.unwrap_or(0);
            }
        }
        let p = win[k] as *const u8;
        if p.is_null() {
            break;
        }
        i += 1;
        // First two bytes against the prefix bitmap.
        // SAFETY: as above.
        let head: u16 = match unsafe { bpf_probe_read_user(p as *const u16) } {
            Ok(h) => h,
            Err(_) => continue,
        };
        // First byte high, independent of endianness.
        if !prefix_may_be_allowed(u16::from_be(head) as u32) {
            continue;
        }
        if off >= DATA_LEN {
            flags |= EXEC_F_ENV_TRUNCATED;
            break;
        }
        // Copy first, then decide on the copy: the caller's memory is live
        // (other threads of a failed exec can rewrite it), so the value
        // checked must be the value sent, never a second read.
        let dst = bounded(off);
        // SAFETY: dst < DATA_LEN and the area has ARG_LEN bytes of slack.
        let n = unsafe {
            generated::bpf_probe_read_user_str(
                ev.data.as_mut_ptr().add(dst) as *mut c_void,
                ARG_LEN as u32,
                p as *const c_void,
            )
        };
        if n <= 0 {
            continue;
        }
        // Parked in the event (the verifier tracks no value through map
        // memory), so that states differing only in the length prune: kept in
        // a register across the lookup it took the program past 1M insns.
        // SAFETY: a field of our own scratch event.
        unsafe { core::ptr::write_volatile(&mut ev.fixed.env_len, n as u32) };
        let mut key = Key::new((ENV_KEY_LEN * 8) as u32, EnvKey::default());
        // SAFETY: reads ENV_KEY_LEN bytes of our own event buffer (dst <
        // DATA_LEN, ARG_LEN >= ENV_KEY_LEN bytes of slack). Bytes past the
        // copied string's NUL cannot make a match: no allowed `NAME=` holds a NUL.
        let copied = unsafe {
            generated::bpf_probe_read_kernel(
                key.data.name.as_mut_ptr() as *mut c_void,
                ENV_KEY_LEN as u32,
                ev.data.as_ptr().add(dst) as *const c_void,
            )
        };
        // Longest stored prefix `NAME=` that starts this entry, if any; a
        // refused entry is left behind `off` and never sent.
        if copied != 0 || ENV_ALLOW.get(&key).is_none() {
            continue;
        }
        // SAFETY: as above.
        let n = unsafe { core::ptr::read_volatile(&ev.fixed.env_len) } as usize & (ARG_LEN * 2 - 1);
        if n >= ARG_LEN {
            flags |= EXEC_F_ENV_TRUNCATED;
        }
        off += n;
        envc += 1;
    }
    if i == MAX_ENV_SCAN {
        // SAFETY: as above.
        let next = unsafe { bpf_probe_read_user::<*const u8>(envp.add(MAX_ENV_SCAN as usize)) };
        if next.is_ok_and(|p| !p.is_null()) {
            flags |= EXEC_F_ENV_TRUNCATED;
        }
    }
    if off > DATA_LEN + ARG_LEN {
        off = DATA_LEN + ARG_LEN;
    }
    ev.fixed.envc = envc;
    ev.fixed.env_len = (off - start) as u32;
    ev.fixed.flags |= flags;
}

/// Send the used prefix of `ev` to userspace (`now`: wake the reader).
#[inline(always)]
fn output_exec(ev: &ExecEvent, now: bool) {
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
fn try_exec_exit(ctx: &TracePointContext) -> Result<(), i64> {
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
        read_caller_args(ev, &start);
        finish_failed(ev, ret);
        return Ok(());
    }
    let Some(ev) = EXEC_INFLIGHT_FULL.get_ptr_mut(&tid) else {
        if (id >> 32) as u32 != AGENT_TGID.load() {
            count_lost(LostCause::ExecNoEnter);
        }
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program's run.
    let ev = unsafe { &mut *ev };
    finish_failed(ev, ret);
    let _ = EXEC_INFLIGHT_FULL.remove(&tid);
    Ok(())
}

#[inline(always)]
fn finish_failed(ev: &mut ExecEvent, ret: i64) {
    ev.fixed.ret = ret as i32;
    // SAFETY: helper without preconditions.
    ev.fixed.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.fixed.hdr.ppid = parent_tgid(current_task());
    output_exec(ev, false);
}

#[inline(always)]
fn try_exec_sched(ctx: &TracePointContext) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == AGENT_TGID.load() {
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
        let _ = TRACKED.insert(&tgid, &1, 0);
    }
    Ok(())
}

/// [`decide`]: start a tracked tree here.
const D_TRACK: u8 = 1;
/// [`decide`]: wake the reader for this exec.
const D_WAKE: u8 = 2;
/// [`decide`]: read the environment.
const D_ENV: u8 = 4;

/// What to do with the exec of the program that just started in `tgid`.
/// After exec, comm is the new program's name: a tool starts a tracked tree
/// and its exec wakes the reader (its TLS probe is attached from userspace
/// before its first handshake, not after the next drain), as does any exec
/// in a tracked tree but a quiet one (a compiler). The environment is read
/// where a rule or a span looks at it: tools, clients, tracked trees but
/// their compilers.
#[inline(always)]
fn decide(tgid: u32, ev: &ExecEvent) -> u8 {
    let class = tool_class(&bpf_get_current_comm().unwrap_or([0u8; 16]), ev);
    let tracked = is_tracked(tgid);
    match class {
        TOOL_TRACK if tracked => D_WAKE | D_ENV,
        TOOL_TRACK => D_WAKE | D_ENV | D_TRACK,
        // A compiler's environment is its parent's (userspace looks there),
        // and nothing reports on it: neither read nor woken for, tracked or not.
        TOOL_QUIET => 0,
        _ if tracked => D_WAKE | D_ENV,
        0 => 0,
        // A network client.
        _ => D_ENV,
    }
}

/// `d` stored in this CPU's scan slot; the slot's address, to read it back.
#[inline(always)]
fn park(d: u8) -> Option<*const u64> {
    let scan = ENV_VEC.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs.
    unsafe {
        let at = &raw mut (*scan).decision;
        core::ptr::write_volatile(at, d as u64);
        Some(at as *const u64)
    }
}

/// Bytes of the new program's `argv[0]` searched for its basename.
const ARGV0_SCAN: usize = 128;

/// What the agent wants of the program that just started, as the userspace
/// analyser decides it (`Analyzer::is_tool`): [`TOOL_TRACK`] for a toolchain
/// (its name, a `python*` or `go1.*` name, or a `#!` script whose
/// interpreter, `argv[0]`, is one), else its own `TOOLS` value
/// ([`agent_common::TOOL_ENV`] for a network client, [`TOOL_QUIET`] for a
/// compiler), 0 for anything else.
#[inline(always)]
fn tool_class(comm: &[u8; 16], ev: &ExecEvent) -> u8 {
    // SAFETY: read-only lookup.
    if let Some(v) = unsafe { TOOLS.get(comm) } {
        return *v;
    }
    if comm.starts_with(b"python") || comm.starts_with(b"go1.") {
        return TOOL_TRACK;
    }
    // argv[0]'s basename, from the argv just copied into the event. Where
    // it starts is kept in map memory, which the verifier does not track:
    // in a register, every position of the last `/` would be a state of its
    // own for every later iteration (and for the environment scan after).
    let Some(scan) = ENV_VEC.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs.
    let base_at = unsafe { &raw mut (*scan).a0_base };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(base_at, 0) };
    let len = (ev.fixed.argv_len as usize).min(ARGV0_SCAN);
    let mut end = 0usize;
    while end < ARGV0_SCAN {
        if end >= len {
            break;
        }
        let b = ev.data[end & DATA_MASK];
        if b == 0 {
            break;
        }
        if b == b'/' {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(base_at, end as u64 + 1) };
        }
        end += 1;
    }
    // SAFETY: as above.
    let base = unsafe { core::ptr::read_volatile(base_at) } as usize;
    if end <= base || end - base > 15 {
        return 0;
    }
    let mut key = [0u8; 16];
    let mut j = 0usize;
    while j < 15 {
        if base + j >= end {
            break;
        }
        key[j] = ev.data[(base + j) & DATA_MASK];
        j += 1;
    }
    // SAFETY: read-only lookup.
    match unsafe { TOOLS.get(&key) } {
        Some(&TOOL_TRACK) => TOOL_TRACK,
        _ => 0,
    }
}

/// Whether a variable whose name starts with these two bytes (first byte
/// high) can be on the allow-list: one inlined array read of the prefix
/// bitmap, before the LPM trie is asked.
#[inline(always)]
fn prefix_may_be_allowed(first_two: u32) -> bool {
    match ENV_PREFIX.get(first_two >> 6) {
        Some(w) => (*w >> (first_two & 63)) & 1 != 0,
        None => false,
    }
}

/// The per-CPU scratch event (an exec event is larger than the BPF stack);
/// `None`, counted as a scratch loss, cannot happen for index 0.
#[inline(always)]
fn scratch_event() -> Option<&'static mut ExecEvent> {
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
unsafe fn read_user(dst: *mut u8, len: usize, src: u64) -> bool {
    // SAFETY: guaranteed by the caller; user memory, the helper faults safely.
    unsafe {
        generated::bpf_probe_read_user(dst as *mut c_void, len as u32, src as *const c_void) == 0
    }
}

/// `v` clamped to `max`, through a volatile slot so the verifier sees the
/// comparison on the register that is then used as a size or offset.
#[inline(always)]
fn clamp(v: u64, max: usize) -> usize {
    // SAFETY: reading a local variable.
    let v = unsafe { core::ptr::read_volatile(&v) };
    if v > max as u64 { max } else { v as usize }
}

/// Where a new program's argv and environment are (from its `mm_struct`).
#[derive(Clone, Copy)]
struct Layout {
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
fn read_new_image(ev: &mut ExecEvent) -> Option<Layout> {
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

/// The allow-listed variables of the new program's environment, after argv.
#[inline(always)]
fn read_new_env(ev: &mut ExecEvent, l: Layout) {
    let Layout {
        start_stack,
        arg_start,
        env_start,
        env_end,
    } = l;
    let (Some(scan), Some(blk)) = (ENV_VEC.get_ptr_mut(0), ENV_STRINGS.get_ptr_mut(0)) else {
        count_lost(LostCause::Scratch);
        return;
    };
    // SAFETY: per-CPU scratch slots, exclusively ours while this program runs.
    let (scan, blk) = unsafe { (&mut *scan, &mut *blk) };
    // `vec` is the struct's first field; the second read of it may run on
    // into the slack, so its pointer is the struct's.
    let vec_bytes = scan as *mut EnvScan as *mut u8;
    let vec = &mut scan.vec;
    // [argc, argv[0]]: argv[0] must be arg_start, or the layout is not the one expected.
    // SAFETY: user memory; the helper faults safely.
    let Ok([argc, argv0]) = (unsafe { bpf_probe_read_user(start_stack as *const [u64; 2]) }) else {
        ev.fixed.flags |= EXEC_F_ENV_FAULT;
        return;
    };
    if argc > (1 << 20) || (argc > 0 && argv0 != arg_start) {
        ev.fixed.flags |= EXEC_F_ENV_FAULT;
        return;
    }
    let envp_at = start_stack.wrapping_add(8 * (argc + 2));
    if envp_at >= arg_start {
        ev.fixed.flags |= EXEC_F_ENV_FAULT;
        return;
    }
    const VEC_BYTES: usize = (MAX_ENV_SCAN as usize + 1) * 8;
    const PAGE: u64 = 4096;
    let mut nbytes = clamp(arg_start - envp_at, VEC_BYTES);
    // Up to the end of envp[0]'s page first. Past the vectors (envp, then
    // auxv) the kernel leaves a random gap of up to 8 KiB before the
    // strings, and a page of it that nothing was written to is not mapped:
    // one read across it would fail whole. The next page is read on its
    // own; if it is absent, the vectors ended on this one.
    let n1 = clamp(PAGE - (envp_at & (PAGE - 1)), nbytes);
    // SAFETY: n1 <= nbytes <= size of vec.
    if !unsafe { read_user(vec.as_mut_ptr() as *mut u8, n1, envp_at) } {
        ev.fixed.flags |= EXEC_F_ENV_FAULT;
        return;
    }
    if n1 < nbytes {
        let n2 = clamp((nbytes - n1) as u64, VEC_BYTES);
        let at = clamp(n1 as u64, VEC_BYTES);
        // SAFETY: at + n2 <= 2 * VEC_BYTES, the size of vec and the slack after it.
        if !unsafe { read_user(vec_bytes.add(at), n2, envp_at.wrapping_add(at as u64)) } {
            nbytes = n1;
        }
    }
    // A short read leaves older pointers after it: end the vector there.
    let last = nbytes / 8;
    if last <= MAX_ENV_SCAN as usize {
        vec[last] = 0;
    }
    if vec[0] != 0 && vec[0] != env_start {
        ev.fixed.flags |= EXEC_F_ENV_FAULT;
        return;
    }
    // The strings: one read of up to ENV_BLOCK bytes; entries past it are flagged.
    let blen = clamp(env_end.wrapping_sub(env_start), ENV_BLOCK);
    // SAFETY: blen <= ENV_BLOCK <= size of blk.
    if !unsafe { read_user(blk.as_mut_ptr(), blen, env_start) } {
        ev.fixed.flags |= EXEC_F_ENV_FAULT;
        return;
    }
    scan.env_start = env_start;
    scan.env_end = env_end;
    scan.blen = blen as u64;
    let scan: *const EnvScan = scan;

    // Nothing is carried from one iteration to the next in a register: the
    // bounds and pointers are read back from the scan map and the running
    // offset, count and flags live in the event (volatile accesses). Every
    // path through one iteration then reaches the next with the same
    // register state, so the verifier prunes them instead of walking each
    // combination (with ranges refined differently) for 256 iterations.
    let fx: *mut ExecFixed = &mut ev.fixed;
    let data: *mut u8 = ev.data.as_mut_ptr();
    // SAFETY: fields of our per-CPU scratch event (volatile accesses).
    unsafe {
        core::ptr::write_volatile(&raw mut (*fx).env_len, 0);
        core::ptr::write_volatile(&raw mut (*fx).envc, 0);
    }
    let mut i: usize = 0;
    while i < MAX_ENV_SCAN as usize {
        // SAFETY: fields of our per-CPU scan slot; i < MAX_ENV_SCAN.
        let (p, next, env_start, env_end, blen) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*scan).vec[i]),
                core::ptr::read_volatile(&raw const (*scan).vec[i + 1]),
                core::ptr::read_volatile(&raw const (*scan).env_start),
                core::ptr::read_volatile(&raw const (*scan).env_end),
                core::ptr::read_volatile(&raw const (*scan).blen),
            )
        };
        if p == 0 {
            break;
        }
        i += 1;
        let end = if next != 0 { next } else { env_end };
        let at = p.wrapping_sub(env_start);
        let vlen = end.wrapping_sub(p);
        if at >= blen || vlen > blen - at {
            // Past the copied block (more than ENV_BLOCK bytes of environment).
            // SAFETY: see above.
            unsafe { add_flags(fx, EXEC_F_ENV_TRUNCATED) };
            continue;
        }
        let o = (at as usize) & (ENV_BLOCK - 1);
        if !prefix_may_be_allowed(((blk[o] as u32) << 8) | blk[o + 1] as u32) {
            continue;
        }
        let mut key = Key::new((ENV_KEY_LEN * 8) as u32, EnvKey::default());
        // Bytes past the entry's end belong to the next entry; the stored
        // prefixes (`NAME=`) end at the `=`, so they never reach them.
        // SAFETY: o < ENV_BLOCK and blk has ARG_LEN >= ENV_KEY_LEN bytes of slack.
        key.data.name =
            unsafe { core::ptr::read_unaligned(blk.as_ptr().add(o) as *const [u8; ENV_KEY_LEN]) };
        if ENV_ALLOW.get(&key).is_none() {
            continue;
        }
        // SAFETY: see above.
        let (used, argv_len) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*fx).env_len) as usize,
                core::ptr::read_volatile(&raw const (*fx).argv_len) as usize,
            )
        };
        let off = argv_len + used;
        if off >= DATA_LEN {
            // SAFETY: see above.
            unsafe { add_flags(fx, EXEC_F_ENV_TRUNCATED) };
            break;
        }
        let dst = bounded(off);
        // SAFETY: dst < DATA_LEN and the area has ARG_LEN bytes of slack; the
        // source is our copy (o < ENV_BLOCK, ARG_LEN bytes of slack).
        let n = unsafe {
            generated::bpf_probe_read_kernel_str(
                data.add(dst) as *mut c_void,
                ARG_LEN as u32,
                blk.as_ptr().add(o) as *const c_void,
            )
        };
        if n <= 0 {
            continue;
        }
        let n = (n as usize) & (ARG_LEN * 2 - 1);
        // SAFETY: see above.
        unsafe {
            if n >= ARG_LEN {
                add_flags(fx, EXEC_F_ENV_TRUNCATED);
            }
            let used = (used + n).min(DATA_LEN + ARG_LEN - argv_len);
            core::ptr::write_volatile(&raw mut (*fx).env_len, used as u32);
            let c = core::ptr::read_volatile(&raw const (*fx).envc);
            core::ptr::write_volatile(&raw mut (*fx).envc, c + 1);
        }
    }
    // SAFETY: as in the loop.
    if i == MAX_ENV_SCAN as usize && unsafe { (*scan).vec[i] } != 0 {
        // SAFETY: see above.
        unsafe { add_flags(fx, EXEC_F_ENV_TRUNCATED) };
    }
}

/// `(*fx).flags |= bits`, through memory (see `read_new_env`).
///
/// # Safety
/// `fx` must point to a live, exclusively owned `ExecFixed`.
#[inline(always)]
unsafe fn add_flags(fx: *mut ExecFixed, bits: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let f = core::ptr::read_volatile(&raw const (*fx).flags);
        core::ptr::write_volatile(&raw mut (*fx).flags, f | bits);
    }
}
