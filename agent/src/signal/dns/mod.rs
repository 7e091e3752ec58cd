//! The DNS signal: lookups per process from the wire capture (a name and
//! type asked, its answer or its silence), the `net.dns_*` findings, and
//! the names each process looked up, which the pipeline hands to TCP and
//! TLS (`HostNames`) so their findings can say which host an address is.
//!
//! Owns: per-lookup state and the name cache, bounded and expiring. Must
//! not: print or touch the kernel.

pub mod codes;
pub mod render;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;
use serde_json::{Map, json};

use agent_parse::dns;

use crate::{
    events::Wire,
    finding::{Dedup, Finding, Severity},
    process::{
        endpoints::{EndpointSource, source_of_name},
        names::HostNames,
        owner::Owner,
        table::ProcTable,
    },
};

/// Thresholds of the DNS findings.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub slow_ns: u64,
    /// A query unanswered this long after its last attempt has timed out.
    pub timeout_ns: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            slow_ns: 1_000_000_000,
            timeout_ns: 5_000_000_000,
        }
    }
}

/// One DNS lookup (a name and type asked by one process), as the agent saw it.
#[derive(Clone, Debug, Serialize)]
pub struct DnsReport {
    pub owner: Owner,
    pub name: String,
    pub qtype: String,
    pub server: SocketAddr,
    pub tcp: bool,
    /// Response code, when an answer came.
    pub rcode: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub attempts: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub timed_out: bool,
    /// The setting that named the host looked up (GOPROXY, …).
    pub endpoint: Option<EndpointSource>,
    pub findings: Vec<Finding>,
}

struct Pending {
    owner_tgid: u32,
    comm: String,
    server: SocketAddr,
    tcp: bool,
    first_ns: u64,
    last_ns: u64,
    attempts: u32,
}

/// Key of a lookup: (owner, name, type); the owner is the tgid, or the socket
/// cookie with the top bit set when the owner is unknown.
type LookupKey = (u64, String, u16);

/// A failed answer held back briefly: resolvers walking a search list get
/// NXDOMAIN for `name.suffix` before the name itself resolves.
struct HeldFailure {
    report: DnsReport,
    owner_key: u64,
    at_ns: u64,
}

const MAX_PENDING: usize = 16_384;
const MAX_NAMES: usize = 65_536;
const NAME_TTL_NS: u64 = 600_000_000_000;
const HOLD_NS: u64 = 1_000_000_000;

#[derive(Default)]
pub struct DnsTracker {
    cfg: DnsConfig,
    pending: HashMap<LookupKey, Pending>,
    held: Vec<HeldFailure>,
    /// Names looked up, per (tgid, address), and per address for any process.
    names: HashMap<(u32, IpAddr), (String, u64)>,
    any_names: HashMap<IpAddr, (String, u64)>,
    reported: Dedup,
    /// DNS payloads that did not parse.
    pub malformed: u64,
    /// Responses that matched no query seen.
    pub unmatched: u64,
}

impl HostNames for DnsTracker {
    fn name_for(&self, tgid: u32, ip: IpAddr) -> Option<&str> {
        self.names
            .get(&(tgid, ip))
            .or_else(|| self.any_names.get(&ip))
            .map(|(n, _)| n.as_str())
    }
}

fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

