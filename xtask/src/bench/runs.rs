//! The measured runs: each workload under each mode, repetitions
//! interleaved, and what they add up to per workload.

#[allow(
    clippy::wildcard_imports,
    reason = "one module split in parts that share its items"
)]
use super::*;

/// Run every workload in every mode it has, interleaved.
pub(super) fn measure(
    workloads: &[Workload],
    reps: usize,
    run: Duration,
    agent_only: bool,
    out_dir: &Path,
    life: &mut AgentLife,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &w in workloads {
        eprintln!("bench: {}", w.name());
        let mut modes = vec![Mode::Agent];
        if !agent_only {
            modes.insert(0, Mode::Bare);
            modes.extend(w.peers());
            if w.lean_args().is_some() {
                modes.push(Mode::AgentLean);
            }
        }
        let mut row = Row {
            workload: w,
            ops: BTreeMap::new(),
            cpu_ns_per_op: BTreeMap::new(),
            bpf_ns_per_event: BTreeMap::new(),
            bpf_us_per_op: 0.0,
            bpf_us_per_exec: None,
            peer_bpf_us_per_op: BTreeMap::new(),
            agent_cpu_us_per_op: None,
            agent_cpu_us_per_event: None,
            events_per_op: None,
        };
        let mut tally = Tally::default();
        run_workload(w, 1, run / 3)?; // warm caches
        for rep in 0..reps {
            // Rotate the order each repetition so drift hits every mode alike.
            for i in 0..modes.len() {
                let mode = modes[(i + rep) % modes.len()];
                run_mode(w, mode, rep, run, out_dir, life, &mut row, &mut tally)?;
            }
        }
        summarise(&mut row, &tally);
        rows.push(row);
    }
    Ok(rows)
}

/// What the repetitions of one workload add up, mode by mode.
#[derive(Default)]
struct Tally {
    /// Events the agent received.
    received: u64,
    /// The agent's CPU per run, ns.
    cpu: Vec<f64>,
    mode_ops: BTreeMap<Mode, f64>,
    /// The agent's programs: (run time ns, runs).
    bpf_t: BTreeMap<String, (u64, u64)>,
    peer_t: BTreeMap<Mode, BTreeMap<String, (u64, u64)>>,
}

/// One run of `w` under `mode`: its rate, machine CPU, BPF time, and the
/// agent's CPU, RSS and events.
#[allow(
    clippy::too_many_arguments,
    reason = "one run's inputs and where its figures go"
)]
fn run_mode(
    w: Workload,
    mode: Mode,
    rep: usize,
    run: Duration,
    out_dir: &Path,
    life: &mut AgentLife,
    row: &mut Row,
    tally: &mut Tally,
) -> Result<()> {
    let lean = if mode == Mode::AgentLean {
        w.lean_args().unwrap_or_default()
    } else {
        &[]
    };
    let tracer = start(mode, out_dir, lean)?;
    let pid = tracer.as_ref().map(|t| t.child.id());
    if let Some(d) = tracer.as_ref().and_then(|t| t.startup) {
        life.startup_ms.push(d.as_secs_f64() * 1e3);
        if let Some(h) = pid.and_then(proc_hwm_kib) {
            life.start_hwm_kib.push(h as f64);
        }
    }
    let before = (mode != Mode::Bare).then(bpf_prog_stats);
    let cpu0 = pid.and_then(proc_cpu_ns);
    let busy0 = machine_busy_ns();
    let done = run_workload(w, 1, run)?;
    let busy = machine_busy_ns()
        .zip(busy0)
        .map(|(b, a)| b.saturating_sub(a) as f64);
    if let Some(b) = &before {
        // Let the tracer drain what the workload produced before measuring its CPU.
        std::thread::sleep(Duration::from_millis(300));
        let after = bpf_prog_stats();
        if mode == Mode::Agent {
            stats_delta(b, &after, is_ours, &mut tally.bpf_t);
        } else if mode == Mode::AgentLean {
            stats_delta(b, &after, is_ours, tally.peer_t.entry(mode).or_default());
        } else {
            stats_delta(
                b,
                &after,
                |n| !is_ours(n),
                tally.peer_t.entry(mode).or_default(),
            );
        }
    }
    if let (Mode::Agent, Some(p)) = (mode, pid) {
        if let (Some(c0), Some(c1)) = (cpu0, proc_cpu_ns(p)) {
            tally.cpu.push((c1.saturating_sub(c0)) as f64);
        }
        life.peak_rss_kib = life.peak_rss_kib.max(proc_hwm_kib(p).unwrap_or(0));
        if let Some(r) = proc_rss_kib(p) {
            life.rss_kib.push(r as f64);
        }
    }
    if let Some(t) = tracer {
        let stats = stop(t)?;
        if mode == Mode::Agent {
            tally.received += stats.map_or(0, |s| s.received);
        }
    }
    *tally.mode_ops.entry(mode).or_default() += done.count(w);
    let ops = done.rate(w);
    row.ops.entry(mode).or_default().push(ops);
    if let Some(b) = busy {
        row.cpu_ns_per_op
            .entry(mode)
            .or_default()
            .push(b / done.count(w).max(1e-9));
    }
    eprintln!("  rep {rep} {:<9} {:>10.1} ops/s", mode.name(), ops);
    Ok(())
}

/// The per-op and per-event figures of a workload's row from its tally.
fn summarise(row: &mut Row, tally: &Tally) {
    let w = row.workload;
    let iters = tally
        .mode_ops
        .get(&Mode::Agent)
        .copied()
        .unwrap_or(0.0)
        .max(1e-9);
    let mut bpf_total_ns = 0u64;
    for (name, (t, c)) in &tally.bpf_t {
        if *c > 0 {
            row.bpf_ns_per_event
                .insert(name.clone(), *t as f64 / *c as f64);
            bpf_total_ns += t;
        }
    }
    row.bpf_us_per_op = bpf_total_ns as f64 / iters / 1e3;
    let execs = tally.bpf_t.get("exec_sched_tp").map_or(0, |v| v.1);
    if matches!(
        w,
        Workload::ExecTrue | Workload::GoVersion | Workload::GoBuild
    ) && execs > 0
    {
        row.bpf_us_per_exec = Some(bpf_total_ns as f64 / execs as f64 / 1e3);
    }
    for (m, t) in &tally.peer_t {
        let ns: u64 = t.values().map(|v| v.0).sum();
        let n = tally.mode_ops.get(m).copied().unwrap_or(0.0).max(1e-9);
        row.peer_bpf_us_per_op.insert(*m, ns as f64 / n / 1e3);
    }
    if !tally.cpu.is_empty() {
        let cpu_ns: f64 = tally.cpu.iter().sum();
        row.agent_cpu_us_per_op = Some(cpu_ns / iters / 1e3);
        row.events_per_op = Some(tally.received as f64 / iters);
        // Per event only where events are what the agent does: routine
        // connections are counted in the kernel, not sent.
        if tally.received as f64 >= iters / 10.0 {
            row.agent_cpu_us_per_event = Some(cpu_ns / tally.received as f64 / 1e3);
        }
    }
}
