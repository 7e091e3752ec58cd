//! `agent`: command-line entry point. Parses arguments and hands over to the library.

use std::{io::IsTerminal as _, process::ExitCode};

use agent::{
    app::cli::{ArgvArg, BpfLogArg, CiArg, Cli, Cmd, ColorArg, FormatArg},
    app::{self, RunOptions},
    render::Format,
    signal::exec::AnalysisConfig,
    signal::exec::capture::DEFAULT_ENV_ALLOW,
};
use clap::Parser as _;

/// Exit code: the kernel offers nothing the agent can collect (sysexits'
/// EX_UNAVAILABLE).
const EXIT_UNSUPPORTED: u8 = 69;
/// Exit code: privileges missing and not elevated (sysexits' EX_NOPERM).
const EXIT_NO_PRIVILEGES: u8 = 77;

/// Log lines go out scrubbed and with control characters escaped, like
/// every other sink.
struct ScrubbedStderr;

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(agent::sink::output::text_safe(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A file worker (see `agent::process::guard`): dies with the agent, keeps
/// only the capabilities that reading any user's files and processes'
/// roots needs, and answers requests on stdin until it closes.
fn file_worker() -> ExitCode {
    use agent::app::privs::{CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, drop_to};
    // (Had the agent gone before this, its end of the socket is closed:
    // the first read ends.)
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if let Err(e) = drop_to((1 << CAP_DAC_READ_SEARCH) | (1 << CAP_SYS_PTRACE)) {
        eprintln!("agent file worker: {e}");
        return ExitCode::from(1);
    }
    match agent::process::guard::serve(agent::process::fsview::answer_request) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent file worker: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == agent::process::guard::WORKER_ARG)
    {
        return file_worker();
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == agent::app::traced::GATE_ARG)
    {
        return agent::app::traced::gate_main();
    }
    agent::app::traced::save_initial_limits();
    let cli = Cli::parse();
    if let Some(code) = generated(&cli) {
        return code;
    }
    // Before elevating: a mistyped user or cgroup is said first.
    let filter = match agent::app::filter::FilterSpec::from_flags(
        &cli.pid,
        cli.uid.as_deref(),
        &cli.comm,
        cli.cgroup.as_deref(),
        cli.namespace.as_deref(),
        cli.pod.as_deref(),
        &agent::app::filter::cgroup_root(),
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("agent: {e}");
            return ExitCode::from(2);
        }
    };
    let invoker = match who_asked(&cli) {
        Ok(i) => i,
        Err(code) => return code,
    };
    init_logging(&cli);
    // Precedence: flags > environment > file > defaults.
    let file = match agent::config::load(cli.config.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("agent: {e}");
            return ExitCode::from(1);
        }
    };
    let (format, color) = match output_settings(&cli, &file, &invoker) {
        Ok(fc) => fc,
        Err(code) => return code,
    };
    let trace = match trace_options(&cli, &invoker) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let env = |k: &str| std::env::var(k).ok();
    let opts = match run_options(&cli, &file, &env, invoker, (format, color), filter) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let via = served(&cli);
    match cli.cmd {
        Some(Cmd::Check { probe }) => check(probe, format, color),
        cmd => run(cmd, opts, trace, via),
    }
}

/// `agent trace`'s exit codes and CI output; its files opened now, as the
/// user (before other threads: see `agent::app::outfile`).
fn trace_options(
    cli: &Cli,
    invoker: &agent::process::invoker::Invoker,
) -> Result<agent::app::trace::TraceOptions, ExitCode> {
    let Some(Cmd::Trace {
        exit_code,
        ci,
        junit,
        ..
    }) = &cli.cmd
    else {
        return Ok(Default::default());
    };
    agent::app::trace_opts::from_flags(exit_code, *ci == CiArg::Auto, junit.as_deref(), invoker)
        .map_err(|(msg, code)| {
            eprintln!("agent: {msg}");
            ExitCode::from(code)
        })
}

