//! The `agent trace` report: the verdict first (one line per distinct
//! problem, most severe first, each with its fix), then the process tree,
//! connections and every finding with cause, fix and evidence. As text for
//! a terminal, JSON for machines, Markdown for CI job summaries
//! (`$GITHUB_STEP_SUMMARY`).
//!
//! Owns: report layout in the three formats. Must not: decide findings.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::Arc,
};

use serde_json::{Value, json};

use crate::{
    events::{Exec, Exit, Tcp},
    finding::{Finding, Severity},
    pipeline::Output,
    render::Style,
    signal::exec::ExecAnalysis,
    signal::tcp::ConnReport,
    sink::output,
};

/// What `agent trace` keeps for its report, bounded as the process table
/// is: every output, except that a process's successful execs are its first
/// and its latest `MAX_EXECS - 1` (a process that re-execs itself 20,000
/// times is 16 execs in the report) and its failed ones the first
/// `MAX_FAILED`; the others are counted.
#[derive(Default)]
pub struct KeptOutputs {
    kept: Vec<Output>,
    /// Per process: where its first exec is in `kept`, and its later execs.
    later: HashMap<u32, (usize, std::collections::VecDeque<Output>)>,
    /// Failed execs kept per process.
    failed: HashMap<u32, usize>,
    /// Execs not kept.
    pub dropped: u64,
}

impl KeptOutputs {
    pub fn push(&mut self, o: Output) {
        if let Output::Exec { exec, .. } = &o
            && !exec.ok()
        {
            let n = self.failed.entry(exec.tgid).or_default();
            if *n >= crate::process::table::MAX_FAILED {
                self.dropped += 1;
                return;
            }
            *n += 1;
        } else if let Output::Exec { exec, .. } = &o {
            match self.later.get_mut(&exec.tgid) {
                None => {
                    self.later
                        .insert(exec.tgid, (self.kept.len(), Default::default()));
                }
                Some((_, ring)) => {
                    if ring.len() >= crate::process::table::MAX_EXECS - 1 {
                        ring.pop_front();
                        self.dropped += 1;
                    }
                    ring.push_back(o);
                    return;
                }
            }
        }
        self.kept.push(o);
    }

    /// Everything kept: each process's later execs follow the outputs, in
    /// the order of the processes' first execs.
    pub fn finish(self) -> Vec<Output> {
        let mut out = self.kept;
        let mut later: Vec<_> = self
            .later
            .into_values()
            .filter(|(_, r)| !r.is_empty())
            .collect();
        later.sort_by_key(|(i, _)| *i);
        for (_, ring) in later {
            out.extend(ring);
        }
        out
    }
}

/// What `agent trace` collected about one command tree.
#[derive(Debug, Default)]
pub struct TraceResult {
    pub root_pid: u32,
    pub exit_code: i32,
    /// Whether the network or the toolchain failed it (`crate::verdict`).
    pub judgement: crate::verdict::Judgement,
    pub outputs: Vec<Output>,
    pub lost: Value,
    /// Who the command ran as, and where its environment came from.
    pub run_as: Option<crate::process::invoker::Invoker>,
    /// A signal the agent received and handed to the command's group.
    pub interrupted_by: Option<i32>,
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGKILL => "SIGKILL",
        _ => "a signal",
    }
}

/// The `run_as` object of the JSON trace report.
pub fn run_as_json(i: &crate::process::invoker::Invoker) -> Value {
    json!({
        "user": i.user,
        "uid": i.uid,
        "gid": i.gid,
        "groups": i.groups,
        "source": i.source.name(),
        "environment": i.source.describe(),
    })
}

/// One distinct problem of the verdict.
pub struct Problem<'a> {
    pub finding: &'a Finding,
    /// Findings it stands for (same code and fix).
    pub count: usize,
}

/// Warnings and errors, one per (code, fix), most severe first, then in
/// the order they happened. Info findings are notes, not problems.
pub fn verdict<'a>(findings: &[&'a Finding]) -> Vec<Problem<'a>> {
    let mut out: Vec<Problem> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    for f in findings.iter().filter(|f| f.severity >= Severity::Warning) {
        match index.get(&(f.code, f.fix.as_str())) {
            Some(&i) => out[i].count += 1,
            None => {
                index.insert((f.code, f.fix.as_str()), out.len());
                out.push(Problem {
                    finding: f,
                    count: 1,
                });
            }
        }
    }
    // Stable: equal severities keep their order.
    out.sort_by_key(|p| std::cmp::Reverse(p.finding.severity));
    out
}

