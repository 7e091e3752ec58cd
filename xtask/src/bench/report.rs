//! The goals and docs/benchmarks.md / .json.

#[allow(
    clippy::wildcard_imports,
    reason = "one module split in parts that share its items"
)]
use super::*;

/// Goals of the overhead issue, on this machine kind (see docs/benchmarks.md).
pub(super) const GOAL_BPF_US_PER_EXEC: f64 = 2.0;

pub(super) const GOAL_BPF_US_PER_TOOL_EXEC: f64 = 6.0;

pub(super) const GOAL_BPF_US_PER_CONNECT: f64 = 2.0;

pub(super) const GOAL_AGENT_US_PER_EVENT: f64 = 3.0;

pub(super) const GOAL_STARTUP_MS: f64 = 500.0;

pub(super) const GOAL_STEADY_RSS_MIB: f64 = 48.0;

pub(super) fn write_report(
    rows: &[Row],
    cap: &Capacity,
    over: &Overload,
    life: &AgentLife,
    reps: usize,
) -> Result<()> {
    use serde_json::json;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = kernel.trim();
    let date = Command::new("date").arg("-u").arg("+%Y-%m-%d").output()?;
    let date = String::from_utf8_lossy(&date.stdout).trim().to_string();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let (ratios, cpu_md, bpf_md, js_rows) = workload_tables(rows);
    let mut md = intro(&date, kernel, cpus, reps);
    md.push_str(&ratios);
    md.push_str(&cost_sections(rows, &cpu_md, &bpf_md));
    md.push_str(&goals(rows, over, life));
    md.push_str(&capacity(cap, over, life));
    let cap_ns_per_event = ns_per_event(cap);
    let js = json!({
        "date": date, "kernel": kernel, "cpus": cpus, "reps": reps, "run_secs": RUN.as_secs(),
        "workloads": js_rows,
        "agent": {"startup_ms": life.startup_ms, "steady_rss_kib": life.rss_kib, "start_hwm_kib": life.start_hwm_kib, "peak_rss_kib": life.peak_rss_kib.max(over.rss_kib)},
        "capacity": {"exec_per_s": cap.exec_per_s, "tcp_per_s": cap.tcp_per_s, "events_received": cap.stats.received, "events_lost": cap.stats.lost, "agent_cpu_ns_per_event": cap_ns_per_event},
        "overload": {"secs": over.secs, "execs": over.execs, "events_received": over.stats.received, "events_lost": over.stats.lost, "ring_full": over.stats.ring_full, "rss_kib": over.rss_kib},
    });
    let docs = workspace_root().join("docs");
    std::fs::write(docs.join("benchmarks.md"), &md)?;
    std::fs::write(
        docs.join("benchmarks.json"),
        serde_json::to_string_pretty(&js)? + "\n",
    )?;
    std::io::stdout().write_all(md.as_bytes())?;
    Ok(())
}

/// The page's opening: when, where and how it was measured.
fn intro(date: &str, kernel: &str, cpus: usize, reps: usize) -> String {
    format!(
        "# Benchmarks\n\nMeasured by `cargo xtask bench` on {date}: kernel {kernel}, {cpus} CPUs. Each workload ran \
         {reps} times per mode for {} s, modes interleaved (order rotated each repetition) in one invocation. \
         *agent* is the release build in its default live mode (JSON to a file). The peers trace the same \
         hooks: *bpftrace* prints exec (filename + argv), exit and TCP state changes; *execsnoop*, *tcplife* \
         and *tcpstates* are Debian's libbpf-tools, run as a user runs them (defaults, output to a file), \
         each on the workloads it traces. A ratio is the median over the repetitions of each one's ops/s \
         over the bare ops/s of the same repetition (1.00 = no slowdown), with the quartiles of those \
         ratios in brackets: runs of the same code differ by several percent on this VM, and pairing runs \
         that are close in time cancels the slow drift. — means the peer does not trace that workload. \
         *agent, lean* is the same agent with the work it does beyond the peers turned off, run on the \
         workloads where it is behind them, as the experiment that shows what that work costs: `go version` \
         with `--tools` naming nothing that runs (no toolchain analysis), TLS handshakes `--without \
         wire,tls_uprobes`, the bulk transfer `--without wire`.\n\n",
        RUN.as_secs()
    )
}

