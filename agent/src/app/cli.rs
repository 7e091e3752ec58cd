//! The command line: one clap definition, which `--help`, the shell
//! completions (`agent completions SHELL`) and the man page (`agent man`)
//! are all generated from.
//!
//! One `--help` with the flags grouped under headings (as `kubectl` and
//! `ig` do) rather than a short list and a `--help-all`: 27 flags in six
//! groups fit two screens, and a flag hidden behind a second help is one
//! nobody finds. `-h` prints the same groups with one line per flag.

use clap::{Parser, Subcommand, ValueEnum};

/// `--format`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum FormatArg {
    Text,
    Json,
    /// `agent trace` only: the report as Markdown (CI job summaries).
    Markdown,
}

/// `--argv`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ArgvArg {
    Full,
    Scrubbed,
    None,
}

/// `--bpf-log` levels.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum BpfLogArg {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<BpfLogArg> for crate::bpf::log::BpfLogLevel {
    fn from(a: BpfLogArg) -> Self {
        use crate::bpf::log::BpfLogLevel as L;
        match a {
            BpfLogArg::Off => L::Off,
            BpfLogArg::Error => L::Error,
            BpfLogArg::Warn => L::Warn,
            BpfLogArg::Info => L::Info,
            BpfLogArg::Debug => L::Debug,
            BpfLogArg::Trace => L::Trace,
        }
    }
}

/// `agent trace --ci`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum CiArg {
    Auto,
    Off,
}

/// `--color`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ColorArg {
    Auto,
    Always,
    Never,
}

/// `agent completions SHELL`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

const OUTPUT: &str = "Output";
const FILTERS: &str = "Filters (live mode)";
const PRIVILEGES: &str = "Privileges";
const OTLP: &str = "OTLP export";
const KERNEL: &str = "Kernel";
const ADVANCED: &str = "Advanced";

const EXIT_CODES: &str = "Exit codes:\n  \
    0    success (live mode stopped by Ctrl-C or SIGTERM; `check`: the kernel is usable)\n  \
    1    the agent could not run (an --output it cannot open, a runtime failure)\n  \
    2    a usage error: a flag, an enum value, the config file, an OTEL_* variable\n  \
    69   the kernel offers nothing the agent can collect (`check`: not usable)\n  \
    77   privileges missing and not elevated (--no-elevate, no sudo or doas)\n  \
    CMD  `agent trace -- CMD` exits with CMD's code (a signal: 128 + its number),\n       \
         or the code --exit-code maps its verdict to";

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "Live diagnosis of toolchain and network faults, from the kernel",
    long_about = "Without a subcommand: watch the whole machine and print one line per \
                  toolchain exec (Go, Python, conda) and per finding.\n\
                  Needs root (or CAP_BPF + CAP_PERFMON): typed without them, `agent`, \
                  `agent trace` and `agent check --probe` re-run themselves through sudo (or doas), \
                  saying so first; `--no-elevate` turns that off. `agent check` says what this kernel allows.",
    after_help = EXIT_CODES,
)]
pub struct Cli {
    /// Readable lines, or one JSON object per line ("type" first).
    #[arg(long, value_enum, global = true, help_heading = OUTPUT, value_name = "FORMAT")]
    pub format: Option<FormatArg>,
    /// Colour in text output [default: auto: on a terminal, never into
    /// --output FILE] [env: NO_COLOR (non-empty: never), CLICOLOR_FORCE (non-empty: always)].
    #[arg(long, value_enum, global = true, help_heading = OUTPUT, value_name = "WHEN")]
    pub color: Option<ColorArg>,
    /// Write records to this file instead of stdout (with `trace`, keeps the
    /// command's own output apart).
    #[arg(long, short = 'o', global = true, help_heading = OUTPUT, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Print every exec and exit, not only toolchain ones.
    #[arg(long, global = true, help_heading = OUTPUT)]
    pub all_execs: bool,
    /// Command lines in records and exports: `scrubbed` removes passwords,
    /// tokens, secret options, headers and query parameters (docs/events.md
    /// lists the rules), `none` keeps the program name only, `full` keeps
    /// everything [default: scrubbed].
    #[arg(long, value_enum, global = true, help_heading = OUTPUT, value_name = "MODE")]
    pub argv: Option<ArgvArg>,

    /// Only this process and its descendants (repeat or comma-separate for
    /// several trees).
    #[arg(long, value_delimiter = ',', help_heading = FILTERS, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Only processes of this user (a name or a number; its real uid).
    /// Applied in the kernel: other users' execs, forks and exits are not
    /// even recorded.
    #[arg(long, help_heading = FILTERS, value_name = "USER")]
    pub uid: Option<String>,
    /// Only processes with this command name (comm, or the program's file
    /// name; repeat or comma-separate).
    #[arg(long, value_delimiter = ',', help_heading = FILTERS, value_name = "NAME")]
    pub comm: Vec<String>,
    /// Only processes in this cgroup or below it: a path (absolute, or
    /// relative to the cgroup v2 mount, e.g. system.slice/ssh.service) or a
    /// cgroup id.
    #[arg(long, help_heading = FILTERS, value_name = "PATH|ID")]
    pub cgroup: Option<String>,
    /// Only pods of this Kubernetes namespace (with --k8s-api, or the pod
    /// names found on the node).
    #[arg(long, help_heading = FILTERS, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only this pod (its name; with --namespace, in that namespace).
    #[arg(long, help_heading = FILTERS, value_name = "POD")]
    pub pod: Option<String>,

