//! `agent check`: what this kernel allows and what the agent will use.
//!
//! Owns: building and rendering the report. Every hook kind is probed for
//! real (load + attach of a do-nothing program, then unload).

use serde::Serialize;

use crate::{
    bpf::hooks::{self, Choice, SIGNALS},
    bpf::kernel::{Globals, KernelInfo},
    bpf::{load, probe},
};

/// Capabilities the agent may use, by bit number.
const CAPS: &[(&str, u32, &str)] = &[
    ("CAP_BPF", 39, "load BPF programs and create maps"),
    (
        "CAP_PERFMON",
        38,
        "attach tracing programs, read kernel memory",
    ),
    (
        "CAP_SYS_ADMIN",
        21,
        "older kernels: everything BPF; mounting tracefs",
    ),
    ("CAP_NET_ADMIN", 12, "cgroup network hooks"),
    (
        "CAP_SYS_PTRACE",
        19,
        "read other processes' /proc/<pid>/exe, /root",
    ),
    (
        "CAP_DAC_READ_SEARCH",
        2,
        "read binaries and files of other users",
    ),
    (
        "CAP_SYS_RESOURCE",
        24,
        "raise RLIMIT_MEMLOCK (kernels before 5.11)",
    ),
];

#[derive(Debug, Serialize)]
pub struct Item {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct SignalReport {
    pub signal: String,
    pub what: String,
    #[serde(flatten)]
    pub choice: Choice,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kernel: String,
    pub euid: u32,
    pub environment: Vec<Item>,
    pub capabilities: Vec<Item>,
    pub hooks: Vec<Item>,
    pub signals: Vec<SignalReport>,
    pub warnings: Vec<String>,
    /// True when at least one implemented signal can be collected.
    pub usable: bool,
    /// What to do when not usable.
    pub fix: Option<String>,
    /// False when run without privileges: hooks were not loaded, only read about.
    pub probed: bool,
}

pub use crate::bpf::kernel::cap_eff;

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn environment_items(kernel: &KernelInfo) -> Vec<Item> {
    vec![
        Item {
            name: "btf".into(),
            ok: kernel.has_btf,
            detail: kernel
                .btf_error
                .clone()
                .unwrap_or_else(|| "/sys/kernel/btf/vmlinux".into()),
        },
        Item {
            name: "tracefs".into(),
            ok: kernel.tracefs.is_some(),
            detail: match (&kernel.tracefs, &kernel.tracefs_error) {
                (Some(p), _) => p.display().to_string(),
                (None, Some(e)) => e.clone(),
                (None, None) => "not found".into(),
            },
        },
        Item {
            name: "cgroup2".into(),
            ok: kernel.cgroup2.is_some(),
            detail: kernel
                .cgroup2
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "no cgroup2 mount in /proc/self/mounts".into()),
        },
    ]
}

/// What can be told without privileges: the kernel, BTF, tracefs, cgroup2
/// and capabilities. Not usable only on a real absence (neither BTF nor
/// tracefs in this kernel: no tracing hook could attach).
pub fn run_unprivileged(probe_asked: bool) -> Report {
    let kernel = KernelInfo::gather(false);
    let euid = rustix::process::geteuid().as_raw();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = cap_eff(&status);
    let environment = environment_items(&kernel);
    let tracefs_in_kernel = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("tracefs"));
    let mut warnings = Vec::new();
    if !std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists() {
        warnings.push(
            "no kprobe PMU (/sys/bus/event_source/devices/kprobe): no kprobe hooks; the agent uses tracepoints instead"
                .into(),
        );
    }
    warnings.push(if probe_asked {
        "hooks not probed: needs root (run `sudo agent check --probe`, or drop --no-elevate)".into()
    } else {
        "hooks not probed without privileges: `agent check --probe` loads and attaches a test program per hook kind (it re-runs through sudo)".into()
    });
    let usable = kernel.has_btf || kernel.tracefs.is_some() || tracefs_in_kernel;
    Report {
        kernel: kernel_release(),
        euid,
        environment,
        capabilities: capability_items(caps),
        hooks: Vec::new(),
        signals: Vec::new(),
        warnings,
        usable,
        fix: (!usable).then(|| {
            "this kernel has neither BTF nor tracefs: no tracing hook can attach".to_string()
        }),
        probed: false,
    }
}

fn capability_items(caps: u64) -> Vec<Item> {
    CAPS.iter()
        .map(|(name, bit, why)| Item {
            name: (*name).into(),
            ok: caps & (1u64 << bit) != 0,
            detail: (*why).into(),
        })
        .collect()
}

