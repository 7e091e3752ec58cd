//! TLS libraries' own view of a failed handshake, for what the wire cannot
//! show (TLS 1.3 alerts are encrypted; verification details never travel).
//!
//! - OpenSSL: `SSL_get_verify_result` (a uretprobe: C code, safe) returns the
//!   X509 verification error that curl, Python and most clients ask for when
//!   they report a failure; `SSL_do_handshake` (entry and return; SSL_connect
//!   and SSL_accept run through it) gives the handshake's result and duration
//!   as the library saw them.
//! - Go: `crypto/tls.(*Conn).sendAlertLocked` at entry (never a uretprobe on
//!   Go code: Go moves stacks, a return probe corrupts it): the alert it is
//!   about to send, in RBX (Go's register ABI, amd64: receiver in RAX, first
//!   argument in RBX).

use agent_common::{
    EventKind, LostCause, TLSLIB_GO_ALERT, TLSLIB_OSSL_HS_DONE, TLSLIB_OSSL_HS_RET,
    TLSLIB_OSSL_VERIFY, TlsLibEvent,
};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};

/// Thread (pid_tgid) → boot ns of the first call of its OpenSSL handshake in
/// progress (non-blocking callers call again after each WANT_READ).
#[map]
static OSSL_HS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(8192, 0);

/// A handshake clock older than this belongs to a handshake that ended
/// without a return we saw (a failure the caller never retried).
const HS_STALE_NS: u64 = 60_000_000_000;

use crate::{AGENT_TGID, emit, inserted};

#[inline(always)]
fn send(kind: u32, value: i64) {
    send_aux(kind, value, 0);
}

#[inline(always)]
fn send_aux(kind: u32, value: i64, aux: u64) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        return;
    }
    let mut e = TlsLibEvent::default();
    e.hdr.kind = EventKind::TlsLib as u32;
    e.hdr.pid = id as u32;
    e.hdr.tgid = tgid;
    // SAFETY: helper without preconditions.
    e.hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    e.kind = kind;
    e.value = value;
    e.aux = aux;
    e.comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
    emit(&e);
}

// Each program comes twice: as a perf-event uprobe and as a uprobe_multi
// link program (`uprobe.multi`, kernel 6.6+), the same body. The agent
// loads the one its kernel attaches best: a uprobe_multi link is created
// with CAP_BPF + CAP_PERFMON, while a perf-event uprobe has needed
// CAP_SYS_ADMIN since the CVE-2025-38466 fix (perf_uprobe_event_init).

#[inline(always)]
fn verify_result(ctx: &RetProbeContext) -> u32 {
    let v: i64 = ctx.ret();
    if v != 0 {
        send(TLSLIB_OSSL_VERIFY, v);
    }
    0
}

#[uretprobe]
pub fn ossl_verify_result(ctx: RetProbeContext) -> u32 {
    verify_result(&ctx)
}

#[uretprobe(multi)]
pub fn ossl_verify_result_multi(ctx: RetProbeContext) -> u32 {
    verify_result(&ctx)
}

#[inline(always)]
fn send_alert(ctx: &ProbeContext) -> u32 {
    // SAFETY: `regs` is the probed task's saved register file, valid for this run.
    let alert = unsafe { (*ctx.regs).rbx } as u8;
    send(TLSLIB_GO_ALERT, alert as i64);
    0
}

#[uprobe]
pub fn go_send_alert(ctx: ProbeContext) -> u32 {
    send_alert(&ctx)
}

#[uprobe(multi)]
pub fn go_send_alert_multi(ctx: ProbeContext) -> u32 {
    send_alert(&ctx)
}

/// Entry of `SSL_do_handshake` / `SSL_connect` / `SSL_accept`: the first
/// call of a handshake starts its clock (retries keep it).
#[inline(always)]
fn hs_enter() -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: read-only lookup; the value is copied.
    match unsafe { OSSL_HS.get(&id) }.copied() {
        Some(start) if now.saturating_sub(start) < HS_STALE_NS => {}
        _ => {
            inserted(OSSL_HS.insert(&id, &now, 0), LostCause::OsslHsInsertFailed);
        }
    }
    0
}

#[uprobe]
pub fn ossl_hs_enter(_ctx: ProbeContext) -> u32 {
    hs_enter()
}

#[uprobe(multi)]
pub fn ossl_hs_enter_multi(_ctx: ProbeContext) -> u32 {
    hs_enter()
}

/// Return of the same: 1 is a completed handshake (its clock stops); ≤ 0 is
/// a failure or, for non-blocking callers, a retry to come (the clock runs
/// on). Either way a handful of events per handshake, never per record:
/// `SSL_get_error`, which would tell them apart, is also called for every
/// would-block read of a transfer, so it is not probed.
#[inline(always)]
fn hs_exit(ctx: &RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    let id = bpf_get_current_pid_tgid();
    // SAFETY: read-only lookup; the value is copied.
    let Some(start) = unsafe { OSSL_HS.get(&id) }.copied() else {
        return 0;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if ret == 1 {
        let _ = OSSL_HS.remove(&id);
        send_aux(TLSLIB_OSSL_HS_DONE, 1, now.saturating_sub(start));
    } else {
        send_aux(TLSLIB_OSSL_HS_RET, ret as i64, now.saturating_sub(start));
    }
    0
}

#[uretprobe]
pub fn ossl_hs_exit(ctx: RetProbeContext) -> u32 {
    hs_exit(&ctx)
}

#[uretprobe(multi)]
pub fn ossl_hs_exit_multi(ctx: RetProbeContext) -> u32 {
    hs_exit(&ctx)
}
