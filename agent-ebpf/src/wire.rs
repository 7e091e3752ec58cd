//! Wire capture for TLS and DNS.
//!
//! `owner_*` (cgroup connect/sendmsg hooks, process context) remember which
//! process owns each socket, by socket cookie. `wire_egress`/`wire_ingress`
//! (cgroup socket-buffer hooks, any context) look at every packet of every
//! local socket and keep:
//! - DNS: every UDP or TCP payload to or from port 53 (first 512 bytes);
//! - TLS: for sockets whose first payload is a ClientHello (in either
//!   direction), the first `TLS_MAX_PKTS` payload packets per direction (first
//!   2 KiB of each) and the FIN/RST that ends it;
//! - HTTP: the status line (first 16 bytes) of a plaintext HTTP/1.x 4xx or
//!   5xx response that a connecting socket receives (a GOPROXY's 404 for a
//!   toolchain, a proxy's 504).
//!
//! The cost on traffic that is neither is a header parse and one hash lookup
//! per payload packet of a connection's first segments; past them (see
//! [`WIRE_WINDOW_SEGS`]) a header parse and a read of the socket's segment
//! counter. The programs never drop or change a packet.

use agent_common::{
    AF_INET, AF_INET6, EventKind, IPPROTO_TCP_U8, IPPROTO_UDP_U8, SockOwner, TCP_FLAG_FIN,
    TCP_FLAG_RST, TLS_MAX_PKTS, TlsFlow, WIRE_CAP_DNS, WIRE_CAP_HTTP, WIRE_CAP_TLS,
    WIRE_DIR_EGRESS, WIRE_DIR_INGRESS, WIRE_KIND_DNS, WIRE_KIND_HTTP, WIRE_KIND_TLS, WireFixed,
    WireRecord,
};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        generated::{bpf_get_socket_cookie, bpf_skb_load_bytes, bpf_tcp_sock},
    },
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::LruHashMap,
    programs::{SkBuffContext, SockAddrContext},
};

use crate::{AGENT_TGID, EVENTS, count_lost, inserted, tcp::TCP_CONNS, wake_flags};
use agent_common::LostCause;

/// Socket cookie → owner, set at connect()/sendmsg() in the caller's context.
#[map]
static SOCK_OWNER: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(65536, 0);

/// Socket (kernel address) → capture state of a TLS connection.
#[map]
static TLS_FLOWS: LruHashMap<u64, TlsFlow> = LruHashMap::with_max_entries(16384, 0);

const ETH_P_IP_BE: u32 = 0x0008; // htons(0x0800) as the u32 in __sk_buff
const ETH_P_IPV6_BE: u32 = 0xDD86; // htons(0x86DD)
const DNS_PORT: u16 = 53;

