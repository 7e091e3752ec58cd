//! TCP connection diagnosis: classifies each outcome, keeps a latency
//! baseline per destination, names the proxy in force, and produces the
//! `net.*` findings.
//!
//! Owns: connection outcome rules. Must not: print or touch the kernel.

pub mod codes;
pub mod render;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    events::{Tcp, TcpPhase},
    finding::{Finding, Severity, errno_name},
    process::endpoints::proxy_host_port,
    process::fsview::basename,
    process::table::ProcTable,
    scrub::url::redact_urls,
};

/// How a connection set-up ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Established,
    Refused,
    Timeout,
    Unreachable,
    /// Closed by the application before completion (cancelled non-blocking connect).
    Cancelled,
    /// Another error (see the errno).
    Error,
    /// Failed, for a reason the kernel side could not read (no BTF).
    Failed,
}

impl Outcome {
    pub fn of(t: &Tcp) -> Option<Outcome> {
        Some(match t.phase {
            TcpPhase::Start => return None,
            TcpPhase::Established => Outcome::Established,
            TcpPhase::Failed => match t.err {
                0 => Outcome::Cancelled,
                agent_common::TCP_ERR_UNKNOWN => Outcome::Failed,
                libc::ECONNREFUSED => Outcome::Refused,
                libc::ETIMEDOUT => Outcome::Timeout,
                libc::EHOSTUNREACH | libc::ENETUNREACH => Outcome::Unreachable,
                _ => Outcome::Error,
            },
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Established => "established",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::Unreachable => "unreachable",
            Outcome::Cancelled => "cancelled",
            Outcome::Error => "error",
            Outcome::Failed => "failed",
        }
    }
}

/// Thresholds for `net.slow_connect`.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Always slow above this.
    pub slow_abs_ns: u64,
    /// Slow when this many times the destination's own baseline...
    pub slow_factor: f64,
    /// ...and above this floor...
    pub slow_floor_ns: u64,
    /// ...once the baseline has this many samples.
    pub baseline_samples: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            slow_abs_ns: 1_000_000_000,
            slow_factor: 5.0,
            slow_floor_ns: 100_000_000,
            baseline_samples: 5,
        }
    }
}

/// A proxy variable of the connecting process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProxyInForce {
    pub variable: String,
    /// Redacted.
    pub url: String,
    /// The connection went to this proxy (same port, and same address when the proxy is an IP).
    pub is_destination: bool,
}

const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The proxy variable that best explains a connection to `dst:dport`.
pub fn proxy_in_force(env: &[(String, String)], dst: IpAddr, dport: u16) -> Option<ProxyInForce> {
    let mut first = None;
    for var in PROXY_VARS {
        let Some((_, url)) = env.iter().find(|(k, v)| k == var && !v.is_empty()) else {
            continue;
        };
        let hit = proxy_host_port(url).is_some_and(|(h, p)| {
            p == dport && h.parse::<IpAddr>().map(|ip| ip == dst).unwrap_or(true)
        });
        let p = ProxyInForce {
            variable: var.to_string(),
            url: redact_urls(url),
            is_destination: hit,
        };
        if hit {
            return Some(p);
        }
        first.get_or_insert(p);
    }
    first
}

#[derive(Default)]
pub struct TcpTracker {
    cfg: NetConfig,
    /// EWMA of set-up latency (ns) and sample count per destination.
    baseline: HashMap<SocketAddr, (f64, u32)>,
    reported: crate::finding::Dedup,
}

/// Everything known about one outcome, for output and findings.
#[derive(Clone, Debug)]
pub struct ConnReport {
    pub outcome: Outcome,
    /// Resolved binary of the connecting process, if known.
    pub exe: Option<String>,
    pub proxy: Option<ProxyInForce>,
    /// The setting that named the destination (GOPROXY, …), when not a proxy.
    pub endpoint: Option<crate::process::endpoints::EndpointSource>,
    pub findings: Vec<Finding>,
}