/// Who asked for us (sudo's caller, our own unprivileged copy, root), after
/// refusing a mistyped flag and re-running through sudo where that is
/// needed (`Err` is then the exit code to end with).
fn who_asked(cli: &Cli) -> Result<agent::process::invoker::Invoker, ExitCode> {
    // A mistyped flag is said before asking for a password.
    if let Err(e) = agent::bpf::hooks::check_without(&cli.without) {
        eprintln!("agent: --without: {e}");
        return Err(ExitCode::from(2));
    }
    // Who asked for us (sudo's caller, our own unprivileged copy, root).
    let proc_root = std::path::Path::new("/proc");
    let (user_flag, keep_env) = match &cli.cmd {
        Some(Cmd::Trace { user, keep_env, .. }) => (user.as_deref(), keep_env.clone()),
        _ => (None, Vec::new()),
    };
    let invoker = match agent::process::invoker::find(
        &agent::process::invoker::probe_self(proc_root),
        user_flag,
        &keep_env,
    ) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("agent: {e}");
            return Err(ExitCode::from(1));
        }
    };
    if cli.elevated && !matches!(invoker.source, agent::process::invoker::Source::RootLogin) {
        // sudo's env_reset dropped the settings the user typed for us.
        agent::app::elevate::adopt_settings(&invoker.env);
    }
    if cli.elevated
        && matches!(
            invoker.source,
            agent::process::invoker::Source::SelfElevated { .. }
        )
    {
        // Through doas our unprivileged copy waits as our parent: if it goes
        // (its terminal closed, it was killed), we stop as on SIGTERM.
        let _ =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    }
    let needs_bpf = match &cli.cmd {
        None | Some(Cmd::Trace { .. }) => true,
        Some(Cmd::Check { probe }) => *probe,
        Some(Cmd::Completions { .. } | Cmd::Man) => false,
    };
    if served(cli).is_some() {
        // A running agent traces it: no sudo, no password.
        return Ok(invoker);
    }
    if needs_bpf && !cli.no_elevate && !cli.elevated && agent::app::elevate::needed() {
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return Err(match agent::app::elevate::reexec(&args) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("agent: {e}");
                ExitCode::from(EXIT_NO_PRIVILEGES)
            }
        });
    }
    Ok(invoker)
}

/// The trace service `agent trace` goes through: when it cannot load
/// programs itself and a running agent serves one (`--trace-socket`,
/// `$AGENT_TRACE_SOCKET`, /run/agent/trace.sock).
fn served(cli: &Cli) -> Option<std::path::PathBuf> {
    if !matches!(cli.cmd, Some(Cmd::Trace { .. })) || cli.elevated {
        return None;
    }
    if !agent::app::elevate::needed() {
        return None;
    }
    agent::app::service::client_socket(cli.trace_socket.as_deref())
}

/// `tracing` on stderr through the scrubber (`AGENT_LOG`, `--bpf-log`).
fn init_logging(cli: &Cli) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("AGENT_LOG")
        // aya's own feature probes warn about what `agent check` reports anyway.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aya=error,aya_obj=error"));
    if cli.bpf_log.is_some_and(|l| l != BpfLogArg::Off)
        && let Ok(d) = format!("{}=trace", agent::bpf::log::TARGET).parse()
    {
        // The kernel already filtered by --bpf-log's level.
        filter = filter.add_directive(d);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| ScrubbedStderr)
        // No colour codes: the writer escapes every control character, and
        // cannot tell the formatter's from those of the data.
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .init();
}

