//! The environment of an exec, filtered by the allow-list in the kernel:
//! from the new program's stack at `sched_process_exec`, or through the
//! caller's pointers for a failed exec. Only allow-listed variables leave.

use super::*;

/// Allow-listed `NAME=` prefixes, filled by userspace before attach.
#[map]
pub(super) static ENV_ALLOW: LpmTrie<EnvKey, u8> = LpmTrie::with_max_entries(256, 0);

/// Bitmap of the first two bytes of allow-listed entries (65536 bits): most
/// variables are rejected with one inlined array read, before any LPM lookup.
#[map]
pub(super) static ENV_PREFIX: Array<u64> = Array::with_max_entries(ENV_PREFIX_WORDS, 0);

/// Environment pointers read per bulk read.
pub(super) const ENV_CHUNK: usize = 16;

/// Window of environment pointers, refilled every ENV_CHUNK entries.
#[map]
pub(super) static ENV_PTRS: PerCpuArray<[u64; ENV_CHUNK]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU copy of a new program's environment strings (plus slack so reads
/// at any in-block offset stay in bounds).
#[map]
pub(super) static ENV_STRINGS: PerCpuArray<[u8; ENV_BLOCK + ARG_LEN]> =
    PerCpuArray::with_max_entries(1, 0);

/// A new program's `envp[]` (one extra slot for the terminator) and the
/// scan's bounds, which the loop reads back from here on every iteration.
#[repr(C)]
pub(super) struct EnvScan {
    pub(super) vec: [u64; MAX_ENV_SCAN as usize + 1],
    /// Room past `vec` for the second read of the vector: the verifier
    /// bounds its start and its length separately.
    pub(super) _slack: [u64; MAX_ENV_SCAN as usize + 1],
    pub(super) env_start: u64,
    pub(super) env_end: u64,
    pub(super) blen: u64,
    /// Where the new program's `argv[0]` basename starts ([`tool_class`]).
    pub(super) a0_base: u64,
    /// [`decide`]'s answer, across the scan ([`park`]).
    pub(super) decision: u64,
    /// A failed exec's `envp`, for [`super::tail::exec_env_tail`].
    pub(super) caller_envp: u64,
    /// What the tail program does with the event ([`super::tail::JOB_FAILED`]); 0: nothing.
    pub(super) job: u64,
}

#[map]
pub(super) static ENV_VEC: PerCpuArray<EnvScan> = PerCpuArray::with_max_entries(1, 0);

/// The next ENV_CHUNK pointers of `envp` from entry `i`, in one read; near
/// the end of a mapping that can fail, and then the window holds what could
/// be read (the first pointer alone, or nothing).
#[inline(always)]
fn refill(win: &mut [u64; ENV_CHUNK], envp: *const *const u8, i: u32) {
    // SAFETY: the window holds ENV_CHUNK pointers.
    let ok = unsafe {
        read_user(
            win.as_mut_ptr() as *mut u8,
            ENV_CHUNK * 8,
            envp.add(i as usize) as u64,
        )
    };
    if ok {
        return;
    }
    // Only the first pointer is known: a zero after it ends the scan there.
    // (Not `*win = [0; N]`: that is a call to `memset`, and a loop of
    // stores in its place multiplied the verifier's states past 1M.)
    win[1] = 0;
    // SAFETY: user pointer; the helper faults safely.
    win[0] = unsafe { bpf_probe_read_user(envp.add(i as usize) as *const u64) }.unwrap_or(0);
}

