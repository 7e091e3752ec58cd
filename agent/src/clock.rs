//! The clocks the agent lines events up with: the kernel's boot-time clock
//! (every event's `ktime_ns`) and wall time.

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec for the duration of the call.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Boot-time clock now, ns: the clock of every kernel event (`bpf_ktime_get_boot_ns`).
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

/// `CLOCK_REALTIME - CLOCK_BOOTTIME`, to turn `bpf_ktime_get_boot_ns` into wall time.
pub fn boot_to_unix_offset() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME)
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