/// Output format and colour (flags over the file), set for the sinks, and
/// `--output` opened as the invoking user.
fn output_settings(
    cli: &Cli,
    file: &agent::config::FileConfig,
    invoker: &agent::process::invoker::Invoker,
) -> Result<(Format, bool), ExitCode> {
    let format = match (cli.format, file.format.as_deref()) {
        (Some(FormatArg::Json), _) | (None, Some("json")) => Format::Json,
        (Some(FormatArg::Text), _) | (None, Some("text") | None) => Format::Text,
        (Some(FormatArg::Markdown), _) | (None, Some("markdown")) => Format::Markdown,
        (None, Some(other)) => {
            eprintln!("agent: config: format = {other:?}: use \"text\", \"json\" or \"markdown\"");
            return Err(ExitCode::from(2));
        }
    };
    let output = cli.output.clone().or(file.output.clone());
    let color = match (cli.color, file.color.as_deref()) {
        (Some(ColorArg::Always), _) | (None, Some("always")) => true,
        (Some(ColorArg::Never), _) | (None, Some("never")) => false,
        _ => agent::sink::output::auto_color(
            std::io::stdout().is_terminal(),
            output.is_some(),
            std::env::var_os("NO_COLOR").as_deref(),
            std::env::var_os("CLICOLOR_FORCE").as_deref(),
        ),
    };
    if format == Format::Markdown
        && !matches!(cli.cmd, Some(Cmd::Trace { .. }) | Some(Cmd::Check { .. }))
    {
        eprintln!(
            "agent: --format markdown is for `agent trace` reports (live mode prints text or json)"
        );
        return Err(ExitCode::from(2));
    }
    agent::sink::output::set_format(format);
    let argv_mode = match (cli.argv, file.argv.as_deref()) {
        (Some(ArgvArg::Full), _) | (None, Some("full")) => agent::scrub::ArgvMode::Full,
        (Some(ArgvArg::None), _) | (None, Some("none")) => agent::scrub::ArgvMode::None,
        (Some(ArgvArg::Scrubbed), _) | (None, Some("scrubbed") | None) => {
            agent::scrub::ArgvMode::Scrubbed
        }
        (None, Some(other)) => {
            eprintln!("agent: config: argv = {other:?}: use \"full\", \"scrubbed\" or \"none\"");
            return Err(ExitCode::from(2));
        }
    };
    agent::scrub::set_argv_mode(argv_mode);
    if let Some(p) = &output
        && let Err(e) = agent::app::outfile::open(p, Some(invoker))
    {
        eprintln!("agent: cannot open --output {}: {e}", p.display());
        return Err(ExitCode::from(1));
    }
    Ok((format, color))
}

