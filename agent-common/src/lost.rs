//! Loss accounting: every place the kernel side can drop data has a cause.

/// Why an event (or part of one) was lost in the kernel.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostCause {
    /// `bpf_ringbuf_output` failed: userspace did not drain fast enough.
    RingFull = 0,
    /// The in-flight exec table was full at `sys_enter_execve`.
    ExecTableFull = 1,
    /// No per-CPU scratch buffer (should never happen).
    Scratch = 2,
    /// An exec completed whose `sys_enter` was never seen (agent started mid-exec,
    /// or the in-flight entry was lost); reported without argv/env.
    ExecNoEnter = 3,
    /// The client connection table (65,536 connections open at once) was
    /// full at SYN time: that connection is not followed.
    TcpTableFull = 4,
    /// A TCP outcome whose SYN was not seen (agent started mid-connect).
    TcpNoStart = 5,
    /// The in-flight file-access table (4096 threads of toolchain trees
    /// inside open/stat/… at once) was full: that access is not followed.
    FsTableFull = 6,
    /// A socket's owner could not be recorded (LRU map: only without memory).
    SockOwnerInsertFailed = 7,
    /// A TLS connection's capture state could not be recorded (LRU map).
    TlsFlowInsertFailed = 8,
    /// An OpenSSL handshake's start time could not be recorded (LRU map).
    OsslHsInsertFailed = 9,
    /// A process could not be marked as part of a tracked tree (LRU map).
    TrackedInsertFailed = 10,
}

/// Number of [`LostCause`] slots in the `LOST` per-CPU array.
pub const LOST_CAUSES: u32 = 11;

impl LostCause {
    /// Every cause, in index order.
    pub const ALL: [LostCause; LOST_CAUSES as usize] = [
        LostCause::RingFull,
        LostCause::ExecTableFull,
        LostCause::Scratch,
        LostCause::ExecNoEnter,
        LostCause::TcpTableFull,
        LostCause::TcpNoStart,
        LostCause::FsTableFull,
        LostCause::SockOwnerInsertFailed,
        LostCause::TlsFlowInsertFailed,
        LostCause::OsslHsInsertFailed,
        LostCause::TrackedInsertFailed,
    ];

    /// Stable name used in logs, JSON and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            LostCause::RingFull => "ring_full",
            LostCause::ExecTableFull => "exec_table_full",
            LostCause::Scratch => "scratch",
            LostCause::ExecNoEnter => "exec_no_enter",
            LostCause::TcpTableFull => "tcp_table_full",
            LostCause::TcpNoStart => "tcp_no_start",
            LostCause::FsTableFull => "fs_table_full",
            LostCause::SockOwnerInsertFailed => "sock_owner_insert_failed",
            LostCause::TlsFlowInsertFailed => "tls_flow_insert_failed",
            LostCause::OsslHsInsertFailed => "ossl_hs_insert_failed",
            LostCause::TrackedInsertFailed => "tracked_insert_failed",
        }
    }
}