#[inline(always)]
fn record_owner(ctx: &SockAddrContext, overwrite: bool) {
    // Only DNS needs an owner from here (TLS connections get theirs from the
    // TCP connection table): one compare for every other connect/sendmsg.
    // SAFETY: the kernel hands a valid bpf_sock_addr; a plain field read.
    let port = unsafe { (*ctx.sock_addr).user_port } as u16;
    if u16::from_be(port) != DNS_PORT {
        return;
    }
    // SAFETY: the context is a valid bpf_sock_addr for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup.
    if !overwrite && unsafe { SOCK_OWNER.get(&cookie) }.is_some() {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let owner = SockOwner {
        pid: id as u32,
        tgid: (id >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        _pad: 0,
        // SAFETY: helper without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
    };
    inserted(
        SOCK_OWNER.insert(&cookie, &owner, 0),
        LostCause::SockOwnerInsertFailed,
    );
}

#[cgroup_sock_addr(connect4)]
pub fn owner_connect4(ctx: SockAddrContext) -> i32 {
    record_owner(&ctx, true);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn owner_connect6(ctx: SockAddrContext) -> i32 {
    record_owner(&ctx, true);
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn owner_sendmsg4(ctx: SockAddrContext) -> i32 {
    record_owner(&ctx, false);
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn owner_sendmsg6(ctx: SockAddrContext) -> i32 {
    record_owner(&ctx, false);
    1
}

#[cgroup_skb(egress)]
pub fn wire_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_wire(&ctx, WIRE_DIR_EGRESS);
    1
}

#[cgroup_skb(ingress)]
pub fn wire_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_wire(&ctx, WIRE_DIR_INGRESS);
    1
}

/// A `T` at `off` in the packet: loaded straight from the linear data when
/// it lies there (a cgroup_skb program may read packet data), else through
/// `bpf_skb_load_bytes`. Header offsets are below 256.
#[inline(always)]
fn pkt<T: Copy>(ctx: &SkBuffContext, off: usize) -> Result<T, i64> {
    let skb = ctx.as_ptr() as *const aya_ebpf::bindings::__sk_buff;
    // SAFETY: plain field reads of the context.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if off < 256 {
        // One packet pointer, compared at a constant offset from itself: the
        // verifier carries the proven range to the load (a pointer summed
        // differently would be a new one, unproven).
        // SAFETY: reading a local variable.
        let o = unsafe { core::ptr::read_volatile(&off) } & 0xff;
        let p = (data as *const u8).wrapping_add(o);
        if p.wrapping_add(core::mem::size_of::<T>()) as usize <= end {
            // SAFETY: inside the linear data, checked just above (and by the verifier).
            return Ok(unsafe { core::ptr::read_unaligned(p as *const T) });
        }
    }
    ctx.load(off)
}

fn try_wire(ctx: &SkBuffContext, dir: u8) -> Result<(), i64> {
    let skb = ctx.as_ptr() as *const aya_ebpf::bindings::__sk_buff;
    // SAFETY: the kernel hands a valid __sk_buff; this is a plain field read.
    let protocol = unsafe { (*skb).protocol };
    let total = ctx.len();
    let mut f = WireFixed::default();
    // The fast path reads only what decides whether the packet is kept
    // (protocol, header lengths, ports, flags); addresses and sequence
    // numbers are read for kept packets only.
    let l4: usize = if protocol == ETH_P_IP_BE {
        let h: [u8; 10] = pkt(ctx, 0)?;
        // Fragments after the first carry no L4 header; skip every fragment.
        if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
            return Ok(());
        }
        f.proto = h[9];
        f.family = AF_INET;
        ((h[0] & 0x0f) as usize) * 4
    } else if protocol == ETH_P_IPV6_BE {
        // Extension headers are rare on these flows and not followed.
        f.proto = pkt(ctx, 6)?;
        f.family = AF_INET6;
        40
    } else {
        return Ok(());
    };
    if f.proto != IPPROTO_TCP_U8 && f.proto != IPPROTO_UDP_U8 {
        return Ok(());
    }
    let payload: usize = if f.proto == IPPROTO_TCP_U8 {
        let h: [u8; 14] = pkt(ctx, l4)?;
        f.sport = u16::from_be_bytes([h[0], h[1]]);
        f.dport = u16::from_be_bytes([h[2], h[3]]);
        f.seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        f.tcp_flags = h[13];
        l4 + ((h[12] >> 4) as usize) * 4
    } else {
        let ports: [u8; 4] = pkt(ctx, l4)?;
        f.sport = u16::from_be_bytes([ports[0], ports[1]]);
        f.dport = u16::from_be_bytes([ports[2], ports[3]]);
        l4 + 8
    };
    f.payload_len = (total as usize).saturating_sub(payload) as u32;
    f.dir = dir;

    if f.sport == DNS_PORT || f.dport == DNS_PORT {
        if f.payload_len == 0 {
            return Ok(());
        }
        f.kind = WIRE_KIND_DNS;
        // SAFETY: the skb is valid for the helper.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        if !owner(cookie, &mut f) {
            return Ok(());
        }
        capture::<WIRE_CAP_DNS>(ctx, &mut f, payload);
        return Ok(());
    }
    if f.proto != IPPROTO_TCP_U8 {
        return Ok(());
    }
    let ends = f.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0;
    if f.payload_len == 0 && !ends {
        return Ok(());
    }
    // The socket's kernel address keys the flow (and the TCP connection
    // table); the cookie, dearer (a shared counter), is taken for kept packets.
    // SAFETY: the kernel hands a valid __sk_buff; a plain field read.
    let sk_ptr = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk_ptr.is_null() {
        return Ok(());
    }
    let sk = sk_ptr as u64;
    if !ends && past_handshake(sk_ptr, dir) {
        return Ok(());
    }
    let d = (dir & 1) as usize;
    match TLS_FLOWS.get_ptr_mut(&sk) {
        Some(flow) => {
            if ends {
                let _ = TLS_FLOWS.remove(&sk);
            } else {
                // SAFETY: map value pointer, valid while this program runs.
                let n = unsafe { (*flow).pkts[d] };
                if n >= TLS_MAX_PKTS {
                    return Ok(());
                }
                // A segment that starts with application data is the last one
                // this direction needs (the client's TLS 1.3 Finished, or data
                // after the handshake); once both directions are there the
                // handshake is over and the flow is forgotten.
                let first: u8 = pkt(ctx, payload).unwrap_or(0);
                let next = if first == 0x17 { TLS_MAX_PKTS } else { n + 1 };
                // SAFETY: as above.
                let other = unsafe {
                    (*flow).pkts[d] = next;
                    (*flow).pkts[d ^ 1]
                };
                if next >= TLS_MAX_PKTS && other >= TLS_MAX_PKTS {
                    let _ = TLS_FLOWS.remove(&sk);
                }
            }
        }
        None => {
            if f.payload_len < 6 {
                return Ok(());
            }
            let h: [u8; 6] = pkt(ctx, payload)?;
            if h[0] == b'H' {
                return http_error(ctx, &mut f, sk, payload);
            }
            // A handshake record (0x16) of TLS 1.0–1.3 record versions whose
            // first message is a ClientHello (1).
            if h[0] != 0x16 || h[1] != 3 || h[2] > 4 || h[5] != 1 {
                return Ok(());
            }
            // The server end of a loopback connection: its client end, on
            // this host too, is captured and tells the same story.
            if dir == WIRE_DIR_INGRESS && from_loopback(ctx, f.family) {
                return Ok(());
            }
            let mut flow = TlsFlow::default();
            flow.pkts[d] = 1;
            inserted(
                TLS_FLOWS.insert(&sk, &flow, 0),
                LostCause::TlsFlowInsertFailed,
            );
        }
    }
    f.kind = WIRE_KIND_TLS;
    // SAFETY: the skb is valid for the helper.
    f.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The TCP connection table knows who connected (client side); accepted
    // sockets are not in it.
    // SAFETY: read-only lookup; the value is copied.
    if let Some(o) = unsafe { TCP_CONNS.get(&sk) } {
        if o.tgid == AGENT_TGID.load() {
            let _ = TLS_FLOWS.remove(&sk);
            return Ok(());
        }
        owned_by(&mut f, o);
    }
    capture::<WIRE_CAP_TLS>(ctx, &mut f, payload);
    Ok(())
}