/// Everything a live or traced run needs, from flags, environment and file.
/// Precedence: flags > environment (`env`: the `OTEL_*` variables) > file.
fn run_options(
    cli: &Cli,
    file: &agent::config::FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
    invoker: agent::process::invoker::Invoker,
    (format, color): (Format, bool),
    filter: agent::app::filter::FilterSpec,
) -> Result<RunOptions, ExitCode> {
    let mut env_allow: Vec<String> = DEFAULT_ENV_ALLOW.iter().map(|s| s.to_string()).collect();
    env_allow.extend(cli.env_allow.iter().cloned());
    env_allow.extend(file.env_allow.iter().flatten().cloned());
    let mut analysis = AnalysisConfig {
        all: cli.analyse_all || file.analyse_all.unwrap_or(false),
        ..Default::default()
    };
    if let Some(t) = cli.tools.as_ref().or(file.tools.as_ref()) {
        analysis.tools = t.clone();
    }
    let without = if cli.without.is_empty() {
        file.without.clone().unwrap_or_default()
    } else {
        cli.without.clone()
    };
    if let Err(e) = agent::bpf::hooks::check_without(&without) {
        eprintln!("agent: `without` in the configuration file: {e}");
        return Err(ExitCode::from(2));
    }
    let env_set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let otlp_endpoint = cli.otlp_endpoint.clone().or_else(|| {
        (!env_set("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .then(|| file.otlp_endpoint.clone())
            .flatten()
    });
    let otlp_protocol = cli.otlp_protocol.clone().or_else(|| {
        (!env_set("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .then(|| file.otlp_protocol.clone())
            .flatten()
    });
    let otlp = match agent::sink::otlp::OtlpConfig::from_env_and_flags(
        env,
        otlp_endpoint.as_deref(),
        otlp_protocol.as_deref(),
    ) {
        Ok(mut c) => {
            if let (Some(c), Some(Cmd::Trace { no_traceparent, .. })) = (c.as_mut(), &cli.cmd) {
                c.inject_traceparent = !no_traceparent;
            }
            c
        }
        // A bad value in a variable or the config file: a usage error (2).
        Err(e) => {
            eprintln!("agent: {e}");
            return Err(ExitCode::from(2));
        }
    };
    Ok(RunOptions {
        bpf_log: cli.bpf_log.map(Into::into).unwrap_or_default(),
        otlp,
        format,
        color,
        all_execs: cli.all_execs || file.all_execs.unwrap_or(false),
        health_addr: cli.health_addr.clone().or(file.health_addr.clone()),
        k8s_api: cli.k8s_api.clone().or(file.k8s_api.clone()),
        net: {
            let mut n = agent::signal::tcp::NetConfig::default();
            if let Some(ms) = cli.slow_connect_ms.or(file.slow_connect_ms) {
                n.slow_abs_ns = ms.saturating_mul(1_000_000);
            }
            if let Some(f) = cli.slow_connect_factor.or(file.slow_connect_factor) {
                n.slow_factor = f;
            }
            n
        },
        tls: {
            let mut t = agent::signal::tls::TlsConfig::default();
            ms(cli.slow_tls_ms.or(file.slow_tls_ms), &mut t.slow_ns);
            t
        },
        dns: {
            let mut d = agent::signal::dns::DnsConfig::default();
            ms(cli.slow_dns_ms.or(file.slow_dns_ms), &mut d.slow_ns);
            ms(
                cli.dns_timeout_ms.or(file.dns_timeout_ms),
                &mut d.timeout_ns,
            );
            d
        },
        env_allow,
        analysis,
        exit_after: true,
        invoker: Some(invoker),
        without,
        filter,
        trace_socket: match cli.cmd {
            None => cli.trace_socket.clone(),
            Some(_) => None,
        },
    })
}

/// `agent check [--probe]`.
fn check(probe: bool, format: Format, color: bool) -> ExitCode {
    let report = if agent::app::elevate::needed() {
        agent::app::check::run_unprivileged(probe)
    } else {
        agent::app::check::run()
    };
    match format {
        // One object on one line, as every other `--format json` record.
        Format::Json => match serde_json::to_string(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("agent: {e}"),
        },
        Format::Text | Format::Markdown => {
            print!("{}", agent::app::check::render_text(&report, color))
        }
    }
    if report.usable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNSUPPORTED)
    }
}

/// Live mode or `agent trace`, on the runtime; ends the process.
fn run(
    cmd: Option<Cmd>,
    opts: RunOptions,
    trace: agent::app::trace::TraceOptions,
    via: Option<std::path::PathBuf>,
) -> ExitCode {
    // Files users control are read by worker processes from here on.
    agent::process::guard::enable_workers();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Capabilities are per thread: workers apply a drop when
        // they next park or unpark (see agent::app::privs).
        .on_thread_park(agent::app::privs::on_thread_hook)
        .on_thread_unpark(agent::app::privs::on_thread_hook)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let r = rt.block_on(async {
        match cmd {
            Some(Cmd::Trace { command, .. }) => match via {
                Some(sock) => agent::app::trace_client::trace_via(&sock, &opts, command, trace)
                    .await
                    .map_err(anyhow::Error::from),
                None => app::trace(opts, command, trace).await,
            },
            _ => app::live(opts).await,
        }
    });
    let code = match r {
        Ok(code) => code.clamp(0, 255),
        Err(e) => {
            eprintln!("agent: {e}");
            i32::from(failure_code(&e))
        }
    };
    agent::app::teardown::exit(code)
}

/// The exit code of a run that failed with `e`: privileges and kernel
/// support have codes of their own, so a wrapper can tell them apart.
fn failure_code(e: &anyhow::Error) -> u8 {
    use agent::bpf::error::LoadError;
    match e.downcast_ref::<LoadError>() {
        Some(LoadError::NotPermitted(_)) => EXIT_NO_PRIVILEGES,
        Some(LoadError::NothingAttached(_)) => EXIT_UNSUPPORTED,
        _ => 1,
    }
}

/// `agent completions SHELL` and `agent man`: printed, nothing else done.
/// A live-mode filter with a subcommand is a usage error.
fn generated(cli: &Cli) -> Option<ExitCode> {
    use std::io::Write as _;
    let out = match &cli.cmd {
        Some(Cmd::Completions { shell }) => Ok(agent::app::cli::completions(*shell)),
        Some(Cmd::Man) => agent::app::cli::man_page(),
        Some(_) if cli.filtered() => {
            eprintln!(
                "agent: --pid, --uid, --comm, --cgroup, --namespace and --pod filter live mode \
                 (`agent trace` watches its command's tree already)"
            );
            return Some(ExitCode::from(2));
        }
        _ => return None,
    };
    Some(
        match out.and_then(|b| std::io::stdout().lock().write_all(&b)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("agent: {e}");
                ExitCode::from(1)
            }
        },
    )
}

/// `v` milliseconds into `d` nanoseconds, when given.
fn ms(v: Option<u64>, d: &mut u64) {
    if let Some(v) = v {
        *d = v.saturating_mul(1_000_000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_and_kernel_support_have_exit_codes_of_their_own() {
        use agent::bpf::error::LoadError;
        let code = |e: LoadError| failure_code(&anyhow::Error::new(e));
        assert_eq!(code(LoadError::NotPermitted("EPERM".into())), 77);
        assert_eq!(code(LoadError::NothingAttached("no tracefs".into())), 69);
        assert_eq!(code(LoadError::Object("bad".into())), 1);
        assert_eq!(failure_code(&anyhow::anyhow!("other")), 1);
    }

    /// flags > environment > file > defaults, for a setting of each kind.
    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        use agent::process::invoker::{Invoker, Source};
        let file = agent::config::parse(
            std::path::Path::new("test.toml"),
            "otlp_endpoint = \"http://file:4318\"\nslow_connect_ms = 7\nall_execs = true\n\
             tools = [\"make\"]\n",
        )
        .unwrap();
        let opts = |args: &[&str], vars: &[(&str, &str)]| {
            let cli =
                Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied())).unwrap();
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let invoker = Invoker {
                uid: 0,
                gid: 0,
                groups: vec![],
                user: "root".into(),
                home: None,
                env: vec![],
                cwd: None,
                umask: None,
                source: Source::RootLogin,
            };
            let filter = Default::default();
            run_options(&cli, &file, &env, invoker, (Format::Text, false), filter)
                .ok()
                .unwrap()
        };
        let endpoint = |o: &RunOptions| o.otlp.as_ref().map(|c| c.traces.endpoint.clone());
        // The file alone.
        let o = opts(&[], &[]);
        assert_eq!(endpoint(&o).as_deref(), Some("http://file:4318/v1/traces"));
        assert_eq!(o.net.slow_abs_ns, 7_000_000);
        assert!(o.all_execs);
        assert_eq!(o.analysis.tools, ["make"]);
        // The environment over the file.
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318")];
        let o = opts(&[], &env);
        assert_eq!(endpoint(&o).as_deref(), Some("http://env:4318/v1/traces"));
        // A flag over both.
        let o = opts(
            &[
                "--otlp-endpoint",
                "http://flag:4318",
                "--slow-connect-ms",
                "9",
                "--tools",
                "go",
            ],
            &env,
        );
        assert_eq!(endpoint(&o).as_deref(), Some("http://flag:4318/v1/traces"));
        assert_eq!(o.net.slow_abs_ns, 9_000_000);
        assert_eq!(o.analysis.tools, ["go"]);
        // Defaults without any.
        let empty = agent::config::FileConfig::default();
        let cli = Cli::try_parse_from(["agent"]).unwrap();
        let invoker = opts(&[], &[]).invoker.unwrap();
        let o = run_options(
            &cli,
            &empty,
            &|_| None,
            invoker,
            (Format::Text, false),
            Default::default(),
        )
        .ok()
        .unwrap();
        assert!(o.otlp.is_none() && !o.all_execs);
        assert_eq!(
            o.net.slow_abs_ns,
            agent::signal::tcp::NetConfig::default().slow_abs_ns
        );
    }
}
