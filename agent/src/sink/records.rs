//! One record per exec, exit, connection, handshake, lookup and finding:
//! a line of text that fits 120 columns, or a JSON object with `"type"`
//! first; and which outputs are shown at all ([`render`]).
//!
//! Owns: the shape of each record. Must not: write (see `output`).

use serde_json::{Map, Value, json};

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

pub fn env_json(e: &Exec) -> Value {
    let mut m = Map::new();
    for (k, v) in &e.env {
        m.entry(k.clone())
            .or_insert_with(|| json!(crate::scrub::env_value(k, v)));
    }
    Value::Object(m)
}

pub fn exec_json(style: &Style, e: &Exec, a: Option<&ExecAnalysis>) -> Value {
    let mut v = json!({
        "type": if e.ok() { "exec" } else { "exec_failed" },
        "time": rfc3339(unix_ns(style, e.ktime_ns)),
        "pid": e.tgid,
        "tid": e.pid,
        "ppid": e.ppid,
        "uid": e.uid,
        "gid": e.gid,
        "cgroup_id": e.cgroup_id,
        "filename": e.filename,
        "exe": e.exe,
        "argv": crate::scrub::argv(&e.argv),
        "env": env_json(e),
        "caller_comm": e.comm,
        "argv_truncated": e.argv_truncated,
        "env_truncated": e.env_truncated,
        "env_read": e.env_read,
        "filename_truncated": e.filename_truncated,
        "entry_missed": e.no_enter,
    });
    if !e.ok() {
        v["errno"] = json!(errno_name(e.errno));
    }
    if let Some(a) = a
        && a.analysed
    {
        v["identity"] = serde_json::to_value(&a.identity).unwrap_or(Value::Null);
        v["toolchain"] = json!(a.toolchain);
        if let Some(c) = &a.cwd {
            v["cwd"] = json!(c);
        }
        if !a.pod.is_empty() {
            v["pod"] = serde_json::to_value(&a.pod).unwrap_or(Value::Null);
        }
        if let Some(shim) = &a.shim {
            v["shim"] = serde_json::to_value(shim).unwrap_or(Value::Null);
        }
        if !a.shadows.is_empty() {
            v["shadows"] = serde_json::to_value(&a.shadows).unwrap_or(Value::Null);
        }
    }
    v
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

pub fn exit_json(style: &Style, x: &Exit, duration_ns: Option<u64>) -> Value {
    json!({
        "type": "exit",
        "time": rfc3339(unix_ns(style, x.ktime_ns)),
        "pid": x.tgid,
        "exit_code": x.status(),
        "signal": x.signal(),
        "duration_ms": duration_ns.map(|d| d as f64 / 1e6),
    })
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

pub fn tcp_json(style: &Style, t: &Tcp, r: &ConnReport) -> Value {
    json!({
        "type": "tcp_connect",
        "time": rfc3339(unix_ns(style, t.ktime_ns)),
        "pid": t.tgid,
        "tid": t.pid,
        "uid": t.uid,
        "comm": t.comm,
        "exe": r.exe,
        "outcome": r.outcome,
        "error": (t.err != 0).then(|| errno_name(t.err)),
        "source": std::net::SocketAddr::new(t.src, t.sport).to_string(),
        "destination": std::net::SocketAddr::new(t.dst, t.dport).to_string(),
        "network_type": if t.dst.is_ipv4() { "ipv4" } else { "ipv6" },
        "netns": t.netns,
        "cgroup_id": t.cgroup_id,
        "duration_ms": t.duration_ns().map(|d| d as f64 / 1e6),
        "syn_retransmits": t.syn_retrans,
        "start_missed": t.no_start,
        "proxy": r.proxy,
    })
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

pub fn finding_json(style: &Style, f: &Finding, ktime_ns: u64) -> Value {
    json!({
        "type": "finding",
        "time": rfc3339(unix_ns(style, ktime_ns)),
        "code": f.code,
        "severity": f.severity,
        "pid": f.pid,
        "summary": f.summary,
        "cause": f.cause,
        "fix": f.fix,
        "evidence": f.evidence,
    })
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

pub fn tls_json(style: &Style, r: &crate::signal::tls::TlsReport) -> Value {
    json!({
        "type": "tls_handshake",
        "time": rfc3339(unix_ns(style, r.end_ns)),
        "pid": r.owner.pid,
        "comm": r.owner.comm,
        "exe": r.owner.exe,
        "local_side": r.local,
        "client": r.client.to_string(),
        "server": r.server.to_string(),
        "sni": r.sni,
        "offered_versions": r.offered,
        "version": r.version,
        "cipher_suite": r.cipher_suite.map(|c| format!("0x{c:04x}")),
        "alpn": r.alpn,
        "verdict": r.verdict,
        "library": r.library.iter().map(|n| (n.key().to_string(), json!(n.text()))).collect::<serde_json::Map<_, _>>(),
        "duration_ms": r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6,
    })
}

pub fn tls_text(style: &Style, r: &crate::signal::tls::TlsReport) -> String {
    use crate::tls::Verdict;
    let how = match &r.verdict {
        Verdict::Completed => paint(style, "32", "ok"),
        Verdict::Alert { alert } => paint(
            style,
            "31",
            &format!(
                "{} alert {}",
                alert.from.name(),
                crate::tls::alert_name(alert.description)
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

pub fn dns_json(style: &Style, r: &crate::signal::dns::DnsReport) -> Value {
    json!({
        "type": "dns_lookup",
        "time": rfc3339(unix_ns(style, r.end_ns)),
        "pid": r.owner.pid,
        "comm": r.owner.comm,
        "exe": r.owner.exe,
        "name": r.name,
        "qtype": r.qtype,
        "resolver": r.server.to_string(),
        "transport": if r.tcp { "tcp" } else { "udp" },
        "rcode": r.rcode,
        "addresses": r.addresses,
        "attempts": r.attempts,
        "timed_out": r.timed_out,
        "duration_ms": r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6,
    })
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
                json_line(exec_json(style, exec, Some(analysis)))
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
                json_line(exit_json(style, exit, *duration_ns))
            } else {
                exit_text(style, exit, name, *duration_ns)
            })
        }
        Output::Finding { finding, ktime_ns } => Some(if json {
            json_line(finding_json(style, finding, *ktime_ns))
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
                json_line(tcp_json(style, tcp, report))
            } else {
                tcp_text(style, tcp, report)
            })
        }
        Output::Tls { report, analysed } => {
            if !(all_execs || *analysed || !report.findings.is_empty()) {
                return None;
            }
            Some(if json {
                json_line(tls_json(style, report))
            } else {
                tls_text(style, report)
            })
        }
        Output::Dns { report, analysed } => {
            if !(all_execs || *analysed || !report.findings.is_empty()) {
                return None;
            }
            Some(if json {
                json_line(dns_json(style, report))
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
        let j = exec_json(&style, &e, None).to_string();
        assert!(!j.contains("secret"), "{j}");
        assert!(j.starts_with("{\"type\":\"exec\""), "{j}");
        e.errno = 2;
        assert!(exec_text(&style, &e, None).contains("ENOENT"));
    }
}
