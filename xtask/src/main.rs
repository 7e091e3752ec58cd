//! Developer tasks: `cargo xtask setup | build | install | test | run`.
//!
//! Owns: toolchain installation, the test pipeline and its stage timings.
//! Must not: contain product logic.

mod bench;
mod checks;
mod fuzz;
mod install;
mod lint;
mod measure;
mod toolchain;
mod vm;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, install and test the agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the pinned toolchains and build bpf-linker (cached).
    Setup,
    /// Build the agent (release) with its BPF programs embedded.
    Build,
    /// Build the agent as yourself and install it (default /usr/local/bin, on
    /// your PATH and sudo's). Run it as a normal user: only the copy is
    /// elevated (one `sudo install` prompt, said before it asks); `--dir` a
    /// directory of yours needs no sudo at all.
    Install {
        #[arg(long, default_value = "/usr/local/bin")]
        dir: String,
    },
    /// Source size limits: no non-test module over 600 lines, no function
    /// over 120.
    Lint,
    /// Regenerate docs/findings.md and README's table of codes from the
    /// finding catalogue (agent/src/signal/*/codes.rs and findings.md), and
    /// README's section of flags and config keys from the clap definition;
    /// the unit tests fail while they differ.
    Docs,
    /// Time the README's first command from nothing: a fresh clone of HEAD
    /// and an empty HOME (toolchains, crates and bpf-linker all downloaded
    /// and built), as a new user's machine has it.
    MeasureInstall {
        /// Write the measured total into README.md's quick start.
        #[arg(long)]
        readme: bool,
        /// Keep the scratch HOME (printed) instead of removing it.
        #[arg(long)]
        keep: bool,
    },
    /// Overhead and capacity: bare vs agent vs bpftrace and libbpf-tools
    /// (execsnoop, tcplife, tcpstates; apt-get install libbpf-tools), interleaved (root).
    Bench {
        /// Repetitions per workload and mode (each run lasts 3 s).
        #[arg(long, default_value_t = 9)]
        reps: usize,
        /// Only these workloads (exec_true, go_version, tcp_connect,
        /// go_build, tls_handshake, tls_bulk), printed rather than written to docs/.
        #[arg(long)]
        only: Vec<String>,
        /// About a minute: the agent alone, BPF time and agent CPU per op
        /// against docs/benchmarks.json; fails on a regression over 20 %.
        #[arg(long)]
        quick: bool,
    },
    /// Run the cargo-fuzz targets (fuzz/) for a while each; installs cargo-fuzz once.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (default: all: tls_handshake, dns_message,
        /// go_buildinfo, btf, scrub).
        targets: Vec<String>,
    },
    /// The long runs CI keeps short (as root): the OTLP exporter
    /// black-holed under load for `--seconds` (CI runs it for 60).
    Soak {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Boot another kernel in qemu (Debian's, downloaded once) and run CMD
    /// as root inside it, on this machine's filesystem (read-only, with a
    /// throw-away overlay); exits with CMD's code. Builds the release agent
    /// first, so `target/release/agent` in CMD is this checkout's.
    Vm {
        /// debian-5.10, debian-6.1 or debian-6.12.
        #[arg(long, default_value = "debian-6.1")]
        kernel: String,
        /// Hide /sys/kernel/btf/vmlinux from CMD, as a kernel without BTF would.
        #[arg(long)]
        no_btf: bool,
        /// Kill the guest after this many seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Skip the release build.
        #[arg(long)]
        no_build: bool,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// fmt, clippy (both sides), unit tests, then the root integration tests.
    Test {
        /// Skip the integration tests (no root needed).
        #[arg(long)]
        unit_only: bool,
        /// Instead of the suite here: boot this kernel (see `vm`; `host` for
        /// this machine's own) and run the one-start smoke pass of
        /// tests/vm/smoke.sh there, recording it in docs/kernels/ and
        /// docs/kernels.md.
        #[arg(long)]
        kernel: Option<String>,
        /// With --kernel: hide the kernel's BTF from the agent.
        #[arg(long, requires = "kernel")]
        no_btf: bool,
        /// With --kernel: run the root integration test binaries there
        /// instead of the smoke pass (all but `install`, or those named
        /// after `--`, e.g. `-- tcp exec_events`, then arguments for each,
        /// e.g. `--skip NAME`), recorded in the same table.
        #[arg(long, requires = "kernel")]
        suite: bool,
        /// Extra arguments for the integration-test binary (e.g. a test name filter).
        #[arg(last = true)]
        filter: Vec<String>,
    },
}

pub(crate) struct Stages {
    done: Vec<(String, Duration)>,
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Run a `cargo test` command, echoing its output and adding up its
/// `test result:` lines.
fn run_tests(cmd: &mut Command, st: &mut Stages) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            count_result_line(&line, st);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Add a `test result:` line's counts to `st`.
fn count_result_line(line: &str, st: &mut Stages) {
    if let Some(rest) = line.strip_prefix("test result: ") {
        for part in rest.split([';', '.']) {
            let mut it = part.split_whitespace();
            if let (Some(n), Some(what)) = (it.next(), it.next()) {
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => st.passed += n,
                    "failed" => st.failed += n,
                    "ignored" => st.ignored += n,
                    _ => {}
                }
            }
        }
    }
}

impl Stages {
    pub(crate) fn run(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        eprintln!("\n=== xtask: {name}");
        let t = Instant::now();
        let r = f(self);
        let d = t.elapsed();
        eprintln!(
            "=== xtask: {name}: {} in {:.1}s",
            if r.is_ok() { "ok" } else { "FAILED" },
            d.as_secs_f64()
        );
        self.done.push((name.to_string(), d));
        r
    }

    fn summary(&self) {
        eprintln!("\n=== xtask: stage times");
        let mut total = Duration::ZERO;
        for (name, d) in &self.done {
            eprintln!("  {:<28} {:>7.1}s", name, d.as_secs_f64());
            total += *d;
        }
        eprintln!("  {:<28} {:>7.1}s", "total", total.as_secs_f64());
        // A plain closing line for CI: the suite's own total.
        println!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        );
    }
}

pub(crate) fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(toolchain::workspace_root());
    c
}

