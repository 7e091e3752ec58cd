//! The argv of a failed exec (or of any exec without BTF), read through
//! the caller's pointers.

use super::*;

#[inline(always)]
pub(super) fn read_argv(ev: &mut ExecEvent, argv: *const *const u8) {
    // The running length and count live in the event (volatile accesses),
    // not in registers, as in `read_new_env`: in a register, `off` took a
    // different range on each path (an argument cut at ARG_LEN or not), the
    // verifier could not prune them, and 6.1's gave up past 1M
    // instructions (`cargo xtask vm --kernel debian-6.1`).
    let fx: *mut ExecFixed = &mut ev.fixed;
    let data: *mut u8 = ev.data.as_mut_ptr();
    // SAFETY: fields of our per-CPU scratch event (volatile accesses).
    unsafe {
        core::ptr::write_volatile(&raw mut (*fx).argv_len, 0);
        core::ptr::write_volatile(&raw mut (*fx).argc, 0);
    }
    let mut i: u32 = 0;
    while i < MAX_ARGS {
        // SAFETY: user pointer; the helper faults safely.
        let p: *const u8 = match unsafe { bpf_probe_read_user(argv.add(i as usize)) } {
            Ok(p) => p,
            Err(_) => {
                // SAFETY: see above.
                unsafe { add_flags(fx, EXEC_F_ARGV_FAULT) };
                break;
            }
        };
        if p.is_null() {
            break;
        }
        // SAFETY: see above.
        let off = unsafe { core::ptr::read_volatile(&raw const (*fx).argv_len) } as usize;
        if off >= ARGV_MAX {
            // SAFETY: see above.
            unsafe { add_flags(fx, EXEC_F_ARGV_TRUNCATED) };
            break;
        }
        // SAFETY: `data` is the event's data area.
        let (_, n) = unsafe { copy_user_str(data, off, p) };
        if n <= 0 {
            // SAFETY: see above.
            unsafe { add_flags(fx, EXEC_F_ARGV_FAULT) };
            break;
        }
        // SAFETY: see above.
        unsafe {
            keep_string(
                fx,
                &raw mut (*fx).argv_len,
                &raw mut (*fx).argc,
                off,
                n,
                ARGV_MAX + ARG_LEN,
                EXEC_F_ARGV_TRUNCATED,
            )
        };
        i += 1;
    }
    if i == MAX_ARGS {
        // SAFETY: as above.
        let next = unsafe { bpf_probe_read_user::<*const u8>(argv.add(MAX_ARGS as usize)) };
        if next.is_ok_and(|p| !p.is_null()) {
            // SAFETY: see above.
            unsafe { add_flags(fx, EXEC_F_ARGV_TRUNCATED) };
        }
    }
}
