//! Do-nothing programs that `agent check` loads and attaches to learn which
//! hook kinds this kernel allows. Each returns the "allow / pass" value of
//! its program type so attaching it never changes behaviour.

use aya_ebpf::{
    macros::{
        btf_tracepoint, cgroup_skb, cgroup_sock_addr, fentry, kprobe, raw_tracepoint, sock_ops,
        tracepoint, uprobe,
    },
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, SkBuffContext,
        SockAddrContext, SockOpsContext, TracePointContext,
    },
};

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn probe_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn probe_raw_tracepoint(_ctx: RawTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn probe_tp_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "do_exit")]
pub fn probe_fentry(_ctx: FEntryContext) -> i32 {
    0
}

#[uprobe]
pub fn probe_uprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[uprobe(multi)]
pub fn probe_uprobe_multi(_ctx: ProbeContext) -> u32 {
    0
}

#[cgroup_sock_addr(connect4)]
pub fn probe_sock_addr(_ctx: SockAddrContext) -> i32 {
    1
}

#[sock_ops]
pub fn probe_sock_ops(_ctx: SockOpsContext) -> u32 {
    0
}

#[cgroup_skb]
pub fn probe_cgroup_skb(_ctx: SkBuffContext) -> i32 {
    1
}
