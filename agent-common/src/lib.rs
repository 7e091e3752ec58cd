//! The one definition of every type that crosses the kernel/user boundary.
//!
//! Owns: event layouts, map names, load-time global names, flag bits, limits.
//! Must not: contain logic beyond trivial accessors; depend on `std`.
//!
//! Every struct is `#[repr(C)]` with explicit padding and a compile-time size
//! guard, so a layout change on one side without the other fails the build.
#![no_std]

pub mod exec;
pub mod fs;
pub mod lost;
pub mod tcp;
pub mod wire;

pub use exec::*;
pub use fs::*;
pub use lost::*;
pub use tcp::*;
pub use wire::*;

/// Ring buffer that carries every event to userspace.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per-CPU array of loss counters, indexed by [`LostCause`].
pub const LOST_MAP: &str = "LOST";
/// Hash map of environment-variable names (zero padded) that may leave the kernel.
pub const ENV_ALLOW_MAP: &str = "ENV_ALLOW";
/// Array of `u64` words: bitmap of the first two bytes of allow-listed env entries.
pub const ENV_PREFIX_MAP: &str = "ENV_PREFIX";
/// Hash map `[u8; 16]` comm → 1: command names whose processes (and descendants) are tracked.
pub const TOOLS_MAP: &str = "TOOLS";
/// LRU hash map tgid → 1: processes in toolchain trees, maintained in the kernel.
pub const TRACKED_MAP: &str = "TRACKED";
/// Per-CPU array of counters of events kept in the kernel, indexed by [`KernelCounter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// LRU hash map socket cookie → [`SockOwner`].
pub const SOCK_OWNER_MAP: &str = "SOCK_OWNER";
/// LRU hash map socket cookie → [`TlsFlow`].
pub const TLS_FLOWS_MAP: &str = "TLS_FLOWS";

/// Counters of what the kernel side handled without sending an event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCounter {
    /// Established TCP connections from untracked processes, fast and without
    /// retransmits: counted, not sent.
    TcpQuietEstablished = 0,
}

/// Slots in the `COUNTERS` array.
pub const KERNEL_COUNTERS: u32 = 1;

/// Size of the events ring buffer (bytes, power of two).
pub const EVENTS_RING_BYTES: u32 = 8 << 20;

/// `FILTER_UID` when no uid filter is set (no account has this uid: it is
/// `(uid_t)-1`, which the kernel refuses as an id).
pub const NO_UID_FILTER: u32 = u32::MAX;

/// Load-time globals (`aya_ebpf::Global`) the loader overrides.
pub mod globals {
    /// tgid of the agent itself: its own execs are never reported.
    pub const AGENT_TGID: &str = "AGENT_TGID";
    /// `offsetof(struct task_struct, real_parent)`, from the running kernel's BTF.
    pub const TASK_REAL_PARENT_OFF: &str = "TASK_REAL_PARENT_OFF";
    /// `offsetof(struct task_struct, mm)`; 0 when unknown (argv/env are then read at `sys_enter`).
    pub const TASK_MM_OFF: &str = "TASK_MM_OFF";
    /// `offsetof(struct mm_struct, start_stack)`, followed by `arg_start`,
    /// `arg_end`, `env_start`, `env_end` (checked by the loader); 0 when unknown.
    pub const MM_START_STACK_OFF: &str = "MM_START_STACK_OFF";
    /// `offsetof(struct task_struct, tgid)`.
    pub const TASK_TGID_OFF: &str = "TASK_TGID_OFF";
    /// `offsetof(struct task_struct, exit_code)`.
    pub const TASK_EXIT_CODE_OFF: &str = "TASK_EXIT_CODE_OFF";
    /// Offset of `child_pid` in the `sched:sched_process_fork` record (varies by kernel).
    pub const FORK_CHILD_PID_OFF: &str = "FORK_CHILD_PID_OFF";
    /// `offsetof(struct task_struct, pid)`: a fork's child is a thread when
    /// its pid is not its tgid.
    pub const TASK_PID_OFF: &str = "TASK_PID_OFF";
    /// Offset of `group_dead` in `sched:sched_process_exit`, 0 when the kernel lacks it.
    pub const EXIT_GROUP_DEAD_OFF: &str = "EXIT_GROUP_DEAD_OFF";
    /// `offsetof(struct sock, sk_err)`.
    pub const SOCK_ERR_OFF: &str = "SOCK_ERR_OFF";
    /// `offsetof(struct sock_common, skc_net)`.
    pub const SKC_NET_OFF: &str = "SKC_NET_OFF";
    /// `offsetof(struct net, ns) + offsetof(struct ns_common, inum)`.
    pub const NET_INUM_OFF: &str = "NET_INUM_OFF";
    /// Offsets of `skaddr` and `state` in `tcp:tcp_retransmit_skb` (vary by kernel).
    pub const RETRANS_SKADDR_OFF: &str = "RETRANS_SKADDR_OFF";
    pub const RETRANS_STATE_OFF: &str = "RETRANS_STATE_OFF";
    /// Established connections from untracked processes faster than this (ns),
    /// without SYN retransmits, are counted in the kernel instead of sent. 0 sends all.
    pub const TCP_QUIET_NS: &str = "TCP_QUIET_NS";
    /// 1: children the agent forks are tracked (`agent trace`: the traced command).
    pub const TRACK_AGENT_CHILDREN: &str = "TRACK_AGENT_CHILDREN";
    /// 1: every successful exec's environment is read (`--all-execs`).
    pub const ENV_ALL_EXECS: &str = "ENV_ALL_EXECS";
    /// `--uid`: only execs of this real uid are recorded; [`super::NO_UID_FILTER`] records all.
    pub const FILTER_UID: &str = "FILTER_UID";
}

/// Discriminant of every event; decoded in userspace with `TryFrom<u32>`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An `execve`/`execveat` attempt, successful or failed ([`ExecEvent`]).
    Exec = 1,
    /// A process (thread-group leader) exited ([`ExitEvent`]).
    Exit = 2,
    /// A task was created by fork/clone ([`ForkEvent`]).
    Fork = 3,
    /// TCP connection set-up step ([`TcpEvent`]).
    Tcp = 4,
    /// A failed file operation of a tracked process ([`FsEvent`]).
    Fs = 5,
    /// A packet of a TLS connection or a DNS message ([`WireFixed`] + payload).
    Wire = 6,
    /// A TLS library's view of a handshake, from a uprobe ([`TlsLibEvent`]).
    TlsLib = 7,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            1 => Ok(Self::Exec),
            2 => Ok(Self::Exit),
            3 => Ok(Self::Fork),
            4 => Ok(Self::Tcp),
            5 => Ok(Self::Fs),
            6 => Ok(Self::Wire),
            7 => Ok(Self::TlsLib),
            other => Err(other),
        }
    }
}

/// Common header that starts every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Thread id of the task the event is about.
    pub pid: u32,
    /// Thread-group id (the "process id" users know).
    pub tgid: u32,
    /// Parent's tgid (`real_parent->tgid`), 0 when unknown.
    pub ppid: u32,
    /// `bpf_ktime_get_boot_ns()`: boot-time clock, nanoseconds.
    pub ktime_ns: u64,
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are `#[repr(C)]`, contain only integers and byte
    // arrays, and have explicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExitEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ForkEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TcpEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TcpConnStart {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FsEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FsInflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecFixed {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EnvKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WireFixed {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockOwner {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TlsFlow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TlsLibEvent {}
}
