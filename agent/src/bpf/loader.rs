//! Loads the embedded BPF object, probes which hook kinds this kernel allows,
//! and attaches the programs the hook table chooses.
//!
//! Owns: everything that touches `aya::Ebpf`. Must not: decode events or
//! decide what they mean.

use std::{fs::File, path::PathBuf};

use agent_common::{
    COUNTERS_MAP, ENV_ALLOW_MAP, ENV_PREFIX_MAP, ENV_PREFIX_WORDS, EVENTS_MAP, EnvKey, LOST_CAUSES,
    LOST_MAP, TOOLS_MAP, TRACKED_MAP, env_prefix_index, globals,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, FEntry,
        KProbe, Program, RawTracePoint, SockOps, TracePoint, UProbe, uprobe::UProbeScope,
    },
};

use crate::{
    bpf::hooks::{self, Attach, Available, Choice, HookKind, SIGNALS},
    bpf::tracefs,
    btf::Btf,
};

/// The BPF object built by `build.rs`, embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Errors loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "cannot load BPF programs ({0}): run as root (sudo agent) or grant CAP_BPF and \
         CAP_PERFMON; `agent check` shows what is missing"
    )]
    NotPermitted(String),
    #[error("loading the BPF object: {0}")]
    Object(String),
    #[error("map {0} missing from the BPF object")]
    NoMap(&'static str),
    #[error("map {name}: {msg}")]
    Map { name: &'static str, msg: String },
    #[error("no signal can be collected on this kernel: {0}")]
    NothingAttached(String),
}

/// Facts about the running kernel gathered before loading.
#[derive(Debug, Default)]
pub struct KernelInfo {
    pub btf: Option<Btf>,
    pub btf_error: Option<String>,
    pub tracefs: Option<PathBuf>,
    pub tracefs_error: Option<String>,
    pub cgroup2: Option<PathBuf>,
    /// The kernel's BTF as aya parses it (for tp_btf and fentry programs),
    /// parsed at most once (10–25 ms in a release build) and dropped with `self`.
    aya_btf: std::cell::OnceCell<Result<aya::Btf, String>>,
}

/// cgroup v2 mount point from /proc/self/mounts text (hybrid hierarchies put it
/// at /sys/fs/cgroup/unified; never assume /sys/fs/cgroup).
pub fn cgroup2_in_mounts(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut it = line.split_whitespace();
        let (_, dir, fstype) = (it.next()?, it.next()?, it.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

impl KernelInfo {
    /// The kernel's BTF for aya, parsed on first use.
    pub fn aya_btf(&self) -> Result<&aya::Btf, String> {
        self.aya_btf
            .get_or_init(|| aya::Btf::from_sys_fs().map_err(msg))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// What the kernel offers. `mount_tracefs`: mount tracefs when it is
    /// absent (the agent needs it to attach tracepoints); `agent check`
    /// passes false, a check changes nothing on the machine.
    pub fn gather(mount_tracefs: bool) -> Self {
        let mut k = KernelInfo::default();
        match Btf::from_sys_fs() {
            Ok(b) => k.btf = Some(b),
            Err(e) => k.btf_error = Some(e.to_string()),
        }
        let found = if mount_tracefs {
            tracefs::ensure_mounted()
        } else {
            tracefs::find()
        };
        match found {
            Ok(p) => k.tracefs = Some(p),
            Err(e) => k.tracefs_error = Some(e.to_string()),
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        k.cgroup2 = cgroup2_in_mounts(&mounts);
        k
    }
}

/// Values of the load-time globals, with warnings for each that could not be found.
#[derive(Debug, Default, Clone)]
pub struct Globals {
    pub agent_tgid: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_exit_code: u32,
    pub task_mm: u32,
    pub mm_start_stack: u32,
    pub fork_child_pid: u32,
    pub exit_group_dead: u32,
    pub sock_err: u32,
    pub skc_net: u32,
    pub net_inum: u32,
    pub retrans_skaddr: u32,
    pub retrans_state: u32,
    pub tcp_quiet_ns: u64,
    pub track_agent_children: u32,
    pub env_all_execs: u32,
    pub warnings: Vec<String>,
}

impl Globals {
    pub fn compute(k: &KernelInfo) -> Self {
        let mut g = Globals {
            agent_tgid: std::process::id(),
            ..Default::default()
        };
        match &k.btf {
            Some(btf) => {
                for (field, slot) in [
                    ("real_parent", &mut g.task_real_parent),
                    ("tgid", &mut g.task_tgid),
                    ("exit_code", &mut g.task_exit_code),
                ] {
                    match btf.member_offset("task_struct", field) {
                        Ok(o) => *slot = o,
                        Err(e) => g
                            .warnings
                            .push(format!("{e}: parent pids/exit codes degrade")),
                    }
                }
                match mm_layout(btf) {
                    Ok((mm, ss)) if std::env::var_os(EXEC_AT_ENTER_ENV).is_none() => {
                        g.task_mm = mm;
                        g.mm_start_stack = ss;
                    }
                    Ok(_) => g.warnings.push(format!(
                        "{EXEC_AT_ENTER_ENV} is set: argv/env of execs are read at sys_enter (slower)"
                    )),
                    Err(e) => g.warnings.push(format!(
                        "{e}: argv/env of execs are read at sys_enter (slower)"
                    )),
                }
            }
            None => g
                .warnings
                .push("no kernel BTF: parent pids and exit codes are not reported".into()),
        }
        if let Some(btf) = &k.btf {
            match btf.member_offset("sock", "sk_err") {
                Ok(o) => g.sock_err = o,
                Err(e) => g.warnings.push(format!("{e}: TCP failure reasons degrade")),
            }
            match (
                btf.member_offset("sock_common", "skc_net"),
                btf.member_offset("net", "ns"),
                btf.member_offset("ns_common", "inum"),
            ) {
                (Ok(a), Ok(b), Ok(c)) => {
                    g.skc_net = a;
                    g.net_inum = b + c;
                }
                _ => g
                    .warnings
                    .push("network namespace of sockets unknown (BTF)".into()),
            }
        }
        if let Some(root) = &k.tracefs {
            match tracefs::field_offset(root, "sched", "sched_process_fork", "child_pid") {
                Ok(Some(o)) => g.fork_child_pid = o,
                Ok(None) => g
                    .warnings
                    .push("sched_process_fork has no child_pid".into()),
                Err(e) => g.warnings.push(e.to_string()),
            }
            if let Ok(Some(o)) =
                tracefs::field_offset(root, "sched", "sched_process_exit", "group_dead")
            {
                g.exit_group_dead = o;
            }
            match (
                tracefs::field_offset(root, "tcp", "tcp_retransmit_skb", "skaddr"),
                tracefs::field_offset(root, "tcp", "tcp_retransmit_skb", "state"),
            ) {
                (Ok(Some(a)), Ok(Some(b))) => {
                    g.retrans_skaddr = a;
                    g.retrans_state = b;
                }
                _ => g.warnings.push(
                    "tcp_retransmit_skb has no skaddr/state: SYN retransmits not counted".into(),
                ),
            }
        }
        g
    }
}

/// Set (to anything) to read argv/env at `sys_enter` as on kernels without
/// BTF: the fallback path, for tests and for comparing the two.
pub const EXEC_AT_ENTER_ENV: &str = "AGENT_EXEC_AT_ENTER";

/// `offsetof(task_struct, mm)` and `offsetof(mm_struct, start_stack)`, with
/// `arg_start`, `arg_end`, `env_start`, `env_end` checked to follow it (the
/// kernel program reads the five words at once).
fn mm_layout(btf: &Btf) -> Result<(u32, u32), crate::btf::BtfError> {
    let mm = btf.member_offset("task_struct", "mm")?;
    let ss = btf.member_offset("mm_struct", "start_stack")?;
    for (i, f) in ["arg_start", "arg_end", "env_start", "env_end"]
        .into_iter()
        .enumerate()
    {
        if btf.member_offset("mm_struct", f)? != ss + 8 * (i as u32 + 1) {
            return Err(crate::btf::BtfError::Malformed(
                "mm_struct: arg_start..env_end do not follow start_stack",
            ));
        }
    }
    Ok((mm, ss))
}

fn is_eperm(msg: &str) -> bool {
    msg.contains("Operation not permitted") || msg.contains("EPERM") || msg.contains("os error 1)")
}

/// Effective capability bits of this process.
pub fn effective_caps() -> u64 {
    crate::app::check::cap_eff(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

/// Fail early, in one line, when this process cannot possibly load programs.
pub fn require_privileges() -> Result<(), LoadError> {
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_BPF: u64 = 1 << 39;
    if effective_caps() & (CAP_SYS_ADMIN | CAP_BPF) == 0 {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        return Err(LoadError::NotPermitted(format!(
            "uid {euid} has neither CAP_BPF nor CAP_SYS_ADMIN"
        )));
    }
    Ok(())
}

/// Load the object (maps created, no program loaded yet).
pub fn open(g: &Globals) -> Result<Ebpf, LoadError> {
    require_privileges()?;
    bump_memlock();
    bump_nofile();
    let mut loader = EbpfLoader::new();
    loader
        .override_global(globals::AGENT_TGID, &g.agent_tgid, true)
        .override_global(globals::TASK_REAL_PARENT_OFF, &g.task_real_parent, true)
        .override_global(globals::TASK_TGID_OFF, &g.task_tgid, true)
        .override_global(globals::TASK_EXIT_CODE_OFF, &g.task_exit_code, true)
        .override_global(globals::TASK_MM_OFF, &g.task_mm, true)
        .override_global(globals::MM_START_STACK_OFF, &g.mm_start_stack, true)
        .override_global(globals::FORK_CHILD_PID_OFF, &g.fork_child_pid, true)
        .override_global(globals::EXIT_GROUP_DEAD_OFF, &g.exit_group_dead, true)
        .override_global(globals::SOCK_ERR_OFF, &g.sock_err, true)
        .override_global(globals::SKC_NET_OFF, &g.skc_net, true)
        .override_global(globals::NET_INUM_OFF, &g.net_inum, true)
        .override_global(globals::RETRANS_SKADDR_OFF, &g.retrans_skaddr, true)
        .override_global(globals::RETRANS_STATE_OFF, &g.retrans_state, true)
        .override_global(globals::TCP_QUIET_NS, &g.tcp_quiet_ns, true)
        .override_global(globals::TRACK_AGENT_CHILDREN, &g.track_agent_children, true)
        .override_global(globals::ENV_ALL_EXECS, &g.env_all_execs, true);
    if g.task_mm != 0 {
        // Whole-event in-flight table only serves the no-BTF fallback (20 MiB otherwise).
        loader.map_max_entries("EXEC_INFLIGHT_FULL", 1);
    }
    loader.load(OBJECT).map_err(|e| {
        let msg = msg(e);
        if is_eperm(&msg) {
            LoadError::NotPermitted(msg)
        } else {
            LoadError::Object(msg)
        }
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

fn bump_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an initialised rlimit for the duration of the call.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!("raising RLIMIT_MEMLOCK failed (fine on kernels with memcg accounting)");
    }
}

/// Every uprobe and tracepoint link holds a file descriptor: a node with
/// many Go toolchains and libssl copies needs more than the usual soft
/// limit of 1024. Soft is raised to the hard limit (a traced command gets
/// the limits the agent started with back: `traced`).
fn bump_nofile() {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) } != 0 {
        return;
    }
    if rlim.rlim_cur < rlim.rlim_max {
        let before = rlim.rlim_cur;
        rlim.rlim_cur = rlim.rlim_max;
        // SAFETY: valid pointer to an initialised rlimit for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) } == 0 {
            tracing::debug!(from = before, to = rlim.rlim_cur, "RLIMIT_NOFILE raised");
        }
    }
}

/// A function in this binary the uprobe probe attaches to.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn agent_uprobe_probe_target(x: u64) -> u64 {
    std::hint::black_box(x.wrapping_add(1))
}

macro_rules! prog {
    (given $prog:expr, $name:expr, $ty:ty) => {{
        let p = $prog.ok_or_else(|| format!("program {} missing from object", $name))?;
        let p: &mut $ty = p.try_into().map_err(|e| format!("{e}"))?;
        p
    }};
    ($ebpf:expr, $name:expr, $ty:ty) => {
        prog!(given $ebpf.program_mut($name), $name, $ty)
    };
}

/// An error and its causes on one line; a verifier log is cut to its last
/// lines (the reason is at the end), the full log is at debug level.
fn msg(e: impl std::error::Error) -> String {
    let chain = error_chain(&e);
    let full = if chain.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {chain}")
    };
    match full.split_once("Verifier output:") {
        Some((head, log)) => {
            tracing::debug!(verifier_log = log, "program rejected");
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .take(6)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{}verifier: {}", head, tail.join(" | "))
        }
        None => full,
    }
}

/// Load and attach the do-nothing program for `kind` (`prog`, taken from
/// the object by its name), then unload it.
fn probe_hook(prog: Option<&mut Program>, kind: HookKind, k: &KernelInfo) -> Result<(), String> {
    let name = kind.probe_program();
    let cgroup = || -> Result<File, String> {
        let p = k
            .cgroup2
            .as_ref()
            .ok_or_else(|| "no cgroup v2 mount".to_string())?;
        File::open(p).map_err(|e| format!("open {}: {e}", p.display()))
    };
    match kind {
        HookKind::Tracepoint => {
            if k.tracefs.is_none() {
                return Err("tracefs not mounted".into());
            }
            let p = prog!(given prog, name, TracePoint);
            p.load().map_err(msg)?;
            let r = p
                .attach("sched", "sched_process_fork")
                .map(|_| ())
                .map_err(msg);
            let _ = p.unload();
            r
        }
        HookKind::RawTracepoint => {
            let p = prog!(given prog, name, RawTracePoint);
            p.load().map_err(msg)?;
            let r = p.attach("sched_process_fork").map(|_| ()).map_err(msg);
            let _ = p.unload();
            r
        }
        HookKind::TpBtf => {
            let btf = k.aya_btf()?;
            let p = prog!(given prog, name, BtfTracePoint);
            p.load("sched_process_fork", btf).map_err(msg)?;
            let r = p.attach().map(|_| ()).map_err(msg);
            let _ = p.unload();
            r
        }
        HookKind::Kprobe => {
            let p = prog!(given prog, name, KProbe);
            p.load().map_err(msg)?;
            let r = p.attach("do_exit", 0).map(|_| ()).map_err(msg);
            let _ = p.unload();
            r
        }
        HookKind::Fentry => {
            let btf = k.aya_btf()?;
            let p = prog!(given prog, name, FEntry);
            p.load("do_exit", btf).map_err(msg)?;
            let r = p.attach().map(|_| ()).map_err(msg);
            let _ = p.unload();
            r
        }
        HookKind::Uprobe => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            std::hint::black_box(agent_uprobe_probe_target(1));
            let p = prog!(given prog, name, UProbe);
            p.load().map_err(msg)?;
            let r = p
                .attach(
                    ["agent_uprobe_probe_target"],
                    &exe,
                    UProbeScope::CallingProcess,
                )
                .map(|_| ())
                .map_err(msg);
            let _ = p.unload();
            r
        }
        HookKind::CgroupSockAddr => {
            let cg = cgroup()?;
            let p = prog!(given prog, name, CgroupSockAddr);
            p.load().map_err(msg)?;
            let r = p
                .attach(&cg, CgroupAttachMode::Single)
                .map(|_| ())
                .map_err(msg);
            let _ = p.unload();
            r
        }
        HookKind::SockOps => {
            let cg = cgroup()?;
            let p = prog!(given prog, name, SockOps);
            p.load().map_err(msg)?;
            let r = p
                .attach(&cg, CgroupAttachMode::Single)
                .map(|_| ())
                .map_err(msg);
            let _ = p.unload();
            r
        }
        HookKind::CgroupSkb => {
            let cg = cgroup()?;
            let p = prog!(given prog, name, CgroupSkb);
            p.load().map_err(msg)?;
            let r = p
                .attach(&cg, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                .map(|_| ())
                .map_err(msg);
            let _ = p.unload();
            r
        }
    }
}

/// Probe every hook kind.
pub fn probe_all(ebpf: &mut Ebpf, k: &KernelInfo) -> Vec<(HookKind, Result<(), String>)> {
    probe_all_preloading(ebpf, k, &[])
}

/// Probe every hook kind while the tracepoint programs named in `preload`
/// are loaded (verified) in threads of their own. The probes spend most of
/// their time waiting for the kernel (a grace period per detach), the
/// verifier on the exec programs most of a second of CPU: side by side,
/// start-up costs the longer of the two instead of their sum. A program
/// loaded here but not chosen afterwards is only unloaded with the rest.
pub fn probe_all_preloading(
    ebpf: &mut Ebpf,
    k: &KernelInfo,
    preload: &[&str],
) -> Vec<(HookKind, Result<(), String>)> {
    let mut probe_progs: Vec<(HookKind, &mut Program)> = Vec::new();
    let mut loads: Vec<(&str, &mut TracePoint)> = Vec::new();
    for (name, p) in ebpf.programs_mut() {
        if let Some(&h) = HookKind::ALL.iter().find(|h| h.probe_program() == name) {
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
        HookKind::ALL
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

/// The tracepoint programs of `options`, each named once.
fn tracepoint_programs<'a>(
    options: impl Iterator<Item = &'a hooks::HookOption>,
) -> Vec<&'static str> {
    let mut names = Vec::new();
    for opt in options {
        for p in opt.programs {
            if matches!(p.attach, Attach::Tracepoint(..)) && !names.contains(&p.name) {
                names.push(p.name);
            }
        }
    }
    names
}

/// Load one tracepoint program ahead of its attach; a failure is only
/// logged here, the attach that follows loads it again and reports it.
fn load_tracepoint(name: &str, p: &mut TracePoint) {
    if let Err(e) = p.load() {
        tracing::debug!(program = name, error = %msg(e), "preload failed");
    }
}

pub fn available(k: &KernelInfo, probes: &[(HookKind, Result<(), String>)]) -> Available {
    Available {
        btf: k.btf.is_some(),
        tracefs: k.tracefs.is_some(),
        cgroup2: k.cgroup2.clone(),
        hooks: probes
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(h, _)| *h)
            .collect(),
    }
}

/// An attachment owned outside its program, so shutdown can detach them all
/// in parallel (each tracepoint detach waits for an RCU grace period: one
/// after another they took 1.5 s for 26 links here).
pub enum OwnedLink {
    Tp(aya::programs::trace_point::TracePointLink),
    Btf(aya::programs::tp_btf::BtfTracePointLink),
    Uprobe(aya::programs::uprobe::UProbeLink),
}

/// Attach the loaded uprobe `program` at `symbol` of the ELF file `target`,
/// for every process that runs that file.
pub fn attach_uprobe(
    ebpf: &mut Ebpf,
    program: &str,
    symbol: &str,
    target: &std::path::Path,
    links: &mut Vec<OwnedLink>,
) -> Result<(), String> {
    attach_uprobe_at(ebpf, program, symbol.into(), target, links)
}

/// As [`attach_uprobe`], at a symbol or a file offset.
pub fn attach_uprobe_at(
    ebpf: &mut Ebpf,
    program: &str,
    at: aya::programs::uprobe::UProbeAttachLocation<'_>,
    target: &std::path::Path,
    links: &mut Vec<OwnedLink>,
) -> Result<(), String> {
    let prog = prog!(ebpf, program, UProbe);
    let id = prog
        .attach([at], target, UProbeScope::AllProcesses)
        .map_err(msg)?;
    links.push(OwnedLink::Uprobe(prog.take_link(id).map_err(msg)?));
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

fn attach_prog(
    ebpf: &mut Ebpf,
    p: &hooks::Prog,
    k: &KernelInfo,
    cgroup2: Option<&std::path::Path>,
    links: &mut Vec<OwnedLink>,
) -> Result<(), String> {
    let cgroup = || -> Result<File, String> {
        let path = cgroup2.ok_or_else(|| "no cgroup v2 mount".to_string())?;
        File::open(path).map_err(|e| format!("open {}: {e}", path.display()))
    };
    match p.attach {
        Attach::LoadOnly => prog!(ebpf, p.name, UProbe).load().map_err(msg),
        // cgroup links stay with their program; detaching them does not wait
        // for a grace period.
        Attach::CgroupSockAddr => {
            let cg = cgroup()?;
            let prog = prog!(ebpf, p.name, CgroupSockAddr);
            prog.load().map_err(msg)?;
            // A BPF link: shares the root with other programs (systemd, CNI plugins)
            // whatever the mode; the mode flags apply to legacy attachments only.
            prog.attach(&cg, CgroupAttachMode::Single).map_err(msg)?;
            Ok(())
        }
        Attach::CgroupSkb(egress) => {
            let cg = cgroup()?;
            let prog = prog!(ebpf, p.name, CgroupSkb);
            prog.load().map_err(msg)?;
            let ty = if egress {
                CgroupSkbAttachType::Egress
            } else {
                CgroupSkbAttachType::Ingress
            };
            prog.attach(&cg, ty, CgroupAttachMode::Single)
                .map_err(msg)?;
            Ok(())
        }
        Attach::Tracepoint(cat, name) => {
            let prog = prog!(ebpf, p.name, TracePoint);
            // One program may serve several tracepoints: load it once.
            if prog.fd().is_err() {
                prog.load().map_err(msg)?;
            }
            let id = prog.attach(cat, name).map_err(msg)?;
            links.push(OwnedLink::Tp(prog.take_link(id).map_err(msg)?));
            Ok(())
        }
        Attach::TpBtf(tp) => {
            let btf = k.aya_btf()?;
            let prog = prog!(ebpf, p.name, BtfTracePoint);
            prog.load(tp, btf).map_err(msg)?;
            let id = prog.attach().map_err(msg)?;
            links.push(OwnedLink::Btf(prog.take_link(id).map_err(msg)?));
            Ok(())
        }
    }
}

/// Load (verify) the tracepoint programs of each signal's first choice
/// concurrently, one thread each. The verifier runs in the loading thread
/// and takes most of the start-up: ~0.5–0.7 s for each exec program here,
/// one after another otherwise. A program that fails here is loaded again,
/// and its error reported, by the attach that follows.
fn preload_tracepoints(ebpf: &mut Ebpf, av: &Available) {
    let names = tracepoint_programs(SIGNALS.iter().filter(|s| s.implemented).filter_map(|sig| {
        match hooks::choose(sig, av) {
            Choice::Active { hook, .. } => hooks::option_for(sig, hook),
            _ => None,
        }
    }));
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
) -> Vec<Attached> {
    preload_tracepoints(ebpf, av);
    let mut out = Vec::new();
    for sig in SIGNALS.iter().filter(|s| s.implemented) {
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
                if let Err(e) = attach_prog(ebpf, p, k, av.cgroup2.as_deref(), links) {
                    if p.required {
                        failure = Some(format!("{}: {e}", p.name));
                        break;
                    }
                    tracing::warn!(program = p.name, error = %e, "optional program not attached");
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

/// Fill the environment allow-list map.
pub fn set_env_allow(ebpf: &mut Ebpf, names: &[String]) -> Result<Vec<String>, LoadError> {
    let mut skipped = Vec::new();
    let mut bits = vec![0u64; ENV_PREFIX_WORDS as usize];
    for n in names {
        let b = n.as_bytes();
        if let Some(&b0) = b.first() {
            let i = env_prefix_index(b0, b.get(1).copied().unwrap_or(b'='));
            bits[(i >> 6) as usize] |= 1 << (i & 63);
        }
    }
    {
        let pm = ebpf
            .map_mut(ENV_PREFIX_MAP)
            .ok_or(LoadError::NoMap("ENV_PREFIX"))?;
        let mut pm: Array<&mut MapData, u64> = Array::try_from(pm).map_err(|e| LoadError::Map {
            name: "ENV_PREFIX",
            msg: e.to_string(),
        })?;
        for (i, w) in bits.iter().enumerate() {
            if *w != 0 {
                pm.set(i as u32, w, 0).map_err(|e| LoadError::Map {
                    name: "ENV_PREFIX",
                    msg: e.to_string(),
                })?;
            }
        }
    }
    let map = ebpf
        .map_mut(ENV_ALLOW_MAP)
        .ok_or(LoadError::NoMap("ENV_ALLOW"))?;
    let mut map: LpmTrie<&mut MapData, EnvKey, u8> =
        LpmTrie::try_from(map).map_err(|e| LoadError::Map {
            name: "ENV_ALLOW",
            msg: e.to_string(),
        })?;
    for n in names {
        match EnvKey::new(n.as_bytes()) {
            Some((k, bits)) => {
                map.insert(&Key::new(bits, k), &1, 0)
                    .map_err(|e| LoadError::Map {
                        name: "ENV_ALLOW",
                        msg: e.to_string(),
                    })?
            }
            None => skipped.push(n.clone()),
        }
    }
    Ok(skipped)
}

/// Fill the tool-name map: `tools` start tracked trees, `clients` only get
/// their environment read, `quiet` neither wake the reader nor get their
/// environment read (`comm` is at most
/// 15 bytes: longer names are cut as the kernel cuts them; a name in
/// `tools` is a tool whatever else lists it).
pub fn set_tools(
    ebpf: &mut Ebpf,
    tools: &[String],
    clients: &[&str],
    quiet: &[&str],
) -> Result<(), LoadError> {
    let map = ebpf.map_mut(TOOLS_MAP).ok_or(LoadError::NoMap("TOOLS"))?;
    let mut map: BpfHashMap<&mut MapData, [u8; 16], u8> =
        BpfHashMap::try_from(map).map_err(|e| LoadError::Map {
            name: "TOOLS",
            msg: e.to_string(),
        })?;
    let entries = clients
        .iter()
        .map(|c| (*c, agent_common::TOOL_ENV))
        .chain(quiet.iter().map(|q| (*q, agent_common::TOOL_QUIET)))
        .chain(tools.iter().map(|t| (t.as_str(), agent_common::TOOL_TRACK)));
    for (name, class) in entries {
        let mut key = [0u8; 16];
        let b = name.as_bytes();
        let n = b.len().min(15);
        key[..n].copy_from_slice(&b[..n]);
        map.insert(&key, &class, 0).map_err(|e| LoadError::Map {
            name: "TOOLS",
            msg: e.to_string(),
        })?;
    }
    Ok(())
}

/// Take the map of tracked processes (userspace adds `agent trace` roots).
pub fn take_tracked(ebpf: &mut Ebpf) -> Result<BpfHashMap<MapData, u32, u8>, LoadError> {
    let map = ebpf
        .take_map(TRACKED_MAP)
        .ok_or(LoadError::NoMap("TRACKED"))?;
    BpfHashMap::try_from(map).map_err(|e| LoadError::Map {
        name: "TRACKED",
        msg: e.to_string(),
    })
}

/// Take the per-CPU counters of events handled in the kernel.
pub fn take_counters(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, u64>, LoadError> {
    let map = ebpf
        .take_map(COUNTERS_MAP)
        .ok_or(LoadError::NoMap("COUNTERS"))?;
    PerCpuArray::try_from(map).map_err(|e| LoadError::Map {
        name: "COUNTERS",
        msg: e.to_string(),
    })
}

/// Take the events ring buffer (start reading it before attaching).
pub fn take_events(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, LoadError> {
    let map = ebpf
        .take_map(EVENTS_MAP)
        .ok_or(LoadError::NoMap("EVENTS"))?;
    RingBuf::try_from(map).map_err(|e| LoadError::Map {
        name: "EVENTS",
        msg: e.to_string(),
    })
}

/// Take the per-CPU loss counters.
pub fn take_lost(ebpf: &mut Ebpf) -> Result<PerCpuArray<MapData, u64>, LoadError> {
    let map = ebpf.take_map(LOST_MAP).ok_or(LoadError::NoMap("LOST"))?;
    PerCpuArray::try_from(map).map_err(|e| LoadError::Map {
        name: "LOST",
        msg: e.to_string(),
    })
}

/// Sum of each loss counter over CPUs, in `LostCause` order.
pub fn read_lost(map: &PerCpuArray<MapData, u64>) -> Vec<u64> {
    (0..LOST_CAUSES)
        .map(|i| map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Each once, and only programs attached to a tracepoint.
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for n in &names {
            assert!(
                SIGNALS.iter().flat_map(|s| s.options).any(|o| o
                    .programs
                    .iter()
                    .any(|p| p.name == *n && matches!(p.attach, Attach::Tracepoint(..)))),
                "{n} is not a tracepoint program"
            );
        }
        assert!(likely_tracepoints(&KernelInfo::default()).is_empty());
    }
}