/// A segment received by a connecting socket that starts a plaintext
/// HTTP/1.x response with a 4xx or 5xx status: its status line is captured.
/// Every other segment that starts with `H` costs one more 12-byte read.
#[inline(always)]
fn http_error(ctx: &SkBuffContext, f: &mut WireFixed, sk: u64, payload: usize) -> Result<(), i64> {
    if f.dir != WIRE_DIR_INGRESS || f.payload_len < 12 {
        return Ok(());
    }
    let s: [u8; 12] = pkt(ctx, payload)?;
    let digit = |b: u8| b.is_ascii_digit();
    if &s[..7] != b"HTTP/1." || s[8] != b' ' || !(s[9] == b'4' || s[9] == b'5') {
        return Ok(());
    }
    if !digit(s[10]) || !digit(s[11]) {
        return Ok(());
    }
    // Only the connecting side is in the TCP table: a server's own
    // responses are egress, and requests never start with `HTTP/`.
    // SAFETY: read-only lookup; the value is copied.
    let Some(o) = (unsafe { TCP_CONNS.get(&sk) }) else {
        return Ok(());
    };
    if o.tgid == AGENT_TGID.load() {
        return Ok(());
    }
    owned_by(f, o);
    f.kind = WIRE_KIND_HTTP;
    // SAFETY: the skb is valid for the helper.
    f.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    capture::<WIRE_CAP_HTTP>(ctx, f, payload);
    Ok(())
}

/// Data segments of a connection in one direction after which no capture
/// wants its packets: a TLS handshake is a few (captures stop at
/// TLS_MAX_PKTS packets, each one segment or more), a large certificate
/// chain a dozen.
const WIRE_WINDOW_SEGS: u32 = 64;