/// A cargo command that can build the agent (bpf-linker on PATH for build.rs).
pub(crate) fn cargo_with_linker() -> Result<Command> {
    let nightly = toolchain::nightly()?;
    let mut c = cargo();
    c.env(
        "AGENT_BPF_LINKER_DIR",
        toolchain::bpf_linker_bin_dir(&nightly),
    );
    Ok(c)
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub(crate) fn is_root() -> bool {
    euid() == 0
}

/// The pinned toolchains and bpf-linker, then the release agent.
fn build_release() -> Result<()> {
    toolchain::setup()?;
    run(cargo_with_linker()?.args(["build", "--release", "-p", "agent"]))
}

fn test(unit_only: bool, filter: Vec<String>) -> Result<()> {
    let mut st = Stages {
        done: Vec::new(),
        passed: 0,
        failed: 0,
        ignored: 0,
    };
    let nightly = toolchain::nightly()?;
    let r = (|| -> Result<()> {
        st.run("setup (toolchains, bpf-linker)", |_| {
            toolchain::setup().map(|_| ())
        })?;
        checks::static_checks(&mut st, &nightly)?;
        st.run("unit tests (no root)", |st| {
            run_tests(
                cargo_with_linker()?.args([
                    "test",
                    "--workspace",
                    "--exclude",
                    "agent-ebpf",
                    "--exclude",
                    "agent-tests",
                ]),
                st,
            )
        })?;
        if unit_only {
            return Ok(());
        }
        st.run("build agent binary", |_| {
            run(cargo_with_linker()?.args(["build", "-p", "agent"]))
        })?;
        st.run("integration tests (root)", |st| {
            // Built once, then run in two lanes (see `integration_lanes`).
            if !filter.is_empty() {
                let mut c = root_cargo(&nightly)?;
                c.args(["test", "-p", "agent-tests", "--", "--test-threads=1"]);
                c.args(&filter);
                return run_tests(&mut c, st);
            }
            integration_lanes(&nightly, st)
        })?;
        Ok(())
    })();
    st.summary();
    r
}

/// `cargo xtask soak`: the black-hole soak at its full length.
fn soak(seconds: u64) -> Result<()> {
    toolchain::setup()?;
    run(cargo_with_linker()?.args(["build", "-p", "agent"]))?;
    run(cargo_with_linker()?
        .args(["test", "-p", "agent-tests", "--test", "otlp", "--"])
        .args([
            "--exact",
            "a_black_holed_exporter_under_load_stays_bounded_and_recovers",
        ])
        .arg("--nocapture")
        .env("AGENT_TEST_BLACKHOLE_SECS", seconds.to_string()))
}

/// `cargo` as root for the integration tests (through `sudo -E` when the
/// developer is not root).
fn root_cargo(nightly: &str) -> Result<Command> {
    if is_root() {
        return cargo_with_linker();
    }
    eprintln!("xtask: integration tests load BPF programs: running them with sudo -E");
    let mut c = Command::new("sudo");
    c.args([
        "-E",
        "env",
        &format!("PATH={}", std::env::var("PATH").unwrap_or_default()),
        "cargo",
    ]);
    c.current_dir(toolchain::workspace_root());
    c.env(
        "AGENT_BPF_LINKER_DIR",
        toolchain::bpf_linker_bin_dir(nightly),
    );
    Ok(c)
}

/// Test binaries that run beside the others, at low CPU priority: the
/// install-as-a-user test is a cold `cargo xtask install` (a compile,
/// minutes of CPU) with a few seconds of a live agent at the end, which
/// asserts only on its own command. Every other binary shares kernel-wide
/// state it asserts on (live agents that count what every process does,
/// uprobes on the same Go toolchains, descriptor and memory peaks, network
/// namespaces and users the tests create), so those run one after another,
/// one test at a time.
const BESIDE: &[&str] = &["install"];

/// The integration test binaries, built: (name, executable).
fn integration_binaries() -> Result<Vec<(String, std::path::PathBuf)>> {
    let out = cargo_with_linker()?
        .args([
            "test",
            "-p",
            "agent-tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the integration tests failed: {}", out.status);
    }
    let mut v = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if m["reason"] == "compiler-artifact"
            && m["target"]["kind"][0] == "test"
            && let (Some(name), Some(exe)) =
                (m["target"]["name"].as_str(), m["executable"].as_str())
        {
            v.push((name.to_string(), std::path::PathBuf::from(exe)));
        }
    }
    v.sort();
    Ok(v)
}