impl DnsTracker {
    pub fn new(cfg: DnsConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    /// A DNS message on the wire (UDP or TCP, either direction).
    pub fn on_wire(&mut self, table: &ProcTable, w: &Wire) -> Vec<DnsReport> {
        let mut payload: &[u8] = &w.data;
        if w.tcp {
            // DNS over TCP: a 2-byte length before each message.
            if payload.len() < 2 {
                return Vec::new();
            }
            payload = &payload[2..];
        }
        let msg = match dns::parse(payload) {
            Ok(m) => m,
            Err(e) => {
                self.malformed += 1;
                tracing::debug!(error = %e, "DNS payload skipped");
                return Vec::new();
            }
        };
        let owner_key = if w.tgid != 0 {
            w.tgid as u64
        } else {
            w.cookie | (1 << 63)
        };
        let key: LookupKey = (owner_key, msg.question.name.clone(), msg.question.qtype);
        // A lookup of this host: a query sent to port 53, its answer received
        // from it. A local DNS server's side (queries received, answers sent)
        // is not a lookup.
        let query = !msg.response && w.egress && w.dport == 53;
        if query {
            if self.pending.len() >= MAX_PENDING {
                self.pending.clear();
            }
            let p = self.pending.entry(key).or_insert(Pending {
                owner_tgid: w.tgid,
                comm: w.comm.clone(),
                server: sock(w.dst, w.dport),
                tcp: w.tcp,
                first_ns: w.ktime_ns,
                last_ns: w.ktime_ns,
                attempts: 0,
            });
            p.attempts += 1;
            p.last_ns = w.ktime_ns;
            p.server = sock(w.dst, w.dport);
            return Vec::new();
        }
        if !msg.response || w.egress || w.sport != 53 {
            return Vec::new();
        }
        let Some(p) = self.pending.remove(&key) else {
            self.unmatched += 1;
            return Vec::new();
        };
        let addresses: Vec<IpAddr> = msg.addresses().collect();
        let mut r = DnsReport {
            owner: Owner::new(table, w.tgid, &w.comm),
            name: msg.question.name.clone(),
            qtype: dns::qtype_name(msg.question.qtype),
            server: p.server,
            tcp: p.tcp,
            rcode: Some(dns::rcode_name(msg.rcode).to_string()),
            addresses,
            attempts: p.attempts,
            start_ns: p.first_ns,
            end_ns: w.ktime_ns,
            timed_out: false,
            endpoint: endpoint_of(table, p.owner_tgid, &msg.question.name),
            findings: Vec::new(),
        };
        let mut out = Vec::new();
        if msg.rcode == 0 {
            self.remember_names(p.owner_tgid, &msg, w.ktime_ns);
            // A success explains failures of the same lookup's search-list variants.
            let name = &r.name;
            self.held.retain(|h| {
                !(h.owner_key == owner_key
                    && (h.report.name.starts_with(&format!("{name}."))
                        || name.starts_with(&format!("{}.", h.report.name))))
            });
            let d = r.end_ns.saturating_sub(r.start_ns);
            if d >= self.cfg.slow_ns {
                r.findings = self.dns_finding(&r, codes::DNS_SLOW, Severity::Warning);
            }
            out.push(r);
        } else if matches!(msg.rcode, 2 | 3 | 5) {
            self.held.push(HeldFailure {
                report: r,
                owner_key,
                at_ns: w.ktime_ns,
            });
        } else {
            out.push(r);
        }
        out
    }

    fn remember_names(&mut self, tgid: u32, msg: &dns::Message, now: u64) {
        if self.names.len() > MAX_NAMES {
            self.names
                .retain(|_, (_, t)| now.saturating_sub(*t) < NAME_TTL_NS);
            if self.names.len() > MAX_NAMES {
                self.names.clear();
            }
        }
        if self.any_names.len() > MAX_NAMES {
            self.any_names.clear();
        }
        for ip in msg.addresses() {
            self.names
                .insert((tgid, ip), (msg.question.name.clone(), now));
            self.any_names.insert(ip, (msg.question.name.clone(), now));
        }
    }

    fn dns_finding(
        &mut self,
        r: &DnsReport,
        code: &'static str,
        severity: Severity,
    ) -> Vec<Finding> {
        let name = r.owner.name();
        let took = r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6;
        // `nope.test (A, your GOPROXY)`.
        let looked_up = match &r.endpoint {
            Some(src) => format!("{} ({}, {})", r.name, r.qtype, src.note()),
            None => format!("{} ({})", r.name, r.qtype),
        };
        let tries = if r.attempts > 1 {
            format!(", {} attempts", r.attempts)
        } else {
            String::new()
        };
        let summary = match code {
            codes::DNS_FAILURE => format!(
                "{name}: lookup of {looked_up} failed: {} from resolver {}{tries}",
                r.rcode.as_deref().unwrap_or("?"),
                r.server
            ),
            codes::DNS_TIMEOUT => format!(
                "{name}: lookup of {looked_up} got no answer from resolver {} after {} attempt{} over {took:.0} ms",
                r.server,
                r.attempts,
                if r.attempts == 1 { "" } else { "s" }
            ),
            _ => format!(
                "{name}: lookup of {looked_up} took {took:.0} ms at resolver {}{tries}",
                r.server
            ),
        };
        let key = format!("{code}|{name}|{}|{}", r.name, r.server);
        if !self.reported.first(key, r.end_ns) {
            return Vec::new();
        }
        let mut m = Map::new();
        m.insert("exe".into(), json!(r.owner.exe));
        m.insert("comm".into(), json!(r.owner.comm));
        m.insert("name".into(), json!(r.name));
        m.insert("type".into(), json!(r.qtype));
        m.insert("resolver".into(), json!(r.server.to_string()));
        m.insert("transport".into(), json!(if r.tcp { "tcp" } else { "udp" }));
        m.insert("rcode".into(), json!(r.rcode));
        m.insert("attempts".into(), json!(r.attempts));
        m.insert("duration_ms".into(), json!(took));
        m.insert("addresses".into(), json!(r.addresses));
        let (mut cause, mut fix) = dns_cause_and_fix(code, r);
        if let Some(src) = &r.endpoint {
            m.insert(
                "endpoint_from".into(),
                serde_json::to_value(src).unwrap_or_default(),
            );
            cause = format!("{cause}; the name came from {}", src.describe());
            if !src.variable.contains(' ') && code != codes::DNS_SLOW {
                fix = format!("{fix}, or point {} at a server that works", src.variable);
            }
        }
        vec![Finding {
            code,
            severity,
            pid: r.owner.pid,
            summary,
            cause,
            fix,
            evidence: m,
        }]
    }

    fn timeout_report(
        &mut self,
        table: &ProcTable,
        key: LookupKey,
        p: Pending,
        now: u64,
    ) -> DnsReport {
        let endpoint = endpoint_of(table, p.owner_tgid, &key.1);
        let mut r = DnsReport {
            owner: Owner::new(table, p.owner_tgid, &p.comm),
            name: key.1,
            qtype: dns::qtype_name(key.2),
            server: p.server,
            tcp: p.tcp,
            rcode: None,
            addresses: Vec::new(),
            attempts: p.attempts,
            start_ns: p.first_ns,
            end_ns: now.max(p.last_ns),
            timed_out: true,
            endpoint,
            findings: Vec::new(),
        };
        r.findings = self.dns_finding(&r, codes::DNS_TIMEOUT, Severity::Error);
        r
    }

    /// Time-based conclusions: unanswered queries and held failures.
    /// `now_ns == u64::MAX` concludes everything (end of a trace).
    pub fn flush(&mut self, table: &ProcTable, now_ns: u64) -> Vec<DnsReport> {
        let mut out = Vec::new();
        let timeout = self.cfg.timeout_ns;
        let due: Vec<LookupKey> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ns.saturating_sub(p.last_ns) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some(p) = self.pending.remove(&k) {
                let at = if now_ns == u64::MAX {
                    p.last_ns
                } else {
                    now_ns
                };
                out.push(self.timeout_report(table, k, p, at));
            }
        }
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| now_ns.saturating_sub(h.at_ns) >= HOLD_NS);
        self.held = keep;
        for h in ready {
            let mut r = h.report;
            r.findings = self.dns_finding(&r, codes::DNS_FAILURE, Severity::Error);
            out.push(r);
        }
        out
    }

    /// The process exited: its unanswered queries were given up on (timed
    /// out, as far as it is concerned) and its held failures are final.
    pub fn on_exit(&mut self, table: &ProcTable, tgid: u32, now_ns: u64) -> Vec<DnsReport> {
        let mut out = Vec::new();
        let keys: Vec<LookupKey> = self
            .pending
            .keys()
            .filter(|k| k.0 == tgid as u64)
            .cloned()
            .collect();
        for k in keys {
            if let Some(p) = self.pending.remove(&k) {
                out.push(self.timeout_report(table, k, p, now_ns));
            }
        }
        let (mine, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.owner_key == tgid as u64);
        self.held = keep;
        for h in mine {
            let mut r = h.report;
            r.findings = self.dns_finding(&r, codes::DNS_FAILURE, Severity::Error);
            out.push(r);
        }
        out
    }
}

