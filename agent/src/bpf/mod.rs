//! Everything that touches `aya::Ebpf`: the embedded object, kernel facts,
//! hook probing, loading, attaching, map I/O. [`Collector`] owns the loaded
//! object for the agent's lifetime.
//!
//! Must not: decode events or decide what they mean.

pub mod attach;
pub mod error;
pub mod hooks;
pub mod kernel;
pub mod load;
pub mod log;
pub mod probe;
pub mod tracefs;

use agent_common::LostCause;
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};

use attach::{Attached, OwnedLink};
use error::{HookError, LoadError};
use hooks::Choice;
use kernel::{Globals, KernelInfo};

/// What the collector loads and how.
#[derive(Clone, Debug)]
pub struct CollectorOptions {
    /// Environment variable names that may leave the kernel.
    pub env_allow: Vec<String>,
    /// Command names whose process trees the kernel tracks.
    pub tools: Vec<String>,
    /// Network clients whose environment the kernel reads though untracked.
    pub env_clients: &'static [&'static str],
    /// Tools whose execs neither wake the reader nor read the environment.
    pub quiet_tools: &'static [&'static str],
    /// Established connections from untracked processes faster than this
    /// (without retransmits) are only counted in the kernel; 0 sends all.
    pub tcp_quiet_ns: u64,
    /// Track the processes the agent itself starts (`agent trace`).
    pub track_own_children: bool,
    /// Read every exec's environment (`--all-execs`), not only those of
    /// toolchain trees and `env_clients`.
    pub env_all_execs: bool,
    /// Kernel-side diagnostics (`--bpf-log`).
    pub bpf_log: log::BpfLogLevel,
    /// `--uid`: only this real uid's execs are recorded.
    pub filter_uid: Option<u32>,
    /// Signals the user turned off (`--without`), checked by
    /// [`hooks::check_without`].
    pub without: Vec<String>,
}

/// Below this set-up time a routine connection is not worth an event.
pub const DEFAULT_TCP_QUIET_NS: u64 = 100_000_000;

/// The loaded BPF object, its links and the maps userspace keeps using.
pub struct Collector {
    links: Vec<OwnedLink>,
    /// Signals not to attach (`--without`).
    without: Vec<String>,
    /// Uprobe links by the group their caller gave them (one file's).
    uprobes: std::collections::HashMap<u64, Vec<OwnedLink>>,
    /// Released uprobe links, to be detached off the event loop.
    released: Vec<OwnedLink>,
    tracked: aya::maps::HashMap<MapData, u32, u8>,
    ebpf: Ebpf,
    /// Until attached: the parsed kernel BTF alone is tens of MiB, kept no
    /// longer than [`Collector::attach_all`] needs it.
    kernel: Option<KernelInfo>,
    /// The TLS-library uprobes are loaded (attached per target as found).
    tls_uprobes: bool,
    /// The TLS-library programs loaded are the uprobe_multi variants.
    tls_uprobe_multi: bool,
    lost: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    pub attached: Vec<Attached>,
    pub warnings: Vec<String>,
    /// boot-time ns → Unix ns.
    pub clock_offset_ns: i128,
    /// The programs' log ring, until [`Collector::take_logger`].
    logger: Option<log::Logger>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let mut all = std::mem::take(&mut self.links);
        all.extend(self.uprobes.drain().flat_map(|(_, v)| v));
        all.append(&mut self.released);
        attach::detach_all(all);
    }
}

impl Collector {
    /// Load the object with its globals and maps filled; nothing attached
    /// yet. The events ring buffer is handed back: start reading it before
    /// [`Collector::attach_all`], so nothing waits unread.
    pub fn open(opts: &CollectorOptions) -> Result<(Collector, RingBuf<MapData>), LoadError> {
        let mut kernel = KernelInfo::gather(true);
        let mut globals = Globals::compute(&kernel);
        kernel.release_btf();
        globals.tcp_quiet_ns = opts.tcp_quiet_ns;
        globals.track_agent_children = u32::from(opts.track_own_children);
        globals.env_all_execs = u32::from(opts.env_all_execs);
        globals.filter_uid = opts.filter_uid.unwrap_or(agent_common::NO_UID_FILTER);
        globals.bpf_log_level = opts.bpf_log as u8;
        let mut warnings = globals.warnings.clone();
        if let Some(e) = &kernel.tracefs_error {
            warnings.push(e.clone());
        }
        let mut ebpf = load::open(&globals)?;
        let skipped = load::set_env_allow(&mut ebpf, &opts.env_allow)?;
        load::set_tools(&mut ebpf, &opts.tools, opts.env_clients, opts.quiet_tools)?;
        for s in skipped {
            warnings.push(format!(
                "environment variable name {s:?} is longer than {} bytes: not captured",
                agent_common::ENV_KEY_LEN
            ));
        }
        let ring = load::take_events(&mut ebpf)?;
        let lost = load::take_lost(&mut ebpf)?;
        let counters = load::take_counters(&mut ebpf)?;
        let tracked = load::take_tracked(&mut ebpf)?;
        let logger = log::take(&mut ebpf, opts.bpf_log);
        Ok((
            Collector {
                links: Vec::new(),
                without: opts.without.clone(),
                uprobes: Default::default(),
                released: Vec::new(),
                tracked,
                ebpf,
                kernel: Some(kernel),
                tls_uprobes: false,
                tls_uprobe_multi: false,
                lost,
                counters,
                attached: Vec::new(),
                warnings,
                clock_offset_ns: crate::clock::boot_to_unix_offset(),
                logger,
            },
            ring,
        ))
    }

