//! How exec and exit records read: a line that keeps the resolved binary
//! visible, or a JSON object (`exec`, `exec_failed`, `exit`).

use serde::Serialize;

use super::ExecAnalysis;
use crate::{
    events::{Exec, Exit},
    finding::errno_name,
    process::fsview::basename,
    render::{
        Meter, Metric, MetricKind, Record, Style, WIDTH, clock, fit, json_line, metric, paint,
        rfc3339, unix_ns, visible_len,
    },
};

pub const EXEC_COUNT: Metric = metric("agent.exec.count", "{exec}", MetricKind::Counter);
pub const EXEC_FAILURES: Metric = metric("agent.exec.failures", "{exec}", MetricKind::Counter);
pub const PROCESS_DURATION: Metric = metric("agent.process.duration", "s", MetricKind::Histogram);
/// The exec signal's metrics.
pub const METRICS: &[Metric] = &[EXEC_COUNT, EXEC_FAILURES, PROCESS_DURATION];

/// A bounded toolchain label for metrics.
pub fn toolchain_kind(exe: &str) -> &'static str {
    let b = basename(exe);
    if b == "go" || b.starts_with("go1.") || b == "gofmt" || b == "gopls" {
        "go"
    } else if b.starts_with("python") || b.starts_with("pip") {
        "python"
    } else if matches!(b, "conda" | "mamba" | "micromamba") {
        "conda"
    } else {
        "other"
    }
}

/// An exec as the sinks print it, with what its analysis found.
pub struct ExecRecord<'a> {
    pub exec: &'a Exec,
    pub analysis: Option<&'a ExecAnalysis>,
}

impl Record for ExecRecord<'_> {
    fn shown(&self, all: bool, json: bool) -> bool {
        if self.exec.ok() {
            all || self.analysis.is_some_and(|a| a.analysed)
        } else {
            // Failed attempts are only noise in live text.
            all || json
        }
    }
    fn text(&self, style: &Style) -> String {
        exec_text(style, self.exec, self.analysis)
    }
    fn json(&self, style: &Style) -> String {
        json_line(&exec_json(style, self.exec, self.analysis))
    }
    fn measure(&self, m: &dyn Meter) {
        let e = self.exec;
        let kind = if e.ok() {
            toolchain_kind(&e.exe)
        } else {
            "other"
        };
        let analysed = self.analysis.is_some_and(|a| a.analysed);
        m.add(
            &EXEC_COUNT,
            1,
            &[
                ("toolchain", kind),
                ("outcome", if e.ok() { "ok" } else { "failed" }),
                ("analysed", if analysed { "true" } else { "false" }),
            ],
        );
        if !e.ok() {
            m.add(&EXEC_FAILURES, 1, &[("errno", &errno_name(e.errno))]);
        }
    }
}

/// An exit as the sinks print it.
pub struct ExitRecord<'a> {
    pub exit: &'a Exit,
    /// The process's name (its exec's binary, or its comm).
    pub name: &'a str,
    pub duration_ns: Option<u64>,
    /// The process was analysed (toolchain or descendant).
    pub analysed: bool,
}

impl Record for ExitRecord<'_> {
    fn shown(&self, all: bool, _json: bool) -> bool {
        all || self.analysed
    }
    fn text(&self, style: &Style) -> String {
        exit_text(style, self.exit, self.name, self.duration_ns)
    }
    fn json(&self, style: &Style) -> String {
        json_line(&exit_json(style, self.exit, self.duration_ns))
    }
    fn measure(&self, m: &dyn Meter) {
        if let (Some(d), true) = (self.duration_ns, self.analysed) {
            let kind = toolchain_kind(self.name);
            m.record(&PROCESS_DURATION, d as f64 / 1e9, &[("toolchain", kind)]);
        }
    }
}

/// The allow-listed environment as a JSON object: the first of each name
/// (as `getenv` reads it), each value through the scrubber for its name.
pub struct EnvJson<'a>(&'a Exec);

impl Serialize for EnvJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let env = &self.0.env;
        let mut m = s.serialize_map(None)?;
        for (i, (k, v)) in env.iter().enumerate() {
            if env[..i].iter().any(|(seen, _)| seen == k) {
                continue;
            }
            m.serialize_entry(k, &crate::scrub::env_value(k, v))?;
        }
        m.end()
    }
}

/// An `exec` or `exec_failed` record; what the analysis found when it ran.
#[derive(Serialize)]
pub struct ExecJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    pid: u32,
    tid: u32,
    ppid: u32,
    uid: u32,
    gid: u32,
    cgroup_id: u64,
    filename: &'a str,
    exe: &'a str,
    argv: Vec<String>,
    env: EnvJson<'a>,
    caller_comm: &'a str,
    argv_truncated: bool,
    env_truncated: bool,
    env_read: bool,
    filename_truncated: bool,
    entry_missed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    analysis: Option<AnalysisJson<'a>>,
}

#[derive(Serialize)]
struct AnalysisJson<'a> {
    identity: &'a super::Identity,
    toolchain: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<&'a str>,
    #[serde(skip_serializing_if = "crate::process::k8s::PodInfo::is_empty")]
    pod: &'a crate::process::k8s::PodInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    shim: Option<&'a super::shims::Shim>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    shadows: &'a [super::Shadowed],
}