    /// Never re-run through sudo/doas when not privileged: fail with one line instead.
    #[arg(long, global = true, help_heading = PRIVILEGES)]
    pub no_elevate: bool,
    /// Live mode: let users without sudo `agent trace` their own commands
    /// through this agent, on this unix socket (each sees only their
    /// command's tree). `agent trace` without privileges uses it when it
    /// exists, before trying sudo [default for `agent trace`:
    /// /run/agent/trace.sock] [env: AGENT_TRACE_SOCKET].
    #[arg(long, global = true, help_heading = PRIVILEGES, value_name = "PATH")]
    pub trace_socket: Option<std::path::PathBuf>,
    /// Set by the agent itself when it re-ran through sudo/doas.
    #[arg(long = "elevated", hide = true, global = true)]
    pub elevated: bool,

    /// OTLP endpoint; export is off without one [env: OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long, global = true, help_heading = OTLP, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport [default: http/protobuf] [env: OTEL_EXPORTER_OTLP_PROTOCOL].
    #[arg(long, global = true, value_parser = ["grpc", "http/protobuf"], help_heading = OTLP, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Signals not to collect, to spare what they cost where their findings
    /// are not wanted: `wire` runs on every packet of every socket,
    /// `tls_uprobes` traps into each OpenSSL handshake (`agent check` lists
    /// the signals; exec, lineage and exit cannot be turned off).
    #[arg(long, value_delimiter = ',', global = true, value_name = "SIGNAL", help_heading = KERNEL)]
    pub without: Vec<String>,
    /// Kernel-side diagnostics on stderr: why a program returned early, which
    /// map insert failed, which event was lost (aya-log) [default: off].
    #[arg(long, value_enum, global = true, value_name = "LEVEL", help_heading = KERNEL)]
    pub bpf_log: Option<BpfLogArg>,
    /// Extra environment variables to capture (the built-in allow-list is always used).
    #[arg(long, value_delimiter = ',', global = true, help_heading = KERNEL, value_name = "NAME")]
    pub env_allow: Vec<String>,