/// The ratio table (returned first), machine CPU and BPF tables, and the
/// JSON rows, one row per workload.
fn workload_tables(
    rows: &[Row],
) -> (
    String,
    String,
    String,
    serde_json::Map<String, serde_json::Value>,
) {
    use serde_json::{Map, json};
    let cols = || {
        std::iter::once("agent")
            .chain(COLUMNS.iter().map(|m| m.name()))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let seps = "|---".repeat(COLUMNS.len() + 3);
    let mut md = format!(
        "| workload | bare ops/s (min–max) | {} |\n{seps}|\n",
        cols()
    );
    let mut cpu_md = format!("| workload | bare | {} |\n{seps}|\n", cols());
    let mut bpf_md = format!(
        "| workload | {} |\n{}|\n",
        cols(),
        "|---".repeat(COLUMNS.len() + 2)
    );
    let mut js_rows = Map::new();
    let unit = |ns: f64| {
        if ns >= 1e6 {
            format!("{:.1} ms", ns / 1e6)
        } else {
            format!("{:.0} µs", ns / 1e3)
        }
    };
    for r in rows {
        let mut v = r.ops.get(&Mode::Bare).cloned().unwrap_or_default();
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        let b = median(&mut v);
        let mut line = format!("| {} | {b:.1} ({lo:.1}–{hi:.1}) |", r.workload.name());
        let cpu_med = |m: Mode| median(&mut r.cpu_ns_per_op.get(&m).cloned().unwrap_or_default());
        let mut cpu_line = format!("| {} | {} |", r.workload.name(), unit(cpu_med(Mode::Bare)));
        let mut bpf_line = format!("| {} | **{:.2}** |", r.workload.name(), r.bpf_us_per_op);
        let mut modes = Map::new();
        for m in std::iter::once(Mode::Agent).chain(COLUMNS) {
            if !r.ops.contains_key(&m) {
                line.push_str(" — |");
                cpu_line.push_str(" — |");
                if m != Mode::Agent {
                    bpf_line.push_str(" — |");
                }
                continue;
            }
            let (x, xlo, xhi) = ratio(&r.ops, m);
            let (c, clo, chi) = ratio(&r.cpu_ns_per_op, m);
            let (bold, end) = if m == Mode::Agent {
                ("**", "**")
            } else {
                ("", "")
            };
            line.push_str(&format!(" {bold}{x:.3}{end} ({xlo:.3}–{xhi:.3}) |"));
            cpu_line.push_str(&format!(
                " {} {bold}{c:.3}{end} ({clo:.3}–{chi:.3}) |",
                unit(cpu_med(m))
            ));
            if m != Mode::Agent {
                match r.peer_bpf_us_per_op.get(&m) {
                    Some(v) => bpf_line.push_str(&format!(" {v:.2} |")),
                    None => bpf_line.push_str(" — |"),
                }
            }
            modes.insert(
                m.name().replace(", ", "_"),
                json!({
                    "ops_per_s": r.ops.get(&m),
                    "ratio": x, "ratio_quartiles": [xlo, xhi],
                    "machine_cpu_ns_per_op": r.cpu_ns_per_op.get(&m),
                    "machine_cpu_ratio": c,
                    "bpf_us_per_op": if m == Mode::Agent { Some(r.bpf_us_per_op) } else { r.peer_bpf_us_per_op.get(&m).copied() },
                }),
            );
        }
        md.push_str(&line);
        md.push('\n');
        cpu_md.push_str(&cpu_line);
        cpu_md.push('\n');
        bpf_md.push_str(&bpf_line);
        bpf_md.push('\n');
        js_rows.insert(
            r.workload.key().into(),
            json!({
                "bare": {"ops_per_s": r.ops.get(&Mode::Bare), "machine_cpu_ns_per_op": r.cpu_ns_per_op.get(&Mode::Bare)},
                "modes": modes,
                "bpf_ns_per_run": r.bpf_ns_per_event,
                "bpf_us_per_op": r.bpf_us_per_op,
                "bpf_us_per_exec": r.bpf_us_per_exec,
                "agent_cpu_us_per_op": r.agent_cpu_us_per_op,
                "agent_cpu_us_per_event": r.agent_cpu_us_per_event,
                "events_per_op": r.events_per_op,
            }),
        );
    }
    (md, cpu_md, bpf_md, js_rows)
}

/// The machine-CPU, kernel-side and agent-CPU sections.
fn cost_sections(rows: &[Row], cpu_md: &str, bpf_md: &str) -> String {
    let mut md = String::new();
    md.push_str(
        "\n## Machine CPU per operation\n\nAll CPU time the machine spent during the run (every process and the \
         kernel: the workload, the tracer, BPF programs, anything else running; not idle, not steal; /proc/stat) \
         over the operations done, and its ratio to bare: what a tracer costs in CPU rather than in wall-clock \
         time, which a 2-CPU VM that is not fully busy partly hides. Ratios are paired as above.\n\n",
    );
    md.push_str(cpu_md);
    md.push_str(
        "\n## Kernel-side cost (from `kernel.bpf_stats_enabled`)\n\nRun time of each tracer's programs during its runs of each \
         workload, from the kernel's own counters, per operation of the workload (for the peers: all programs \
         loaded that are not the agent's). The counters themselves cost a clock read on each side of every run; \
         what a do-nothing program costs on the same hooks is in [architecture.md](architecture.md#cost-floor). \
         For the bulk transfer an operation is one 256 MiB transfer. BPF µs per op:\n\n",
    );
    md.push_str(bpf_md);
    md.push_str("\nThe agent's programs, each one's average per run:\n\n| workload | program | ns per run |\n|---|---|---|\n");
    for r in rows {
        for (k, v) in &r.bpf_ns_per_event {
            md.push_str(&format!("| {} | `{k}` | {v:.0} |\n", r.workload.name()));
        }
    }
    let us = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2} µs"));
    md.push_str(
        "\n## Agent CPU\n\nUser+system CPU of the agent process during the workload (and 300 ms after, while it \
         drains), per operation and per event it received (n/a where most operations send none).\n\n| workload | per op | events per op | per event |\n|---|---|---|---|\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.workload.name(),
            us(r.agent_cpu_us_per_op),
            r.events_per_op
                .map_or_else(|| "n/a".into(), |e| format!("{e:.1}")),
            us(r.agent_cpu_us_per_event)
        ));
    }
    md
}