#[inline(always)]
pub(super) fn read_env(ev: &mut ExecEvent, envp: *const *const u8) {
    let Some(win) = ENV_PTRS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs.
    let win = unsafe { &mut *win };
    // As in `read_new_env`: the running length and count live in the event
    // (volatile accesses), not in registers, so that every path through one
    // iteration reaches the next with the same register state and the
    // verifier prunes them. Carried in registers, the walk went past 1M
    // instructions on 6.1's verifier (newer ones converge; `cargo xtask vm`).
    let fx: *mut ExecFixed = &mut ev.fixed;
    let data: *mut u8 = ev.data.as_mut_ptr();
    // SAFETY: fields of our per-CPU scratch event (volatile accesses).
    unsafe {
        core::ptr::write_volatile(&raw mut (*fx).env_len, 0);
        core::ptr::write_volatile(&raw mut (*fx).envc, 0);
    }
    let mut i: u32 = 0;
    while i < MAX_ENV_SCAN {
        let k = (i as usize) & (ENV_CHUNK - 1);
        if k == 0 {
            refill(win, envp, i);
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
        // Copy first, then decide on the copy: the caller's memory is live
        // (other threads of a failed exec can rewrite it), so the value
        // checked must be the value sent, never a second read.
        // SAFETY: `data` is the event's data area.
        let (dst, n) = unsafe { copy_user_str(data, off, p) };
        if n <= 0 {
            continue;
        }
        // The key from the copy, by one helper call: an unaligned copy is
        // 64 byte moves here (twice over, through a temporary), most of
        // each iteration's instructions, and 6.1's verifier walks each
        // iteration several times over; with them the loop alone went past
        // its 1M-instruction budget. Bytes past the copied string's NUL
        // cannot make a match: no allowed `NAME=` holds a NUL.
        // Not zeroed first (a call to memset): the helper writes every byte.
        let mut key = core::mem::MaybeUninit::<Key<EnvKey>>::uninit();
        let kp = key.as_mut_ptr();
        // SAFETY: dst < DATA_LEN and the area has ARG_LEN >= ENV_KEY_LEN
        // bytes of slack after DATA_LEN; the key has room for ENV_KEY_LEN.
        let copied = unsafe {
            (*kp).prefix_len = (ENV_KEY_LEN * 8) as u32;
            generated::bpf_probe_read_kernel(
                (&raw mut (*kp).data.name) as *mut c_void,
                ENV_KEY_LEN as u32,
                data.add(dst) as *const c_void,
            )
        };
        if copied != 0 {
            continue;
        }
        // Longest stored prefix `NAME=` that starts this entry, if any; a
        // refused entry is left behind `off` and never sent. (By reference:
        // moved out of the MaybeUninit, the key is copied byte by byte.)
        // SAFETY: both fields were written above (the helper fills the name).
        if ENV_ALLOW.get(unsafe { &*kp }).is_none() {
            continue;
        }
        // SAFETY: see above.
        unsafe { keep_entry(fx, used, argv_len, n) };
    }
    if i == MAX_ENV_SCAN {
        // SAFETY: as above.
        let next = unsafe { bpf_probe_read_user::<*const u8>(envp.add(MAX_ENV_SCAN as usize)) };
        if next.is_ok_and(|p| !p.is_null()) {
            // SAFETY: see above.
            unsafe { add_flags(fx, EXEC_F_ENV_TRUNCATED) };
        }
    }
}

/// Whether a variable whose name starts with these two bytes (first byte
/// high) can be on the allow-list: one inlined array read of the prefix
/// bitmap, before the LPM trie is asked.
#[inline(always)]
pub(super) fn prefix_may_be_allowed(first_two: u32) -> bool {
    match ENV_PREFIX.get(first_two >> 6) {
        Some(w) => (*w >> (first_two & 63)) & 1 != 0,
        None => false,
    }
}

/// The allow-listed variables of the new program's environment, after argv.
#[inline(always)]
pub(super) fn read_new_env(ev: &mut ExecEvent, l: Layout) {
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
        // SAFETY: see above.
        unsafe { keep_entry(fx, used, argv_len, n) };
    }
    // SAFETY: as in the loop.
    if i == MAX_ENV_SCAN as usize && unsafe { (*scan).vec[i] } != 0 {
        // SAFETY: see above.
        unsafe { add_flags(fx, EXEC_F_ENV_TRUNCATED) };
    }
}

/// Keep the entry just copied (`n` bytes, as the string helper returned it,
/// `used` bytes of environment before it): its length and the count go to
/// the event through memory, an over-long value is flagged.
///
/// # Safety
/// `fx` must point to a live, exclusively owned `ExecFixed`.
#[inline(always)]
unsafe fn keep_entry(fx: *mut ExecFixed, used: usize, argv_len: usize, n: i64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        keep_string(
            fx,
            &raw mut (*fx).env_len,
            &raw mut (*fx).envc,
            used,
            n,
            DATA_LEN + ARG_LEN - argv_len,
            EXEC_F_ENV_TRUNCATED,
        )
    }
}
