//! Loading and attaching programs: one function for every kind of hook
//! (used both for the start-up probes and for the signals' programs), the
//! links userspace owns, and attaching each signal with its best option.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, FEntry,
        KProbe, Program, RawTracePoint, SockOps, TracePoint, UProbe, uprobe::UProbeScope,
    },
};

use super::{
    error::HookError,
    hooks::{self, Attach, Available, Choice, SIGNALS},
    kernel::KernelInfo,
};

/// A function in this binary the uprobe probe attaches to.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn agent_uprobe_probe_target(x: u64) -> u64 {
    std::hint::black_box(x.wrapping_add(1))
}

/// The tracepoint programs of `options`, each named once.
pub(super) fn tracepoint_programs<'a>(
    options: impl Iterator<Item = &'a hooks::HookOption>,
) -> Vec<&'static str> {
    let mut names = Vec::new();
    for opt in options {
        for p in opt.programs {
            let tp = matches!(p.attach, Attach::Tracepoint(..) | Attach::TailCall(..));
            if tp && !names.contains(&p.name) {
                names.push(p.name);
            }
        }
    }
    names
}

/// Load one tracepoint program ahead of its attach; a failure is only
/// logged here, the attach that follows loads it again and reports it.
pub(super) fn load_tracepoint(name: &str, p: &mut TracePoint) {
    if let Err(e) = p.load() {
        tracing::debug!(program = name, error = %super::error::one_line(&e), "preload failed");
    }
}

/// An attachment owned outside its program, so shutdown can detach them all
/// in parallel (each tracepoint detach waits for an RCU grace period: one
/// after another they took 1.5 s for 26 links here). cgroup attachments
/// stay with their program (detaching them waits for nothing).
pub enum OwnedLink {
    Tp(aya::programs::trace_point::TracePointLink),
    Btf(aya::programs::tp_btf::BtfTracePointLink),
    Raw(aya::programs::raw_trace_point::RawTracePointLink),
    Kprobe(aya::programs::kprobe::KProbeLink),
    Fentry(aya::programs::fentry::FEntryLink),
    Uprobe(aya::programs::uprobe::UProbeLink),
}

/// `p` as the program type `T`, or why not.
fn typed<'a, T>(p: &'a mut Program, name: &str, want: &'static str) -> Result<&'a mut T, HookError>
where
    &'a mut T: TryFrom<&'a mut Program>,
{
    <&mut T>::try_from(p).map_err(|_| HookError::WrongType {
        name: name.to_string(),
        want,
    })
}

