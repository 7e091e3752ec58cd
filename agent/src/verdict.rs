//! The verdict of `agent trace`: did the command fail, and if so, did a
//! finding on its own failure path explain it — the network's fault or the
//! toolchain's? A pipeline acts on it (`--exit-code network=75` retries
//! only what the network broke).
//!
//! The rule (docs/findings.md, "The verdict"):
//! - the command exited 0: `ok`, whatever was found on the way;
//! - else the **failure path** is the command's process and, below each
//!   process on it, the child that failed (non-zero exit or a signal) last:
//!   the failure a shell, make or go passed on. A child whose failure its
//!   parent survived (`curl … || true`, then a compile error) is not on it,
//!   nor is a child that succeeded;
//! - a finding on the failure path **explains** the failure when it blames
//!   the toolchain at severity warning or error, or the network at severity
//!   error (network warnings — slow, retransmitted — say the operation
//!   worked), and it was not **recovered**: a network failure is recovered
//!   when the same operation (a connect to the same host name or address
//!   and port, a lookup of the same name, a handshake with the same server
//!   name) later succeeded anywhere in the tree;
//! - the explaining findings, earliest first, one per code, are the
//!   causes; the verdict is the first cause's blame (`failed_network`,
//!   `failed_toolchain`), and a cause of the other kind is named too. No
//!   cause: `failed`.
//!
//! Owns: the rule. Must not: make findings or print.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::{
    finding::{Blame, Finding, Severity},
    pipeline::Output,
    signal::tcp::Outcome,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    #[default]
    Ok,
    Failed,
    FailedNetwork,
    FailedToolchain,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "failed",
            Verdict::FailedNetwork => "failed_network",
            Verdict::FailedToolchain => "failed_toolchain",
        }
    }

    fn of(b: Blame) -> Self {
        match b {
            Blame::Network => Verdict::FailedNetwork,
            Blame::Toolchain => Verdict::FailedToolchain,
        }
    }
}

/// A finding that explains the failure.
#[derive(Clone, Debug)]
pub struct Cause {
    pub finding: Finding,
    pub blame: Blame,
    pub ktime_ns: u64,
}

/// The verdict and what it rests on.
#[derive(Clone, Debug, Default)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Earliest first; empty for `ok` and `failed`.
    pub causes: Vec<Cause>,
}

impl Judgement {
    /// The verdicts of the causes of the other kind than the first
    /// (`failed_toolchain` after a network cause).
    pub fn also(&self) -> Option<Verdict> {
        self.causes
            .iter()
            .map(|c| Verdict::of(c.blame))
            .find(|v| *v != self.verdict)
    }

    /// One line: `failed_network (net.connect_timeout), and failed_toolchain (go.version_too_old)`.
    pub fn line(&self) -> String {
        let codes = |v: Verdict| {
            let mut seen = Vec::new();
            for c in self.causes.iter().filter(|c| Verdict::of(c.blame) == v) {
                if !seen.contains(&c.finding.code) {
                    seen.push(c.finding.code);
                }
            }
            seen.join(", ")
        };
        match (self.verdict, self.also()) {
            (Verdict::Ok, _) => "ok".into(),
            (Verdict::Failed, _) => "failed (no finding explains it)".into(),
            (v, None) => format!("{} ({})", v.name(), codes(v)),
            (v, Some(w)) => format!(
                "{} ({}), and {} ({})",
                v.name(),
                codes(v),
                w.name(),
                codes(w)
            ),
        }
    }
}

impl Judgement {
    /// The `verdict` record (JSON), also the head of the trace report's.
    pub fn json(&self, exit_code: i32) -> serde_json::Value {
        let causes: Vec<serde_json::Value> = self
            .causes
            .iter()
            .map(|c| {
                serde_json::json!({
                    "blames": c.blame,
                    "code": c.finding.code,
                    "severity": c.finding.severity,
                    "pid": c.finding.pid,
                    "summary": c.finding.summary,
                    "cause": c.finding.cause,
                    "fix": c.finding.fix,
                })
            })
            .collect();
        serde_json::json!({
            "type": "verdict",
            "verdict": self.verdict,
            "also": self.also(),
            "exit_code": exit_code,
            "causes": causes,
        })
    }
}

/// `--exit-code network=N,toolchain=M`: the code `agent trace` exits with
/// on that verdict instead of the command's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitCodes {
    pub network: Option<u8>,
    pub toolchain: Option<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExitCodeError {
    #[error("{0:?}: use network=N or toolchain=N (N from 0 to 255)")]
    Syntax(String),
}

