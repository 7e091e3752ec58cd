//! One record per exec, exit, connection, handshake, lookup and finding:
//! a line of text that fits 120 columns, or a JSON object with `"type"`
//! first; and which outputs are shown at all ([`render`]).
//!
//! Owns: the shape of each record. Must not: write (see `output`).

use serde::Serialize;

use super::output::{
    ESC_MARK, Format, Style, WIDTH, clock, fit, json_line, paint, rfc3339, unix_ns,
};
use crate::{
    events::{Exec, Exit, Tcp},
    finding::{Finding, Severity, errno_name},
    pipeline::Output,
    signal::exec::ExecAnalysis,
    signal::tcp::{ConnReport, Outcome},
};

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
    identity: &'a crate::signal::exec::Identity,
    toolchain: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<&'a str>,
    #[serde(skip_serializing_if = "crate::process::k8s::PodInfo::is_empty")]
    pod: &'a crate::process::k8s::PodInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    shim: Option<&'a crate::signal::exec::shims::Shim>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    shadows: &'a [crate::signal::exec::Shadowed],
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

fn visible_len(s: &str) -> usize {
    // Length without ANSI colour sequences.
    let mut n = 0;
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, ESC_MARK) => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
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

#[derive(Serialize)]
pub struct TcpJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    pid: u32,
    tid: u32,
    uid: u32,
    comm: &'a str,
    exe: Option<&'a str>,
    outcome: &'a Outcome,
    error: Option<String>,
    source: std::net::SocketAddr,
    destination: std::net::SocketAddr,
    network_type: &'static str,
    netns: u32,
    cgroup_id: u64,
    duration_ms: Option<f64>,
    syn_retransmits: u32,
    start_missed: bool,
    proxy: &'a Option<crate::signal::tcp::ProxyInForce>,
}

pub fn tcp_json<'a>(style: &Style, t: &'a Tcp, r: &'a ConnReport) -> TcpJson<'a> {
    TcpJson {
        kind: "tcp_connect",
        time: rfc3339(unix_ns(style, t.ktime_ns)),
        pid: t.tgid,
        tid: t.pid,
        uid: t.uid,
        comm: &t.comm,
        exe: r.exe.as_deref(),
        outcome: &r.outcome,
        error: (t.err > 0).then(|| errno_name(t.err)),
        source: std::net::SocketAddr::new(t.src, t.sport),
        destination: std::net::SocketAddr::new(t.dst, t.dport),
        network_type: if t.dst.is_ipv4() { "ipv4" } else { "ipv6" },
        netns: t.netns,
        cgroup_id: t.cgroup_id,
        duration_ms: t.duration_ns().map(|d| d as f64 / 1e6),
        syn_retransmits: t.syn_retrans,
        start_missed: t.no_start,
        proxy: &r.proxy,
    }
}

pub fn tcp_text(style: &Style, t: &Tcp, r: &ConnReport) -> String {
    let name = r
        .exe
        .as_deref()
        .map(crate::process::fsview::basename)
        .unwrap_or(t.comm.as_str());
    let how = match r.outcome {
        Outcome::Established => paint(style, "32", "connected"),
        Outcome::Cancelled => "cancelled".into(),
        other => paint(style, "31", other.name()),
    };
    let dur = t
        .duration_ns()
        .map(|d| format!(" in {:.1} ms", d as f64 / 1e6))
        .unwrap_or_default();
    let retrans = if t.syn_retrans > 0 {
        format!(
            ", {} SYN retransmit{}",
            t.syn_retrans,
            if t.syn_retrans == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    format!(
        "{} tcp   {:>7} {name} → {} {how}{dur}{retrans}",
        clock(style, t.ktime_ns),
        t.tgid,
        std::net::SocketAddr::new(t.dst, t.dport)
    )
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

#[derive(Serialize)]
pub struct TlsJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    pid: u32,
    comm: &'a str,
    exe: Option<&'a str>,
    local_side: &'a agent_parse::tls::Side,
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
    sni: Option<&'a str>,
    offered_versions: &'a [String],
    version: Option<&'a str>,
    cipher_suite: Option<String>,
    /// Its IANA name.
    cipher: Option<String>,
    alpn: &'a [String],
    verdict: &'a agent_parse::tls::Verdict,
    library: LibraryJson<'a>,
    duration_ms: f64,
}

/// What the TLS library said, by note key.
struct LibraryJson<'a>(&'a [crate::signal::tls::LibNote]);

impl Serialize for LibraryJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|n| (n.key(), n.text())))
    }
}

pub fn tls_json<'a>(style: &Style, r: &'a crate::signal::tls::TlsReport) -> TlsJson<'a> {
    TlsJson {
        kind: "tls_handshake",
        time: rfc3339(unix_ns(style, r.end_ns)),
        pid: r.owner.pid,
        comm: &r.owner.comm,
        exe: r.owner.exe.as_deref(),
        local_side: &r.local,
        client: r.client,
        server: r.server,
        sni: r.sni.as_deref(),
        offered_versions: &r.offered,
        version: r.version.as_deref(),
        cipher_suite: r.cipher_suite.map(|c| format!("0x{c:04x}")),
        cipher: r.cipher_suite.map(crate::signal::tls::cipher_name),
        alpn: &r.alpn,
        verdict: &r.verdict,
        library: LibraryJson(&r.library),
        duration_ms: r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6,
    }
}