/// What the report is built from, gathered once.
struct Gathered<'a> {
    execs: BTreeMap<u32, Vec<(&'a Arc<Exec>, &'a ExecAnalysis)>>,
    exits: BTreeMap<u32, (&'a Exit, Option<u64>)>,
    children: BTreeMap<u32, Vec<u32>>,
    roots: Vec<u32>,
    findings: Vec<&'a Finding>,
    conns: Vec<(&'a Tcp, &'a ConnReport)>,
}

impl<'a> Gathered<'a> {
    fn of(r: &'a TraceResult) -> Self {
        let mut execs: BTreeMap<u32, Vec<(&Arc<Exec>, &ExecAnalysis)>> = BTreeMap::new();
        let mut exits = BTreeMap::new();
        let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
        let mut findings = Vec::new();
        let mut conns = Vec::new();
        for o in &r.outputs {
            match o {
                Output::Exec { exec, analysis } if exec.ok() => {
                    parent.entry(exec.tgid).or_insert(exec.ppid);
                    execs.entry(exec.tgid).or_default().push((exec, analysis));
                }
                Output::Exit {
                    exit, duration_ns, ..
                } => {
                    exits.insert(exit.tgid, (exit, *duration_ns));
                }
                Output::Finding { finding, .. } => findings.push(finding),
                Output::Tcp { tcp, report, .. } => conns.push((tcp.as_ref(), report.as_ref())),
                _ => {}
            }
        }
        // Children by parent, built once: the walk is linear in processes.
        let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut roots = Vec::new();
        for (&pid, &pp) in &parent {
            if execs.contains_key(&pp) && pp != pid {
                children.entry(pp).or_default().push(pid);
            } else {
                roots.push(pid);
            }
        }
        Gathered {
            execs,
            exits,
            children,
            roots,
            findings,
            conns,
        }
    }

    /// The verdict's problems, and how many info notes there are besides.
    fn verdict(&self) -> (Vec<Problem<'a>>, usize) {
        let notes = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Info)
            .count();
        (verdict(&self.findings), notes)
    }

    /// The process tree, one line per exec and one per exit, indented.
    fn tree_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // Iterative depth-first walk (a deep tree must not overflow the stack).
        let mut stack: Vec<(u32, usize)> = self.roots.iter().rev().map(|&p| (p, 0)).collect();
        while let Some((pid, depth)) = stack.pop() {
            if !seen.insert(pid) {
                continue;
            }
            let indent = 2 + depth.min(32) * 2;
            for (e, a) in self.execs.get(&pid).into_iter().flatten() {
                let id = a.label();
                let id = if id.is_empty() {
                    String::new()
                } else {
                    format!(" [{id}]")
                };
                let cmd: Vec<String> = crate::scrub::argv(&e.argv);
                lines.push(format!(
                    "{:indent$}{pid} {} → {}{id}",
                    "",
                    cmd.join(" "),
                    e.exe
                ));
            }
            if let Some((x, d)) = self.exits.get(&pid) {
                let how = match (x.status(), x.signal()) {
                    (Some(c), _) => format!("exit {c}"),
                    (None, Some(sig)) => format!("signal {sig}"),
                    _ => "exit ?".into(),
                };
                lines.push(format!(
                    "{:indent$}  {how}{}",
                    "",
                    d.map(|d| format!(" after {:.3}s", d as f64 / 1e9))
                        .unwrap_or_default(),
                ));
            }
            for &k in self.children.get(&pid).into_iter().flatten().rev() {
                stack.push((k, depth + 1));
            }
        }
        lines
    }
}

