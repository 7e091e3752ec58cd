//! Exec and exit tracing.
//!
//! `sys_enter_execve(at)` captures what the caller asked for (filename, argv,
//! allow-listed env) into an in-flight table keyed by thread id.
//! `sched_process_exec` completes a successful exec with the path the kernel
//! ran; `sys_exit_execve(at)` completes a failed one with its errno. Either
//! way the event leaves through the ring buffer with only the used bytes.

use core::ffi::c_void;

use agent_common::{
    ARG_LEN, ARGV_MAX, DATA_LEN, ENV_KEY_LEN, ENV_PREFIX_WORDS, EXEC_F_ARGV_FAULT,
    EXEC_F_ARGV_TRUNCATED, EXEC_F_ENV_TRUNCATED, EXEC_F_EXECVEAT, EXEC_F_FILENAME_TRUNCATED,
    EXEC_F_NO_ENTER, EnvKey, EventKind, ExecEvent, ExecFixed, ExitEvent, FILENAME_LEN, ForkEvent,
    LostCause, MAX_ARGS, MAX_ENV_SCAN,
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
    AGENT_TGID, EXIT_GROUP_DEAD_OFF, FORK_CHILD_PID_OFF, TASK_EXIT_CODE_OFF, TOOLS,
    TRACK_AGENT_CHILDREN, TRACKED, count_lost, current_task, emit, is_tracked, parent_tgid,
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

/// Exec attempts between `sys_enter` and completion, by thread id.
#[map]
static EXEC_INFLIGHT: HashMap<u32, ExecEvent> = HashMap::with_max_entries(4096, 0);

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

#[tracepoint(category = "syscalls", name = "sys_exit_execve")]
pub fn exec_exit_tp(ctx: TracePointContext) -> u32 {
    let _ = try_exec_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_execveat")]
pub fn execat_exit_tp(ctx: TracePointContext) -> u32 {
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
    let _ = TRACKED.remove(&tgid);
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
    let filename: *const u8 = unsafe { ctx.read_at(filename_off) }.map_err(|e| e as i64)?;
    // SAFETY: as above.
    let argv: *const *const u8 = unsafe { ctx.read_at(argv_off) }.map_err(|e| e as i64)?;
    // SAFETY: as above.
    let envp: *const *const u8 = unsafe { ctx.read_at(envp_off) }.map_err(|e| e as i64)?;

    let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else {
        count_lost(LostCause::Scratch);
        return Err(0);
    };
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs.
    let ev = unsafe { &mut *ev };
    let f = &mut ev.fixed;
    f.hdr.kind = EventKind::Exec as u32;
    f.hdr.pid = tid;
    f.hdr.tgid = tgid;
    f.hdr.ppid = 0;
    // SAFETY: helper without preconditions.
    f.enter_ns = unsafe { bpf_ktime_get_boot_ns() };
    f.hdr.ktime_ns = f.enter_ns;
    // SAFETY: helper without preconditions.
    f.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let ugid = bpf_get_current_uid_gid();
    f.uid = ugid as u32;
    f.gid = (ugid >> 32) as u32;
    f.ret = 0;
    f.flags = flags;
    f.argc = 0;
    f.argv_len = 0;
    f.envc = 0;
    f.env_len = 0;
    f.exe[0] = 0;
    f.comm = bpf_get_current_comm().unwrap_or([0u8; 16]);

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

    read_argv(ev, argv);
    read_env(ev, envp);

    if EXEC_INFLIGHT.insert(&tid, ev, 0).is_err() {
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
            // SAFETY: user memory; the helper faults safely.
            let r = unsafe {
                generated::bpf_probe_read_user(
                    win.as_mut_ptr() as *mut c_void,
                    (ENV_CHUNK * 8) as u32,
                    envp.add(i as usize) as *const c_void,
                )
            };
            if r != 0 {
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
        let idx = u16::from_be(head) as u32; // first byte high, independent of endianness
        let bit = match ENV_PREFIX.get(idx >> 6) {
            Some(w) => (*w >> (idx & 63)) & 1,
            None => 0,
        };
        if bit == 0 {
            continue;
        }
        let mut key = Key::new((ENV_KEY_LEN * 8) as u32, EnvKey::default());
        // SAFETY: user pointer; the helper faults safely and NUL-terminates.
        let n = unsafe {
            generated::bpf_probe_read_user_str(
                key.data.name.as_mut_ptr() as *mut c_void,
                ENV_KEY_LEN as u32,
                p as *const c_void,
            )
        };
        if n <= 0 {
            continue;
        }
        // Longest stored prefix `NAME=` that starts this entry, if any.
        if ENV_ALLOW.get(&key).is_none() {
            continue;
        }
        if off >= DATA_LEN {
            flags |= EXEC_F_ENV_TRUNCATED;
            break;
        }
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
        let n = (n as usize) & (ARG_LEN * 2 - 1);
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

/// Send the used prefix of `ev` to userspace.
#[inline(always)]
fn output_exec(ev: &ExecEvent) {
    let mut used = ev.fixed.argv_len as usize + ev.fixed.env_len as usize;
    if used > DATA_LEN + ARG_LEN {
        used = DATA_LEN + ARG_LEN;
    }
    let len = core::mem::size_of::<ExecFixed>() + used;
    // SAFETY: `len` <= size_of::<ExecEvent>(), and `ev` points to that many readable bytes.
    let bytes = unsafe { core::slice::from_raw_parts(ev as *const ExecEvent as *const u8, len) };
    emit(bytes);
}

#[inline(always)]
fn try_exec_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    // SAFETY: offset from the tracepoint's stable format.
    let ret: i64 = unsafe { ctx.read_at(SYS_EXIT_RET) }.map_err(|e| e as i64)?;
    if ret == 0 {
        // Success was reported at sched_process_exec (the entry is gone).
        return Ok(());
    }
    let Some(ev) = EXEC_INFLIGHT.get_ptr_mut(&tid) else {
        if (id >> 32) as u32 != AGENT_TGID.load() {
            count_lost(LostCause::ExecNoEnter);
        }
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program's run.
    let ev = unsafe { &mut *ev };
    ev.fixed.ret = ret as i32;
    // SAFETY: helper without preconditions.
    ev.fixed.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.fixed.hdr.ppid = parent_tgid(current_task());
    output_exec(ev);
    let _ = EXEC_INFLIGHT.remove(&tid);
    Ok(())
}

#[inline(always)]
fn try_exec_sched(ctx: &TracePointContext) -> Result<(), i64> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        return Ok(());
    }
    // SAFETY: offsets from the tracepoint's stable format.
    let old_pid: u32 = unsafe { ctx.read_at(SCHED_EXEC_OLD_PID) }.map_err(|e| e as i64)?;
    // SAFETY: as above.
    let loc: u32 = unsafe { ctx.read_at(SCHED_EXEC_FILENAME_LOC) }.map_err(|e| e as i64)?;
    let name_ptr = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);

    let (ev, found) = match EXEC_INFLIGHT.get_ptr_mut(&old_pid) {
        Some(ev) => (ev, true),
        None => {
            count_lost(LostCause::ExecNoEnter);
            let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else {
                count_lost(LostCause::Scratch);
                return Err(0);
            };
            // SAFETY: per-CPU scratch slot, exclusively ours.
            let f = unsafe { &mut (*ev).fixed };
            f.hdr.kind = EventKind::Exec as u32;
            f.hdr.pid = old_pid;
            f.flags = EXEC_F_NO_ENTER;
            f.argc = 0;
            f.argv_len = 0;
            f.envc = 0;
            f.env_len = 0;
            f.filename[0] = 0;
            f.comm = [0u8; 16];
            // SAFETY: helper without preconditions.
            f.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
            let ugid = bpf_get_current_uid_gid();
            f.uid = ugid as u32;
            f.gid = (ugid >> 32) as u32;
            f.enter_ns = 0;
            (ev, false)
        }
    };
    // SAFETY: map value pointer valid for this program's run.
    let ev = unsafe { &mut *ev };
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
    output_exec(ev);
    if found {
        let _ = EXEC_INFLIGHT.remove(&old_pid);
    }
    // After exec, comm is the new program's name: a tool starts a tracked tree.
    let comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
    // SAFETY: read-only lookup.
    if unsafe { TOOLS.get(&comm) }.is_some() {
        let _ = TRACKED.insert(&tgid, &1, 0);
    }
    Ok(())
}
