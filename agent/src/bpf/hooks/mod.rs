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
    /// A tracepoint program reached only by tail call: loaded and put in
    /// slot `.1` of the program array `.0`.
    TailCall(&'static str, u32),
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
    /// A tracepoint argument the programs read that older kernels lack.
    pub needs_arg: Option<TpArg>,
    pub programs: &'static [Prog],
    /// What the user loses when this option is used instead of the first one.
    pub note: &'static str,
}

/// An argument of a tracepoint, as its tracefs format names it (a raw
/// tracepoint's arguments are the same list: a format that lacks the field
/// means a prototype that lacks the argument, and the attach is refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpArg {
    pub category: &'static str,
    pub event: &'static str,
    pub field: &'static str,
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

mod table;

pub use table::SIGNALS;

/// What the kernel offers, as probed.
#[derive(Clone, Debug, Default)]
pub struct Available {
    pub btf: bool,
    pub tracefs: bool,
    pub hooks: Vec<HookKind>,
    /// Where cgroup programs attach (the cgroup v2 root).
    pub cgroup2: Option<std::path::PathBuf>,
    /// Tracepoint arguments some option reads that this kernel lacks.
    pub args_missing: Vec<TpArg>,
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
    if let Some(a) = opt.needs_arg.filter(|a| av.args_missing.contains(a)) {
        return Some(format!(
            "{} needs the {} argument of {}, which this kernel lacks",
            opt.hook.name(),
            a.field,
            a.event
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
            args_missing: vec![],
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
            args_missing: vec![],
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
    fn an_argument_the_kernel_lacks_picks_the_next_option_up_front() {
        // 6.1's sched_process_exit has no group_dead (6.16+ has).
        let av = Available {
            btf: true,
            tracefs: true,
            hooks: vec![HookKind::RawTracepoint, HookKind::Tracepoint],
            cgroup2: None,
            args_missing: vec![TpArg {
                category: "sched",
                event: "sched_process_exit",
                field: "group_dead",
            }],
        };
        match choose(sig("exit"), &av) {
            Choice::Active { hook, note, .. } => {
                assert_eq!(hook, HookKind::Tracepoint);
                assert!(note.contains("group_dead"), "{note}");
            }
            other => panic!("{other:?}"),
        }
        // Lineage's raw tracepoint reads no such argument.
        assert!(matches!(
            choose(sig("lineage"), &av),
            Choice::Active {
                hook: HookKind::RawTracepoint,
                ..
            }
        ));
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
