//! TCP connection set-up events.

use crate::EventHeader;

/// `TcpEvent::phase`: SYN sent (process context: the connecting process).
pub const TCP_PHASE_START: u32 = 1;
/// `TcpEvent::phase`: SYN_SENT → ESTABLISHED.
pub const TCP_PHASE_ESTABLISHED: u32 = 2;
/// `TcpEvent::phase`: SYN_SENT → CLOSE; `err` says why (0: closed by the application).
pub const TCP_PHASE_FAILED: u32 = 3;

/// `TcpEvent::err` of a failure whose reason cannot be read: without kernel
/// BTF the offset of `sk_err` is unknown.
pub const TCP_ERR_UNKNOWN: i32 = -1;

/// Flag: the outcome was seen without its start (pid/uid/start time unknown).
pub const TCP_F_NO_START: u32 = 1 << 0;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// One step of an outgoing TCP connection set-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpEvent {
    /// `pid`/`tgid` of the process that called connect (from the start, for
    /// outcomes that happen in softirq context).
    pub hdr: EventHeader,
    /// Boot-time ns when the SYN was sent.
    pub start_ns: u64,
    /// Kernel socket address: pairs start and outcome (never printed).
    pub skaddr: u64,
    pub cgroup_id: u64,
    /// One of `TCP_PHASE_*`.
    pub phase: u32,
    /// `TCP_F_*`.
    pub flags: u32,
    /// SYN retransmissions so far.
    pub syn_retrans: u32,
    /// `sk->sk_err` at the failure (positive errno), 0 otherwise;
    /// [`TCP_ERR_UNKNOWN`] when it cannot be read.
    pub err: i32,
    pub uid: u32,
    /// Network namespace inode.
    pub netns: u32,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<TcpEvent>() == 24 + 8 * 3 + 4 * 6 + 2 * 4 + 16 * 3);

/// In-kernel state of a connection between SYN and outcome.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnStart {
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub syn_retrans: u32,
    pub comm: [u8; 16],
}
