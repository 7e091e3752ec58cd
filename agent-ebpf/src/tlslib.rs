//! TLS libraries' own view of a failed handshake, for what the wire cannot
//! show (TLS 1.3 alerts are encrypted; verification details never travel).
//!
//! - OpenSSL: `SSL_get_verify_result` (a uretprobe: C code, safe) returns the
//!   X509 verification error that curl, Python and most clients ask for when
//!   they report a failure.
//! - Go: `crypto/tls.(*Conn).sendAlertLocked` at entry (never a uretprobe on
//!   Go code: Go moves stacks, a return probe corrupts it): the alert it is
//!   about to send, in RBX (Go's register ABI, amd64: receiver in RAX, first
//!   argument in RBX).

use agent_common::{EventKind, TLSLIB_GO_ALERT, TLSLIB_OSSL_VERIFY, TlsLibEvent};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{AGENT_TGID, emit};

#[inline(always)]
fn send(kind: u32, value: i64) {
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
    e.comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
    emit(&e);
}

#[uretprobe]
pub fn ossl_verify_result(ctx: RetProbeContext) -> u32 {
    let v: i64 = ctx.ret();
    if v != 0 {
        send(TLSLIB_OSSL_VERIFY, v);
    }
    0
}

#[uprobe]
pub fn go_send_alert(ctx: ProbeContext) -> u32 {
    // SAFETY: `regs` is the probed task's saved register file, valid for this run.
    let alert = unsafe { (*ctx.regs).rbx } as u8;
    send(TLSLIB_GO_ALERT, alert as i64);
    0
}
