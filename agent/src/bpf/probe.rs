//! Which hook kinds this kernel allows, found by loading and attaching a
//! do-nothing program of each kind (one generic probe: the same
//! [`load_and_attach`] the signals use), while the programs most likely to
//! be attached are verified in parallel.

use aya::{
    Ebpf,
    programs::{Program, TracePoint},
};

use super::{
    attach::{load_and_attach, load_tracepoint, tracepoint_programs, unload},
    error::HookError,
    hooks::{self, Available, HookKind, SIGNALS},
    kernel::KernelInfo,
};

/// Load and attach the do-nothing program for `kind` (`prog`, taken from
/// the object by its name), then detach and unload it.
fn probe_hook(prog: Option<&mut Program>, kind: HookKind, k: &KernelInfo) -> Result<(), HookError> {
    let p = kind.probe();
    let prog = prog.ok_or_else(|| HookError::Missing(p.name.to_string()))?;
    let r = load_and_attach(prog, p.name, p.attach, k).map(drop);
    unload(prog);
    r
}

/// Probe every hook kind (`agent check`).
pub fn probe_all(ebpf: &mut Ebpf, k: &KernelInfo) -> Vec<(HookKind, Result<(), HookError>)> {
    probe_all_preloading(ebpf, k, &HookKind::ALL, &[])
}

/// The hook kinds some signal can be collected with: all the agent needs
/// to probe before attaching. Probing tp_btf or fentry, which no signal
/// uses, would have aya parse the kernel's BTF (~19 MiB of heap, 10–25 ms)
/// for nothing.
pub fn kinds_in_use() -> Vec<HookKind> {
    let mut kinds: Vec<HookKind> = SIGNALS
        .iter()
        .filter(|s| s.implemented)
        .flat_map(|s| s.options.iter().map(|o| o.hook))
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

/// Probe the hook `kinds` while the tracepoint programs named in `preload`
/// are loaded (verified) in threads of their own. The probes spend most of
/// their time waiting for the kernel (a grace period per detach), the
/// verifier on the exec programs most of a second of CPU: side by side,
/// start-up costs the longer of the two instead of their sum. A program
/// loaded here but not chosen afterwards is only unloaded with the rest.
pub fn probe_all_preloading(
    ebpf: &mut Ebpf,
    k: &KernelInfo,
    kinds: &[HookKind],
    preload: &[&str],
) -> Vec<(HookKind, Result<(), HookError>)> {
    let mut probe_progs: Vec<(HookKind, &mut Program)> = Vec::new();
    let mut loads: Vec<(&str, &mut TracePoint)> = Vec::new();
    for (name, p) in ebpf.programs_mut() {
        if let Some(&h) = HookKind::ALL.iter().find(|h| h.probe().name == name) {
            probe_progs.push((h, p));
        } else if preload.contains(&name)
            && let Ok(tp) = <&mut TracePoint>::try_from(p)
        {
            loads.push((name, tp));
        }
    }
    std::thread::scope(|s| {
        for (name, p) in loads {
            s.spawn(move || load_tracepoint(name, p));
        }
        kinds
            .iter()
            .map(|&h| {
                let prog = probe_progs
                    .iter()
                    .position(|(k, _)| *k == h)
                    .map(|i| probe_progs.swap_remove(i).1);
                (h, probe_hook(prog, h, k))
            })
            .collect()
    })
}

/// The tracepoint programs worth loading before the probes have answered:
/// those of each signal's first tracepoint option, when tracefs is there.
/// Almost always the ones attached; if the probes decide otherwise, they
/// were loaded for nothing, which changes nothing else.
pub fn likely_tracepoints(k: &KernelInfo) -> Vec<&'static str> {
    if k.tracefs.is_none() {
        return Vec::new();
    }
    tracepoint_programs(
        SIGNALS
            .iter()
            .filter(|s| s.implemented)
            .filter_map(|sig| sig.options.iter().find(|o| o.hook == HookKind::Tracepoint)),
    )
}

pub fn available(k: &KernelInfo, probes: &[(HookKind, Result<(), HookError>)]) -> Available {
    Available {
        btf: k.has_btf,
        tracefs: k.tracefs.is_some(),
        cgroup2: k.cgroup2.clone(),
        hooks: probes
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(h, _)| *h)
            .collect(),
        args_missing: args_missing(k),
    }
}

/// The tracepoint arguments options need that this kernel's tracefs
/// formats lack (unknown without tracefs: then the attach decides).
fn args_missing(k: &KernelInfo) -> Vec<hooks::TpArg> {
    let Some(root) = &k.tracefs else {
        return Vec::new();
    };
    let mut out: Vec<hooks::TpArg> = Vec::new();
    for a in SIGNALS
        .iter()
        .flat_map(|s| s.options)
        .filter_map(|o| o.needs_arg)
    {
        let absent = matches!(
            super::tracefs::field_offset(root, a.category, a.event, a.field),
            Ok(None)
        );
        if absent && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::hooks::Attach;

    #[test]
    fn the_agent_probes_only_what_a_signal_can_use() {
        let kinds = kinds_in_use();
        assert!(kinds.contains(&HookKind::Tracepoint), "{kinds:?}");
        assert!(kinds.contains(&HookKind::RawTracepoint), "{kinds:?}");
        // Both would have aya parse the kernel's BTF at start-up.
        assert!(!kinds.contains(&HookKind::TpBtf), "{kinds:?}");
        assert!(!kinds.contains(&HookKind::Fentry), "{kinds:?}");
    }

    #[test]
    fn the_exec_programs_are_loaded_early_when_tracefs_is_there() {
        let k = KernelInfo {
            tracefs: Some("/sys/kernel/tracing".into()),
            ..Default::default()
        };
        let names = likely_tracepoints(&k);
        // The two whose verification takes most of start-up.
        assert!(names.contains(&"exec_sched_tp"), "{names:?}");
        assert!(names.contains(&"exec_exit_tp"), "{names:?}");
        // Each once, and only tracepoint programs (attached, or reached by
        // a tail call from one).
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for n in &names {
            assert!(
                SIGNALS.iter().flat_map(|s| s.options).any(|o| o
                    .programs
                    .iter()
                    .any(|p| p.name == *n
                        && matches!(p.attach, Attach::Tracepoint(..) | Attach::TailCall(..)))),
                "{n} is not a tracepoint program"
            );
        }
        assert!(likely_tracepoints(&KernelInfo::default()).is_empty());
    }
}
