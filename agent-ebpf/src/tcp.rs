//! TCP connection set-up: `sock:inet_sock_set_state` gives the SYN (in the
//! connecting process's context) and the outcome (often in softirq context,
//! attributed through the in-flight table); `tcp:tcp_retransmit_skb` counts
//! SYN retransmits. The failure reason is `sk->sk_err` at SYN_SENT → CLOSE:
//! ECONNREFUSED (reset), ETIMEDOUT, EHOSTUNREACH/ENETUNREACH (ICMP), or 0
//! when the application closed the socket first.

use agent_common::{
    AF_INET, EventKind, LostCause, TCP_ERR_UNKNOWN, TCP_F_NO_START, TCP_PHASE_ESTABLISHED,
    TCP_PHASE_FAILED, TcpConnStart, TcpEvent,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
    },
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};

use crate::{
    AGENT_TGID, NET_INUM_OFF, RETRANS_SKADDR_OFF, RETRANS_STATE_OFF, SKC_NET_OFF, SOCK_ERR_OFF,
    TCP_QUIET_NS, count, count_lost, emit, is_tracked, tp_field,
};
use agent_common::KernelCounter;

/// Client connections from SYN until they close, by socket address: the
/// outcome is attributed through it, and the wire capture reads the owner of
/// a TLS connection from it. A plain hash, not an LRU: every TCP socket
/// passes `TCP_CLOSE` before it is freed, where its entry goes, so nothing
/// leaks; and when 65,536 client connections are open at once, the next one
/// is counted under `tcp_table_full` instead of silently pushing out the
/// owner of a live one.
#[map]
pub(crate) static TCP_CONNS: HashMap<u64, TcpConnStart> =
    HashMap::with_max_entries(TCP_CONNS_MAX, 0);

/// Entries of [`TCP_CONNS`].
const TCP_CONNS_MAX: u32 = 65536;

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const IPPROTO_TCP: u16 = 6;

// sock:inet_sock_set_state (stable layout since 4.16)
const SS_SKADDR: usize = 8;
const SS_OLD: usize = 16;
const SS_NEW: usize = 20;
const SS_SPORT: usize = 24;
const SS_DPORT: usize = 26;
const SS_FAMILY: usize = 28;
const SS_PROTO: usize = 30;
const SS_SADDR: usize = 32;
const SS_DADDR: usize = 36;
const SS_SADDR6: usize = 40;
const SS_DADDR6: usize = 56;

#[inline(always)]
fn read_u32_at(base: u64, off: u32) -> u32 {
    if off == 0 || base == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u32) }.unwrap_or(0)
}