/// The connection is past its first WIRE_WINDOW_SEGS data segments in this
/// direction: the bulk of every transfer then costs a field read, not a flow
/// lookup and a payload read. The kernel has counted an outgoing segment
/// before the egress hook and counts an incoming one after the ingress hook.
#[inline(always)]
fn past_handshake(sk: *mut aya_ebpf::bindings::bpf_sock, dir: u8) -> bool {
    // SAFETY: `sk` is the packet's non-null socket; the helper returns null
    // for anything but a full TCP socket.
    let tp = unsafe { bpf_tcp_sock(sk) };
    if tp.is_null() {
        return false;
    }
    // Both fields are read, each at its constant offset: the verifier
    // rejects arithmetic on this pointer, which choosing the field by `dir`
    // would compile to.
    // SAFETY: non-null bpf_tcp_sock, plain field reads.
    let (out, inc) = unsafe {
        (
            core::ptr::read_volatile(&(*tp).data_segs_out),
            core::ptr::read_volatile(&(*tp).data_segs_in),
        )
    };
    (if dir == WIRE_DIR_EGRESS { out } else { inc }) > WIRE_WINDOW_SEGS
}

/// The packet's source is 127.0.0.0/8 or ::1.
#[inline(always)]
fn from_loopback(ctx: &SkBuffContext, family: u16) -> bool {
    if family == AF_INET {
        ctx.load::<u8>(12).is_ok_and(|b| b == 127)
    } else {
        ctx.load::<[u8; 16]>(8)
            .is_ok_and(|a| a == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    }
}

/// The owner fields from the TCP connection table's entry (who connected).
#[inline(always)]
fn owned_by(f: &mut WireFixed, o: &agent_common::TcpConnStart) {
    f.hdr.pid = o.pid;
    f.hdr.tgid = o.tgid;
    f.uid = o.uid;
    f.cgroup_id = o.cgroup_id;
    f.comm = o.comm;
}

/// Fill the owner fields; false for the agent's own sockets.
#[inline(always)]
fn owner(cookie: u64, f: &mut WireFixed) -> bool {
    f.cookie = cookie;
    // SAFETY: read-only lookup; the value is copied.
    if let Some(o) = unsafe { SOCK_OWNER.get(&cookie) } {
        if o.tgid == AGENT_TGID.load() {
            return false;
        }
        f.hdr.pid = o.pid;
        f.hdr.tgid = o.tgid;
        f.uid = o.uid;
        f.cgroup_id = o.cgroup_id;
        f.comm = o.comm;
    }
    true
}

/// Reserve a record with room for `N` (a power of two) payload bytes, copy
/// what there is, submit.
#[inline(always)]
fn capture<const N: usize>(ctx: &SkBuffContext, f: &mut WireFixed, payload: usize) {
    f.hdr.kind = EventKind::Wire as u32;
    // SAFETY: helper without preconditions.
    f.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    if f.family == AF_INET {
        if let Ok(a) = ctx.load::<[u8; 8]>(12) {
            f.saddr[..4].copy_from_slice(&a[..4]);
            f.daddr[..4].copy_from_slice(&a[4..]);
        }
    } else {
        f.saddr = ctx.load(8).unwrap_or([0; 16]);
        f.daddr = ctx.load(24).unwrap_or([0; 16]);
    }
    let flags = wake_flags(core::mem::size_of::<WireRecord<N>>() as u64);
    let Some(mut entry) = EVENTS.reserve::<WireRecord<N>>(0) else {
        count_lost(LostCause::RingFull);
        return;
    };
    let rec = entry.as_mut_ptr();
    let mut len = f.payload_len as usize;
    if len > N {
        len = N;
    }
    if len > 0 {
        // `len` is in 1..=N here; written so that the verifier sees that range
        // (N is a power of two), whatever order the compiler puts the checks in.
        let n = ((len - 1) & (N - 1)) + 1;
        // SAFETY: `rec` points at reserved ring memory of size_of::<WireRecord<N>>();
        // `n` is in 1..=N, the size of `data`; the helper bounds-checks the skb.
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                payload as u32,
                (*rec).data.as_mut_ptr() as *mut _,
                n as u32,
            )
        };
        if r != 0 {
            len = 0;
        }
    }
    f.cap_len = len as u16;
    // SAFETY: writing the fixed part of the reserved record.
    unsafe { core::ptr::write(&mut (*rec).fixed, *f) };
    entry.submit(flags);
}
