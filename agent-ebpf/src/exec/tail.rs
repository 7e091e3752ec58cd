//! The environment scan of a failed exec (and of every exec without BTF) in
//! a program of its own, reached by a tail call.
//!
//! Why: argv and the environment are two bounded loops (64 and 256 entries).
//! In one program, every way the argv loop can end (each count, each fault)
//! enters the environment loop as a state the verifier of 6.1 (and older)
//! does not prune against the others, so it walks the second loop once per
//! such state and gives up past its 1M-instruction budget; 6.5+ converge.
//! A tail call starts the second loop from one state, with its own budget,
//! on every kernel (tail calls are 4.2+; Tetragon splits its exec path the
//! same way). The event being built stays in the per-CPU scratch map, and
//! what the second half needs (the caller's `envp`, what to do with the
//! event) is handed over in the per-CPU scan slot.

use aya_ebpf::maps::ProgramArray;

use super::*;
use env::{ENV_VEC, EnvScan};

/// Slot 0: [`exec_env_tail`], installed by userspace before the exec
/// programs are attached.
#[map]
pub(super) static EXEC_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Finish a failed exec: the event goes to userspace.
pub(super) const JOB_FAILED: u64 = 1;

/// No BTF: the event waits in [`EXEC_INFLIGHT_FULL`] for the exec's end.
pub(super) const JOB_FULL: u64 = 2;

/// Hand the scratch event over to [`exec_env_tail`] to read `envp` and do
/// `job` with it (`ret`: a failed exec's return value). Returns only when
/// the tail call could not be made (the program array not filled in): the
/// event is then finished here, without its environment.
#[inline(always)]
pub(super) fn env_then<C: EbpfContext>(ctx: &C, ev: &mut ExecEvent, envp: u64, job: u64) {
    if let Some(scan) = ENV_VEC.get_ptr_mut(0) {
        // SAFETY: our per-CPU scan slot; the tail call runs on this CPU, now.
        unsafe {
            (*scan).caller_envp = envp;
            (*scan).job = job;
            EXEC_TAIL.tail_call(ctx, 0);
            (*scan).job = 0;
        }
    }
    ev.fixed.flags |= EXEC_F_ENV_FAULT;
    finish_job(ev, job);
}

/// The second half: the environment, then the job.
#[tracepoint]
pub fn exec_env_tail(_ctx: TracePointContext) -> u32 {
    let Some(scan) = ENV_VEC.get_ptr_mut(0) else {
        return 0;
    };
    let scan: *mut EnvScan = scan;
    // SAFETY: our per-CPU scan slot, written by `env_then` in this run.
    let (envp, job) = unsafe { ((*scan).caller_envp, (*scan).job) };
    // SAFETY: as above.
    unsafe { (*scan).job = 0 };
    if job == 0 {
        return 0;
    }
    let Some(ev) = scratch_event() else {
        return 0;
    };
    read_env(ev, envp as *const *const u8);
    finish_job(ev, job);
    0
}

#[inline(always)]
fn finish_job(ev: &mut ExecEvent, job: u64) {
    if job == JOB_FULL {
        let tid = ev.fixed.hdr.pid;
        if EXEC_INFLIGHT_FULL.insert(&tid, ev, 0).is_err() {
            count_lost(LostCause::ExecTableFull);
        }
    } else {
        finish_failed(ev);
    }
}
