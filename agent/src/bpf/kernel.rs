//! Facts about the running kernel gathered before loading: BTF, tracefs,
//! the cgroup v2 mount, this process's capabilities, and the load-time
//! globals (struct offsets) computed from them.

use std::path::PathBuf;

use super::{error::LoadError, tracefs};
use crate::btf::Btf;

/// Set (to anything) to read argv/env at `sys_enter` as on kernels without
/// BTF: the fallback path, for tests and for comparing the two.
pub const EXEC_AT_ENTER_ENV: &str = "AGENT_EXEC_AT_ENTER";

/// Facts about the running kernel gathered before loading.
#[derive(Debug, Default)]
pub struct KernelInfo {
    /// Parsed for the load-time offsets ([`Globals::compute`]), then let go
    /// ([`KernelInfo::release_btf`]) before the programs load: it was half
    /// of the start-up peak of the RSS. (aya parses its own copy only for
    /// tp_btf and fentry, which `agent check` probes and no signal uses.)
    pub btf: Option<Btf>,
    /// Whether the kernel has BTF (still true once `btf` is released).
    pub has_btf: bool,
    pub btf_error: Option<String>,
    pub tracefs: Option<PathBuf>,
    pub tracefs_error: Option<String>,
    pub cgroup2: Option<PathBuf>,
    /// The kernel's BTF as aya parses it (for tp_btf and fentry programs),
    /// parsed at most once (10–25 ms in a release build) and dropped with `self`.
    pub(super) aya_btf: std::cell::OnceCell<Result<aya::Btf, String>>,
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
            .get_or_init(|| aya::Btf::from_sys_fs().map_err(|e| super::error::one_line(&e)))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Drop the agent's own parse of the kernel's BTF once the offsets are
    /// computed: ~8 MiB of heap (heaptrack), which would otherwise stay
    /// alive through every program load.
    pub fn release_btf(&mut self) {
        self.btf = None;
    }

    /// What the kernel offers. `mount_tracefs`: mount tracefs when it is
    /// absent (the agent needs it to attach tracepoints); `agent check`
    /// passes false, a check changes nothing on the machine.
    pub fn gather(mount_tracefs: bool) -> Self {
        let mut k = KernelInfo::default();
        match Btf::from_sys_fs() {
            Ok(b) => {
                k.btf = Some(b);
                k.has_btf = true;
            }
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
    /// `task_struct.pid`.
    pub task_pid: u32,
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
    /// `--uid`'s uid, or [`agent_common::NO_UID_FILTER`].
    pub filter_uid: u32,
    /// aya-log's level (`--bpf-log`; 0: off, and the log calls verify away).
    pub bpf_log_level: u8,
    pub warnings: Vec<String>,
}

impl Globals {
    pub fn compute(k: &KernelInfo) -> Self {
        let mut g = Globals {
            agent_tgid: std::process::id(),
            filter_uid: agent_common::NO_UID_FILTER,
            ..Default::default()
        };
        match &k.btf {
            Some(btf) => {
                for (field, slot, loss) in [
                    (
                        "real_parent",
                        &mut g.task_real_parent,
                        "parent pids degrade",
                    ),
                    ("tgid", &mut g.task_tgid, "parent pids and forks degrade"),
                    ("exit_code", &mut g.task_exit_code, "exit codes degrade"),
                    ("pid", &mut g.task_pid, "forks are not reported"),
                ] {
                    match btf.member_offset("task_struct", field) {
                        Ok(o) => *slot = o,
                        Err(e) => g.warnings.push(format!("{e}: {loss}")),
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
                .push("no kernel BTF: parent pids, exit codes and why a TCP connect failed are not reported".into()),
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

/// Effective capability bits of this process.
pub fn effective_caps() -> u64 {
    cap_eff(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

/// Fail early, in one line, when this process cannot possibly load programs.
pub fn require_privileges() -> Result<(), LoadError> {
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_BPF: u64 = 1 << 39;
    if effective_caps() & (CAP_SYS_ADMIN | CAP_BPF) == 0 {
        let euid = rustix::process::geteuid().as_raw();
        return Err(LoadError::NotPermitted(format!(
            "uid {euid} has neither CAP_BPF nor CAP_SYS_ADMIN"
        )));
    }
    Ok(())
}

/// The `CapEff:` bits of a `/proc/<pid>/status` text.
pub fn cap_eff(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}