fn open_cgroup(cgroup2: Option<&Path>) -> Result<File, HookError> {
    let path = cgroup2.ok_or(HookError::NoCgroup2)?;
    File::open(path).map_err(|e| HookError::Open {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// Load `prog` (named `name`) for `attach` unless it is loaded already, and
/// attach it. The link comes back when userspace owns it; `None` when the
/// program keeps it (cgroup hooks) or nothing was attached (`LoadOnly`).
/// The one path for every hook kind: the start-up probes and the signals'
/// programs go through it alike.
pub fn load_and_attach(
    prog: &mut Program,
    name: &str,
    attach: Attach,
    k: &KernelInfo,
) -> Result<Option<OwnedLink>, HookError> {
    let kerr = HookError::kernel;
    let loaded = prog.fd().is_ok();
    match attach {
        Attach::Tracepoint(cat, tp) => {
            if k.tracefs.is_none() {
                return Err(HookError::NoTracefs);
            }
            let p: &mut TracePoint = typed(prog, name, "tracepoint")?;
            // One program may serve several tracepoints: load it once.
            if !loaded {
                p.load().map_err(kerr)?;
            }
            let id = p.attach(cat, tp).map_err(kerr)?;
            Ok(Some(OwnedLink::Tp(p.take_link(id).map_err(kerr)?)))
        }
        Attach::RawTracepoint(tp) => {
            let p: &mut RawTracePoint = typed(prog, name, "raw tracepoint")?;
            if !loaded {
                p.load().map_err(kerr)?;
            }
            let id = p.attach(tp).map_err(kerr)?;
            Ok(Some(OwnedLink::Raw(p.take_link(id).map_err(kerr)?)))
        }
        Attach::TpBtf(tp) => {
            let btf = k.aya_btf().map_err(HookError::Btf)?;
            let p: &mut BtfTracePoint = typed(prog, name, "tp_btf")?;
            if !loaded {
                p.load(tp, btf).map_err(kerr)?;
            }
            let id = p.attach().map_err(kerr)?;
            Ok(Some(OwnedLink::Btf(p.take_link(id).map_err(kerr)?)))
        }
        Attach::Kprobe(func) => {
            let p: &mut KProbe = typed(prog, name, "kprobe")?;
            if !loaded {
                p.load().map_err(kerr)?;
            }
            let id = p.attach(func, 0).map_err(kerr)?;
            Ok(Some(OwnedLink::Kprobe(p.take_link(id).map_err(kerr)?)))
        }
        Attach::Fentry(func) => {
            let btf = k.aya_btf().map_err(HookError::Btf)?;
            let p: &mut FEntry = typed(prog, name, "fentry")?;
            if !loaded {
                p.load(func, btf).map_err(kerr)?;
            }
            let id = p.attach().map_err(kerr)?;
            Ok(Some(OwnedLink::Fentry(p.take_link(id).map_err(kerr)?)))
        }
        Attach::UprobeSelf(func) => {
            let exe = std::env::current_exe().map_err(|e| HookError::Open {
                path: "/proc/self/exe".into(),
                msg: e.to_string(),
            })?;
            std::hint::black_box(agent_uprobe_probe_target(1));
            let p: &mut UProbe = typed(prog, name, "uprobe")?;
            if !loaded {
                p.load().map_err(kerr)?;
            }
            let id = p
                .attach([func], &exe, UProbeScope::CallingProcess)
                .map_err(kerr)?;
            Ok(Some(OwnedLink::Uprobe(p.take_link(id).map_err(kerr)?)))
        }
        // A BPF link: shares the root with other programs (systemd, CNI
        // plugins) whatever the mode; the mode flags apply to legacy
        // attachments only.
        Attach::CgroupSockAddr => {
            let cg = open_cgroup(k.cgroup2.as_deref())?;
            let p: &mut CgroupSockAddr = typed(prog, name, "cgroup sock_addr")?;
            if !loaded {
                p.load().map_err(kerr)?;
            }
            p.attach(&cg, CgroupAttachMode::Single).map_err(kerr)?;
            Ok(None)
        }
        Attach::SockOps => {
            let cg = open_cgroup(k.cgroup2.as_deref())?;
            let p: &mut SockOps = typed(prog, name, "sock_ops")?;
            if !loaded {
                p.load().map_err(kerr)?;
            }
            p.attach(&cg, CgroupAttachMode::Single).map_err(kerr)?;
            Ok(None)
        }
        Attach::CgroupSkb(egress) => {
            let cg = open_cgroup(k.cgroup2.as_deref())?;
            let p: &mut CgroupSkb = typed(prog, name, "cgroup_skb")?;
            if !loaded {
                p.load().map_err(kerr)?;
            }
            let ty = if egress {
                CgroupSkbAttachType::Egress
            } else {
                CgroupSkbAttachType::Ingress
            };
            p.attach(&cg, ty, CgroupAttachMode::Single).map_err(kerr)?;
            Ok(None)
        }
        // Needs the object's map: `install_tail`.
        Attach::TailCall(..) => Err(HookError::WrongType {
            name: name.to_string(),
            want: "directly attached",
        }),
        Attach::LoadOnly => {
            let p: &mut UProbe = typed(prog, name, "uprobe")?;
            if !loaded {
                p.load().map_err(kerr)?;
            }
            Ok(None)
        }
    }
}

/// Unload `prog` whatever its type (detaching what it still holds).
pub fn unload(prog: &mut Program) {
    let _ = match prog {
        Program::TracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        Program::BtfTracePoint(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::UProbe(p) => p.unload(),
        Program::CgroupSockAddr(p) => p.unload(),
        Program::SockOps(p) => p.unload(),
        Program::CgroupSkb(p) => p.unload(),
        _ => Ok(()),
    };
}

/// Load the tracepoint program `name` and put it in slot `index` of the
/// program array `map`, where the programs that tail-call it find it.
fn install_tail(ebpf: &mut Ebpf, name: &str, map: &str, index: u32) -> Result<(), HookError> {
    let p: &mut TracePoint = typed(program(ebpf, name)?, name, "tracepoint")?;
    if p.fd().is_err() {
        p.load().map_err(HookError::kernel)?;
    }
    let fd = p
        .fd()
        .map_err(HookError::kernel)?
        .try_clone()
        .map_err(HookError::kernel)?;
    let m = ebpf
        .map_mut(map)
        .ok_or_else(|| HookError::Missing(map.to_string()))?;
    let mut arr = ProgramArray::try_from(m).map_err(HookError::kernel)?;
    arr.set(index, &fd, 0).map_err(HookError::kernel)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program, HookError> {
    ebpf.program_mut(name)
        .ok_or_else(|| HookError::Missing(name.to_string()))
}

/// Attach the loaded uprobe `program` at `at` (a symbol or a file offset)
/// of the ELF file `target`, for every process that runs that file.
pub fn attach_uprobe_at(
    ebpf: &mut Ebpf,
    program: &str,
    at: aya::programs::uprobe::UProbeAttachLocation<'_>,
    target: &Path,
    links: &mut Vec<OwnedLink>,
) -> Result<(), HookError> {
    let prog: &mut UProbe = typed(self::program(ebpf, program)?, program, "uprobe")?;
    let id = prog
        .attach([at], target, UProbeScope::AllProcesses)
        .map_err(HookError::kernel)?;
    links.push(OwnedLink::Uprobe(
        prog.take_link(id).map_err(HookError::kernel)?,
    ));
    Ok(())
}

/// Detach every link, concurrently, so their grace periods overlap.
pub fn detach_all(links: Vec<OwnedLink>) {
    std::thread::scope(|s| {
        for l in links {
            s.spawn(move || drop(l));
        }
    });
}

/// Load (verify) the tracepoint programs of each signal's first choice
/// concurrently, one thread each. The verifier runs in the loading thread
/// and takes most of the start-up: ~0.5–0.7 s for each exec program here,
/// one after another otherwise. A program that fails here is loaded again,
/// and its error reported, by the attach that follows.
fn preload_tracepoints(ebpf: &mut Ebpf, av: &Available, off: &dyn Fn(&str) -> bool) {
    let names = tracepoint_programs(
        SIGNALS
            .iter()
            .filter(|s| s.implemented && !off(s.name))
            .filter_map(|sig| match hooks::choose(sig, av) {
                Choice::Active { hook, .. } => hooks::option_for(sig, hook),
                _ => None,
            }),
    );
    let progs: Vec<(&str, &mut TracePoint)> = ebpf
        .programs_mut()
        .filter(|(n, _)| names.contains(n))
        .filter_map(|(n, p)| Some((n, <&mut TracePoint>::try_from(p).ok()?)))
        // Those loaded while the probes ran are done.
        .filter(|(_, p)| p.fd().is_err())
        .collect();
    std::thread::scope(|s| {
        for (name, p) in progs {
            s.spawn(move || load_tracepoint(name, p));
        }
    });
}

/// What was attached, per signal.
#[derive(Debug, Clone)]
pub struct Attached {
    pub signal: &'static str,
    pub choice: Choice,
}

/// Attach every implemented signal with its best available option. A signal
/// whose preferred option fails to attach falls through to the next option.
pub fn attach_signals(
    ebpf: &mut Ebpf,
    k: &KernelInfo,
    av: &Available,
    links: &mut Vec<OwnedLink>,
    without: &[String],
) -> Vec<Attached> {
    let off = |name: &str| without.iter().any(|w| w == name);
    preload_tracepoints(ebpf, av, &off);
    let mut out = Vec::new();
    for sig in SIGNALS.iter().filter(|s| s.implemented) {
        if off(sig.name) {
            out.push(Attached {
                signal: sig.name,
                choice: Choice::Off,
            });
            continue;
        }
        let mut choice = hooks::choose(sig, av);
        let mut tried = Available {
            hooks: av.hooks.clone(),
            ..av.clone()
        };
        while let Choice::Active { hook, .. } = &choice {
            let hook = *hook;
            let Some(opt) = hooks::option_for(sig, hook) else {
                break;
            };
            let mut failure = None;
            for p in opt.programs {
                let r = match p.attach {
                    Attach::TailCall(map, index) => {
                        install_tail(ebpf, p.name, map, index).map(|()| None)
                    }
                    _ => program(ebpf, p.name)
                        .and_then(|prog| load_and_attach(prog, p.name, p.attach, k)),
                };
                match r {
                    Ok(link) => links.extend(link),
                    Err(e) if p.required => {
                        failure = Some(format!("{}: {e}", p.name));
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(program = p.name, error = %e, "optional program not attached")
                    }
                }
            }
            match failure {
                None => break,
                Some(f) => {
                    tracing::warn!(signal = sig.name, hook = hook.name(), error = %f, "attach failed; trying the next option");
                    tried.hooks.retain(|h| *h != hook);
                    choice = hooks::choose(sig, &tried);
                    if let Choice::Unavailable { reason } = &mut choice {
                        reason.push_str(&format!("; {f}"));
                    }
                }
            }
        }
        out.push(Attached {
            signal: sig.name,
            choice,
        });
    }
    out
}