/// Network namespace inode of a socket.
#[inline(always)]
fn netns_of(sk: u64) -> u32 {
    let net_off = SKC_NET_OFF.load();
    let inum_off = NET_INUM_OFF.load();
    if inum_off == 0 || sk == 0 {
        return 0;
    }
    // SAFETY: as above.
    let net: u64 =
        unsafe { bpf_probe_read_kernel((sk + net_off as u64) as *const u64) }.unwrap_or(0);
    read_u32_at(net, inum_off)
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn tcp_state_tp(ctx: TracePointContext) -> u32 {
    let _ = try_state(&ctx);
    0
}

#[inline(always)]
fn try_state(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY (all reads below): offsets from the tracepoint's stable format.
    // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
    let proto: u16 = unsafe { tp_field(ctx, SS_PROTO) };
    if proto != IPPROTO_TCP {
        return Ok(());
    }
    // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
    let old: i32 = unsafe { tp_field(ctx, SS_OLD) };
    // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
    let new: i32 = unsafe { tp_field(ctx, SS_NEW) };
    if new != TCP_SYN_SENT && old != TCP_SYN_SENT {
        if new == TCP_CLOSE {
            // An established client connection ends: forget its owner. Most
            // closing sockets have none (servers): a lookup, without the
            // delete's lock.
            // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
            let sk: u64 = unsafe { tp_field(ctx, SS_SKADDR) };
            // SAFETY: read-only lookup.
            if unsafe { TCP_CONNS.get(&sk) }.is_some() {
                let _ = TCP_CONNS.remove(&sk);
            }
        }
        return Ok(());
    }
    // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
    let sk: u64 = unsafe { tp_field(ctx, SS_SKADDR) };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };

    if new == TCP_SYN_SENT {
        // connect() in the calling process's context. The start stays in the
        // kernel: userspace needs only the outcome, which carries the
        // start's pid, time and retransmits.
        let id = bpf_get_current_pid_tgid();
        let tgid = (id >> 32) as u32;
        if tgid == AGENT_TGID.load() {
            return Ok(());
        }
        let ugid = bpf_get_current_uid_gid();
        let start = TcpConnStart {
            start_ns: now,
            // SAFETY: helper without preconditions.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            pid: id as u32,
            tgid,
            uid: ugid as u32,
            syn_retrans: 0,
            comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
        };
        if TCP_CONNS.insert(&sk, &start, 0).is_err() {
            count_lost(LostCause::TcpTableFull);
        }
        return Ok(());
    }

    // SYN_SENT → something: the outcome. The start is copied into a
    // zeroed local with a flag, not an `Option`: LLVM computes
    // `now - start_ns` before testing the `None` case, a read of the
    // uninitialised payload that verifiers before 6.5 reject ("invalid read
    // from stack"; seen on Debian's 6.1 in `cargo xtask vm`).
    let mut s = TcpConnStart::default();
    // SAFETY: map value pointer valid for this program's run; copied out at once.
    let have_start = match unsafe { TCP_CONNS.get(&sk) } {
        Some(p) => {
            s = *p;
            true
        }
        None => false,
    };
    if new == TCP_ESTABLISHED {
        // Routine: fast, no retransmit, outside toolchain trees. Counted
        // here, before anything else is read. The entry stays: it names the
        // socket's owner for the wire capture until the socket closes.
        let quiet = TCP_QUIET_NS.load();
        if have_start
            && quiet != 0
            && s.syn_retrans == 0
            && now.saturating_sub(s.start_ns) < quiet
            && !is_tracked(s.tgid)
        {
            count(KernelCounter::TcpQuietEstablished);
            return Ok(());
        }
    } else if have_start {
        let _ = TCP_CONNS.remove(&sk);
    }

    let mut ev = TcpEvent::default();
    ev.hdr.kind = EventKind::Tcp as u32;
    ev.hdr.ktime_ns = now;
    addresses(ctx, &mut ev);
    ev.skaddr = sk;
    if have_start {
        fill(&mut ev, &s);
    } else {
        count_lost(LostCause::TcpNoStart);
        ev.flags |= TCP_F_NO_START;
    }
    // The socket's namespace, read only for what is sent.
    ev.netns = netns_of(sk);
    if new == TCP_ESTABLISHED {
        ev.phase = TCP_PHASE_ESTABLISHED;
    } else {
        ev.phase = TCP_PHASE_FAILED;
        let off = SOCK_ERR_OFF.load();
        ev.err = if off == 0 {
            TCP_ERR_UNKNOWN
        } else {
            read_u32_at(sk, off) as i32
        };
    }
    emit(&ev);
    Ok(())
}

/// The connection's family, ports and addresses, from the trace record.
#[inline(always)]
fn addresses(ctx: &TracePointContext, ev: &mut TcpEvent) {
    // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
    ev.family = unsafe { tp_field(ctx, SS_FAMILY) };
    // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
    ev.sport = unsafe { tp_field(ctx, SS_SPORT) };
    // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
    ev.dport = unsafe { tp_field(ctx, SS_DPORT) };
    if ev.family == AF_INET {
        // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
        let s: [u8; 4] = unsafe { tp_field(ctx, SS_SADDR) };
        // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
        let d: [u8; 4] = unsafe { tp_field(ctx, SS_DADDR) };
        ev.saddr[..4].copy_from_slice(&s);
        ev.daddr[..4].copy_from_slice(&d);
    } else {
        // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
        ev.saddr = unsafe { tp_field(ctx, SS_SADDR6) };
        // SAFETY: a field of this tracepoint's record, at its offset in the stable format.
        ev.daddr = unsafe { tp_field(ctx, SS_DADDR6) };
    }
}

#[inline(always)]
fn fill(ev: &mut TcpEvent, s: &TcpConnStart) {
    ev.hdr.pid = s.pid;
    ev.hdr.tgid = s.tgid;
    ev.start_ns = s.start_ns;
    ev.cgroup_id = s.cgroup_id;
    ev.uid = s.uid;
    ev.syn_retrans = s.syn_retrans;
    ev.comm = s.comm;
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retrans_tp(ctx: TracePointContext) -> u32 {
    let state_off = RETRANS_STATE_OFF.load() as usize;
    let sk_off = RETRANS_SKADDR_OFF.load() as usize;
    if state_off == 0 || sk_off == 0 {
        return 0;
    }
    // SAFETY: offsets read from this kernel's tracepoint format at load time.
    let state: i32 = unsafe { ctx.read_at(state_off) }.unwrap_or(0);
    if state != TCP_SYN_SENT {
        return 0;
    }
    // SAFETY: as above.
    let sk: u64 = unsafe { ctx.read_at(sk_off) }.unwrap_or(0);
    if let Some(s) = TCP_CONNS.get_ptr_mut(&sk) {
        // SAFETY: map value pointer valid for this program's run.
        unsafe { (*s).syn_retrans += 1 };
    }
    0
}
