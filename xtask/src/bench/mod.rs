//! `cargo xtask bench`: each workload without the agent, with it, and with
//! the peers that trace the same hooks (bpftrace, and Debian's libbpf-tools
//! execsnoop, tcplife, tcpstates), interleaved and repeated in one
//! invocation; medians, spread and ratios to the bare run; kernel-side cost
//! per program from `kernel.bpf_stats_enabled`, ours and the peers'; the
//! agent's CPU per event, start-up and RSS; the goals of the overhead issue;
//! a capacity run on both cores with loss accounting. Writes
//! docs/benchmarks.md and docs/benchmarks.json. `--quick` checks BPF time
//! and agent CPU against the committed JSON instead.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::toolchain::workspace_root;

mod report;
mod runs;
mod stats;
mod tracers;
mod workloads;

use report::*;
use runs::*;
use stats::*;
use tracers::*;
use workloads::*;

const BPFTRACE_SCRIPT: &str = r#"
tracepoint:syscalls:sys_enter_execve { printf("exec %d %s ", pid, str(args->filename)); join(args->argv); }
tracepoint:sched:sched_process_exec { printf("ran %d\n", pid); }
tracepoint:sched:sched_process_exit { printf("exit %d\n", pid); }
tracepoint:sock:inet_sock_set_state { printf("tcp %d %d %d\n", pid, args->oldstate, args->newstate); }
"#;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Bare,
    Agent,
    /// The agent with what it does beyond the peers turned off
    /// ([`Workload::lean_args`]), where it is behind them: the experiment
    /// that shows what that extra work costs.
    AgentLean,
    Bpftrace,
    /// libbpf-tools (Debian `libbpf-tools`): the peers on the same hooks,
    /// each run as a user would, its output to a file.
    Execsnoop,
    Tcplife,
    Tcpstates,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Agent => "agent",
            Mode::AgentLean => "agent, lean",
            Mode::Bpftrace => "bpftrace",
            Mode::Execsnoop => "execsnoop",
            Mode::Tcplife => "tcplife",
            Mode::Tcpstates => "tcpstates",
        }
    }
    /// The libbpf-tools binary of a peer.
    pub(super) fn libbpf_tool(self) -> Option<&'static str> {
        match self {
            Mode::Execsnoop => Some("/usr/sbin/execsnoop"),
            Mode::Tcplife => Some("/usr/sbin/tcplife"),
            Mode::Tcpstates => Some("/usr/sbin/tcpstates"),
            _ => None,
        }
    }
}

/// The columns after *agent*: the lean agent, then every peer.
const COLUMNS: [Mode; 5] = [
    Mode::AgentLean,
    Mode::Bpftrace,
    Mode::Execsnoop,
    Mode::Tcplife,
    Mode::Tcpstates,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    ExecTrue,
    GoVersion,
    GoBuild,
    TcpConnect,
    TlsHandshake,
    TlsBulk,
}

impl Workload {
    pub(super) fn name(self) -> &'static str {
        match self {
            Workload::ExecTrue => "fork+exec of a static true",
            Workload::GoVersion => "go version",
            Workload::GoBuild => "real build: go build -a fmt (cache warm)",
            Workload::TcpConnect => "loopback TCP connect/accept/close",
            Workload::TlsHandshake => {
                "loopback TLS 1.3 handshakes (Python client, openssl s_server)"
            }
            Workload::TlsBulk => "bulk transfer over one TLS connection (curl, MB/s)",
        }
    }
    pub(super) fn key(self) -> &'static str {
        match self {
            Workload::ExecTrue => "exec_true",
            Workload::GoVersion => "go_version",
            Workload::GoBuild => "go_build",
            Workload::TcpConnect => "tcp_connect",
            Workload::TlsHandshake => "tls_handshake",
            Workload::TlsBulk => "tls_bulk",
        }
    }
    /// The peers that trace what this workload does. sslsniff is not in
    /// Debian's libbpf-tools 0.26; gethostlatency has no workload here
    /// (these workloads resolve no names).
    pub(super) fn peers(self) -> &'static [Mode] {
        match self {
            Workload::ExecTrue | Workload::GoVersion | Workload::GoBuild => {
                &[Mode::Bpftrace, Mode::Execsnoop]
            }
            Workload::TcpConnect => &[Mode::Bpftrace, Mode::Tcplife, Mode::Tcpstates],
            Workload::TlsHandshake | Workload::TlsBulk => &[Mode::Bpftrace, Mode::Tcplife],
        }
    }
    /// The agent's flags in the *agent, lean* mode, on the workloads where
    /// it does work the peers do not: analysing each `go` exec (what the
    /// agent is for; `--tools` naming nothing that runs turns it off), and
    /// the wire programs on every packet and the OpenSSL handshake uprobes.
    pub(super) fn lean_args(self) -> Option<&'static [&'static str]> {
        match self {
            Workload::GoVersion => Some(&["--tools", "bench-no-such-tool"]),
            Workload::TlsHandshake => Some(&["--without", "wire,tls_uprobes"]),
            Workload::TlsBulk => Some(&["--without", "wire"]),
            _ => None,
        }
    }
}

