//! The one table of which kernel hooks serve which signal, in order of
//! preference, and the pure function that picks one per signal from what the
//! kernel offers. `agent check` prints the choice; the loader attaches it.
//!
//! Owns: the table and the choice. Must not: touch the kernel (probing lives
//! in `probe`, attaching in `attach`).

use serde::Serialize;

/// A kind of kernel hook; each is probed at start-up by loading a tiny program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    Tracepoint,
    RawTracepoint,
    TpBtf,
    Kprobe,
    Fentry,
    Uprobe,
    /// uprobe_multi links (kernel 6.6+): created without CAP_SYS_ADMIN.
    UprobeMulti,
    CgroupSockAddr,
    SockOps,
    CgroupSkb,
}

impl HookKind {
    pub const ALL: [HookKind; 10] = [
        HookKind::Tracepoint,
        HookKind::RawTracepoint,
        HookKind::TpBtf,
        HookKind::Kprobe,
        HookKind::Fentry,
        HookKind::Uprobe,
        HookKind::UprobeMulti,
        HookKind::CgroupSockAddr,
        HookKind::SockOps,
        HookKind::CgroupSkb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HookKind::Tracepoint => "tracepoint",
            HookKind::RawTracepoint => "raw_tracepoint",
            HookKind::TpBtf => "tp_btf",
            HookKind::Kprobe => "kprobe",
            HookKind::Fentry => "fentry",
            HookKind::Uprobe => "uprobe",
            HookKind::UprobeMulti => "uprobe_multi",
            HookKind::CgroupSockAddr => "cgroup_sock_addr",
            HookKind::SockOps => "sock_ops",
            HookKind::CgroupSkb => "cgroup_skb",
        }
    }

    /// The do-nothing program in the BPF object that probes this kind, and
    /// where it is attached for the probe (a hook every kernel has).
    pub fn probe(self) -> Prog {
        let (name, attach) = match self {
            HookKind::Tracepoint => (
                "probe_tracepoint",
                Attach::Tracepoint("sched", "sched_process_fork"),
            ),
            HookKind::RawTracepoint => (
                "probe_raw_tracepoint",
                Attach::RawTracepoint("sched_process_fork"),
            ),
            HookKind::TpBtf => ("probe_tp_btf", Attach::TpBtf("sched_process_fork")),
            HookKind::Kprobe => ("probe_kprobe", Attach::Kprobe("do_exit")),
            HookKind::Fentry => ("probe_fentry", Attach::Fentry("do_exit")),
            HookKind::Uprobe => (
                "probe_uprobe",
                Attach::UprobeSelf("agent_uprobe_probe_target"),
            ),
            HookKind::UprobeMulti => (
                "probe_uprobe_multi",
                Attach::UprobeSelf("agent_uprobe_probe_target"),
            ),
            HookKind::CgroupSockAddr => ("probe_sock_addr", Attach::CgroupSockAddr),
            HookKind::SockOps => ("probe_sock_ops", Attach::SockOps),
            HookKind::CgroupSkb => ("probe_cgroup_skb", Attach::CgroupSkb(false)),
        };
        Prog {
            name,
            attach,
            required: true,
        }
    }
}

/// Where one program of an option attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// `tracepoint/<category>/<name>`.
    Tracepoint(&'static str, &'static str),
    /// BTF-typed raw tracepoint `<name>`.
    TpBtf(&'static str),
    /// Raw tracepoint `<name>` (no BTF needed).
    RawTracepoint(&'static str),
    /// kprobe on kernel function `<name>`.
    Kprobe(&'static str),
    /// fentry on kernel function `<name>` (BTF trampoline).
    Fentry(&'static str),
    /// uprobe on function `<name>` of the agent's own binary (probing only).
    UprobeSelf(&'static str),
    /// sock_ops on the cgroup v2 root.
    SockOps,
    /// cgroup connect/sendmsg hook on the cgroup v2 root (type from the program's section).
    CgroupSockAddr,
    /// cgroup socket-buffer hook on the cgroup v2 root; `true` for egress.
    CgroupSkb(bool),
    /// Loaded at start-up, attached later to each target file as it is found
    /// (uprobes on libraries and programs).
    LoadOnly,
}

/// One program of an option.
#[derive(Clone, Copy, Debug)]
pub struct Prog {
    pub name: &'static str,
    pub attach: Attach,
    /// When false the option still works if this program fails (e.g. `execveat`
    /// missing on some architecture); its loss is logged.
    pub required: bool,
}

/// One way of collecting a signal.
#[derive(Clone, Copy, Debug)]
pub struct HookOption {
    pub hook: HookKind,
    /// Besides the hook kind itself.
    pub needs_btf: bool,
    pub needs_tracefs: bool,
    pub programs: &'static [Prog],
    /// What the user loses when this option is used instead of the first one.
    pub note: &'static str,
}

/// A signal the agent offers.
#[derive(Clone, Copy, Debug)]
pub struct Signal {
    pub name: &'static str,
    pub what: &'static str,
    /// In order of preference.
    pub options: &'static [HookOption],
    /// False for signals announced but not built yet: reported, never attached.
    pub implemented: bool,
}

const EXEC_TP: &[Prog] = &[
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
                programs: LINEAGE_RAW,
                note: "",
            },
            HookOption {
                hook: HookKind::Tracepoint,
                needs_btf: false,
                needs_tracefs: true,
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
                programs: EXIT_RAW,
                note: "",
            },
            HookOption {
                hook: HookKind::Tracepoint,
                needs_btf: false,
                needs_tracefs: true,
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
                programs: TLS_UPROBE_MULTI_PROGS,
                note: "",
            },
            HookOption {
                hook: HookKind::Uprobe,
                needs_btf: false,
                needs_tracefs: false,
                programs: TLS_UPROBE_PROGS,
                note: "perf-event uprobes (no uprobe_multi links before kernel 6.6): the running agent keeps CAP_SYS_ADMIN to attach them to programs it sees later",
            },
        ],
        implemented: true,
    },
];

/// What the kernel offers, as probed.
#[derive(Clone, Debug, Default)]
pub struct Available {
    pub btf: bool,
    pub tracefs: bool,
    pub hooks: Vec<HookKind>,
    /// Where cgroup programs attach (the cgroup v2 root).
    pub cgroup2: Option<std::path::PathBuf>,
}

/// The outcome for one signal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Choice {
    /// Collected with `hook`; `degraded` when it is not the first preference.
    Active {
        hook: HookKind,
        degraded: bool,
        note: String,
    },
    /// Cannot be collected on this kernel.
    Unavailable { reason: String },
    /// Announced, not built yet.
    NotImplemented { would_use: Option<HookKind> },
    /// Turned off by the user (`--without`).
    Off,
}

