//! What the kernel captures for the exec signal: the environment allow-list,
//! the tools whose trees it tracks, the clients and quiet tools whose
//! environment it reads or skips.

use crate::bpf::CollectorOptions;

/// Environment variables that may leave the kernel by default.
pub const DEFAULT_ENV_ALLOW: &[&str] = &[
    "PATH",
    "GOROOT",
    "GOPATH",
    "GOBIN",
    "GOTOOLCHAIN",
    "GOFLAGS",
    "GOPROXY",
    "GOSUMDB",
    "GONOSUMDB",
    "GONOPROXY",
    "GOPRIVATE",
    "GOWORK",
    "GO111MODULE",
    "GOMODCACHE",
    "GOCACHE",
    "CGO_ENABLED",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "CONDA_SHLVL",
    "CONDA_EXE",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    "PYTHONHOME",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PYENV_VERSION",
    "PYENV_ROOT",
    "GOENV_VERSION",
    "RBENV_VERSION",
    "NODENV_VERSION",
    "LD_LIBRARY_PATH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "Http_Proxy",
    "Https_Proxy",
    "No_Proxy",
    "ALL_PROXY",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HOME",
    // W3C trace context (OpenTelemetry's environment carrier): a span's
    // parent when the process runs inside an instrumented CI job.
    "TRACEPARENT",
    "TRACESTATE",
];

/// Programs a build runs by the hundred, which make no TLS handshake: their
/// execs do not wake the reader and skip the environment, which is their
/// parent's ([`crate::process::table::ProcTable::env_of`] looks there; see
/// [`agent_common::TOOL_QUIET`]).
pub const QUIET_TOOLS: &[&str] = &[
    // Go's own tools ($GOROOT/pkg/tool/<os_arch>/).
    "compile", "asm", "link", "cgo", "vet", "buildid", "pack", "cover",
    // cgo's C toolchain.
    "gcc", "cc", "cc1", "cc1plus", "as", "ld", "collect2", "ar", "clang",
];

/// Network clients outside toolchain trees whose environment the kernel
/// still reads: their connection and TLS findings cite proxies, CA files
/// and index URLs from it. Every other untracked exec skips the
/// environment (most of an exec's BPF time).
pub const ENV_CLIENTS: &[&str] = &[
    "curl",
    "wget",
    "git",
    "git-remote-http",
    "git-remote-https",
    "openssl",
    "node",
    "npm",
    "npx",
    "cargo",
    "rustup",
    "apt",
    "apt-get",
    "ssh",
];

/// The collector's defaults: built-in allow-list, default tools, 100 ms
/// quiet threshold.
pub fn collector_options() -> CollectorOptions {
    CollectorOptions {
        env_allow: DEFAULT_ENV_ALLOW.iter().map(|s| s.to_string()).collect(),
        tools: super::AnalysisConfig::default().tools,
        env_clients: ENV_CLIENTS,
        quiet_tools: QUIET_TOOLS,
        tcp_quiet_ns: crate::bpf::DEFAULT_TCP_QUIET_NS,
        track_own_children: false,
        env_all_execs: false,
        bpf_log: crate::bpf::log::BpfLogLevel::Off,
        filter_uid: None,
        without: Vec::new(),
    }
}