const ALL_WORKLOADS: [Workload; 6] = [
    Workload::ExecTrue,
    Workload::GoVersion,
    Workload::GoBuild,
    Workload::TcpConnect,
    Workload::TlsHandshake,
    Workload::TlsBulk,
];

/// What the agent itself looked like over the runs.
#[derive(Default)]
struct AgentLife {
    pub(super) startup_ms: Vec<f64>,
    /// VmRSS at the end of each run (steady) and the peak (VmHWM).
    pub(super) rss_kib: Vec<f64>,
    pub(super) peak_rss_kib: u64,
    /// VmHWM once attached (its "watching" line), per start: what start-up
    /// itself took (the kernel's BTF parsed, the object loaded).
    pub(super) start_hwm_kib: Vec<f64>,
}

/// The workloads and fixtures every run needs.
fn prepare(out_dir: &Path) -> Result<TlsServers> {
    std::fs::create_dir_all(out_dir)?;
    let _ = Command::new("sysctl")
        .args(["-qw", "kernel.bpf_stats_enabled=1"])
        .status();
    let tls_dir = out_dir.join("tls");
    std::fs::create_dir_all(&tls_dir)?;
    let servers = TlsServers::start(&tls_dir)?;
    let _ = TRUE_BIN.set(build_static_true(out_dir));
    let _ = TLS_PORTS.set((servers.handshake_port, servers.bulk_port));
    let _ = GO_CACHE.set(out_dir.join("gocache"));
    Ok(servers)
}