/// The agent's CPU per event at capacity.
fn ns_per_event(cap: &Capacity) -> f64 {
    if cap.stats.received > 0 {
        cap.cpu_ns as f64 / cap.stats.received as f64
    } else {
        0.0
    }
}

/// Median steady RSS and the start peak, MiB.
fn rss_mib(life: &AgentLife) -> (f64, f64) {
    (
        median(&mut life.rss_kib.clone()) / 1024.0,
        life.start_hwm_kib.iter().copied().fold(0.0, f64::max) / 1024.0,
    )
}

/// The goals table: each goal of the overhead issue, met or not.
fn goals(rows: &[Row], over: &Overload, life: &AgentLife) -> String {
    let mut md = String::new();
    let startup_ms = median(&mut life.startup_ms.clone());
    let (steady_mib, start_peak_mib) = rss_mib(life);
    let run_peak_mib = life.peak_rss_kib as f64 / 1024.0;
    let over_mib = over.rss_kib as f64 / 1024.0;
    let row = |k: &str| rows.iter().find(|r| r.workload.key() == k);
    let exec_us = row("exec_true").map(|r| r.bpf_us_per_op);
    let tool_exec_us = row("go_build").and_then(|r| r.bpf_us_per_exec);
    let connect_us = row("tcp_connect").map(|r| r.bpf_us_per_op);
    let per_event = row("exec_true").and_then(|r| r.agent_cpu_us_per_event);
    let build_ratio = row("go_build").map(|r| ratio(&r.ops, Mode::Agent).0);
    let beats_peers: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let a = ratio(&r.ops, Mode::Agent).0;
            let worse: Vec<String> = r
                .workload
                .peers()
                .iter()
                .filter(|m| r.ops.contains_key(m) && ratio(&r.ops, **m).0 > a)
                .map(|m| format!("{} {:.3}", m.name(), ratio(&r.ops, *m).0))
                .collect();
            (!worse.is_empty())
                .then(|| format!("{} (agent {a:.3}; {})", r.workload.key(), worse.join(", ")))
        })
        .collect();
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let fmt = |v: Option<f64>, u: &str| v.map_or("n/a".to_string(), |v| format!("{v:.2}{u}"));
    md.push_str("\n## Goals\n\n| goal | measured | |\n|---|---|---|\n");
    let ceilings = [
        (
            "BPF per exec outside toolchain trees (fork+exec+exit of `true`)",
            exec_us,
            GOAL_BPF_US_PER_EXEC,
        ),
        (
            "BPF per toolchain exec with its environment (`go build -a`: all BPF time over the execs)",
            tool_exec_us,
            GOAL_BPF_US_PER_TOOL_EXEC,
        ),
        (
            "BPF per loopback connection",
            connect_us,
            GOAL_BPF_US_PER_CONNECT,
        ),
        (
            "agent CPU per event (exec workload)",
            per_event,
            GOAL_AGENT_US_PER_EVENT,
        ),
    ];
    for (what, v, limit) in ceilings {
        md.push_str(&format!(
            "| ≤ {limit} µs {what} | {} | {} |\n",
            fmt(v, " µs"),
            verdict(v.is_some_and(|v| v <= limit))
        ));
    }
    md.push_str(&format!(
        "| start-up ≤ {GOAL_STARTUP_MS:.0} ms (spawn to all attached, median of {} starts) | {startup_ms:.0} ms | {} |\n",
        life.startup_ms.len(),
        verdict(startup_ms <= GOAL_STARTUP_MS)
    ));
    md.push_str(&format!(
        "| steady RSS ≤ {GOAL_STEADY_RSS_MIB:.0} MiB, start peak ≤ 1.5× steady | {steady_mib:.1} MiB steady (median at the end of each run), {start_peak_mib:.1} MiB start peak (largest VmHWM once attached, {} starts); {run_peak_mib:.1} MiB peak over the workloads, {over_mib:.1} MiB under overload | {} |\n",
        life.start_hwm_kib.len(),
        verdict(steady_mib <= GOAL_STEADY_RSS_MIB && start_peak_mib <= 1.5 * steady_mib)
    ));
    md.push_str(&format!(
        "| agent ratio ≥ every peer's on every workload | {} | {} |\n",
        if beats_peers.is_empty() {
            "yes".to_string()
        } else {
            format!("behind on {}", beats_peers.join("; "))
        },
        verdict(beats_peers.is_empty())
    ));
    md.push_str(&format!(
        "| real build ratio ≥ 0.98 | {} | {} |\n",
        fmt(build_ratio, ""),
        verdict(build_ratio.is_some_and(|v| v >= 0.98))
    ));
    md
}

