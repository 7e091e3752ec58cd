//! `agent`: command-line entry point. Parses arguments and hands over to the library.

use std::{io::IsTerminal as _, process::ExitCode};

use agent::{
    analysis::AnalysisConfig,
    collector::DEFAULT_ENV_ALLOW,
    output::Format,
    run::{self, RunOptions},
};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum FormatArg {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "Live diagnosis of toolchain and network faults, from the kernel",
    long_about = "Without a subcommand: watch the whole machine and print one line per \
                  toolchain exec (Go, Python, conda) and per finding.\n\
                  Needs root (or CAP_BPF + CAP_PERFMON); `agent check` says what this kernel allows."
)]
struct Cli {
    /// Output: readable lines, or one JSON object per line ("type" first).
    #[arg(long, value_enum, default_value = "text", global = true)]
    format: FormatArg,
    /// Colour in text output.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    color: ColorArg,
    /// Print every exec and exit, not only toolchain ones.
    #[arg(long, global = true)]
    all_execs: bool,
    /// Analyse every process in depth, not only toolchains and their descendants.
    #[arg(long, global = true)]
    analyse_all: bool,
    /// Command names analysed in depth (replaces the default list).
    #[arg(long, value_delimiter = ',', global = true)]
    tools: Option<Vec<String>>,
    /// Extra environment variables to capture (the built-in allow-list is always used).
    #[arg(long, value_delimiter = ',', global = true)]
    env_allow: Vec<String>,
    /// Write records to this file instead of stdout (with `trace`, keeps the
    /// command's own output apart).
    #[arg(long, short = 'o', global = true)]
    output: Option<std::path::PathBuf>,
    /// OTLP endpoint (overrides OTEL_EXPORTER_OTLP_ENDPOINT); export is off without one.
    #[arg(long, global = true)]
    otlp_endpoint: Option<String>,
    /// grpc or http/protobuf (overrides OTEL_EXPORTER_OTLP_PROTOCOL; default http/protobuf).
    #[arg(long, global = true)]
    otlp_protocol: Option<String>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Probe this kernel and show which hook each signal will use.
    Check,
    /// Run a command (as the invoking user under sudo), observe only its
    /// process tree, print a report when it exits, exit with its code.
    Trace {
        /// The command and its arguments, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENT_LOG")
                // aya's own feature probes warn about what `agent check` reports anyway.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,aya=error,aya_obj=error")
                }),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    let cli = Cli::parse();
    let format = match cli.format {
        FormatArg::Text => Format::Text,
        FormatArg::Json => Format::Json,
    };
    let color = match cli.color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    if let Some(p) = &cli.output
        && let Err(e) = agent::output::set_output_file(p)
    {
        eprintln!("agent: cannot open --output {}: {e}", p.display());
        return ExitCode::from(1);
    }
    let mut env_allow: Vec<String> = DEFAULT_ENV_ALLOW.iter().map(|s| s.to_string()).collect();
    env_allow.extend(cli.env_allow.iter().cloned());
    let mut analysis = AnalysisConfig {
        all: cli.analyse_all,
        ..Default::default()
    };
    if let Some(t) = &cli.tools {
        analysis.tools = t.clone();
    }
    let otlp = match agent::otlp::OtlpConfig::from_env_and_flags(
        |k| std::env::var(k).ok(),
        cli.otlp_endpoint.as_deref(),
        cli.otlp_protocol.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = RunOptions {
        otlp,
        format,
        color,
        all_execs: cli.all_execs,
        env_allow,
        analysis,
    };
    match cli.cmd {
        Some(Cmd::Check) => {
            let report = agent::check::run();
            match format {
                Format::Json => match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("agent: {e}"),
                },
                Format::Text => print!("{}", agent::check::render_text(&report, color)),
            }
            if report.usable {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        cmd => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
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
                    Some(Cmd::Trace { command }) => run::trace(opts, command).await,
                    _ => run::live(opts).await,
                }
            });
            match r {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("agent: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