/// The setting (GOPROXY, PIP_INDEX_URL, …) of process `tgid` that named
/// the host `name`, if any.
fn endpoint_of(table: &ProcTable, tgid: u32, name: &str) -> Option<EndpointSource> {
    let e = table.get(tgid)?.current()?;
    source_of_name(&e.exe, &e.env, &e.argv, name)
}

/// What decided a DNS finding and what to type.
fn dns_cause_and_fix(code: &str, r: &DnsReport) -> (String, String) {
    let dig = format!("dig @{} {} {}", r.server.ip(), r.name, r.qtype);
    match code {
        codes::DNS_FAILURE => match r.rcode.as_deref() {
            Some("NXDOMAIN") => (
                format!(
                    "resolver {} says {} does not exist (NXDOMAIN)",
                    r.server, r.name
                ),
                format!(
                    "check the name for a typo and the search domains in /etc/resolv.conf ({dig})"
                ),
            ),
            other => (
                format!(
                    "resolver {} answered {} for {}",
                    r.server,
                    other.unwrap_or("an error"),
                    r.name
                ),
                format!(
                    "the resolver cannot answer: check its upstream or the nameserver lines in /etc/resolv.conf ({dig})"
                ),
            ),
        },
        codes::DNS_TIMEOUT => (
            format!(
                "resolver {} did not answer {} attempt{}",
                r.server,
                r.attempts,
                if r.attempts == 1 { "" } else { "s" }
            ),
            format!(
                "check that the resolver is reachable and the nameserver lines in /etc/resolv.conf ({dig})"
            ),
        ),
        _ => (
            format!("resolver {} answered late", r.server),
            format!(
                "time the resolver ({dig}); a slow upstream or a dropped first attempt is usual"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_parse::dns::tests::message;

    use crate::events::{WireKind, tests::wire};

    #[test]
    fn dns_over_tcp_has_a_length_prefix() {
        let mut a = DnsTracker::default();
        let table = ProcTable::default();
        let framed = |m: Vec<u8>| {
            let mut v = (m.len() as u16).to_be_bytes().to_vec();
            v.extend(m);
            v
        };
        let mut q = wire(
            WireKind::Dns,
            true,
            framed(message(3, "big.test", 1, 0, &[])),
            0,
        );
        q.tcp = true;
        a.on_wire(&table, &q);
        let mut r = wire(
            WireKind::Dns,
            false,
            framed(message(3, "big.test", 1, 0, &[[10, 0, 0, 9]])),
            1_000,
        );
        r.tcp = true;
        let out = a.on_wire(&table, &r);
        let d = &out[0];
        assert!(d.tcp);
        assert_eq!(d.addresses, vec!["10.0.0.9".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn dns_answer_failure_and_timeout() {
        let mut a = DnsTracker::default();
        let table = ProcTable::default();
        a.on_wire(
            &table,
            &wire(WireKind::Dns, true, message(1, "ok.test", 1, 0, &[]), 0),
        );
        let out = a.on_wire(
            &table,
            &wire(
                WireKind::Dns,
                false,
                message(1, "ok.test", 1, 0, &[[10, 0, 0, 5]]),
                2_000_000,
            ),
        );
        let r = &out[0];
        assert!(r.findings.is_empty());
        assert_eq!(a.name_for(9, "10.0.0.5".parse().unwrap()), Some("ok.test"));

        // A search-list NXDOMAIN followed by success is not a failure.
        a.on_wire(
            &table,
            &wire(
                WireKind::Dns,
                true,
                message(2, "pkg.test.corp", 1, 0, &[]),
                10,
            ),
        );
        a.on_wire(
            &table,
            &wire(
                WireKind::Dns,
                false,
                message(2, "pkg.test.corp", 1, 3, &[]),
                20,
            ),
        );
        a.on_wire(
            &table,
            &wire(WireKind::Dns, true, message(3, "pkg.test", 1, 0, &[]), 30),
        );
        a.on_wire(
            &table,
            &wire(
                WireKind::Dns,
                false,
                message(3, "pkg.test", 1, 0, &[[1, 1, 1, 1]]),
                40,
            ),
        );
        assert!(
            a.flush(&table, u64::MAX)
                .iter()
                .all(|r| r.findings.is_empty())
        );

        a.on_wire(
            &table,
            &wire(WireKind::Dns, true, message(4, "nope.test", 1, 0, &[]), 50),
        );
        a.on_wire(
            &table,
            &wire(WireKind::Dns, false, message(4, "nope.test", 1, 3, &[]), 60),
        );
        let out = a.on_exit(&table, 9, 70);
        let r = &out[0];
        assert_eq!(r.findings[0].code, "net.dns_failure");
        assert!(r.findings[0].summary.contains("NXDOMAIN"));

        a.on_wire(
            &table,
            &wire(
                WireKind::Dns,
                true,
                message(5, "silent.test", 1, 0, &[]),
                100,
            ),
        );
        a.on_wire(
            &table,
            &wire(
                WireKind::Dns,
                true,
                message(5, "silent.test", 1, 0, &[]),
                200,
            ),
        );
        let out = a.flush(&table, 200 + 5_000_000_000);
        let r = &out[0];
        assert_eq!(r.findings[0].code, "net.dns_timeout");
        assert_eq!(r.attempts, 2);
    }

    /// A failed lookup of a host a setting named (GOPROXY) says so, with
    /// the setting in its cause, fix and evidence.
    #[test]
    fn a_failed_lookup_of_a_configured_host_names_the_setting() {
        let mut a = DnsTracker::default();
        let mut table = ProcTable::default();
        let Ok(crate::events::Event::Exec(mut e)) =
            crate::events::decode(&crate::events::tests::exec_record(
                "/usr/local/go/bin/go",
                "/usr/local/go/bin/go",
                &["go", "mod", "download"],
                &["GOPROXY=http://nope.test:3000"],
                0,
            ))
        else {
            panic!("exec record")
        };
        (e.pid, e.tgid) = (9, 9);
        table.on_exec(std::sync::Arc::from(e));
        // The healthy twin: the same host answering is attributed, and silent.
        a.on_wire(
            &table,
            &wire(WireKind::Dns, true, message(6, "nope.test", 1, 0, &[]), 1),
        );
        let ok = a.on_wire(
            &table,
            &wire(
                WireKind::Dns,
                false,
                message(6, "nope.test", 1, 0, &[[10, 0, 0, 7]]),
                2,
            ),
        );
        assert_eq!(ok.len(), 1);
        assert_eq!(
            ok[0].endpoint.as_ref().map(|s| s.variable.as_str()),
            Some("GOPROXY")
        );
        assert!(ok[0].findings.is_empty(), "{:?}", ok[0].findings);
        a.on_wire(
            &table,
            &wire(WireKind::Dns, true, message(7, "nope.test", 1, 0, &[]), 10),
        );
        a.on_wire(
            &table,
            &wire(WireKind::Dns, false, message(7, "nope.test", 1, 3, &[]), 20),
        );
        let out = a.on_exit(&table, 9, 30);
        let r = &out[0];
        assert_eq!(
            r.endpoint.as_ref().map(|s| s.variable.as_str()),
            Some("GOPROXY")
        );
        let f = &r.findings[0];
        assert_eq!(f.code, "net.dns_failure");
        assert!(
            f.summary
                .starts_with("go: lookup of nope.test (A, your GOPROXY) failed: NXDOMAIN"),
            "{}",
            f.summary
        );
        assert!(
            f.cause
                .ends_with("the name came from GOPROXY=http://nope.test:3000 in the environment"),
            "{}",
            f.cause
        );
        assert!(
            f.fix.ends_with("or point GOPROXY at a server that works"),
            "{}",
            f.fix
        );
        assert_eq!(f.evidence["endpoint_from"]["variable"], "GOPROXY");
    }
}
