//! Numbers: medians, quartiles, paired ratios, BPF run time per program, a process's CPU and RSS.

#[allow(
    clippy::wildcard_imports,
    reason = "one module split in parts that share its items"
)]
use super::*;

/// Minimal parsing of the agent's final `stats` line.
pub(super) mod serde_like {
    use std::path::Path;

    #[derive(Debug, Default, Clone)]
    pub struct Stats {
        pub received: u64,
        pub lost: u64,
        pub ring_full: u64,
    }

    fn num_after(s: &str, key: &str) -> Option<u64> {
        let i = s.find(key)? + key.len();
        let digits: String = s[i..].chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    }

    pub fn last_stats(f: &Path) -> Option<Stats> {
        let text = std::fs::read_to_string(f).ok()?;
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with("{\"type\":\"stats\""))?;
        let lost = [
            "ring_full",
            "exec_table_full",
            "scratch",
            "tcp_table_full",
            "decode_errors",
        ]
        .iter()
        .filter_map(|k| num_after(line, &format!("\"{k}\":")))
        .sum();
        Some(Stats {
            received: num_after(line, "\"events_received\":")?,
            lost,
            ring_full: num_after(line, "\"ring_full\":").unwrap_or(0),
        })
    }
}

pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Lower and upper quartile (nearest rank) of `v`.
pub(super) fn quartiles(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => (0.0, 0.0),
        n => (v[(n - 1) / 4], v[(3 * (n - 1)).div_ceil(4)]),
    }
}

/// Each repetition's `m` over the same repetition's bare value: runs next to
/// each other in time, so slow drift of the machine cancels out.
pub(super) fn paired(by_mode: &BTreeMap<Mode, Vec<f64>>, m: Mode) -> Vec<f64> {
    let (Some(x), Some(b)) = (by_mode.get(&m), by_mode.get(&Mode::Bare)) else {
        return Vec::new();
    };
    x.iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(x, b)| x / b)
        .collect()
}

/// Median and quartiles of the paired ratios of `m`.
pub(super) fn ratio(by_mode: &BTreeMap<Mode, Vec<f64>>, m: Mode) -> (f64, f64, f64) {
    let mut v = paired(by_mode, m);
    let (lo, hi) = quartiles(&v);
    (median(&mut v), lo, hi)
}

/// run_time_ns and run_cnt of every loaded program named like ours.
pub(super) fn bpf_prog_stats() -> BTreeMap<String, (u64, u64)> {
    let out = Command::new("bpftool").args(["prog", "show"]).output();
    let mut m = BTreeMap::new();
    let Ok(out) = out else { return m };
    let text = String::from_utf8_lossy(&out.stdout);
    // "12: tracepoint  name exec_enter_tp  tag ...  run_time_ns 123 run_cnt 4"
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let get = |k: &str| {
            words
                .iter()
                .position(|w| *w == k)
                .and_then(|i| words.get(i + 1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let Some(name) = words
            .iter()
            .position(|w| *w == "name")
            .and_then(|i| words.get(i + 1))
        else {
            continue;
        };
        if let (Some(t), Some(c)) = (get("run_time_ns"), get("run_cnt")) {
            let e = m.entry(name.to_string()).or_insert((0, 0));
            e.0 += t;
            e.1 += c;
        }
    }
    m
}

pub(super) fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000_000) // USER_HZ = 100
}

pub(super) fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub(super) fn proc_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub(super) struct Row {
    pub(super) workload: Workload,
    /// Per mode, one entry per repetition (same index, same repetition).
    pub(super) ops: BTreeMap<Mode, Vec<f64>>,
    /// Machine CPU (all processes, kernel included) per operation.
    pub(super) cpu_ns_per_op: BTreeMap<Mode, Vec<f64>>,
    pub(super) bpf_ns_per_event: BTreeMap<String, f64>,
    /// All of the agent's programs' run time over the operations run.
    pub(super) bpf_us_per_op: f64,
    /// The same over the execs completed (`exec_sched_tp` runs), where
    /// the workload execs.
    pub(super) bpf_us_per_exec: Option<f64>,
    /// Each peer's programs' run time over the operations it saw.
    pub(super) peer_bpf_us_per_op: BTreeMap<Mode, f64>,
    /// Agent CPU over the operations run, and over the events it received.
    pub(super) agent_cpu_us_per_op: Option<f64>,
    pub(super) agent_cpu_us_per_event: Option<f64>,
    pub(super) events_per_op: Option<f64>,
}

/// Run time and runs of programs between two `bpf_prog_stats` readings,
/// for the programs `keep` selects.
pub(super) fn stats_delta(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    keep: impl Fn(&str) -> bool,
    into: &mut BTreeMap<String, (u64, u64)>,
) {
    for (name, (t, c)) in after {
        if !keep(name) {
            continue;
        }
        let (t0, c0) = before.get(name).copied().unwrap_or((0, 0));
        let e = into.entry(name.clone()).or_insert((0, 0));
        e.0 += t.saturating_sub(t0);
        e.1 += c.saturating_sub(c0);
    }
}
