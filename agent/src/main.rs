//! `agent`: command-line entry point. Parses arguments and hands over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "Live diagnosis of toolchain and network faults, from the kernel"
)]
struct Cli {
    /// Output format: readable lines, or one JSON object per line.
    #[arg(long, value_enum, default_value = "text", global = true)]
    format: Format,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Probe this kernel and show which hook each signal will use.
    Check,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Check) => {
            let report = agent::check::run();
            match cli.format {
                Format::Json => match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("agent: {e}"),
                },
                Format::Text => {
                    use std::io::IsTerminal as _;
                    print!(
                        "{}",
                        agent::check::render_text(&report, std::io::stdout().is_terminal())
                    );
                }
            }
            if report.usable {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        None => {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let allow: Vec<String> = agent::collector::DEFAULT_ENV_ALLOW
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                let (c, mut rx) = match agent::collector::Collector::start(&allow, 4096) {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("agent: {e}");
                        return ExitCode::from(1);
                    }
                };
                for a in &c.attached {
                    eprintln!("{} {:?}", a.signal, a.choice);
                }
                while let Some(ev) = rx.recv().await {
                    println!("{ev:?}");
                }
                ExitCode::SUCCESS
            })
        }
    }
}