/// `exe` run as root as cargo runs a test binary (from its package's
/// directory), one test at a time; through `sudo -E` for a developer.
fn test_binary(exe: &std::path::Path) -> Command {
    let tests = toolchain::workspace_root().join("tests");
    let mut c = if is_root() {
        Command::new(exe)
    } else {
        let mut c = Command::new("sudo");
        c.args([
            "-E",
            "env",
            &format!("PATH={}", std::env::var("PATH").unwrap_or_default()),
        ])
        .arg(exe);
        c
    };
    c.current_dir(&tests)
        .env("CARGO_MANIFEST_DIR", &tests)
        .arg("--test-threads=1");
    c
}

/// The root integration tests in two lanes: [`BESIDE`] niced in the
/// background, the rest in the foreground (one binary after another, one
/// test at a time); each binary's time is printed.
fn integration_lanes(_nightly: &str, st: &mut Stages) -> Result<()> {
    let bins = integration_binaries()?;
    let logs = toolchain::workspace_root().join("target/test-logs");
    std::fs::create_dir_all(&logs)?;
    let mut beside = Vec::new();
    for (name, exe) in bins.iter().filter(|(n, _)| BESIDE.contains(&n.as_str())) {
        let log = logs.join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        let inner = test_binary(exe);
        let mut c = Command::new("nice");
        // --nocapture: the log keeps what the test says of its own steps' times.
        c.args(["-n", "15"])
            .arg(inner.get_program())
            .args(inner.get_args())
            .arg("--nocapture");
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c.current_dir(toolchain::workspace_root().join("tests"));
        c.stdout(f.try_clone()?).stderr(f);
        eprintln!(
            "xtask: {name} runs beside the others (log: {})",
            log.display()
        );
        beside.push((name.clone(), log, Instant::now(), c.spawn()?));
    }
    let mut times = Vec::new();
    let mut result = Ok(());
    for (name, exe) in bins.iter().filter(|(n, _)| !BESIDE.contains(&n.as_str())) {
        println!("\n     Running tests/{name}.rs");
        let t = Instant::now();
        let r = run_tests(&mut test_binary(exe), st);
        times.push((name.clone(), t.elapsed(), r.is_ok()));
        if r.is_err() && result.is_ok() {
            result = r;
        }
    }
    for (name, log, t, mut child) in beside {
        let status = child.wait()?;
        let took = t.elapsed();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        println!("\n     Ran tests/{name}.rs beside the others:\n{text}");
        for line in text.lines() {
            count_result_line(line, st);
        }
        times.push((name.clone(), took, status.success()));
        if !status.success() && result.is_ok() {
            result = Err(anyhow::anyhow!("integration test {name} failed: {status}"));
        }
    }
    eprintln!("\n=== xtask: integration test binaries");
    for (n, d, ok) in &times {
        let lane = if BESIDE.contains(&n.as_str()) {
            " (beside the others)"
        } else {
            ""
        };
        eprintln!(
            "  {n:<16} {:>7.1}s {}{lane}",
            d.as_secs_f64(),
            if *ok { "ok" } else { "FAILED" }
        );
    }
    result
}