/// The capacity paragraph: the rate both cores reach, and what overload loses.
fn capacity(cap: &Capacity, over: &Overload, life: &AgentLife) -> String {
    let cap_ns_per_event = ns_per_event(cap);
    let (steady_mib, _) = rss_mib(life);
    let peak_mib = life.peak_rss_kib.max(over.rss_kib) as f64 / 1024.0;
    format!(
        "\n(CPU time comes from /proc in 10 ms ticks: small per-run values are coarse.)\n\n## Capacity\n\n\
         Both cores driving the workload, agent attached: {:.0} execs/s and {:.0} \
         TCP connects/s; the agent received {} events and lost {} (ring buffer, tables, decode), \
         at {:.2} µs of CPU per event: {:.2} % of one core per 1,000 events/s. \
         Agent RSS: {steady_mib:.1} MiB steady, {peak_mib:.1} MiB peak over the whole benchmark.\n\n\
         Beyond capacity: the agent's reader stopped (SIGSTOP) for {:.1} s while both cores ran {} execs \
         with 2 KiB of argv and a {}-directory PATH (~3 KiB per event): {} events lost ({} of them `ring_full`), \
         counted in the kernel and reported in its `stats` line once it resumed; it received {} events; \
         RSS {:.1} MiB.\n",
        cap.exec_per_s,
        cap.tcp_per_s,
        cap.stats.received,
        cap.stats.lost,
        cap_ns_per_event / 1e3,
        cap_ns_per_event / 1e4,
        over.secs,
        over.execs,
        OVERLOAD_PATH_DIRS,
        over.stats.lost,
        over.stats.ring_full,
        over.stats.received,
        over.rss_kib as f64 / 1024.0
    )
}
