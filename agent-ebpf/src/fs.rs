//! Failed file operations (EACCES, EPERM, EROFS) of tracked processes only:
//! an untracked process pays one map lookup at syscall entry.

use core::ffi::c_void;

use agent_common::{
    EventKind, FS_AT_FDCWD, FS_OP_CREAT, FS_OP_MKDIR, FS_OP_OPEN, FS_OP_RENAME, FS_OP_UNLINK,
    FS_PATH_LEN, FsEvent, FsInflight, LostCause,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, generated,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::TracePointContext,
};

use crate::{count_lost, emit, inserted, is_tracked, tp_field};

#[map]
static FS_INFLIGHT: HashMap<u32, FsInflight> = HashMap::with_max_entries(4096, 0);

#[map]
static FS_SCRATCH: PerCpuArray<FsEvent> = PerCpuArray::with_max_entries(1, 0);

const EPERM: i64 = 1;
const EACCES: i64 = 13;
const EROFS: i64 = 30;

/// `dfd_off` 0: the syscall has no dfd (cwd-relative).
#[inline(always)]
fn enter(
    ctx: &TracePointContext,
    op: u32,
    dfd_off: usize,
    path_off: usize,
    flags_off: usize,
) -> u32 {
    let id = bpf_get_current_pid_tgid();
    if !is_tracked((id >> 32) as u32) {
        return 0;
    }
    // SAFETY: offsets from the syscall tracepoints' stable formats.
    let path: u64 = unsafe { tp_field(ctx, path_off) };
    let dfd: i64 = if dfd_off == 0 {
        FS_AT_FDCWD as i64
    } else {
        // SAFETY: as above.
        unsafe { tp_field(ctx, dfd_off) }
    };
    let flags: i64 = if flags_off == 0 {
        0
    } else {
        // SAFETY: as above.
        unsafe { tp_field(ctx, flags_off) }
    };
    let v = FsInflight {
        path,
        op,
        flags: flags as u32,
        dfd: dfd as i32,
        _pad: 0,
    };
    inserted(
        FS_INFLIGHT.insert(&(id as u32), &v, 0),
        LostCause::FsTableFull,
    );
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn fs_openat_tp(ctx: TracePointContext) -> u32 {
    enter(&ctx, FS_OP_OPEN, 16, 24, 32)
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn fs_creat_tp(ctx: TracePointContext) -> u32 {
    enter(&ctx, FS_OP_CREAT, 0, 16, 0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_mkdir")]
pub fn fs_mkdir_tp(ctx: TracePointContext) -> u32 {
    enter(&ctx, FS_OP_MKDIR, 0, 16, 0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_mkdirat")]
pub fn fs_mkdirat_tp(ctx: TracePointContext) -> u32 {
    enter(&ctx, FS_OP_MKDIR, 16, 24, 0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_unlink")]
pub fn fs_unlink_tp(ctx: TracePointContext) -> u32 {
    enter(&ctx, FS_OP_UNLINK, 0, 16, 0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_unlinkat")]
pub fn fs_unlinkat_tp(ctx: TracePointContext) -> u32 {
    enter(&ctx, FS_OP_UNLINK, 16, 24, 0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_rename")]
pub fn fs_rename_tp(ctx: TracePointContext) -> u32 {
    // The destination is where write access is needed.
    enter(&ctx, FS_OP_RENAME, 0, 24, 0)
}

#[tracepoint(category = "syscalls", name = "sys_enter_renameat2")]
pub fn fs_renameat2_tp(ctx: TracePointContext) -> u32 {
    enter(&ctx, FS_OP_RENAME, 32, 40, 0)
}

/// Shared by every `sys_exit_*` of the calls above.
#[tracepoint]
pub fn fs_exit_tp(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    // SAFETY: the value is copied before the entry is removed.
    let Some(v) = (unsafe { FS_INFLIGHT.get(&tid) }).copied() else {
        return 0;
    };
    let _ = FS_INFLIGHT.remove(&tid);
    // SAFETY: offset of `ret` in every sys_exit tracepoint.
    let ret: i64 = unsafe { tp_field(&ctx, 16) };
    if ret != -EACCES && ret != -EPERM && ret != -EROFS {
        return 0;
    }
    let Some(ev) = FS_SCRATCH.get_ptr_mut(0) else {
        count_lost(LostCause::Scratch);
        return 0;
    };
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs.
    let ev = unsafe { &mut *ev };
    ev.hdr.kind = EventKind::Fs as u32;
    ev.hdr.pid = tid;
    ev.hdr.tgid = (id >> 32) as u32;
    ev.hdr.ppid = 0;
    // SAFETY: helper without preconditions.
    ev.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    let ugid = bpf_get_current_uid_gid();
    ev.uid = ugid as u32;
    ev.gid = (ugid >> 32) as u32;
    ev.op = v.op;
    ev.flags = v.flags;
    ev.dfd = v.dfd;
    ev.errno = (-ret) as i32;
    // SAFETY: the caller's buffer is still valid at syscall exit; the helper faults safely.
    let n = unsafe {
        generated::bpf_probe_read_user_str(
            ev.path.as_mut_ptr() as *mut c_void,
            FS_PATH_LEN as u32,
            v.path as *const c_void,
        )
    };
    if n <= 0 {
        ev.path[0] = 0;
    }
    emit(ev);
    0
}