/// Effective uid (0 = root).
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => {
            let linker = toolchain::setup()?;
            eprintln!("xtask: ready; bpf-linker at {}", linker.display());
            Ok(())
        }
        Cmd::Build => build_release(),
        Cmd::Install { dir } => install::install(std::path::Path::new(&dir)),
        Cmd::Lint => lint::run(&toolchain::workspace_root()),
        Cmd::Docs => run(cargo()
            .args(["test", "-p", "agent", "--lib", "-q", "--"])
            .args(["signal::tests", "app::readme_tests", "--test-threads=1"]) // both rewrite README
            .env("AGENT_BLESS", "1")),
        Cmd::MeasureInstall { readme, keep } => measure::measure_install(keep, readme),
        Cmd::Test {
            kernel: Some(kernel),
            no_btf,
            suite: true,
            filter,
            ..
        } => {
            // `-- tcp exec_events --skip NAME`: binaries, then arguments
            // for each of them.
            let at = filter
                .iter()
                .position(|a| a.starts_with("--"))
                .unwrap_or(filter.len());
            let (names, args) = filter.split_at(at);
            let bins: Vec<_> = integration_binaries()?
                .into_iter()
                .filter(|(n, _)| {
                    if names.is_empty() {
                        !BESIDE.contains(&n.as_str())
                    } else {
                        names.contains(n)
                    }
                })
                .collect();
            vm::suite::run(&toolchain::workspace_root(), &kernel, no_btf, &bins, args)
        }
        Cmd::Test {
            kernel: Some(kernel),
            no_btf,
            ..
        } => {
            build_release()?;
            vm::smoke::run(&toolchain::workspace_root(), &kernel, no_btf)
        }
        Cmd::Test {
            unit_only, filter, ..
        } => test(unit_only, filter),
        Cmd::Vm {
            kernel,
            no_btf,
            timeout,
            no_build,
            cmd,
        } => {
            if !no_build {
                build_release()?;
            }
            vm::main(&vm::Options {
                kernel,
                no_btf,
                timeout: Duration::from_secs(timeout),
                cmd,
                memory_mib: 4096,
            })
        }
        Cmd::Fuzz { seconds, targets } => fuzz::fuzz(seconds, targets),
        Cmd::Soak { seconds } => soak(seconds),
        Cmd::Bench { reps, only, quick } => {
            build_release()?;
            bench::bench(reps, &only, quick)
        }
    }
}