impl ExitCodes {
    /// One `KIND=N` of the flag into these.
    pub fn parse_one(&mut self, s: &str) -> Result<(), ExitCodeError> {
        let bad = || ExitCodeError::Syntax(s.to_string());
        let (kind, n) = s.split_once('=').ok_or_else(bad)?;
        let n: u8 = n.trim().parse().map_err(|_| bad())?;
        match kind.trim() {
            "network" => self.network = Some(n),
            "toolchain" => self.toolchain = Some(n),
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// The exit code for this verdict; the command's when none is set.
    pub fn apply(&self, j: &Judgement, command_code: i32) -> i32 {
        let mapped = match j.verdict {
            Verdict::FailedNetwork => self.network,
            Verdict::FailedToolchain => self.toolchain,
            Verdict::Ok | Verdict::Failed => None,
        };
        mapped.map_or(command_code, i32::from)
    }
}

/// A network operation, to tell a failure that was retried with success.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Op {
    Connect(String, u16),
    Lookup(String),
    Handshake(String),
}

/// The verdict on a traced command: `outputs` are its tree's, in order;
/// `parents` maps each process to its parent (from the process table).
pub fn judge(
    outputs: &[Output],
    root: u32,
    exit_code: i32,
    parents: &HashMap<u32, u32>,
) -> Judgement {
    if exit_code == 0 {
        return Judgement {
            verdict: Verdict::Ok,
            causes: Vec::new(),
        };
    }
    let path = failure_path(outputs, root, parents);
    let names = host_names(outputs);
    // Each finding follows the report of the operation it is about (the
    // pipeline's order); successes are kept with the time they ended.
    let mut last_op: Option<(u32, Op, u64)> = None;
    let mut succeeded: HashMap<Op, u64> = HashMap::new();
    let mut candidates: Vec<(Cause, Option<(Op, u64)>)> = Vec::new();
    for o in outputs {
        if let Some((pid, op, start, ok, end)) = operation(o, &names) {
            if ok {
                let t = succeeded.entry(op.clone()).or_insert(end);
                *t = (*t).max(end);
            }
            last_op = Some((pid, op, start));
            continue;
        }
        let Output::Finding { finding, ktime_ns } = o else {
            continue;
        };
        let Some(doc) = crate::signal::code_doc(finding.code) else {
            continue;
        };
        let min = match doc.blame {
            Blame::Network => Severity::Error,
            Blame::Toolchain => Severity::Warning,
        };
        if finding.severity < min || !path.contains(&finding.pid) {
            continue;
        }
        let op = match (&last_op, doc.blame) {
            (Some((pid, op, start)), Blame::Network) if *pid == finding.pid => {
                Some((op.clone(), *start))
            }
            _ => None,
        };
        candidates.push((
            Cause {
                finding: finding.clone(),
                blame: doc.blame,
                ktime_ns: *ktime_ns,
            },
            op,
        ));
    }
    let mut causes: Vec<Cause> = candidates
        .into_iter()
        .filter(|(_, op)| match op {
            Some((op, start)) => succeeded.get(op).is_none_or(|end| end < start),
            None => true,
        })
        .map(|(c, _)| c)
        .collect();
    causes.sort_by_key(|c| c.ktime_ns);
    let mut seen = HashSet::new();
    causes.retain(|c| seen.insert(c.finding.code));
    let verdict = causes
        .first()
        .map_or(Verdict::Failed, |c| Verdict::of(c.blame));
    Judgement { verdict, causes }
}

/// The command's process and, below it, each on-path process's last child
/// to fail (by exit time).
fn failure_path(outputs: &[Output], root: u32, parents: &HashMap<u32, u32>) -> HashSet<u32> {
    let mut parent = parents.clone();
    let mut failed: Vec<(u32, u64)> = Vec::new();
    for o in outputs {
        match o {
            Output::Exit { exit, .. } if exit.status() != Some(0) => {
                failed.push((exit.tgid, exit.ktime_ns));
            }
            Output::Exec { exec, .. } if exec.ok() => {
                parent.entry(exec.tgid).or_insert(exec.ppid);
            }
            _ => {}
        }
    }
    // Per parent, the child that failed last: the one whose failure it
    // passed on (a shell's last command, make's failed recipe, go's git).
    let mut last: HashMap<u32, (u64, u32)> = HashMap::new();
    for (pid, at) in failed {
        if let Some(&pp) = parent.get(&pid)
            && pp != pid
        {
            let e = last.entry(pp).or_insert((at, pid));
            if at >= e.0 {
                *e = (at, pid);
            }
        }
    }
    let mut path = HashSet::from([root]);
    // Down from the root, one level at a time (bounded: 64 levels).
    let mut frontier = vec![root];
    for _ in 0..64 {
        let next: Vec<u32> = frontier
            .iter()
            .filter_map(|p| last.get(p).map(|(_, c)| *c))
            .filter(|c| path.insert(*c))
            .collect();
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    path
}

/// Addresses to the names the tree looked up (a connect's retry may go to
/// another address of the same name: IPv6 unreachable, IPv4 fine).
fn host_names(outputs: &[Output]) -> HashMap<std::net::IpAddr, String> {
    let mut m = HashMap::new();
    for o in outputs {
        if let Output::Dns { report, .. } = o {
            for a in &report.addresses {
                m.entry(*a)
                    .or_insert_with(|| report.name.to_ascii_lowercase());
            }
        }
    }
    m
}

/// A network operation's process, identity, start, success and end.
fn operation(
    o: &Output,
    names: &HashMap<std::net::IpAddr, String>,
) -> Option<(u32, Op, u64, bool, u64)> {
    match o {
        Output::Tcp { tcp, report, .. } => {
            let host = names
                .get(&tcp.dst)
                .cloned()
                .unwrap_or_else(|| tcp.dst.to_string());
            let ok = matches!(report.outcome, Outcome::Established);
            Some((
                tcp.tgid,
                Op::Connect(host, tcp.dport),
                tcp.start_ns,
                ok,
                tcp.ktime_ns,
            ))
        }
        Output::Dns { report, .. } => Some((
            report.owner.pid,
            Op::Lookup(report.name.to_ascii_lowercase()),
            report.start_ns,
            report.rcode.as_deref() == Some("NOERROR") && !report.addresses.is_empty(),
            report.end_ns,
        )),
        Output::Tls { report, .. } => Some((
            report.owner.pid,
            Op::Handshake(
                report
                    .sni
                    .clone()
                    .unwrap_or_else(|| report.server.to_string()),
            ),
            report.start_ns,
            matches!(report.verdict, agent_parse::tls::Verdict::Completed),
            report.end_ns,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
