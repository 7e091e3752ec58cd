//! What every signal produces: a finding with a stable code, its severity,
//! the evidence, the cause that decided it and a fix a person can run.
//!
//! Owns: the `Finding` type, severities, the shape of a code's catalogue row,
//! per-key de-duplication, errno names.
//! Must not: decide findings (each signal's analyzer does) or print them.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::render::{
    Meter, Metric, MetricKind, Record, Style, clock, json_line, metric, paint, rfc3339, unix_ns,
};

pub const FINDINGS: Metric = metric("agent.findings", "{finding}", MetricKind::Counter);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What a finding blames when it explains a failed command (the verdict of
/// `agent trace`, see `crate::verdict`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// DNS, a connection, TLS, an HTTP error from a registry or proxy, a
    /// toolchain download: worth a retry, someone else's to fix.
    Network,
    /// The machine's own set-up: which binary ran, versions, environment,
    /// permissions.
    Toolchain,
}

impl Blame {
    /// The verdict it gives: `failed_network`, `failed_toolchain`.
    pub fn verdict(self) -> &'static str {
        match self {
            Blame::Network => "failed_network",
            Blame::Toolchain => "failed_toolchain",
        }
    }
}

/// One finding code as documented: every code a rule emits has a row in
/// its signal's `codes.rs` (checked by `signal::tests`).
#[derive(Debug)]
pub struct CodeDoc {
    pub code: &'static str,
    /// The verdict it gives a failed command it explains.
    pub blame: Blame,
    /// The severities it is emitted with (most are one).
    pub severities: &'static [Severity],
    /// What it means, in one line (README's table of codes).
    pub means: &'static str,
}

/// A signal's share of the catalogue: its codes and its section of
/// docs/findings.md.
#[derive(Debug)]
pub struct SignalFindings {
    pub codes: &'static [CodeDoc],
    pub doc: &'static str,
}

/// Reports each key at most once per minute (bounded memory).
#[derive(Default)]
pub struct Dedup(HashMap<String, u64>);

impl Dedup {
    const WINDOW_NS: u64 = 60_000_000_000;

    /// True when `key` was not reported in the last minute before `now` (ns).
    pub fn first(&mut self, key: String, now: u64) -> bool {
        if self.0.len() > 10_000 {
            self.0
                .retain(|_, t| now.saturating_sub(*t) < Self::WINDOW_NS);
        }
        match self.0.get(&key) {
            Some(t) if now.saturating_sub(*t) < Self::WINDOW_NS => false,
            _ => {
                self.0.insert(key, now);
                true
            }
        }
    }
}

/// A diagnosis.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Stable code, e.g. `path.shadowed` (documented in docs/findings.md).
    pub code: &'static str,
    pub severity: Severity,
    /// The process it concerns.
    pub pid: u32,
    /// One line a person can act on.
    pub summary: String,
    /// The setting, file or observation that decided it, with its value and
    /// where it was set when knowable (`GOROOT=/usr/local/go in the
    /// environment`, `go 1.27 in /src/x/go.mod`).
    pub cause: String,
    /// One command or edit a person can run to fix it. Never applied by the agent.
    pub fix: String,
    /// Structured evidence.
    pub evidence: Map<String, Value>,
}

/// Evidence from `(key, value)` pairs.
pub fn evidence(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect()
}

/// `ENOENT`-style name of an errno.
pub fn errno_name(e: i32) -> String {
    match e {
        libc::ENOENT => "ENOENT".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENOEXEC => "ENOEXEC".into(),
        libc::EPERM => "EPERM".into(),
        libc::ENOTDIR => "ENOTDIR".into(),
        libc::E2BIG => "E2BIG".into(),
        libc::ETXTBSY => "ETXTBSY".into(),
        libc::ELOOP => "ELOOP".into(),
        libc::ENAMETOOLONG => "ENAMETOOLONG".into(),
        libc::EISDIR => "EISDIR".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EROFS => "EROFS".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::ECONNABORTED => "ECONNABORTED".into(),
        other => format!("errno {other}"),
    }
}

/// A finding as the sinks print it: always shown.
pub struct FindingRecord<'a> {
    pub finding: &'a Finding,
    pub ktime_ns: u64,
}

impl Record for FindingRecord<'_> {
    fn shown(&self, _all: bool, _json: bool) -> bool {
        true
    }
    fn text(&self, style: &Style) -> String {
        finding_text(style, self.finding, self.ktime_ns)
    }
    fn json(&self, style: &Style) -> String {
        json_line(&finding_json(style, self.finding, self.ktime_ns))
    }
    fn measure(&self, m: &dyn Meter) {
        let f = self.finding;
        m.add(
            &FINDINGS,
            1,
            &[("code", f.code), ("severity", f.severity.name())],
        );
    }
}

#[derive(Serialize)]
pub struct FindingJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    code: &'static str,
    severity: Severity,
    pid: u32,
    summary: &'a str,
    cause: &'a str,
    fix: &'a str,
    evidence: &'a serde_json::Map<String, serde_json::Value>,
}

pub fn finding_json<'a>(style: &Style, f: &'a Finding, ktime_ns: u64) -> FindingJson<'a> {
    FindingJson {
        kind: "finding",
        time: rfc3339(unix_ns(style, ktime_ns)),
        code: f.code,
        severity: f.severity,
        pid: f.pid,
        summary: &f.summary,
        cause: &f.cause,
        fix: &f.fix,
        evidence: &f.evidence,
    }
}

/// A finding for a person: its line, then what caused it and the fix.
pub fn finding_text(style: &Style, f: &Finding, ktime_ns: u64) -> String {
    let mut s = finding_head(style, f, ktime_ns);
    for (label, v) in [("cause", &f.cause), ("fix", &f.fix)] {
        if !v.is_empty() {
            s.push_str(&format!("\n{:19}{label}: {v}", ""));
        }
    }
    s
}

/// The finding's one line: time, severity, pid, code, summary.
pub fn finding_head(style: &Style, f: &Finding, ktime_ns: u64) -> String {
    let sev = match f.severity {
        Severity::Error => paint(style, "1;31", "error"),
        Severity::Warning => paint(style, "1;33", "warn "),
        Severity::Info => paint(style, "1;34", "info "),
    };
    format!(
        "{} {sev} {:>7} {} {}",
        clock(style, ktime_ns),
        f.pid,
        paint(style, "1", f.code),
        f.summary
    )
}
