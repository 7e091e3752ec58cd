//! The table itself: each signal's options in order of preference and the
//! programs of each (names as in the BPF object).

use super::{Attach, HookKind, HookOption, Prog, Signal, TLS_UPROBES, TpArg};

const EXEC_TP: &[Prog] = &[
    // First: a failed exec's environment is read there (a program of its
    // own so that 6.1's verifier accepts both halves).
    Prog {
        name: "exec_env_tail",
        attach: Attach::TailCall("EXEC_TAIL", 0),
        required: true,
    },
    Prog {
        name: "exec_enter_tp",
        attach: Attach::Tracepoint("syscalls", "sys_enter_execve"),
        required: true,
    },
    Prog {
        name: "exec_exit_tp",
        attach: Attach::Tracepoint("syscalls", "sys_exit_execve"),
        required: true,
    },
    Prog {
        name: "exec_sched_tp",
        attach: Attach::Tracepoint("sched", "sched_process_exec"),
        required: true,
    },
    Prog {
        name: "execat_enter_tp",
        attach: Attach::Tracepoint("syscalls", "sys_enter_execveat"),
        required: false,
    },
    // The same program as for execve (one load, one verification).
    Prog {
        name: "exec_exit_tp",
        attach: Attach::Tracepoint("syscalls", "sys_exit_execveat"),
        required: false,
    },
];

const LINEAGE_RAW: &[Prog] = &[Prog {
    name: "fork_raw",
    attach: Attach::RawTracepoint("sched_process_fork"),
    required: true,
}];

const LINEAGE_TP: &[Prog] = &[Prog {
    name: "fork_tp",
    attach: Attach::Tracepoint("sched", "sched_process_fork"),
    required: true,
}];

const EXIT_RAW: &[Prog] = &[Prog {
    name: "exit_raw",
    attach: Attach::RawTracepoint("sched_process_exit"),
    required: true,
}];

const EXIT_TP: &[Prog] = &[Prog {
    name: "exit_tp",
    attach: Attach::Tracepoint("sched", "sched_process_exit"),
    required: true,
}];

const TCP_TP: &[Prog] = &[
    Prog {
        name: "tcp_state_tp",
        attach: Attach::Tracepoint("sock", "inet_sock_set_state"),
        required: true,
    },
    Prog {
        name: "tcp_retrans_tp",
        attach: Attach::Tracepoint("tcp", "tcp_retransmit_skb"),
        required: false,
    },
];

const fn fs_prog(name: &'static str, syscall: &'static str) -> Prog {
    Prog {
        name,
        attach: Attach::Tracepoint("syscalls", syscall),
        required: false,
    }
}

const FS_TP: &[Prog] = &[
    fs_prog("fs_openat_tp", "sys_enter_openat"),
    fs_prog("fs_exit_tp", "sys_exit_openat"),
    fs_prog("fs_creat_tp", "sys_enter_creat"),
    fs_prog("fs_exit_tp", "sys_exit_creat"),
    fs_prog("fs_mkdir_tp", "sys_enter_mkdir"),
    fs_prog("fs_exit_tp", "sys_exit_mkdir"),
    fs_prog("fs_mkdirat_tp", "sys_enter_mkdirat"),
    fs_prog("fs_exit_tp", "sys_exit_mkdirat"),
    fs_prog("fs_unlink_tp", "sys_enter_unlink"),
    fs_prog("fs_exit_tp", "sys_exit_unlink"),
    fs_prog("fs_unlinkat_tp", "sys_enter_unlinkat"),
    fs_prog("fs_exit_tp", "sys_exit_unlinkat"),
    fs_prog("fs_rename_tp", "sys_enter_rename"),
    fs_prog("fs_exit_tp", "sys_exit_rename"),
    fs_prog("fs_renameat2_tp", "sys_enter_renameat2"),
    fs_prog("fs_exit_tp", "sys_exit_renameat2"),
];

const WIRE_CGROUP: &[Prog] = &[
    Prog {
        name: "owner_connect4",
        attach: Attach::CgroupSockAddr,
        required: false,
    },
    Prog {
        name: "owner_connect6",
        attach: Attach::CgroupSockAddr,
        required: false,
    },
    Prog {
        name: "owner_sendmsg4",
        attach: Attach::CgroupSockAddr,
        required: false,
    },
    Prog {
        name: "owner_sendmsg6",
        attach: Attach::CgroupSockAddr,
        required: false,
    },
    Prog {
        name: "wire_egress",
        attach: Attach::CgroupSkb(true),
        required: true,
    },
    Prog {
        name: "wire_ingress",
        attach: Attach::CgroupSkb(false),
        required: true,
    },
];

/// The same programs as uprobe_multi link programs (`<name>_multi`).
const TLS_UPROBE_MULTI_PROGS: &[Prog] = &[
    Prog {
        name: "ossl_verify_result_multi",
        attach: Attach::LoadOnly,
        required: true,
    },
    Prog {
        name: "go_send_alert_multi",
        attach: Attach::LoadOnly,
        required: true,
    },
    Prog {
        name: "ossl_hs_enter_multi",
        attach: Attach::LoadOnly,
        required: false,
    },
    Prog {
        name: "ossl_hs_exit_multi",
        attach: Attach::LoadOnly,
        required: false,
    },
];