pub fn bench(reps: usize, only: &[String], quick: bool) -> Result<()> {
    let out_dir = std::env::temp_dir().join("agent-bench");
    let _servers = prepare(&out_dir)?;
    if quick {
        return quick_check(&out_dir);
    }
    for o in only {
        if !ALL_WORKLOADS.iter().any(|w| w.key() == o) {
            bail!("unknown workload {o:?}");
        }
    }
    let workloads: Vec<Workload> = ALL_WORKLOADS
        .into_iter()
        .filter(|w| only.is_empty() || only.iter().any(|o| o == w.key()))
        .collect();
    let mut life = AgentLife::default();
    let rows = measure(&workloads, reps, RUN, false, &out_dir, &mut life)?;

    if !only.is_empty() {
        // A partial run: print, leave docs/ alone.
        for r in &rows {
            let b = median(&mut r.ops.get(&Mode::Bare).cloned().unwrap_or_default());
            println!("{}: bare {b:.1} ops/s", r.workload.name());
            for m in std::iter::once(Mode::Agent).chain(r.workload.peers().iter().copied()) {
                let (x, lo, hi) = ratio(&r.ops, m);
                let (c, ..) = ratio(&r.cpu_ns_per_op, m);
                let v: Vec<String> = r.ops.get(&m).map_or(Vec::new(), |v| {
                    v.iter().map(|x| format!("{x:.0}")).collect()
                });
                println!(
                    "  {:<9} ratio {x:.3} ({lo:.3}–{hi:.3}), machine CPU/op {c:.3} of bare; {}",
                    m.name(),
                    v.join(" ")
                );
            }
            for (k, v) in &r.bpf_ns_per_event {
                println!("  {k:<24} {v:>8.0} ns/run");
            }
            println!("  BPF {:.2} µs/op", r.bpf_us_per_op);
            if let Some(e) = r.bpf_us_per_exec {
                println!("  BPF {e:.2} µs/exec");
            }
            for (m, v) in &r.peer_bpf_us_per_op {
                println!("  {} BPF {v:.2} µs/op", m.name());
            }
            if let Some(c) = r.agent_cpu_us_per_op {
                println!("  agent CPU {c:.2} µs/op");
            }
            if let (Some(c), Some(e)) = (r.agent_cpu_us_per_event, r.events_per_op) {
                println!("  agent CPU {c:.2} µs/event ({e:.1} events/op)");
            }
        }
        println!(
            "  agent start-up {:.0} ms (median), RSS {:.1} MiB steady, {:.1} MiB peak",
            median(&mut life.startup_ms.clone()),
            median(&mut life.rss_kib.clone()) / 1024.0,
            life.peak_rss_kib as f64 / 1024.0
        );
        return Ok(());
    }

    // Capacity: both cores forking as fast as they can, agent attached.
    eprintln!("bench: capacity (exec and connect on 2 threads, agent attached)");
    let tracer = start(Mode::Agent, &out_dir, &[])?.context("agent")?;
    let pid = tracer.child.id();
    let cpu0 = proc_cpu_ns(pid);
    let cap_exec = run_workload(Workload::ExecTrue, 2, RUN)?.rate(Workload::ExecTrue);
    let cap_tcp = run_workload(Workload::TcpConnect, 2, RUN)?.rate(Workload::TcpConnect);
    std::thread::sleep(Duration::from_millis(500));
    let cap_cpu_ns = cpu0
        .zip(proc_cpu_ns(pid))
        .map_or(0, |(a, b)| b.saturating_sub(a));
    life.peak_rss_kib = life.peak_rss_kib.max(proc_hwm_kib(pid).unwrap_or(0));
    let stats = stop(tracer)?.unwrap_or_default();
    let capacity = Capacity {
        exec_per_s: cap_exec,
        tcp_per_s: cap_tcp,
        cpu_ns: cap_cpu_ns,
        stats,
    };
    let overload = overload(&out_dir)?;
    let _ = Command::new("sysctl")
        .args(["-qw", "kernel.bpf_stats_enabled=0"])
        .status();

    write_report(&rows, &capacity, &overload, &life, reps)
}

/// Workloads of the quick check, and the share a figure may grow by.
const QUICK: [Workload; 3] = [
    Workload::ExecTrue,
    Workload::GoVersion,
    Workload::TcpConnect,
];

const QUICK_TOLERANCE: f64 = 0.20;

