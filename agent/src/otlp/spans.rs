//! Turning pipeline outputs into spans: one trace per top-level toolchain
//! command, one span per process (exec → exit) under its parent's, one span
//! per TCP connection set-up under its process, findings as span events.
//! Routine activity (processes outside toolchain trees, connections that
//! succeeded outside them) only feeds metrics.

use std::collections::HashMap;

use opentelemetry_proto::tonic::trace::v1::{
    Span, Status,
    span::{Event as SpanEvent, SpanKind},
    status::StatusCode,
};

use super::model::{kv_bool, kv_int, kv_json, kv_str, kv_str_array};
use crate::{
    finding::Finding, fsview::basename, netdiag::Outcome, proctable::ProcTable, run::Output,
};

/// Random ids without a dependency: splitmix64 seeded from the clock, pid and /dev/urandom.
pub struct Ids(u64);

impl Ids {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read as _;
            let _ = f.read_exact(&mut seed);
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ids(u64::from_le_bytes(seed) ^ t ^ ((std::process::id() as u64) << 32))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn trace_id(&mut self) -> Vec<u8> {
        let mut v = self.next().to_be_bytes().to_vec();
        v.extend_from_slice(&self.next().to_be_bytes());
        v
    }
    pub fn span_id(&mut self) -> Vec<u8> {
        self.next().to_be_bytes().to_vec()
    }
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

struct Open {
    span: Span,
}

/// Builds spans; finished ones are returned to the caller for the queue.
pub struct SpanBuilder {
    ids: Ids,
    /// boot-time ns → Unix ns.
    offset: i128,
    open: HashMap<u32, Open>,
}

fn unix(offset: i128, ktime: u64) -> u64 {
    (ktime as i128 + offset).max(0) as u64
}

pub fn finding_event(f: &Finding, time: u64) -> SpanEvent {
    let mut attributes = vec![
        kv_str("agent.finding.code", f.code),
        kv_str("agent.finding.severity", f.severity.name()),
        kv_str("agent.finding.summary", f.summary.clone()),
        kv_str("agent.finding.cause", f.cause.clone()),
        kv_str("agent.finding.fix", f.fix.clone()),
    ];
    for (k, v) in &f.evidence {
        let v = match v {
            serde_json::Value::String(s) => serde_json::Value::String(s.clone()),
            other => serde_json::Value::String(other.to_string()),
        };
        if let Some(kv) = kv_json(&format!("agent.evidence.{k}"), &v) {
            attributes.push(kv);
        }
    }
    SpanEvent {
        time_unix_nano: time,
        name: f.code.to_string(),
        attributes,
        dropped_attributes_count: 0,
    }
}

impl SpanBuilder {
    pub fn new(clock_offset_ns: i128) -> Self {
        Self {
            ids: Ids::new(),
            offset: clock_offset_ns,
            open: HashMap::new(),
        }
    }

    /// The nearest process with an open span: `first`, then `tgid`'s ancestors.
    fn nearest_open(&self, table: &ProcTable, first: u32, tgid: u32) -> Option<u32> {
        std::iter::once(first)
            .chain(table.ancestors(tgid))
            .find(|p| self.open.contains_key(p))
    }