const TLS_UPROBE_PROGS: &[Prog] = &[
    Prog {
        name: "ossl_verify_result",
        attach: Attach::LoadOnly,
        required: true,
    },
    Prog {
        name: "go_send_alert",
        attach: Attach::LoadOnly,
        required: true,
    },
    Prog {
        name: "ossl_hs_enter",
        attach: Attach::LoadOnly,
        required: false,
    },
    Prog {
        name: "ossl_hs_exit",
        attach: Attach::LoadOnly,
        required: false,
    },
];

/// The table. Order of signals is the order `agent check` prints them.
pub const SIGNALS: &[Signal] = &[
    Signal {
        name: "exec",
        what: "every execve/execveat, successful or failed, with argv and allow-listed env",
        options: &[HookOption {
            hook: HookKind::Tracepoint,
            needs_btf: false,
            needs_tracefs: true,
            needs_arg: None,
            programs: EXEC_TP,
            note: "",
        }],
        implemented: true,
    },
    Signal {
        name: "lineage",
        what: "fork/clone, to rebuild process trees across shells that fork without exec",
        options: &[
            // Needs BTF for the child's pid/tgid offsets (a thread clone is
            // told from a fork by them), not for the hook.
            HookOption {
                hook: HookKind::RawTracepoint,
                needs_btf: true,
                needs_tracefs: false,
                needs_arg: None,
                programs: LINEAGE_RAW,
                note: "",
            },
            HookOption {
                hook: HookKind::Tracepoint,
                needs_btf: false,
                needs_tracefs: true,
                needs_arg: None,
                programs: LINEAGE_TP,
                note: "every thread's creation is sent too (costlier for threaded programs)",
            },
        ],
        implemented: true,
    },
    Signal {
        name: "exit",
        what: "process exit with exit code, for durations and failure status",
        options: &[
            // Refused where `sched_process_exit` has no `group_dead`
            // argument (older kernels): the tracepoint serves there.
            HookOption {
                hook: HookKind::RawTracepoint,
                needs_btf: true,
                needs_tracefs: false,
                needs_arg: Some(TpArg {
                    category: "sched",
                    event: "sched_process_exit",
                    field: "group_dead",
                }),
                programs: EXIT_RAW,
                note: "",
            },
            HookOption {
                hook: HookKind::Tracepoint,
                needs_btf: false,
                needs_tracefs: true,
                needs_arg: None,
                programs: EXIT_TP,
                note: "slightly costlier per exit; exit codes need BTF",
            },
        ],
        implemented: true,
    },
    Signal {
        name: "tcp_connect",
        what: "TCP connection set-up: latency, refused/timeout/unreachable, SYN retransmits",
        // Tracepoints carry everything (state changes, retransmits, sk_err); a
        // kprobe/fentry variant would add nothing on kernels that have these.
        options: &[HookOption {
            hook: HookKind::Tracepoint,
            needs_btf: false,
            needs_tracefs: true,
            needs_arg: None,
            programs: TCP_TP,
            note: "",
        }],
        implemented: true,
    },
    Signal {
        name: "fs_faults",
        what: "EACCES/EPERM/EROFS file operations of toolchain processes",
        options: &[HookOption {
            hook: HookKind::Tracepoint,
            needs_btf: false,
            needs_tracefs: true,
            needs_arg: None,
            programs: FS_TP,
            note: "",
        }],
        implemented: true,
    },
    Signal {
        name: "wire",
        what: "TLS handshakes (ClientHello/ServerHello/alerts) and DNS queries/answers on the wire",
        options: &[HookOption {
            hook: HookKind::CgroupSkb,
            needs_btf: false,
            needs_tracefs: false,
            needs_arg: None,
            programs: WIRE_CGROUP,
            note: "",
        }],
        implemented: true,
    },
    Signal {
        name: TLS_UPROBES,
        what: "OpenSSL certificate verification results and the alerts Go crypto/tls sends",
        // uprobe_multi links first: since the CVE-2025-38466 fix
        // (kernel/events/core.c, perf_uprobe_event_init: `if
        // (!capable(CAP_SYS_ADMIN)) return -EACCES;`, in 6.16 and the
        // stable kernels), a perf-event uprobe needs CAP_SYS_ADMIN, while a
        // uprobe_multi link (bpf_uprobe_multi_link_attach) needs only what
        // loading the program needed (CAP_BPF, CAP_PERFMON).
        options: &[
            HookOption {
                hook: HookKind::UprobeMulti,
                needs_btf: false,
                needs_tracefs: false,
                needs_arg: None,
                programs: TLS_UPROBE_MULTI_PROGS,
                note: "",
            },
            HookOption {
                hook: HookKind::Uprobe,
                needs_btf: false,
                needs_tracefs: false,
                needs_arg: None,
                programs: TLS_UPROBE_PROGS,
                note: "perf-event uprobes (no uprobe_multi links before kernel 6.6): the running agent keeps CAP_SYS_ADMIN to attach them to programs it sees later",
            },
        ],
        implemented: true,
    },
];