/// `agent trace: `cmd` ran as u (uid 1000) and exited 1 (3 processes)`.
fn headline(r: &TraceResult, argv: &[String], processes: usize) -> String {
    let who = match &r.run_as {
        Some(i) if i.uid == 0 => " ran as root and".to_string(),
        Some(i) => format!(" ran as {} (uid {}) and", i.user, i.uid),
        None => String::new(),
    };
    let interrupted = r
        .interrupted_by
        .map(|sig| format!(", after the agent handed it {}", signal_name(sig)))
        .unwrap_or_default();
    format!(
        "agent trace: `{}`{who} exited {}{interrupted} ({processes} process{})",
        crate::scrub::argv(argv).join(" "),
        r.exit_code,
        if processes == 1 { "" } else { "es" }
    )
}

fn verdict_line(problems: &[Problem], notes: usize) -> String {
    let notes = match notes {
        0 => String::new(),
        1 => " (1 note below)".into(),
        n => format!(" ({n} notes below)"),
    };
    match problems.len() {
        0 => format!("no problems found{notes}"),
        1 => format!("1 problem{notes}"),
        n => format!("{n} problems{notes}"),
    }
}

fn times(count: usize) -> String {
    if count > 1 {
        format!(" (×{count})")
    } else {
        String::new()
    }
}

/// The human report.
pub fn text(style: &Style, r: &TraceResult, argv: &[String]) -> String {
    let g = Gathered::of(r);
    let mut s = String::new();
    let _ = writeln!(s, "\n{}", headline(r, argv, g.execs.len()));
    let (problems, notes) = g.verdict();
    let _ = writeln!(
        s,
        "verdict: {}; {}",
        r.judgement.line(),
        verdict_line(&problems, notes)
    );
    for p in &problems {
        let f = p.finding;
        let _ = writeln!(
            s,
            "  {:<7} {}  {}{}",
            f.severity.name(),
            f.code,
            f.summary,
            times(p.count)
        );
        if !f.fix.is_empty() {
            let _ = writeln!(s, "          fix: {}", f.fix);
        }
    }
    if let Some(i) = &r.run_as {
        let _ = writeln!(s, "environment: {}", i.source.describe());
    }
    let _ = writeln!(s, "process tree:");
    for l in g.tree_lines() {
        let _ = writeln!(s, "{l}");
    }
    if !g.conns.is_empty() {
        let _ = writeln!(s, "connections:");
        let plain = Style {
            color: false,
            ..*style
        };
        for (t, rep) in &g.conns {
            let line = crate::signal::tcp::render::tcp_text(&plain, t, rep);
            let _ = writeln!(s, "  {}", line.split_once(' ').map(|x| x.1).unwrap_or(""));
        }
    }
    if g.findings.is_empty() {
        let _ = writeln!(s, "findings: none");
    } else {
        let _ = writeln!(s, "findings:");
        for f in &g.findings {
            let head = crate::finding::finding_head(style, f, 0);
            let _ = writeln!(s, "  {}", head.split_once(' ').map(|x| x.1).unwrap_or(""));
            for (k, v) in [("cause", &f.cause), ("fix", &f.fix)] {
                if !v.is_empty() {
                    let _ = writeln!(s, "      {k}: {v}");
                }
            }
            for (k, v) in &f.evidence {
                let v = match v {
                    Value::String(x) => x.clone(),
                    other => other.to_string(),
                };
                let _ = writeln!(s, "      {k}: {v}");
            }
        }
    }
    let _ = writeln!(
        s,
        "events: {} received, lost: {}",
        r.lost["events_received"], r.lost["lost"]
    );
    s
}

/// The JSON `trace_report` record.
pub fn json(style: &Style, r: &TraceResult, argv: &[String]) -> Value {
    let findings: Vec<&Finding> = r
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Finding { finding, .. } => Some(finding),
            _ => None,
        })
        .collect();
    let all: Vec<Value> = r
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Finding { finding, ktime_ns } => {
                serde_json::to_value(crate::finding::finding_json(style, finding, *ktime_ns)).ok()
            }
            _ => None,
        })
        .collect();
    let problems: Vec<Value> = verdict(&findings)
        .iter()
        .map(|p| {
            json!({
                "severity": p.finding.severity,
                "code": p.finding.code,
                "summary": p.finding.summary,
                "cause": p.finding.cause,
                "fix": p.finding.fix,
                "count": p.count,
            })
        })
        .collect();
    json!({
        "type": "trace_report",
        "command": crate::scrub::argv(argv),
        "pid": r.root_pid,
        "exit_code": r.exit_code,
        "run_as": r.run_as.as_ref().map(run_as_json),
        "interrupted_by": r.interrupted_by.map(signal_name),
        "verdict": r.judgement.verdict,
        "also": r.judgement.also(),
        "causes": r.judgement.json(r.exit_code)["causes"],
        "problems": problems,
        "findings": all,
        "stats": r.lost,
    })
}

