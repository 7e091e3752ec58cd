//! Packets captured on the wire by the cgroup socket-buffer programs: the
//! first records of TLS connections and DNS messages, with the process that
//! owns the socket (recorded at connect/sendmsg, when the kernel runs in that
//! process's context).

use crate::EventHeader;

/// Bytes of TLS payload kept per packet (a post-quantum ClientHello is ~1.8 KiB).
pub const WIRE_CAP_TLS: usize = 2048;
/// Bytes of DNS payload kept per packet (classic DNS over UDP fits in 512;
/// names and first answers are at the start of larger EDNS messages too).
pub const WIRE_CAP_DNS: usize = 512;
/// Bytes of an HTTP/1.x error response kept: its status line up to the
/// code and the first letters of the reason (`HTTP/1.1 404 Not`). Headers,
/// which can carry cookies, never leave the kernel.
pub const WIRE_CAP_HTTP: usize = 16;
/// Payload packets captured per direction of a TLS connection: a handshake
/// needs 2 to 5; what follows is application data the agent never wants (a
/// direction also stops after its first segment that starts with it).
pub const TLS_MAX_PKTS: u8 = 6;

/// `WireFixed::dir`: sent by a local socket.
pub const WIRE_DIR_EGRESS: u8 = 0;
/// `WireFixed::dir`: received by a local socket.
pub const WIRE_DIR_INGRESS: u8 = 1;

/// `WireFixed::kind`: a TLS connection's packet (payload may be empty for FIN/RST).
pub const WIRE_KIND_TLS: u8 = 1;
/// `WireFixed::kind`: a DNS message (UDP or TCP port 53).
pub const WIRE_KIND_DNS: u8 = 2;
/// `WireFixed::kind`: the status line of a plaintext HTTP/1.x response with
/// a 4xx or 5xx status, received by a connecting (client) socket.
pub const WIRE_KIND_HTTP: u8 = 3;

pub const IPPROTO_TCP_U8: u8 = 6;
pub const IPPROTO_UDP_U8: u8 = 17;

/// TCP flag bits as in the header.
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;

/// Fixed part of a captured packet; `cap_len` payload bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WireFixed {
    /// pid/tgid of the socket's owner (0 when unknown: e.g. the server side
    /// of an accepted connection); `ktime_ns` is when the packet passed.
    pub hdr: EventHeader,
    /// Socket cookie: one per socket, the key of a flow.
    pub cookie: u64,
    /// cgroup of the owner at connect time.
    pub cgroup_id: u64,
    /// TCP sequence number of the first payload byte (0 for UDP).
    pub seq: u32,
    /// Payload length on the wire (may exceed `cap_len`).
    pub payload_len: u32,
    pub uid: u32,
    /// Bytes of payload that follow.
    pub cap_len: u16,
    pub family: u16,
    /// Ports as in the packet, host byte order.
    pub sport: u16,
    pub dport: u16,
    /// `IPPROTO_*`.
    pub proto: u8,
    /// `WIRE_DIR_*`.
    pub dir: u8,
    /// `WIRE_KIND_*`.
    pub kind: u8,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// Addresses as in the packet (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Owner's command name.
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<WireFixed>() == 24 + 8 * 2 + 4 * 3 + 2 * 4 + 4 + 48);

/// A captured packet as written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WireRecord<const N: usize> {
    pub fixed: WireFixed,
    pub data: [u8; N],
}

/// Who owns a socket: recorded by the cgroup connect/sendmsg programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockOwner {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

/// In-kernel state of a TLS connection being captured.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsFlow {
    /// Payload packets captured so far, per `WIRE_DIR_*`.
    pub pkts: [u8; 2],
    pub _pad: [u8; 6],
}

/// `TlsLibEvent::kind`: OpenSSL `SSL_get_verify_result` returned `value`
/// (an `X509_V_ERR_*` code, never 0: success says nothing).
pub const TLSLIB_OSSL_VERIFY: u32 = 1;
/// `TlsLibEvent::kind`: Go `crypto/tls` is sending alert `value`.
pub const TLSLIB_GO_ALERT: u32 = 2;
/// `TlsLibEvent::kind`: an OpenSSL handshake (`SSL_do_handshake`,
/// `SSL_connect`, `SSL_accept`) completed; `aux` ns after its first call.
pub const TLSLIB_OSSL_HS_DONE: u32 = 3;
/// `TlsLibEvent::kind`: an OpenSSL handshake call returned `value` ≤ 0: a
/// failure, or (non-blocking callers) a retry to come; `aux` ns after the
/// handshake's first call.
pub const TLSLIB_OSSL_HS_RET: u32 = 4;

/// What a TLS library said about a handshake, from a uprobe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsLibEvent {
    pub hdr: EventHeader,
    /// `TLSLIB_*`.
    pub kind: u32,
    pub _pad: u32,
    pub value: i64,
    /// Kind-specific (a duration for the handshake kinds).
    pub aux: u64,
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<TlsLibEvent>() == 24 + 8 + 8 + 8 + 16);