    /// Trace id and parent span id for a new span under the nearest open span,
    /// or a new trace when there is none.
    fn context(&mut self, table: &ProcTable, first: u32, tgid: u32) -> (Vec<u8>, Vec<u8>) {
        match self
            .nearest_open(table, first, tgid)
            .and_then(|p| self.open.get(&p))
        {
            Some(o) => (o.span.trace_id.clone(), o.span.span_id.clone()),
            None => (self.ids.trace_id(), Vec::new()),
        }
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Feed one output; returns finished spans.
    pub fn observe(&mut self, o: &Output, table: &ProcTable) -> Vec<Span> {
        let mut done = Vec::new();
        match o {
            Output::Exec { exec, analysis } if exec.ok() && analysis.analysed => {
                let t = unix(self.offset, exec.ktime_ns);
                if let Some(open) = self.open.get_mut(&exec.tgid) {
                    // Re-exec in the same process (e.g. a Go toolchain switch).
                    open.span.events.push(SpanEvent {
                        time_unix_nano: t,
                        name: "exec".into(),
                        attributes: vec![
                            kv_str("process.executable.path", exec.exe.clone()),
                            kv_str(
                                "process.runtime.version",
                                analysis.identity.go_version.clone().unwrap_or_default(),
                            ),
                        ],
                        dropped_attributes_count: 0,
                    });
                    return done;
                }
                let (trace_id, parent) = self.context(table, exec.ppid, exec.tgid);
                let args: Vec<String> = crate::scrub::argv(&exec.argv);
                let mut attributes = vec![
                    kv_int("process.pid", exec.tgid as i64),
                    kv_int("process.parent_pid", exec.ppid as i64),
                    kv_str("process.executable.path", exec.exe.clone()),
                    kv_str("process.executable.name", basename(&exec.exe).to_string()),
                    kv_str_array("process.command_args", &args),
                    kv_int("process.real_user.id", exec.uid as i64),
                    kv_bool("agent.toolchain", analysis.toolchain),
                ];
                if let Some(v) = &analysis.identity.go_version {
                    attributes.push(kv_str("process.runtime.name", "go"));
                    attributes.push(kv_str("process.runtime.version", v.clone()));
                }
                if let Some(e) = &analysis.identity.pyenv {
                    attributes.push(kv_str("agent.python.env", e.label()));
                }
                if let Some(c) = &analysis.cwd {
                    attributes.push(kv_str("process.working_directory", c.clone()));
                }
                let pod = &analysis.pod;
                for (k, v) in [
                    ("container.id", &pod.container_id),
                    ("k8s.pod.uid", &pod.pod_uid),
                    ("k8s.pod.name", &pod.pod_name),
                    ("k8s.namespace.name", &pod.namespace),
                ] {
                    if let Some(v) = v {
                        attributes.push(kv_str(k, v.clone()));
                    }
                }
                let span = Span {
                    trace_id,
                    span_id: self.ids.span_id(),
                    parent_span_id: parent,
                    name: basename(&exec.exe).to_string(),
                    kind: SpanKind::Internal as i32,
                    start_time_unix_nano: t,
                    attributes,
                    ..Default::default()
                };
                self.open.insert(exec.tgid, Open { span });
            }
            Output::Exit { exit, .. } => {
                if let Some(mut open) = self.open.remove(&exit.tgid) {
                    open.span.end_time_unix_nano = unix(self.offset, exit.ktime_ns);
                    match (exit.status(), exit.signal()) {
                        (Some(0), _) => {}
                        (Some(c), _) => {
                            open.span
                                .attributes
                                .push(kv_int("process.exit.code", c as i64));
                            open.span.status = Some(Status {
                                message: format!("exit code {c}"),
                                code: StatusCode::Error as i32,
                            });
                        }
                        (None, Some(s)) => {
                            open.span
                                .attributes
                                .push(kv_int("agent.process.signal", s as i64));
                            open.span.status = Some(Status {
                                message: format!("killed by signal {s}"),
                                code: StatusCode::Error as i32,
                            });
                        }
                        _ => {}
                    }
                    if exit.status() == Some(0) {
                        open.span.attributes.push(kv_int("process.exit.code", 0));
                    }
                    done.push(open.span);
                }
            }
            // net.* and tls.* findings are events of their connection, lookup or handshake span.
            Output::Finding { finding, ktime_ns }
                if !finding.code.starts_with("net.") && !finding.code.starts_with("tls.") =>
            {
                let ev = finding_event(finding, unix(self.offset, *ktime_ns));
                let target = self.nearest_open(table, finding.pid, finding.pid);
                match target.and_then(|p| self.open.get_mut(&p)) {
                    Some(open) => open.span.events.push(ev),
                    None => {
                        // A finding outside any open span: a span of its own.
                        let t = unix(self.offset, *ktime_ns);
                        done.push(Span {
                            trace_id: self.ids.trace_id(),
                            span_id: self.ids.span_id(),
                            name: format!("finding {}", finding.code),
                            start_time_unix_nano: t,
                            end_time_unix_nano: t,
                            attributes: vec![kv_int("process.pid", finding.pid as i64)],
                            events: vec![ev],
                            ..Default::default()
                        });
                    }
                }
            }
            Output::Tcp {
                tcp,
                report,
                analysed,
            } => {
                let failed = !matches!(report.outcome, Outcome::Established | Outcome::Cancelled);
                if !(*analysed || failed || !report.findings.is_empty()) {
                    return done;
                }
                let (trace_id, parent) = self.context(table, tcp.tgid, tcp.tgid);
                let end = unix(self.offset, tcp.ktime_ns);
                let start = if tcp.no_start {
                    end
                } else {
                    unix(self.offset, tcp.start_ns)
                };
                let mut attributes = vec![
                    kv_str("server.address", tcp.dst.to_string()),
                    kv_int("server.port", tcp.dport as i64),
                    kv_str("network.peer.address", tcp.dst.to_string()),
                    kv_int("network.peer.port", tcp.dport as i64),
                    kv_str("network.local.address", tcp.src.to_string()),
                    kv_int("network.local.port", tcp.sport as i64),
                    kv_str("network.transport", "tcp"),
                    kv_str(
                        "network.type",
                        if tcp.dst.is_ipv4() { "ipv4" } else { "ipv6" },
                    ),
                    kv_int("process.pid", tcp.tgid as i64),
                    kv_str("agent.tcp.outcome", report.outcome.name()),
                    kv_int("agent.tcp.syn_retransmits", tcp.syn_retrans as i64),
                ];
                let mut status = None;
                if failed {
                    let err = crate::finding::errno_name(tcp.err);
                    attributes.push(kv_str("error.type", err.clone()));
                    status = Some(Status {
                        message: format!("connect {}: {err}", report.outcome.name()),
                        code: StatusCode::Error as i32,
                    });
                }
                if let Some(p) = &report.proxy {
                    attributes.push(kv_str("agent.proxy.variable", p.variable.clone()));
                    attributes.push(kv_bool("agent.proxy.is_destination", p.is_destination));
                }
                done.push(Span {
                    trace_id,
                    span_id: self.ids.span_id(),
                    parent_span_id: parent,
                    name: format!("connect {}", std::net::SocketAddr::new(tcp.dst, tcp.dport)),
                    kind: SpanKind::Client as i32,
                    start_time_unix_nano: start,
                    end_time_unix_nano: end,
                    attributes,
                    events: report
                        .findings
                        .iter()
                        .map(|f| finding_event(f, end))
                        .collect(),
                    status,
                    ..Default::default()
                });
            }
            Output::Dns { report, analysed } => {
                if !(*analysed || !report.findings.is_empty()) {
                    return done;
                }
                let (trace_id, parent) = self.context(table, report.owner.pid, report.owner.pid);
                let end = unix(self.offset, report.end_ns);
                let mut attributes = vec![
                    kv_str("dns.question.name", report.name.clone()),
                    kv_str("dns.question.type", report.qtype.clone()),
                    kv_str("server.address", report.server.ip().to_string()),
                    kv_int("server.port", report.server.port() as i64),
                    kv_str("network.transport", if report.tcp { "tcp" } else { "udp" }),
                    kv_int("process.pid", report.owner.pid as i64),
                    kv_int("agent.dns.attempts", report.attempts as i64),
                    kv_str(
                        "dns.answers",
                        report
                            .addresses
                            .iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                ];
                if let Some(rc) = &report.rcode {
                    attributes.push(kv_str("dns.response_code", rc.clone()));
                }
                let error = match (&report.rcode, report.timed_out) {
                    (_, true) => Some("timeout".to_string()),
                    (Some(rc), _) if rc != "NOERROR" => Some(rc.clone()),
                    _ => None,
                };
                let status = error.map(|e| {
                    attributes.push(kv_str("error.type", e.clone()));
                    Status {
                        message: format!("lookup {}: {e}", report.name),
                        code: StatusCode::Error as i32,
                    }
                });
                done.push(Span {
                    trace_id,
                    span_id: self.ids.span_id(),
                    parent_span_id: parent,
                    name: format!("dns {} {}", report.qtype, report.name),
                    kind: SpanKind::Client as i32,
                    start_time_unix_nano: unix(self.offset, report.start_ns),
                    end_time_unix_nano: end,
                    attributes,
                    events: report
                        .findings
                        .iter()
                        .map(|f| finding_event(f, end))
                        .collect(),
                    status,
                    ..Default::default()
                });
            }
            Output::Tls { report, analysed } => {
                let failed = !matches!(report.verdict, crate::tls::Verdict::Completed);
                if !(*analysed || failed || !report.findings.is_empty()) {
                    return done;
                }
                let (trace_id, parent) = self.context(table, report.owner.pid, report.owner.pid);
                let end = unix(self.offset, report.end_ns);
                let mut attributes = vec![
                    kv_str("server.address", report.server.ip().to_string()),
                    kv_int("server.port", report.server.port() as i64),
                    kv_str("network.transport", "tcp"),
                    kv_int("process.pid", report.owner.pid as i64),
                    kv_str("agent.tls.local_side", report.local.name()),
                    kv_str("agent.tls.offered_versions", report.offered.join(",")),
                ];
                if let Some(sni) = &report.sni {
                    attributes.push(kv_str("tls.client.server_name", sni.clone()));
                }
                if let Some(v) = &report.version {
                    attributes.push(kv_str("tls.protocol.name", "tls"));
                    attributes.push(kv_str(
                        "tls.protocol.version",
                        v.trim_start_matches("TLS ").to_string(),
                    ));
                }
                if let Some(c) = report.cipher_suite {
                    attributes.push(kv_str("tls.cipher", format!("0x{c:04x}")));
                }
                let status = failed.then(|| {
                    let why = crate::tls::verdict_reason(&report.verdict);
                    attributes.push(kv_str("error.type", why.clone()));
                    Status {
                        message: format!("TLS handshake: {why}"),
                        code: StatusCode::Error as i32,
                    }
                });
                done.push(Span {
                    trace_id,
                    span_id: self.ids.span_id(),
                    parent_span_id: parent,
                    name: format!(
                        "tls {}",
                        report
                            .sni
                            .clone()
                            .unwrap_or_else(|| report.server.to_string())
                    ),
                    kind: SpanKind::Client as i32,
                    start_time_unix_nano: unix(self.offset, report.start_ns),
                    end_time_unix_nano: end,
                    attributes,
                    events: report
                        .findings
                        .iter()
                        .map(|f| finding_event(f, end))
                        .collect(),
                    status,
                    ..Default::default()
                });
            }
            _ => {}
        }
        done
    }

    /// Close every open span at `now_unix_ns` (agent shutdown).
    pub fn close_all(&mut self, now_unix_ns: u64) -> Vec<Span> {
        self.open
            .drain()
            .map(|(_, mut o)| {
                o.span.end_time_unix_nano = now_unix_ns;
                o.span
                    .attributes
                    .push(kv_bool("agent.process.still_running", true));
                o.span
            })
            .collect()
    }
}