pub fn exec_json<'a>(style: &Style, e: &'a Exec, a: Option<&'a ExecAnalysis>) -> ExecJson<'a> {
    ExecJson {
        kind: if e.ok() { "exec" } else { "exec_failed" },
        time: rfc3339(unix_ns(style, e.ktime_ns)),
        pid: e.tgid,
        tid: e.pid,
        ppid: e.ppid,
        uid: e.uid,
        gid: e.gid,
        cgroup_id: e.cgroup_id,
        filename: &e.filename,
        exe: &e.exe,
        argv: crate::scrub::argv(&e.argv),
        env: EnvJson(e),
        caller_comm: &e.comm,
        argv_truncated: e.argv_truncated,
        env_truncated: e.env_truncated,
        env_read: e.env_read,
        filename_truncated: e.filename_truncated,
        entry_missed: e.no_enter,
        errno: (!e.ok()).then(|| errno_name(e.errno)),
        analysis: a.filter(|a| a.analysed).map(|a| AnalysisJson {
            identity: &a.identity,
            toolchain: a.toolchain,
            cwd: a.cwd.as_deref(),
            pod: &a.pod,
            shim: a.shim.as_ref(),
            shadows: &a.shadows,
        }),
    }
}

pub fn exec_text(style: &Style, e: &Exec, a: Option<&ExecAnalysis>) -> String {
    let args: Vec<String> = crate::scrub::argv(&e.argv);
    let mut cmd = args.join(" ");
    if e.argv_truncated {
        cmd.push_str(" …[argv truncated]");
    }
    if e.no_enter {
        cmd = "(arguments missed)".into();
    }
    let (tag, tail) = if e.ok() {
        let id = a.map(ExecAnalysis::label).unwrap_or_default();
        let id = if id.is_empty() {
            String::new()
        } else {
            format!(" [{id}]")
        };
        (paint(style, "36", "exec "), format!("→ {}{id}", e.exe))
    } else {
        (
            paint(style, "33", "fail "),
            format!("{} {}", errno_name(e.errno), e.filename),
        )
    };
    let head = format!("{} {tag} {:>7} ", clock(style, e.ktime_ns), e.tgid);
    // Keep the resolved binary visible: cut the command first.
    let room = WIDTH
        .saturating_sub(visible_len(&head) + tail.chars().count() + 2)
        .max(12);
    fit(
        format!("{head}{}  {tail}", fit(cmd, room)),
        WIDTH + (head.len() - visible_len(&head)),
    )
}

#[derive(Serialize)]
pub struct ExitJson {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    pid: u32,
    exit_code: Option<i32>,
    signal: Option<i32>,
    duration_ms: Option<f64>,
}

pub fn exit_json(style: &Style, x: &Exit, duration_ns: Option<u64>) -> ExitJson {
    ExitJson {
        kind: "exit",
        time: rfc3339(unix_ns(style, x.ktime_ns)),
        pid: x.tgid,
        exit_code: x.status(),
        signal: x.signal(),
        duration_ms: duration_ns.map(|d| d as f64 / 1e6),
    }
}

pub fn exit_text(style: &Style, x: &Exit, name: &str, duration_ns: Option<u64>) -> String {
    let how = match (x.status(), x.signal()) {
        (Some(0), _) => "exit 0".to_string(),
        (Some(c), _) => paint(style, "31", &format!("exit {c}")),
        (None, Some(s)) => paint(style, "31", &format!("killed by signal {s}")),
        _ => "exit ?".into(),
    };
    let dur = duration_ns
        .map(|d| format!(" after {:.3}s", d as f64 / 1e9))
        .unwrap_or_default();
    fit(
        format!(
            "{} exit  {:>7} {name} {how}{dur}",
            clock(style, x.ktime_ns),
            x.tgid
        ),
        WIDTH + 16,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::Format;

    #[test]
    fn toolchain_labels_are_bounded() {
        assert_eq!(toolchain_kind("/usr/lib/go-1.19/bin/go"), "go");
        assert_eq!(toolchain_kind("/x/bin/go1.22.0"), "go");
        assert_eq!(toolchain_kind("/opt/conda/bin/python3.11"), "python");
        assert_eq!(toolchain_kind("/usr/bin/make"), "other");
    }

    #[test]
    fn lines_fit_and_secrets_do_not_leak() {
        let style = Style {
            format: Format::Text,
            color: false,
            clock_offset_ns: 0,
        };
        let mut e = crate::events::decode(&crate::events::tests::exec_record(
            "/usr/bin/curl",
            "/usr/bin/curl",
            &["curl", "-x", "http://u:secret@proxy:3128", &"a".repeat(300)],
            &["HTTPS_PROXY=http://u:secret@proxy:3128"],
            0,
        ))
        .map(|ev| match ev {
            crate::events::Event::Exec(e) => *e,
            _ => unreachable!(),
        })
        .unwrap();
        let line = exec_text(&style, &e, None);
        assert!(line.chars().count() <= WIDTH, "{}", line.chars().count());
        assert!(!line.contains("secret"));
        let j = json_line(&exec_json(&style, &e, None));
        assert!(!j.contains("secret"), "{j}");
        assert!(j.starts_with("{\"type\":\"exec\""), "{j}");
        e.errno = 2;
        assert!(exec_text(&style, &e, None).contains("ENOENT"));
    }
}