pub fn tls_text(style: &Style, r: &crate::signal::tls::TlsReport) -> String {
    use agent_parse::tls::Verdict;
    let how = match &r.verdict {
        Verdict::Completed => paint(style, "32", "ok"),
        Verdict::Alert { alert } => paint(
            style,
            "31",
            &format!(
                "{} alert {}",
                alert.from.name(),
                agent_parse::tls::alert_name(alert.description)
            ),
        ),
        Verdict::EncryptedAlert { from } => {
            paint(style, "31", &format!("{} encrypted alert", from.name()))
        }
        Verdict::Closed { by, reset } => paint(
            style,
            "31",
            &format!("{} {}", by.name(), if *reset { "reset" } else { "closed" }),
        ),
        Verdict::NotTls { from } => paint(style, "31", &format!("{} not TLS", from.name())),
    };
    format!(
        "{} tls   {:>7} {} → {}{} {} {how} in {:.1} ms",
        clock(style, r.end_ns),
        r.owner.pid,
        r.owner.name(),
        r.server,
        r.sni
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default(),
        r.version.as_deref().unwrap_or("-"),
        r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6
    )
}

#[derive(Serialize)]
pub struct DnsJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    pid: u32,
    comm: &'a str,
    exe: Option<&'a str>,
    name: &'a str,
    qtype: &'a str,
    resolver: std::net::SocketAddr,
    transport: &'static str,
    rcode: Option<&'a str>,
    addresses: &'a [std::net::IpAddr],
    attempts: u32,
    timed_out: bool,
    duration_ms: f64,
}

pub fn dns_json<'a>(style: &Style, r: &'a crate::signal::dns::DnsReport) -> DnsJson<'a> {
    DnsJson {
        kind: "dns_lookup",
        time: rfc3339(unix_ns(style, r.end_ns)),
        pid: r.owner.pid,
        comm: &r.owner.comm,
        exe: r.owner.exe.as_deref(),
        name: &r.name,
        qtype: &r.qtype,
        resolver: r.server,
        transport: if r.tcp { "tcp" } else { "udp" },
        rcode: r.rcode.as_deref(),
        addresses: &r.addresses,
        attempts: r.attempts,
        timed_out: r.timed_out,
        duration_ms: r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6,
    }
}

pub fn dns_text(style: &Style, r: &crate::signal::dns::DnsReport) -> String {
    let how = match (&r.rcode, r.timed_out) {
        (_, true) => paint(style, "31", "no answer"),
        (Some(c), _) if c == "NOERROR" => {
            let a: Vec<String> = r.addresses.iter().map(|a| a.to_string()).collect();
            if a.is_empty() {
                "no records".into()
            } else {
                paint(style, "32", &a.join(" "))
            }
        }
        (Some(c), _) => paint(style, "31", c),
        _ => "?".into(),
    };
    format!(
        "{} dns   {:>7} {} {} {} @{} → {how} in {:.1} ms",
        clock(style, r.end_ns),
        r.owner.pid,
        r.owner.name(),
        r.qtype,
        r.name,
        r.server,
        r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6
    )
}

/// The line `o` makes, or `None` when it is not shown (outside toolchains
/// without `--all-execs`, and no finding).
pub fn render(style: &Style, o: &Output, all_execs: bool) -> Option<String> {
    let json = style.format == Format::Json;
    match o {
        Output::Exec { exec, analysis } => {
            if !(all_execs || analysis.analysed || !exec.ok()) {
                return None;
            }
            // Failed attempts outside toolchains are only noise in live text.
            if !exec.ok() && !all_execs && !json {
                return None;
            }
            Some(if json {
                json_line(&exec_json(style, exec, Some(analysis)))
            } else {
                exec_text(style, exec, Some(analysis))
            })
        }
        Output::Exit {
            exit,
            name,
            duration_ns,
            analysed,
        } => {
            if !(all_execs || *analysed) {
                return None;
            }
            Some(if json {
                json_line(&exit_json(style, exit, *duration_ns))
            } else {
                exit_text(style, exit, name, *duration_ns)
            })
        }
        Output::Finding { finding, ktime_ns } => Some(if json {
            json_line(&finding_json(style, finding, *ktime_ns))
        } else {
            finding_text(style, finding, *ktime_ns)
        }),
        Output::Tcp {
            tcp,
            report,
            analysed,
        } => {
            if !(all_execs || *analysed || !report.findings.is_empty()) {
                return None;
            }
            Some(if json {
                json_line(&tcp_json(style, tcp, report))
            } else {
                tcp_text(style, tcp, report)
            })
        }
        Output::Tls { report, analysed } => {
            if !(all_execs || *analysed || !report.findings.is_empty()) {
                return None;
            }
            Some(if json {
                json_line(&tls_json(style, report))
            } else {
                tls_text(style, report)
            })
        }
        Output::Dns { report, analysed } => {
            if !(all_execs || *analysed || !report.findings.is_empty()) {
                return None;
            }
            Some(if json {
                json_line(&dns_json(style, report))
            } else {
                dns_text(style, report)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::output::{Format, WIDTH};

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