/// Markdown for text that is data: every character Markdown or HTML would
/// act on is escaped, so a command line cannot add links, images or markup
/// to a job summary.
pub fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '!' | '~' | '&' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Data inside a `~~~~` fence: the fence itself cannot be closed early.
fn fenced(s: &str) -> String {
    s.replace("~~~", "~ ~ ~")
}

/// The report as Markdown (GitHub-flavoured), for `$GITHUB_STEP_SUMMARY`.
pub fn markdown(r: &TraceResult, argv: &[String]) -> String {
    let g = Gathered::of(r);
    let mut s = String::new();
    let (problems, notes) = g.verdict();
    let _ = writeln!(s, "### {}\n", md_escape(&headline(r, argv, g.execs.len())));
    let _ = writeln!(
        s,
        "**Verdict:** {}; {}\n",
        md_escape(&r.judgement.line()),
        verdict_line(&problems, notes)
    );
    for p in &problems {
        let f = p.finding;
        let mark = if f.severity == Severity::Error {
            "🔴"
        } else {
            "🟡"
        };
        let _ = writeln!(
            s,
            "- {mark} **{}** {}: {}{}",
            f.severity.name(),
            md_escape(f.code),
            md_escape(&f.summary),
            times(p.count)
        );
        if !f.fix.is_empty() {
            let _ = writeln!(s, "  - fix: {}", md_escape(&f.fix));
        }
    }
    if let Some(i) = &r.run_as {
        let _ = writeln!(s, "\nEnvironment: {}", md_escape(&i.source.describe()));
    }
    let _ = writeln!(s, "\n<details><summary>Process tree</summary>\n\n~~~~text");
    for l in g.tree_lines() {
        let _ = writeln!(s, "{}", fenced(&output::text_safe(&l)));
    }
    let _ = writeln!(s, "~~~~\n\n</details>");
    if !g.findings.is_empty() {
        let _ = writeln!(s, "\n#### Findings\n");
        for f in &g.findings {
            let _ = writeln!(
                s,
                "- **{}** ({}): {}",
                md_escape(f.code),
                f.severity.name(),
                md_escape(&f.summary)
            );
            for (k, v) in [("cause", &f.cause), ("fix", &f.fix)] {
                if !v.is_empty() {
                    let _ = writeln!(s, "  - {k}: {}", md_escape(v));
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "\n<sub>events: {} received, lost: {}</sub>",
        r.lost["events_received"],
        md_escape(&r.lost["lost"].to_string())
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(code: &'static str, severity: Severity, fix: &str) -> Finding {
        Finding {
            code,
            severity,
            pid: 1,
            summary: format!("{code} happened"),
            cause: "because".into(),
            fix: fix.into(),
            evidence: Default::default(),
        }
    }

    /// A process that re-execs itself 20,000 times is its first and latest
    /// 15 execs in the report, after everything else, in order.
    #[test]
    fn the_report_keeps_a_re_exec_loop_bounded() {
        let exec_out = |tgid: u32, n: u64| Output::Exec {
            exec: std::sync::Arc::new(crate::process::table::tests_support::exec(
                tgid,
                1,
                n,
                &format!("/bin/x{n}"),
            )),
            analysis: Box::default(),
        };
        let mut k = KeptOutputs::default();
        // Failed attempts (a PATH search) neither count nor push out the
        // successful execs.
        for n in 0..100 {
            let mut e = crate::process::table::tests_support::exec(7, 1, n, "/nope/x");
            e.errno = 2;
            k.push(Output::Exec {
                exec: std::sync::Arc::new(e),
                analysis: Box::default(),
            });
        }
        k.push(exec_out(5, 0));
        for n in 1..20_000 {
            k.push(exec_out(7, n));
        }
        k.push(exec_out(9, 30_000));
        assert_eq!(k.dropped, 20_000 - 1 - 16 + 100 - 64);
        let out = k.finish();
        let names: Vec<String> = out
            .iter()
            .filter_map(|o| match o {
                Output::Exec { exec, .. } if exec.ok() => Some(exec.exe.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(out.len(), 64 + 3 + 15);
        assert_eq!(names.len(), 3 + 15);
        assert_eq!(&names[..3], ["/bin/x0", "/bin/x1", "/bin/x30000"]);
        assert_eq!(names[3], "/bin/x19985");
        assert_eq!(names[17], "/bin/x19999");
    }

    #[test]
    fn verdict_is_problems_most_severe_first_once_each() {
        let a = f("path.shadowed", Severity::Warning, "export PATH=/a:$PATH");
        let b = f("net.connect_timeout", Severity::Error, "check");
        let c = f("go.toolchain_switch", Severity::Info, "x");
        let d = f("path.shadowed", Severity::Warning, "export PATH=/a:$PATH");
        let e = f("env.diverged", Severity::Warning, "export X=1");
        let v = verdict(&[&a, &b, &c, &d, &e]);
        let got: Vec<(&str, usize)> = v.iter().map(|p| (p.finding.code, p.count)).collect();
        assert_eq!(
            got,
            vec![
                ("net.connect_timeout", 1),
                ("path.shadowed", 2),
                ("env.diverged", 1)
            ]
        );
        assert_eq!(verdict_line(&v, 1), "3 problems (1 note below)");
        assert_eq!(verdict_line(&[], 0), "no problems found");
    }

    #[test]
    fn markdown_escapes_data() {
        assert_eq!(
            md_escape("`go` ![x](http://e/p.png) <img> a|b\nc"),
            "\\`go\\` \\!\\[x\\](http://e/p.png) \\<img\\> a\\|b c"
        );
        assert_eq!(fenced("a ~~~~ b"), "a ~ ~ ~~ b");
    }

    /// A report rendered from a real pipeline result: verdict first, fix
    /// lines, the tree in a fence, nothing unescaped from argv.
    #[test]
    fn markdown_report_renders() {
        let r = TraceResult {
            root_pid: 7,
            exit_code: 1,
            outputs: vec![
                Output::Finding {
                    finding: f("net.connect_refused", Severity::Error, "start it"),
                    ktime_ns: 1,
                },
                Output::Finding {
                    finding: f("go.toolchain_switch", Severity::Info, "x"),
                    ktime_ns: 2,
                },
            ],
            lost: json!({"events_received": 3, "lost": {}}),
            run_as: None,
            interrupted_by: None,
            ..Default::default()
        };
        let r = TraceResult {
            judgement: crate::verdict::judge(&r.outputs, 1, 1, &Default::default()),
            ..r
        };
        let md = markdown(&r, &["go".into(), "get".into(), "[x](y)".into()]);
        let lines: Vec<&str> = md.lines().collect();
        assert!(
            lines[0].starts_with("### agent trace: \\`go get \\[x\\](y)\\`"),
            "{md}"
        );
        assert_eq!(
            lines[2],
            "**Verdict:** failed\\_network (net.connect\\_refused); 1 problem (1 note below)"
        );
        assert!(
            lines[4].starts_with("- 🔴 **error** net.connect\\_refused: "),
            "{md}"
        );
        assert_eq!(lines[5], "  - fix: start it");
        assert!(md.contains("~~~~text\n~~~~"), "{md}");
        assert!(md.contains("#### Findings"), "{md}");
        let text = text(
            &Style {
                format: crate::render::Format::Text,
                color: false,
                clock_offset_ns: 0,
            },
            &r,
            &["go".into()],
        );
        let t: Vec<&str> = text.lines().collect();
        assert_eq!(
            t[2],
            "verdict: failed_network (net.connect_refused); 1 problem (1 note below)"
        );
        assert!(
            t[3].starts_with("  error   net.connect_refused  "),
            "{text}"
        );
        assert_eq!(t[4], "          fix: start it");
    }
}
