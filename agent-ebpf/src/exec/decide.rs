//! What the kernel does with an exec, decided once: whether it starts a
//! tracked tree, wakes the reader, and has its environment read.

use super::env::ENV_VEC;
use super::*;

/// [`decide`]: start a tracked tree here.
pub(super) const D_TRACK: u8 = 1;

/// [`decide`]: wake the reader for this exec.
pub(super) const D_WAKE: u8 = 2;

/// [`decide`]: read the environment.
pub(super) const D_ENV: u8 = 4;

/// What to do with the exec of the program that just started in `tgid`.
/// After exec, comm is the new program's name: a tool starts a tracked tree
/// and its exec wakes the reader (its TLS probe is attached from userspace
/// before its first handshake, not after the next drain), as does any exec
/// in a tracked tree but a quiet one (a compiler). The environment is read
/// where a rule or a span looks at it: tools, clients, tracked trees but
/// their compilers.
#[inline(always)]
pub(super) fn decide(tgid: u32, ev: &ExecEvent) -> u8 {
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
pub(super) fn park(d: u8) -> Option<*const u64> {
    let scan = ENV_VEC.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs.
    unsafe {
        let at = &raw mut (*scan).decision;
        core::ptr::write_volatile(at, d as u64);
        Some(at as *const u64)
    }
}

/// Bytes of the new program's `argv[0]` searched for its basename.
pub(super) const ARGV0_SCAN: usize = 128;

/// What the agent wants of the program that just started, as the userspace
/// analyser decides it (`Analyzer::is_tool`): [`TOOL_TRACK`] for a toolchain
/// (its name, a `python*` or `go1.*` name, or a `#!` script whose
/// interpreter, `argv[0]`, is one), else its own `TOOLS` value
/// ([`agent_common::TOOL_ENV`] for a network client, [`TOOL_QUIET`] for a
/// compiler), 0 for anything else.
#[inline(always)]
pub(super) fn tool_class(comm: &[u8; 16], ev: &ExecEvent) -> u8 {
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