/// `--quick`: the agent alone, 3 short runs per workload; BPF time and
/// agent CPU per operation against the committed
/// docs/benchmarks.json. Both hold still between runs where wall-clock
/// ratios do not; a figure more than 20 % over the committed one fails.
fn quick_check(out_dir: &Path) -> Result<()> {
    let committed = std::fs::read_to_string(workspace_root().join("docs/benchmarks.json"))
        .context("reading docs/benchmarks.json")?;
    let committed: serde_json::Value =
        serde_json::from_str(&committed).context("parsing docs/benchmarks.json")?;
    let mut life = AgentLife::default();
    let rows = measure(&QUICK, 3, Duration::from_secs(2), true, out_dir, &mut life)?;
    let mut regressions = Vec::new();
    println!("| workload | figure | committed | now | change |\n|---|---|---|---|---|");
    for r in &rows {
        let w = &committed["workloads"][r.workload.key()];
        // Per event is shown but not gated: sending fewer events for the
        // same work (as when thread clones stopped being sent) raises it
        // while what a user pays, per operation, falls.
        let figures = [
            (
                "BPF µs per op",
                w["bpf_us_per_op"].as_f64(),
                Some(r.bpf_us_per_op),
                true,
            ),
            (
                "agent CPU µs per op",
                w["agent_cpu_us_per_op"].as_f64(),
                r.agent_cpu_us_per_op,
                true,
            ),
            (
                "agent CPU µs per event",
                w["agent_cpu_us_per_event"].as_f64(),
                r.agent_cpu_us_per_event,
                false,
            ),
            (
                "events per op",
                w["events_per_op"].as_f64(),
                r.events_per_op,
                false,
            ),
        ];
        for (what, was, now, gated) in figures {
            let (Some(was), Some(now)) = (was, now) else {
                continue;
            };
            let change = if was > 0.0 { now / was - 1.0 } else { 0.0 };
            let flag = if gated && change > QUICK_TOLERANCE {
                " **regression**"
            } else {
                ""
            };
            println!(
                "| {} | {what} | {was:.2} | {now:.2} | {:+.0} %{flag} |",
                r.workload.key(),
                change * 100.0
            );
            if !flag.is_empty() {
                regressions.push(format!("{} {what}: {was:.2} → {now:.2}", r.workload.key()));
            }
        }
    }
    let _ = Command::new("sysctl")
        .args(["-qw", "kernel.bpf_stats_enabled=0"])
        .status();
    if !regressions.is_empty() {
        bail!(
            "over {:.0} % worse than docs/benchmarks.json: {}",
            QUICK_TOLERANCE * 100.0,
            regressions.join("; ")
        );
    }
    println!(
        "\nbench --quick: within {:.0} % of docs/benchmarks.json",
        QUICK_TOLERANCE * 100.0
    );
    Ok(())
}

struct Capacity {
    pub(super) exec_per_s: f64,
    pub(super) tcp_per_s: f64,
    pub(super) cpu_ns: u64,
    pub(super) stats: serde_like::Stats,
}

/// Beyond capacity: the agent's reader stopped while both cores exec.
struct Overload {
    pub(super) secs: f64,
    pub(super) execs: u64,
    pub(super) stats: serde_like::Stats,
    pub(super) rss_kib: u64,
}

/// Execs run while the reader is stopped; each carries 2 KiB of argv and
/// a long PATH (an allow-listed variable, kept up to 512 bytes), so each
/// event is ~3 KiB: about three times the 8 MiB ring in all.
const OVERLOAD_EXECS: u64 = 8000;

const OVERLOAD_PATH_DIRS: usize = 300;

/// Each of the 4 arguments: 2 KiB of argv in all (the most kept).
const OVERLOAD_ARG_LEN: usize = 511;

/// Stop the agent (SIGSTOP) while two threads run OVERLOAD_EXECS execs, resume
/// it, and read what it says it lost and how much memory it took.
fn overload(out_dir: &Path) -> Result<Overload> {
    eprintln!("bench: overload (agent stopped while 2 threads run {OVERLOAD_EXECS} execs)");
    let tracer = start(Mode::Agent, out_dir, &[])?.context("agent")?;
    let pid = tracer.child.id().to_string();
    let path: String = (0..OVERLOAD_PATH_DIRS)
        .map(|i| format!("/opt/overload/dir{i:04}/bin"))
        .collect::<Vec<_>>()
        .join(":");
    Command::new("kill").args(["-STOP", &pid]).status()?;
    let t = Instant::now();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || -> u64 {
                let arg = "a".repeat(OVERLOAD_ARG_LEN);
                let mut n = 0;
                for _ in 0..OVERLOAD_EXECS / 2 {
                    let st = Command::new(true_bin())
                        .args([&arg, &arg, &arg, &arg])
                        .env_clear()
                        .env("PATH", &path)
                        .status();
                    if st.is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let execs: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    let secs = t.elapsed().as_secs_f64();
    Command::new("kill").args(["-CONT", &pid]).status()?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_kib = proc_hwm_kib(tracer.child.id()).unwrap_or(0);
    let stats = stop(tracer)?.unwrap_or_default();
    Ok(Overload {
        secs,
        execs,
        stats,
        rss_kib,
    })
}

fn is_ours(name: &str) -> bool {
    [
        "exec_",
        "execat_",
        "exit_",
        "fork_",
        "tcp_state",
        "tcp_retrans",
        "wire_",
        "owner_",
        "ossl_",
        "go_send",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}