    /// Probe the hooks this kernel allows and attach every signal with its
    /// best available option.
    pub fn attach_all(&mut self) -> Result<(), LoadError> {
        let kernel = self
            .kernel
            .take()
            .ok_or_else(|| LoadError::NothingAttached("attached already".into()))?;
        let likely = probe::likely_tracepoints(&kernel);
        let probes =
            probe::probe_all_preloading(&mut self.ebpf, &kernel, &probe::kinds_in_use(), &likely);
        if probes.iter().all(|(_, r)| r.is_err())
            && let Some(e) = probes
                .iter()
                .find_map(|(_, r)| r.as_ref().err())
                .filter(|e| e.not_permitted())
        {
            return Err(LoadError::NotPermitted(e.to_string()));
        }
        let av = probe::available(&kernel, &probes);
        let attached =
            attach::attach_signals(&mut self.ebpf, &kernel, &av, &mut self.links, &self.without);
        drop(kernel);
        if !attached.iter().any(|a| a.choice.is_active()) {
            let reasons: Vec<String> = attached
                .iter()
                .filter_map(|a| match &a.choice {
                    Choice::Unavailable { reason } => Some(format!("{}: {reason}", a.signal)),
                    _ => None,
                })
                .collect();
            return Err(LoadError::NothingAttached(reasons.join("; ")));
        }
        let tls = attached.iter().find(|a| a.signal == hooks::TLS_UPROBES);
        self.tls_uprobes = tls.is_some_and(|a| a.choice.is_active());
        self.tls_uprobe_multi = tls.is_some_and(|a| {
            matches!(
                a.choice,
                Choice::Active {
                    hook: hooks::HookKind::UprobeMulti,
                    ..
                }
            )
        });
        self.attached = attached;
        Ok(())
    }

    /// The programs' log ring when `--bpf-log` is on (once).
    pub fn take_logger(&mut self) -> Option<log::Logger> {
        self.logger.take()
    }

    /// The TLS-library uprobe programs are loaded (targets are attached as
    /// they are found: [`Collector::attach_uprobe`]).
    pub fn tls_uprobes(&self) -> bool {
        self.tls_uprobes
    }

    /// The TLS-library programs are uprobe_multi link programs: attaching
    /// them later needs no CAP_SYS_ADMIN (a perf-event uprobe does).
    pub fn tls_uprobe_multi(&self) -> bool {
        self.tls_uprobe_multi
    }

    /// Attach the loaded uprobe `program` at `at` (a symbol or a file
    /// offset) of the ELF file `target`, for every process that runs it;
    /// the link joins `group` (released together: [`Collector::release_uprobes`]).
    pub fn attach_uprobe(
        &mut self,
        group: u64,
        program: &str,
        at: aya::programs::uprobe::UProbeAttachLocation<'_>,
        target: &std::path::Path,
    ) -> Result<(), HookError> {
        let mut links = Vec::new();
        // The variant loaded for this kernel (see the hook table).
        let name = if self.tls_uprobe_multi {
            std::borrow::Cow::Owned(format!("{program}_multi"))
        } else {
            std::borrow::Cow::Borrowed(program)
        };
        attach::attach_uprobe_at(&mut self.ebpf, &name, at, target, &mut links)?;
        self.uprobes.entry(group).or_default().extend(links);
        Ok(())
    }

    /// Stop the uprobes of `group`: their links are detached by whoever
    /// takes them ([`Collector::take_released`]), off the event loop (each
    /// waits for the kernel).
    pub fn release_uprobes(&mut self, group: u64) {
        if let Some(v) = self.uprobes.remove(&group) {
            self.released.extend(v);
        }
    }

    /// Released uprobe links, to detach (`attach::detach_all`).
    pub fn take_released(&mut self) -> Vec<OwnedLink> {
        std::mem::take(&mut self.released)
    }

    /// Uprobe links attached now.
    pub fn uprobe_links(&self) -> usize {
        self.uprobes.values().map(Vec::len).sum()
    }

    /// Track `tgid` (and, through fork, its future children) in the kernel,
    /// as if it were a tool: `agent trace` does this for the command it runs.
    pub fn track(&mut self, tgid: u32) {
        if let Err(e) = self.tracked.insert(&tgid, &1, 0) {
            tracing::warn!(tgid, error = %e, "could not track the traced command in the kernel");
        }
    }

    /// Established connections counted in the kernel instead of sent (cumulative).
    pub fn tcp_quiet(&self) -> u64 {
        let i = agent_common::KernelCounter::TcpQuietEstablished as u32;
        self.counters
            .get(&i, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Kernel-side losses by cause (cumulative).
    pub fn lost(&self) -> Vec<(LostCause, u64)> {
        LostCause::ALL
            .iter()
            .copied()
            .zip(load::read_lost(&self.lost))
            .collect()
    }
}