impl TcpTracker {
    pub fn new(cfg: NetConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    fn once(&mut self, key: String, now: u64) -> bool {
        self.reported.first(key, now)
    }

    /// Analyse an outcome (`None` for a start).
    /// `host`: the name the process looked up that answered this address.
    pub fn on_tcp(&mut self, table: &ProcTable, t: &Tcp, host: Option<&str>) -> Option<ConnReport> {
        let outcome = Outcome::of(t)?;
        let c = Conn::of(table, t, host);
        let found = match outcome {
            Outcome::Established => self.on_established(&c, t),
            other => c.failure(other, t),
        };
        let findings = match found {
            Some((code, severity, summary)) if self.once(c.key(code), t.ktime_ns) => {
                let (cause, fix) = c.cause_and_fix(code, t);
                vec![Finding {
                    code,
                    severity,
                    pid: t.tgid,
                    summary,
                    cause,
                    fix,
                    evidence: c.evidence(t),
                }]
            }
            _ => Vec::new(),
        };
        Some(ConnReport {
            outcome,
            exe: c.exe,
            proxy: c.proxy,
            endpoint: c.endpoint,
            findings,
        })
    }

    /// A connection that was set up: retransmitted SYNs, or slower than
    /// the limit or this destination's baseline (which it then updates).
    fn on_established(
        &mut self,
        c: &Conn<'_>,
        t: &Tcp,
    ) -> Option<(&'static str, Severity, String)> {
        let (name, shown, note, took) = (&c.name, &c.shown, &c.proxy_note, &c.took);
        if t.syn_retrans > 0 {
            return Some((
                codes::SYN_RETRANSMIT,
                Severity::Warning,
                format!(
                    "{name} → {shown}{note} connected only after {} retransmitted SYN{}{took}",
                    t.syn_retrans,
                    plural(t.syn_retrans)
                ),
            ));
        }
        let d = t.duration_ns()?;
        // Retransmit delays are reported above; only clean SYNs feed the baseline.
        let (avg, n) = self.baseline.get(&c.dst).copied().unwrap_or((0.0, 0));
        let slow_rel = n >= self.cfg.baseline_samples
            && d >= self.cfg.slow_floor_ns
            && d as f64 > avg * self.cfg.slow_factor;
        let found = (d >= self.cfg.slow_abs_ns || slow_rel).then(|| {
            (
                codes::SLOW_CONNECT,
                Severity::Warning,
                format!(
                    "{name} → {shown}{note} took {:.0} ms to connect{}",
                    d as f64 / 1e6,
                    if n > 0 {
                        format!(" (usually {:.1} ms)", avg / 1e6)
                    } else {
                        String::new()
                    }
                ),
            )
        });
        let avg = if n == 0 {
            d as f64
        } else {
            avg * 0.8 + d as f64 * 0.2
        };
        if self.baseline.len() > 16_384 {
            self.baseline.clear();
        }
        self.baseline.insert(c.dst, (avg, n.saturating_add(1)));
        found
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What a connection's findings say about it: who, where, through which
/// setting or proxy.
struct Conn<'a> {
    exe: Option<String>,
    name: String,
    proxy: Option<ProxyInForce>,
    endpoint: Option<crate::process::endpoints::EndpointSource>,
    host: Option<&'a str>,
    dst: SocketAddr,
    /// `host (addr)` or the address.
    shown: String,
    /// ` (your GOPROXY)`.
    proxy_note: String,
    /// `; HTTPS_PROXY=… was set` when a proxy was set but not used.
    proxy_tail: String,
    /// The setting that sent the connection there, and its variable.
    setting: Option<(String, String)>,
    /// ` (1.2 s)`.
    took: String,
}

impl<'a> Conn<'a> {
    fn of(table: &ProcTable, t: &Tcp, host: Option<&'a str>) -> Self {
        let exec = table.get(t.tgid).and_then(|p| p.current());
        let exe = exec.map(|e| e.exe.clone()).filter(|e| !e.is_empty());
        let name = exe
            .as_deref()
            .map(basename)
            .map(str::to_string)
            .unwrap_or_else(|| {
                if t.comm.is_empty() {
                    "?".into()
                } else {
                    t.comm.clone()
                }
            });
        let proxy = exec.and_then(|e| proxy_in_force(&e.env, t.dst, t.dport));
        // Through a proxy the destination is the proxy; otherwise the
        // setting that named it, if any.
        let endpoint = match &proxy {
            Some(p) if p.is_destination => None,
            _ => exec.and_then(|e| {
                crate::process::endpoints::source_of(&e.exe, &e.env, &e.argv, t.dst, t.dport, host)
            }),
        };
        let dst = SocketAddr::new(t.dst, t.dport);
        let shown = match host {
            Some(h) => format!("{h} ({dst})"),
            None => dst.to_string(),
        };
        let proxy_note = match (&proxy, &endpoint) {
            (Some(p), _) if p.is_destination => format!(" (your {})", p.variable),
            (_, Some(src)) => format!(" ({})", src.note()),
            _ => String::new(),
        };
        // The setting that sent the connection there, for `cause` and `fix`.
        let setting = match (&proxy, &endpoint) {
            (Some(p), _) if p.is_destination => Some((
                format!("{}={} in the environment", p.variable, p.url),
                p.variable.clone(),
            )),
            (_, Some(src)) => Some((src.describe(), src.variable.clone())),
            _ => None,
        };
        let proxy_tail = match &proxy {
            Some(p) if !p.is_destination => format!("; {}={} was set", p.variable, p.url),
            _ => String::new(),
        };
        let took = t
            .duration_ns()
            .map(|d| format!(" ({:.1} s)", d as f64 / 1e9))
            .unwrap_or_default();
        Conn {
            exe,
            name,
            proxy,
            endpoint,
            host,
            dst,
            shown,
            proxy_note,
            proxy_tail,
            setting,
            took,
        }
    }

    /// De-duplication key of a finding about this connection.
    fn key(&self, code: &str) -> String {
        format!("{code}|{}|{}", self.name, self.dst)
    }

    /// A set-up that failed: refused, timed out, unreachable.
    fn failure(&self, outcome: Outcome, t: &Tcp) -> Option<(&'static str, Severity, String)> {
        let (name, shown, note, tail) =
            (&self.name, &self.shown, &self.proxy_note, &self.proxy_tail);
        let syns = t.syn_retrans + 1;
        let took = &self.took;
        let (code, summary) = match outcome {
            Outcome::Refused => (
                codes::CONNECT_REFUSED,
                format!("{name} → {shown}{note} refused (TCP reset){tail}"),
            ),
            Outcome::Timeout => (
                codes::CONNECT_TIMEOUT,
                format!(
                    "{name} → {shown}{note} timed out after {syns} SYN{}{took}, no answer{tail}",
                    plural(syns)
                ),
            ),
            Outcome::Unreachable => (
                codes::UNREACHABLE,
                format!(
                    "{name} → {shown}{note} unreachable: {} (ICMP){tail}",
                    errno_name(t.err)
                ),
            ),
            _ => return None,
        };
        Some((code, Severity::Error, summary))
    }

    /// `what`, and where the destination came from.
    fn via(&self, what: String) -> String {
        match &self.setting {
            Some((d, _)) => format!("{what}; the destination came from {d}"),
            None => what,
        }
    }

    /// `what`, or the setting to change.
    fn or_setting(&self, what: String) -> String {
        match &self.setting {
            Some((_, var)) if !var.contains(' ') => {
                format!("{what}, or point {var} at a server that works")
            }
            _ => what,
        }
    }

    fn cause_and_fix(&self, code: &str, t: &Tcp) -> (String, String) {
        let (dst, ip, port) = (self.dst, t.dst, t.dport);
        let syns = t.syn_retrans + 1;
        match code {
            codes::CONNECT_REFUSED => (
                self.via(format!(
                    "{dst} answered the SYN with a TCP reset: nothing listens on port {port} there, or a firewall rejects it"
                )),
                self.or_setting(format!(
                    "start the server on {dst} (check with ss -ltn there) or open port {port} in its firewall"
                )),
            ),
            codes::CONNECT_TIMEOUT => (
                self.via(format!(
                    "{syns} SYN{} to {dst} got no answer: a firewall drops them, or the host is down or unrouted",
                    plural(syns)
                )),
                self.or_setting(format!(
                    "check the route and firewall to {dst}: nc -vz -w 3 {ip} {port}"
                )),
            ),
            codes::UNREACHABLE => (
                self.via(format!("an ICMP {} came back for {dst}", errno_name(t.err))),
                self.or_setting(format!(
                    "check the route to {ip} (ip route get {ip}) and firewall rules that reject"
                )),
            ),
            codes::SYN_RETRANSMIT => (
                self.via(format!(
                    "{} SYN{} to {dst} went unanswered before one got through",
                    t.syn_retrans,
                    plural(t.syn_retrans)
                )),
                format!(
                    "look for packet loss on the path (mtr {ip}) or a full accept queue at the server (ss -ltn: Recv-Q)"
                ),
            ),
            _ => (
                self.via(format!("the TCP handshake with {dst} took{}", self.took)),
                format!(
                    "measure the path latency to {ip} (mtr {ip}); a loaded server answers SYNs late"
                ),
            ),
        }
    }

    /// Built only when a finding is made: most connections produce none.
    fn evidence(&self, t: &Tcp) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("exe".into(), json!(self.exe));
        m.insert("comm".into(), json!(t.comm));
        m.insert("destination".into(), json!(self.dst.to_string()));
        m.insert("host".into(), json!(self.host));
        m.insert(
            "source".into(),
            json!(SocketAddr::new(t.src, t.sport).to_string()),
        );
        m.insert("netns".into(), json!(t.netns));
        m.insert("syns_sent".into(), json!(t.syn_retrans + 1));
        m.insert(
            "duration_ms".into(),
            json!(t.duration_ns().map(|d| d as f64 / 1e6)),
        );
        m.insert(
            "error".into(),
            json!((t.err > 0).then(|| errno_name(t.err))),
        );
        m.insert(
            "proxy".into(),
            serde_json::to_value(&self.proxy).unwrap_or(Value::Null),
        );
        m.insert(
            "endpoint_from".into(),
            serde_json::to_value(&self.endpoint).unwrap_or(Value::Null),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(phase: TcpPhase, err: i32, retrans: u32, dur_ms: u64) -> Tcp {
        Tcp {
            phase,
            pid: 7,
            tgid: 7,
            uid: 0,
            cgroup_id: 0,
            netns: 1,
            src: "10.0.0.1".parse().unwrap(),
            sport: 40000,
            dst: "10.0.0.5".parse().unwrap(),
            dport: 3128,
            start_ns: 1_000,
            ktime_ns: 1_000 + dur_ms * 1_000_000,
            syn_retrans: retrans,
            err,
            no_start: false,
            comm: "go".into(),
            sock: 1,
        }
    }

    #[test]
    fn outcomes_from_errno() {
        assert_eq!(
            Outcome::of(&tcp(TcpPhase::Failed, libc::ECONNREFUSED, 0, 1)),
            Some(Outcome::Refused)
        );
        assert_eq!(
            Outcome::of(&tcp(TcpPhase::Failed, libc::ETIMEDOUT, 5, 1)),
            Some(Outcome::Timeout)
        );
        assert_eq!(
            Outcome::of(&tcp(TcpPhase::Failed, libc::EHOSTUNREACH, 0, 1)),
            Some(Outcome::Unreachable)
        );
        assert_eq!(
            Outcome::of(&tcp(TcpPhase::Failed, 0, 0, 1)),
            Some(Outcome::Cancelled)
        );
        assert_eq!(
            Outcome::of(&tcp(TcpPhase::Failed, agent_common::TCP_ERR_UNKNOWN, 0, 1)),
            Some(Outcome::Failed)
        );
        assert_eq!(Outcome::of(&tcp(TcpPhase::Start, 0, 0, 0)), None);
    }

    #[test]
    fn proxy_urls() {
        assert_eq!(
            proxy_host_port("http://u:p@10.0.0.5:3128"),
            Some(("10.0.0.5".into(), 3128))
        );
        assert_eq!(
            proxy_host_port("https://proxy.corp"),
            Some(("proxy.corp".into(), 443))
        );
        assert_eq!(proxy_host_port("proxy:8080"), Some(("proxy".into(), 8080)));
        assert_eq!(
            proxy_host_port("socks5://[::1]:9050"),
            Some(("::1".into(), 9050))
        );
        let env = vec![(
            "HTTPS_PROXY".to_string(),
            "http://u:tok@10.0.0.5:3128".to_string(),
        )];
        let p = proxy_in_force(&env, "10.0.0.5".parse().unwrap(), 3128).unwrap();
        assert!(p.is_destination);
        assert_eq!(p.url, "http://***@10.0.0.5:3128");
        let p = proxy_in_force(&env, "10.0.0.9".parse().unwrap(), 443).unwrap();
        assert!(!p.is_destination);
    }

    #[test]
    fn findings_per_outcome_and_the_proxy_is_named() {
        let mut table = ProcTable::default();
        let mut exec = crate::process::table::tests_support::exec(7, 1, 1, "/usr/bin/go");
        exec.env
            .push(("HTTPS_PROXY".into(), "http://u:tok@10.0.0.5:3128".into()));
        table.on_exec(std::sync::Arc::new(exec));
        let mut n = TcpTracker::default();
        let r = n
            .on_tcp(
                &table,
                &tcp(TcpPhase::Failed, libc::ECONNREFUSED, 0, 1),
                None,
            )
            .unwrap();
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].code, "net.connect_refused");
        assert!(
            r.findings[0]
                .summary
                .starts_with("go → 10.0.0.5:3128 (your HTTPS_PROXY) refused"),
            "{}",
            r.findings[0].summary
        );
        assert!(!r.findings[0].summary.contains("tok"));
        let r = n
            .on_tcp(
                &table,
                &tcp(TcpPhase::Failed, libc::ETIMEDOUT, 1, 3000),
                None,
            )
            .unwrap();
        assert!(
            r.findings[0]
                .summary
                .contains("timed out after 2 SYNs (3.0 s)"),
            "{}",
            r.findings[0].summary
        );
        let r = n
            .on_tcp(&table, &tcp(TcpPhase::Established, 0, 2, 3000), None)
            .unwrap();
        assert_eq!(r.findings[0].code, "net.syn_retransmit");
        // A clean, fast connection: nothing.
        let r = n
            .on_tcp(&table, &tcp(TcpPhase::Established, 0, 0, 1), None)
            .unwrap();
        assert!(r.findings.is_empty());
        assert!(
            n.on_tcp(&table, &tcp(TcpPhase::Failed, 0, 0, 1), None)
                .unwrap()
                .findings
                .is_empty()
        );
    }

    #[test]
    fn thresholds_are_configurable() {
        let table = ProcTable::default();
        let mut n = TcpTracker::new(NetConfig {
            slow_abs_ns: 200_000_000,
            ..NetConfig::default()
        });
        let r = n
            .on_tcp(&table, &tcp(TcpPhase::Established, 0, 0, 250), None)
            .unwrap();
        assert_eq!(r.findings[0].code, "net.slow_connect");
        let mut n = TcpTracker::default();
        assert!(
            n.on_tcp(&table, &tcp(TcpPhase::Established, 0, 0, 250), None)
                .unwrap()
                .findings
                .is_empty()
        );
    }

    #[test]
    fn slow_against_the_destinations_baseline() {
        let table = ProcTable::default();
        let mut n = TcpTracker::default();
        for _ in 0..5 {
            assert!(
                n.on_tcp(&table, &tcp(TcpPhase::Established, 0, 0, 2), None)
                    .unwrap()
                    .findings
                    .is_empty()
            );
        }
        let r = n
            .on_tcp(&table, &tcp(TcpPhase::Established, 0, 0, 300), None)
            .unwrap();
        assert_eq!(r.findings[0].code, "net.slow_connect");
        assert!(
            r.findings[0].summary.contains("usually 2.0 ms"),
            "{}",
            r.findings[0].summary
        );
    }
}