pub fn run() -> Report {
    let kernel = KernelInfo::gather(false);
    let globals = Globals::compute(&kernel);
    let euid = rustix::process::geteuid().as_raw();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = cap_eff(&status);

    let mut environment = environment_items(&kernel);
    let capabilities = capability_items(caps);

    let mut warnings = globals.warnings.clone();
    let (hooks_items, signals, fix) = match load::open(&globals) {
        Err(e) => {
            environment.push(Item {
                name: "ring_buffer".into(),
                ok: false,
                detail: e.to_string(),
            });
            let hooks_items = hooks::HookKind::ALL
                .iter()
                .map(|h| Item {
                    name: h.name().into(),
                    ok: false,
                    detail: "BPF object could not be loaded".into(),
                })
                .collect();
            let av = hooks::Available::default();
            let signals = signal_reports(&av);
            (hooks_items, signals, Some(e.to_string()))
        }
        Ok(mut ebpf) => {
            environment.push(Item {
                name: "ring_buffer".into(),
                ok: true,
                detail: "BPF_MAP_TYPE_RINGBUF created".into(),
            });
            let probes = probe::probe_all(&mut ebpf, &kernel);
            let av = probe::available(&kernel, &probes);
            let hooks_items = probes
                .into_iter()
                .map(|(h, r)| Item {
                    name: h.name().into(),
                    ok: r.is_ok(),
                    detail: r
                        .err()
                        .map_or_else(|| "load + attach OK".into(), |e| e.to_string()),
                })
                .collect();
            (hooks_items, signal_reports(&av), None)
        }
    };
    if let Some(e) = &kernel.tracefs_error {
        warnings.push(e.clone());
    }
    let usable = signals
        .iter()
        .any(|s| matches!(s.choice, Choice::Active { .. }));
    let fix = if usable {
        None
    } else {
        Some(fix.unwrap_or_else(|| {
            if euid != 0 {
                "run as root: sudo agent check".into()
            } else if kernel.tracefs.is_none() {
                "mount tracefs: mount -t tracefs nodev /sys/kernel/tracing".into()
            } else {
                "this kernel offers none of the hooks the agent needs (see the hooks above)".into()
            }
        }))
    };
    Report {
        kernel: kernel_release(),
        euid,
        environment,
        capabilities,
        hooks: hooks_items,
        signals,
        warnings,
        usable,
        fix,
        probed: true,
    }
}

fn signal_reports(av: &hooks::Available) -> Vec<SignalReport> {
    SIGNALS
        .iter()
        .map(|s| SignalReport {
            signal: s.name.into(),
            what: s.what.into(),
            choice: hooks::choose(s, av),
        })
        .collect()
}

fn mark(ok: bool, color: bool) -> &'static str {
    match (ok, color) {
        (true, true) => "\x1b[32myes\x1b[0m",
        (false, true) => "\x1b[31mno \x1b[0m",
        (true, false) => "yes",
        (false, false) => "no ",
    }
}

pub fn render_text(r: &Report, color: bool) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "kernel {}  (euid {})", r.kernel, r.euid);
    let mut sections = vec![
        ("environment", &r.environment),
        ("capabilities (effective)", &r.capabilities),
    ];
    if r.probed {
        sections.push((
            "hooks (probed by loading and attaching a program)",
            &r.hooks,
        ));
    }
    for (title, items) in sections {
        let _ = writeln!(s, "\n{title}");
        for i in items {
            let _ = writeln!(s, "  {:<20} {}  {}", i.name, mark(i.ok, color), i.detail);
        }
    }
    if r.probed {
        let _ = writeln!(s, "\nsignals");
    }
    for sig in &r.signals {
        let state = match &sig.choice {
            Choice::Active {
                hook,
                degraded: false,
                ..
            } => format!("{} via {}", mark(true, color).trim_end(), hook.name()),
            Choice::Active {
                hook,
                degraded: true,
                note,
            } => format!("degraded: via {} ({note})", hook.name()),
            Choice::Unavailable { reason } => format!("{} {reason}", mark(false, color).trim_end()),
            Choice::Off => "off (--without)".into(),
            Choice::NotImplemented { would_use } => match would_use {
                Some(h) => format!("not built yet (would use {})", h.name()),
                None => "not built yet (no usable hook)".into(),
            },
        };
        let _ = writeln!(s, "  {:<12} {}", sig.signal, state);
    }
    for w in &r.warnings {
        let _ = writeln!(s, "\nwarning: {w}");
    }
    if let Some(f) = &r.fix {
        let _ = writeln!(s, "\nno signal can be collected: {f}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_parses_hex() {
        let st = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        let c = cap_eff(st);
        assert!(c & (1 << 39) != 0);
        assert_eq!(cap_eff("CapEff:\t0000000000000000\n"), 0);
        assert_eq!(cap_eff("garbage"), 0);
    }
}
