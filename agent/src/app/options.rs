//! Options shared by `agent` and `agent trace`, and what follows from them.

use std::time::Duration;

use crate::{
    render::Format, signal::dns::DnsConfig, signal::exec::AnalysisConfig, signal::tcp::NetConfig,
    signal::tls::TlsConfig,
};

/// Options shared by both modes.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub format: Format,
    pub color: bool,
    /// Show every exec, not only toolchain ones.
    pub all_execs: bool,
    pub env_allow: Vec<String>,
    pub analysis: AnalysisConfig,
    /// OTLP export; `None` prints locally only.
    pub otlp: Option<crate::sink::otlp::OtlpConfig>,
    /// Serve /healthz and /readyz here (live mode).
    pub health_addr: Option<String>,
    /// Thresholds of `net.slow_connect`.
    pub net: NetConfig,
    /// Kernel-side diagnostics (`--bpf-log`).
    pub bpf_log: crate::bpf::log::BpfLogLevel,
    /// Thresholds of the TLS findings.
    pub tls: TlsConfig,
    /// Thresholds of the DNS findings.
    pub dns: DnsConfig,
    /// Kubernetes API endpoint (a `kubectl proxy` sidecar) for pod names.
    pub k8s_api: Option<String>,
    /// The process exits right after the run: the probes are left to
    /// [`crate::app::teardown::exit`] to detach instead of being detached here.
    pub exit_after: bool,
    /// Who `agent trace` runs its command as; found from the ancestry when unset.
    pub invoker: Option<crate::process::invoker::Invoker>,
    /// Signals not collected (`--without`), already checked.
    pub without: Vec<String>,
    /// Live mode: serve `agent trace` to users without sudo on this socket.
    pub trace_socket: Option<std::path::PathBuf>,
    /// Live mode's `--pid`, `--uid`, `--comm`, `--cgroup`, `--namespace`, `--pod`.
    pub filter: super::filter::FilterSpec,
}

/// The analysis settings, with pod names from the Kubernetes API when
/// `--k8s-api` is set (refreshed every 30 s in the background).
pub(super) fn analysis_config(opts: &RunOptions) -> AnalysisConfig {
    let mut a = opts.analysis.clone();
    if let Some(url) = &opts.k8s_api {
        let dir = crate::process::k8s::PodDirectory::default();
        let node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
        crate::process::k8s::spawn_pod_refresher(
            url.clone(),
            node,
            dir.clone(),
            Duration::from_secs(30),
        );
        a.pods = Some(dir);
    }
    a
}

impl RunOptions {
    /// Who `agent trace` runs its command as: the one main found, else
    /// this process's own account.
    pub(super) fn invoker_or_self(
        &self,
    ) -> Result<crate::process::invoker::Invoker, crate::process::invoker::InvokerError> {
        match &self.invoker {
            Some(i) => Ok(i.clone()),
            None => crate::process::invoker::find(
                &crate::process::invoker::probe_self(std::path::Path::new("/proc")),
                None,
                &[],
            ),
        }
    }

    pub(super) fn collector_options(&self) -> crate::bpf::CollectorOptions {
        crate::bpf::CollectorOptions {
            env_allow: self.env_allow.clone(),
            tools: self.analysis.tools.clone(),
            env_clients: crate::signal::exec::capture::ENV_CLIENTS,
            quiet_tools: crate::signal::exec::capture::QUIET_TOOLS,
            env_all_execs: self.all_execs || self.analysis.all,
            // With --all-execs / --analyse-all every connection is an event.
            tcp_quiet_ns: if self.all_execs || self.analysis.all {
                0
            } else {
                crate::bpf::DEFAULT_TCP_QUIET_NS
            },
            track_own_children: false,
            bpf_log: self.bpf_log,
            filter_uid: self.filter.uid,
            without: self.without.clone(),
        }
    }
}
