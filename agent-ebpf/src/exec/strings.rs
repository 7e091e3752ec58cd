//! The string lists of an exec event (argv, then the environment) in its
//! data area: copying one string in, and counting it. The loops that use
//! these keep no state in registers (see `env::read_new_env`), so every
//! update goes through the event's memory.

use super::*;

/// `off & DATA_MASK`, with the mask kept for the verifier: LLVM would drop it
/// as redundant after a range check the verifier cannot carry over to the
/// pointer, so the value passes through a volatile stack slot first.
#[inline(always)]
pub(super) fn bounded(off: usize) -> usize {
    // SAFETY: reading a local variable.
    let v = unsafe { core::ptr::read_volatile(&off) };
    v & DATA_MASK
}

/// Copy the user string at `p` into the event's data area at `off` (kept
/// below DATA_LEN for the verifier): where it went, and the string
/// helper's return (bytes with the NUL, or an error).
///
/// # Safety
/// `data` must be an event's data area (DATA_LEN bytes and ARG_LEN of slack).
#[inline(always)]
pub(super) unsafe fn copy_user_str(data: *mut u8, off: usize, p: *const u8) -> (usize, i64) {
    let dst = bounded(off);
    // SAFETY: dst < DATA_LEN and the area has ARG_LEN bytes of slack after
    // DATA_LEN (guaranteed by the caller); user memory, the helper faults safely.
    let n = unsafe {
        generated::bpf_probe_read_user_str(
            data.add(dst) as *mut c_void,
            ARG_LEN as u32,
            p as *const c_void,
        )
    };
    (dst, n)
}

/// Keep the string just copied (`n` bytes as the string helper returned
/// it, after `before` bytes of its list): the list's length (`*len`, at most
/// `cap`) and count (`*count`) are updated through memory, and `truncated`
/// is flagged when the string was cut at ARG_LEN. Shared by the argv and
/// environment loops, which keep no state in registers (see
/// `env::read_new_env`).
///
/// # Safety
/// `fx` must point to a live, exclusively owned `ExecFixed`, and `len` and
/// `count` to fields of it.
#[inline(always)]
pub(super) unsafe fn keep_string(
    fx: *mut ExecFixed,
    len: *mut u32,
    count: *mut u32,
    before: usize,
    n: i64,
    cap: usize,
    truncated: u32,
) {
    let n = (n as usize) & (ARG_LEN * 2 - 1);
    // SAFETY: guaranteed by the caller.
    unsafe {
        if n >= ARG_LEN {
            add_flags(fx, truncated);
        }
        core::ptr::write_volatile(len, (before + n).min(cap) as u32);
        let c = core::ptr::read_volatile(count);
        core::ptr::write_volatile(count, c + 1);
    }
}

/// `(*fx).flags |= bits`, through memory: the argv and env loops keep no
/// state in registers (see `env::read_new_env`).
///
/// # Safety
/// `fx` must point to a live, exclusively owned `ExecFixed`.
#[inline(always)]
pub(super) unsafe fn add_flags(fx: *mut ExecFixed, bits: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let f = core::ptr::read_volatile(&raw const (*fx).flags);
        core::ptr::write_volatile(&raw mut (*fx).flags, f | bits);
    }
}