impl Choice {
    /// The signal is collected (preferred hook or a fallback).
    pub fn is_active(&self) -> bool {
        matches!(self, Choice::Active { .. })
    }
}

/// The signals every finding rests on (the process table): never off.
pub const CORE_SIGNALS: [&str; 3] = ["exec", "lineage", "exit"];

/// Check the names given to `--without`: each must be a signal that can
/// be turned off.
pub fn check_without(names: &[String]) -> Result<(), String> {
    let optional: Vec<&str> = SIGNALS
        .iter()
        .filter(|s| s.implemented && !CORE_SIGNALS.contains(&s.name))
        .map(|s| s.name)
        .collect();
    for n in names {
        if CORE_SIGNALS.contains(&n.as_str()) {
            return Err(format!(
                "{n} cannot be turned off: exec, lineage and exit are the process table every finding needs"
            ));
        }
        if !optional.contains(&n.as_str()) {
            return Err(format!(
                "unknown signal {n:?} (one of: {})",
                optional.join(", ")
            ));
        }
    }
    Ok(())
}

/// The name of the signal of the TLS-library uprobes (attached per target
/// found, after start-up).
pub const TLS_UPROBES: &str = "tls_uprobes";

fn missing(opt: &HookOption, av: &Available) -> Option<String> {
    if opt.needs_btf && !av.btf {
        return Some(format!(
            "{} needs kernel BTF (/sys/kernel/btf/vmlinux)",
            opt.hook.name()
        ));
    }
    if opt.needs_tracefs && !av.tracefs {
        return Some(format!("{} needs tracefs mounted", opt.hook.name()));
    }
    if !av.hooks.contains(&opt.hook) {
        return Some(format!(
            "{} programs cannot be loaded/attached",
            opt.hook.name()
        ));
    }
    None
}

/// Pick the first option the kernel supports.
pub fn choose(sig: &Signal, av: &Available) -> Choice {
    let mut reasons = Vec::new();
    for (i, opt) in sig.options.iter().enumerate() {
        match missing(opt, av) {
            None if !sig.implemented => {
                return Choice::NotImplemented {
                    would_use: Some(opt.hook),
                };
            }
            None => {
                let mut note = reasons.join("; ");
                if !opt.note.is_empty() {
                    if !note.is_empty() {
                        note.push_str("; ");
                    }
                    note.push_str(opt.note);
                }
                return Choice::Active {
                    hook: opt.hook,
                    degraded: i > 0,
                    note,
                };
            }
            Some(r) => reasons.push(r),
        }
    }
    if !sig.implemented {
        return Choice::NotImplemented { would_use: None };
    }
    Choice::Unavailable {
        reason: reasons.join("; "),
    }
}

/// The option object behind a choice.
pub fn option_for(sig: &Signal, hook: HookKind) -> Option<&'static HookOption> {
    sig.options.iter().find(|o| o.hook == hook)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(name: &str) -> &'static Signal {
        SIGNALS.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn only_optional_signals_can_be_turned_off() {
        assert!(check_without(&["wire".into(), "tls_uprobes".into()]).is_ok());
        let e = check_without(&["exec".into()]).unwrap_err();
        assert!(e.contains("process table"), "{e}");
        let e = check_without(&["wires".into()]).unwrap_err();
        assert!(e.contains("wire") && e.contains("tcp_connect"), "{e}");
    }

    #[test]
    fn first_supported_option_wins() {
        let av = Available {
            btf: true,
            tracefs: true,
            hooks: vec![HookKind::RawTracepoint, HookKind::Tracepoint],
            cgroup2: None,
        };
        assert_eq!(
            choose(sig("exit"), &av),
            Choice::Active {
                hook: HookKind::RawTracepoint,
                degraded: false,
                note: String::new()
            }
        );
    }

    #[test]
    fn falls_back_with_the_reason() {
        let av = Available {
            btf: false,
            tracefs: true,
            hooks: vec![HookKind::Tracepoint],
            cgroup2: None,
        };
        match choose(sig("exit"), &av) {
            Choice::Active {
                hook,
                degraded,
                note,
            } => {
                assert_eq!(hook, HookKind::Tracepoint);
                assert!(degraded);
                assert!(note.contains("BTF"), "{note}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_supported_is_unavailable() {
        let av = Available::default();
        match choose(sig("exec"), &av) {
            Choice::Unavailable { reason } => assert!(reason.contains("tracefs"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_attach_point_in_the_table_is_unique() {
        let mut names: Vec<_> = SIGNALS
            .iter()
            .flat_map(|s| s.options.iter())
            .flat_map(|o| {
                o.programs
                    .iter()
                    .map(|p| format!("{}@{:?}", p.name, p.attach))
            })
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(n, names.len());
    }
}
