//! The clocks the agent lines events up with: the kernel's boot-time clock
//! (every event's `ktime_ns`) and wall time.

fn clock_ns(id: rustix::time::ClockId) -> i128 {
    let ts = rustix::time::clock_gettime(id);
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Boot-time clock now, ns: the clock of every kernel event (`bpf_ktime_get_boot_ns`).
pub fn boot_ns() -> u64 {
    clock_ns(rustix::time::ClockId::Boottime) as u64
}

/// `CLOCK_REALTIME - CLOCK_BOOTTIME`, to turn `bpf_ktime_get_boot_ns` into wall time.
pub fn boot_to_unix_offset() -> i128 {
    clock_ns(rustix::time::ClockId::Realtime) - clock_ns(rustix::time::ClockId::Boottime)
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