    /// Configuration file, TOML with the flags' names as keys [default:
    /// /etc/agent/config.toml if present] [env: AGENT_CONFIG].
    #[arg(long, global = true, help_heading = ADVANCED, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Serve /healthz and /readyz on this address (e.g. 0.0.0.0:9464).
    #[arg(long, global = true, help_heading = ADVANCED, value_name = "ADDR")]
    pub health_addr: Option<String>,
    /// Pod names and namespaces from the Kubernetes API through this plain-HTTP
    /// endpoint: a `kubectl proxy` sidecar (deploy/kubernetes/overlays/k8s-api).
    #[arg(long, global = true, help_heading = ADVANCED, value_name = "URL")]
    pub k8s_api: Option<String>,
    /// Analyse every process in depth, not only toolchains and their descendants.
    #[arg(long, global = true, help_heading = ADVANCED)]
    pub analyse_all: bool,
    /// Command names analysed in depth (replaces the default list).
    #[arg(long, value_delimiter = ',', global = true, help_heading = ADVANCED, value_name = "NAME")]
    pub tools: Option<Vec<String>>,
    /// A TCP set-up slower than this is net.slow_connect [default: 1000].
    #[arg(long, global = true, help_heading = ADVANCED, value_name = "MS")]
    pub slow_connect_ms: Option<u64>,
    /// ...or slower than this many times the destination's own average [default: 5].
    #[arg(long, global = true, help_heading = ADVANCED, value_name = "FACTOR")]
    pub slow_connect_factor: Option<f64>,
    /// A TLS handshake slower than this is tls.slow_handshake [default: 1000].
    #[arg(long, global = true, help_heading = ADVANCED, value_name = "MS")]
    pub slow_tls_ms: Option<u64>,
    /// A DNS lookup slower than this is net.dns_slow [default: 1000].
    #[arg(long, global = true, help_heading = ADVANCED, value_name = "MS")]
    pub slow_dns_ms: Option<u64>,
    /// A DNS query unanswered this long after its last attempt is net.dns_timeout [default: 5000].
    #[arg(long, global = true, help_heading = ADVANCED, value_name = "MS")]
    pub dns_timeout_ms: Option<u64>,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Probe this kernel and show which hook each signal will use (without
    /// root: what can be read without loading programs).
    Check {
        /// Load and attach a test program per hook kind (re-runs through sudo
        /// when not privileged).
        #[arg(long)]
        probe: bool,
    },
    /// Run a command exactly as you would have (your account, groups,
    /// environment, directory: taken from the sudo or doas you typed, or
    /// handed over when `agent trace` elevates itself), observe only its
    /// process tree, print a report when it exits, exit with its code.
    /// Ctrl-C goes to the command; the report still comes.
    Trace {
        /// Run the command as this account instead (its passwd entry and
        /// groups, a login-like environment).
        #[arg(long)]
        user: Option<String>,
        /// With --user: also pass these variables of yours (comma-separated).
        #[arg(long, value_delimiter = ',')]
        keep_env: Vec<String>,
        /// With OTLP export on, do not give the command TRACEPARENT of its
        /// span (OTel-instrumented programs then start traces of their own).
        #[arg(long)]
        no_traceparent: bool,
        /// Exit with N instead of the command's code when the verdict is
        /// failed_network (`network=N`) or failed_toolchain (`toolchain=N`);
        /// 75 (EX_TEMPFAIL) tells a retry wrapper "try again".
        #[arg(long, value_delimiter = ',', value_name = "KIND=N")]
        exit_code: Vec<String>,
        /// CI-native output, on when the CI's own variables say so
        /// (GITHUB_ACTIONS: annotations, job summary, step output `verdict`;
        /// GITLAB_CI: a collapsible report).
        #[arg(long, value_enum, default_value_t = CiArg::Auto)]
        ci: CiArg,
        /// Also write the report as JUnit XML to this file (Jenkins, GitLab,
        /// Buildkite and CircleCI read it).
        #[arg(long, value_name = "FILE")]
        junit: Option<std::path::PathBuf>,
        /// The command and its arguments, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Print a completion script for this shell on stdout (`cargo xtask
    /// install` installs them; or `agent completions bash >
    /// ~/.local/share/bash-completion/completions/agent`).
    Completions {
        /// bash, zsh or fish.
        #[arg(value_enum)]
        shell: ShellArg,
    },
    /// Print the man page (roff) on stdout: `agent man | man -l -`.
    Man,
}

impl Cli {
    /// Any live-mode filter given.
    pub fn filtered(&self) -> bool {
        !self.pid.is_empty()
            || self.uid.is_some()
            || !self.comm.is_empty()
            || self.cgroup.is_some()
            || self.namespace.is_some()
            || self.pod.is_some()
    }
}

/// The completion script for `shell`, generated from [`Cli`].
pub fn completions(shell: ShellArg) -> Vec<u8> {
    use clap::CommandFactory as _;
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    let sh = match shell {
        ShellArg::Bash => clap_complete::Shell::Bash,
        ShellArg::Zsh => clap_complete::Shell::Zsh,
        ShellArg::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(sh, &mut cmd, "agent", &mut out);
    out
}

/// The man page (`agent.1`, roff), its subcommands' sections included,
/// generated from [`Cli`].
pub fn man_page() -> std::io::Result<Vec<u8>> {
    use clap::CommandFactory as _;
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        // Each subcommand's own options, as a section of this page.
        let mut roff = clap_mangen::roff::Roff::new();
        roff.control(
            "SH",
            [format!("AGENT {}", sub.get_name().to_uppercase()).as_str()],
        );
        for arg in sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set())
        {
            let name = match (arg.get_long(), arg.get_short()) {
                (Some(l), _) => format!("--{l}"),
                (None, Some(s)) => format!("-{s}"),
                (None, None) => format!("<{}>", arg.get_id().as_str().to_uppercase()),
            };
            roff.control("TP", []);
            roff.text([clap_mangen::roff::bold(name)]);
            if let Some(h) = arg.get_long_help().or(arg.get_help()) {
                roff.text([clap_mangen::roff::roman(h.to_string())]);
            }
        }
        roff.to_writer(&mut out)?;
    }
    let mut roff = clap_mangen::roff::Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for line in EXIT_CODES.lines().skip(1) {
        roff.text([clap_mangen::roff::roman(line.trim())]);
        roff.control("br", []);
    }
    roff.to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    /// Every visible flag, of the agent and of each subcommand.
    fn flags() -> Vec<String> {
        use clap::CommandFactory as _;
        let cmd = Cli::command();
        let mut out = Vec::new();
        for c in std::iter::once(&cmd).chain(cmd.get_subcommands()) {
            for a in c.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(l) = a.get_long() {
                    out.push(format!("--{l}"));
                }
            }
        }
        out
    }

    #[test]
    fn every_flag_is_in_the_man_page_and_each_completion() {
        let man = String::from_utf8(man_page().unwrap()).unwrap();
        // roff escapes `-` as `\-`.
        let man = man.replace("\\-", "-");
        for f in flags() {
            assert!(man.contains(&f), "{f} missing from the man page");
            for sh in [ShellArg::Bash, ShellArg::Zsh, ShellArg::Fish] {
                let text = String::from_utf8(completions(sh)).unwrap();
                let name = f.trim_start_matches('-');
                assert!(
                    text.contains(&f) || text.contains(&format!("-l {name}")),
                    "{f} missing from the {sh:?} completions"
                );
            }
        }
        assert!(man.contains("EXIT STATUS") && man.contains("AGENT TRACE"));
    }
}
