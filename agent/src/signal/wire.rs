//! Diagnosis of what the wire capture saw: TLS handshakes per connection and
//! DNS lookups per process, with their `tls.*` and `net.dns_*` findings, and
//! the names each process looked up, so connection findings can say which
//! host an address came from.
//!
//! Owns: per-connection and per-lookup state and their rules. Must not:
//! print or touch the kernel. State is bounded and expires.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{
    dns,
    events::{Wire, WireKind},
    finding::{Dedup, Finding, Severity},
    process::fsview::basename,
    process::table::ProcTable,
    scrub::url::redact_urls,
    tls::{self, Handshake, Side, Verdict, alert_name, version_name},
};

/// Thresholds of the TLS and DNS findings.
#[derive(Clone, Debug)]
pub struct WireConfig {
    pub slow_tls_ns: u64,
    pub slow_dns_ns: u64,
    /// A query unanswered this long after its last attempt has timed out.
    pub dns_timeout_ns: u64,
}

impl Default for WireConfig {
    fn default() -> Self {
        Self {
            slow_tls_ns: 1_000_000_000,
            slow_dns_ns: 1_000_000_000,
            dns_timeout_ns: 5_000_000_000,
        }
    }
}

/// Counters of what could not be used.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WireStats {
    /// DNS payloads that did not parse.
    pub dns_malformed: u64,
    /// TLS segments/records that could not be followed or parsed.
    pub tls_malformed: u64,
    /// Responses that matched no query seen.
    pub dns_unmatched: u64,
}

/// The process a packet belongs to.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
}

impl Owner {
    /// Process `tgid` as the process table knows it (`comm` from the kernel).
    fn new(table: &ProcTable, tgid: u32, comm: &str) -> Owner {
        let exe = table
            .get(tgid)
            .and_then(|p| p.current())
            .map(|e| e.exe.clone())
            .filter(|e| !e.is_empty());
        Owner {
            pid: tgid,
            comm: comm.to_string(),
            exe,
        }
    }

    /// Short name for summaries.
    pub fn name(&self) -> String {
        match (&self.exe, self.pid) {
            (Some(e), _) => basename(e).to_string(),
            (None, 0) => "a remote client".into(),
            (None, _) if !self.comm.is_empty() => self.comm.clone(),
            _ => "?".into(),
        }
    }
}

/// One TLS handshake, as the agent saw it.
#[derive(Clone, Debug, Serialize)]
pub struct TlsReport {
    pub owner: Owner,
    /// The local end's role.
    pub local: Side,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub sni: Option<String>,
    /// Versions the client offered, highest first (names).
    pub offered: Vec<String>,
    pub version: Option<String>,
    pub cipher_suite: Option<u16>,
    pub alpn: Vec<String>,
    pub verdict: Verdict,
    pub start_ns: u64,
    pub end_ns: u64,
    /// CA-bundle variables in the owner's environment.
    pub ca_env: Vec<(String, String)>,
    /// The setting that named the server (GOPROXY, PIP_INDEX_URL, …).
    pub endpoint: Option<crate::process::endpoints::EndpointSource>,
    /// What the owner's TLS library said (uprobes): e.g.
    /// `openssl_verify_result: self-signed certificate`.
    pub library: Vec<(String, String)>,
    pub findings: Vec<Finding>,
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
    pub findings: Vec<Finding>,
}

/// What the wire analyzer produced for one packet or flush.
#[derive(Clone, Debug)]
pub enum WireOutput {
    Tls(Box<TlsReport>),
    Dns(Box<DnsReport>),
}

struct TlsConn {
    hs: Handshake,
    local: Side,
    owner_tgid: u32,
    comm: String,
    client: SocketAddr,
    server: SocketAddr,
    last_ns: u64,
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

const CA_VARS: &[&str] = &["SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"];
const MAX_CONNS: usize = 16_384;
const MAX_PENDING: usize = 16_384;
const MAX_NAMES: usize = 65_536;
const CONN_IDLE_NS: u64 = 60_000_000_000;
const NAME_TTL_NS: u64 = 600_000_000_000;
const HOLD_NS: u64 = 1_000_000_000;
/// Library notes older than this are not about the current handshake.
const NOTE_WINDOW_NS: u64 = 10_000_000_000;

#[derive(Default)]
pub struct WireAnalyzer {
    cfg: WireConfig,
    conns: HashMap<u64, TlsConn>,
    /// Client ends seen locally, so the server end of the same connection is
    /// not reported twice when both ends are on this host.
    local_clients: HashMap<(SocketAddr, SocketAddr), u64>,
    pending: HashMap<LookupKey, Pending>,
    held: Vec<HeldFailure>,
    /// Names looked up, per (tgid, address), and per address for any process.
    names: HashMap<(u32, IpAddr), (String, u64)>,
    any_names: HashMap<IpAddr, (String, u64)>,
    reported: Dedup,
    /// What TLS libraries said, per process (uprobes), until a handshake uses it.
    lib_notes: HashMap<u32, Vec<(u32, i64, u64, u64)>>,
    /// Failed handshakes held briefly: the library's reason (e.g. OpenSSL's
    /// verification result, asked for after the failure) may still come.
    held_tls: Vec<(TlsConn, u64)>,
    pub stats: WireStats,
}

fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

impl WireAnalyzer {
    pub fn new(cfg: WireConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    /// The host name `tgid` (or any process) looked up that answered `ip`.
    pub fn name_for(&self, tgid: u32, ip: IpAddr) -> Option<&str> {
        self.names
            .get(&(tgid, ip))
            .or_else(|| self.any_names.get(&ip))
            .map(|(n, _)| n.as_str())
    }

    pub fn on_wire(&mut self, table: &ProcTable, w: &Wire) -> Vec<WireOutput> {
        match w.kind {
            WireKind::Tls => self.on_tls(table, w).into_iter().collect(),
            WireKind::Dns => self.on_dns(table, w),
        }
    }

    fn on_tls(&mut self, table: &ProcTable, w: &Wire) -> Option<WireOutput> {
        let ends = if w.tcp_flags & agent_common::TCP_FLAG_RST != 0 {
            Some(true)
        } else if w.tcp_flags & agent_common::TCP_FLAG_FIN != 0 {
            Some(false)
        } else {
            None
        };
        if !self.conns.contains_key(&w.cookie) {
            // A connection starts at its ClientHello (the kernel sends nothing else first).
            let is_ch = w.data.len() >= 6 && w.data[0] == 0x16 && w.data[5] == 1;
            if !is_ch {
                return None;
            }
            let local = if w.egress { Side::Client } else { Side::Server };
            let (client, server) = (sock(w.src, w.sport), sock(w.dst, w.dport));
            if local == Side::Client {
                if self.local_clients.len() > MAX_CONNS {
                    self.local_clients.clear();
                }
                self.local_clients.insert((client, server), w.ktime_ns);
            } else if self.local_clients.contains_key(&(client, server)) {
                // Both ends are local: the client end tells the story.
                return None;
            }
            if self.conns.len() >= MAX_CONNS {
                self.expire_conns(w.ktime_ns, 0);
            }
            self.conns.insert(
                w.cookie,
                TlsConn {
                    hs: Handshake::default(),
                    local,
                    owner_tgid: w.tgid,
                    comm: w.comm.clone(),
                    client,
                    server,
                    last_ns: w.ktime_ns,
                },
            );
        }
        let c = self.conns.get_mut(&w.cookie)?;
        let from = if w.egress == (c.local == Side::Client) {
            Side::Client
        } else {
            Side::Server
        };
        c.last_ns = w.ktime_ns;
        let before = c.hs.malformed;
        c.hs.feed(
            from,
            w.seq,
            w.payload_len as usize,
            &w.data,
            w.ktime_ns,
            ends,
        );
        self.stats.tls_malformed += c.hs.malformed - before;
        let failed = !matches!(c.hs.verdict.as_ref()?, Verdict::Completed);
        let c = self.conns.remove(&w.cookie)?;
        let has_reason = self.lib_notes.get(&c.owner_tgid).is_some_and(|n| {
            n.iter().any(|x| {
                matches!(
                    x.0,
                    agent_common::TLSLIB_OSSL_VERIFY | agent_common::TLSLIB_GO_ALERT
                )
            })
        });
        if failed && !has_reason && c.owner_tgid != 0 {
            self.held_tls.push((c, w.ktime_ns));
            return None;
        }
        Some(WireOutput::Tls(Box::new(self.tls_report(table, c))))
    }

    /// A TLS library's note (uprobe): kept for the process's handshake, and
    /// it releases that process's held failures.
    pub fn on_tls_lib(&mut self, table: &ProcTable, l: &crate::events::TlsLib) -> Vec<WireOutput> {
        if self.lib_notes.len() > MAX_CONNS {
            self.lib_notes.clear();
        }
        let notes = self.lib_notes.entry(l.tgid).or_default();
        notes.retain(|n| l.ktime_ns.saturating_sub(n.2) < NOTE_WINDOW_NS);
        if notes.len() < 16 {
            notes.push((l.kind, l.value, l.ktime_ns, l.aux));
        }
        // A reason about the certificate is the last word; the handshake's
        // own result comes before it (the application asks for the reason
        // after the failure), so it releases nothing.
        if matches!(
            l.kind,
            agent_common::TLSLIB_OSSL_VERIFY | agent_common::TLSLIB_GO_ALERT
        ) {
            self.release_tls(table, |c, _| c.owner_tgid == l.tgid)
        } else {
            Vec::new()
        }
    }

    fn release_tls(
        &mut self,
        table: &ProcTable,
        pick: impl Fn(&TlsConn, u64) -> bool,
    ) -> Vec<WireOutput> {
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held_tls)
            .into_iter()
            .partition(|(c, at)| pick(c, *at));
        self.held_tls = keep;
        ready
            .into_iter()
            .map(|(c, _)| WireOutput::Tls(Box::new(self.tls_report(table, c))))
            .collect()
    }

    fn tls_report(&mut self, table: &ProcTable, c: TlsConn) -> TlsReport {
        let exec = table.get(c.owner_tgid).and_then(|p| p.current());
        let owner = Owner::new(table, c.owner_tgid, &c.comm);
        let ca_env: Vec<(String, String)> = exec
            .map(|e| {
                e.env
                    .iter()
                    .filter(|(k, _)| CA_VARS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), redact_urls(v)))
                    .collect()
            })
            .unwrap_or_default();
        let ch = c.hs.client_hello.clone().unwrap_or_default();
        let offered: Vec<String> = ch.offered().into_iter().map(version_name).collect();
        let version = c.hs.version();
        let verdict = c.hs.verdict.clone().unwrap_or(Verdict::Completed);
        let start_ns = c.hs.start_ns;
        let end_ns = c.hs.end_ns.unwrap_or(c.last_ns);
        let library: Vec<(String, String)> = self
            .lib_notes
            .remove(&c.owner_tgid)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.2 >= c.hs.start_ns)
            // A completed handshake's earlier would-block returns say nothing.
            .filter(|n| {
                !(n.0 == agent_common::TLSLIB_OSSL_HS_RET
                    && matches!(c.hs.verdict, Some(Verdict::Completed)))
            })
            .filter_map(|(k, v, _, aux)| crate::signal::tls::libs::describe(k, v, aux))
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let endpoint = exec.and_then(|e| {
            crate::process::endpoints::source_of(
                &e.exe,
                &e.env,
                &e.argv,
                c.server.ip(),
                c.server.port(),
                ch.sni
                    .as_deref()
                    .or_else(|| self.name_for(c.owner_tgid, c.server.ip())),
            )
        });
        let mut r = TlsReport {
            endpoint,
            library,
            owner,
            local: c.local,
            client: c.client,
            server: c.server,
            sni: ch.sni.clone(),
            offered,
            version: version.map(version_name),
            cipher_suite: c.hs.server_hello.as_ref().map(|s| s.cipher_suite),
            alpn: ch.alpn.clone(),
            verdict,
            start_ns,
            end_ns,
            ca_env,
            findings: Vec::new(),
        };
        r.findings = self.tls_findings(&r);
        r
    }

    fn tls_findings(&mut self, r: &TlsReport) -> Vec<Finding> {
        let name = if r.owner.pid == 0 && r.local == Side::Client {
            // Connected before the agent started: its owner was not recorded.
            "a local process".to_string()
        } else {
            r.owner.name()
        };
        let host = match &r.sni {
            Some(s) => format!("{} ({s})", r.server),
            None => r.server.to_string(),
        };
        let host = match &r.endpoint {
            Some(src) => format!("{host} ({})", src.note()),
            None => host,
        };
        let offered = if r.offered.is_empty() {
            "?".to_string()
        } else {
            r.offered.join(", ")
        };
        let evidence = || {
            let mut m = Map::new();
            m.insert("exe".into(), json!(r.owner.exe));
            m.insert("comm".into(), json!(r.owner.comm));
            m.insert("local_side".into(), json!(r.local.name()));
            m.insert("server".into(), json!(r.server.to_string()));
            m.insert("client".into(), json!(r.client.to_string()));
            m.insert("sni".into(), json!(r.sni));
            m.insert("offered_versions".into(), json!(r.offered));
            m.insert("negotiated_version".into(), json!(r.version));
            m.insert("alpn".into(), json!(r.alpn));
            m.insert(
                "duration_ms".into(),
                json!(r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6),
            );
            m.insert(
                "verdict".into(),
                serde_json::to_value(&r.verdict).unwrap_or(Value::Null),
            );
            m.insert(
                "library".into(),
                Value::Object(
                    r.library
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect(),
                ),
            );
            m.insert(
                "ca_env".into(),
                Value::Object(
                    r.ca_env
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect(),
                ),
            );
            m
        };
        let ca_note = if r.ca_env.is_empty() {
            "no SSL_CERT_FILE / SSL_CERT_DIR / REQUESTS_CA_BUNDLE set: the library's default CA store was used".to_string()
        } else {
            let v: Vec<String> = r.ca_env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("CA bundle from {}", v.join(", "))
        };
        // What the client's library said about the certificate, if anything.
        let lib_cert = r.library.iter().find_map(|(k, v)| match k.as_str() {
            "openssl_verify_result" => Some(format!("OpenSSL: {v}")),
            "go_alert_sent"
                if matches!(
                    v.as_str(),
                    "bad_certificate"
                        | "unknown_ca"
                        | "certificate_expired"
                        | "certificate_unknown"
                        | "unsupported_certificate"
                        | "certificate_revoked"
                ) =>
            {
                Some(format!("Go crypto/tls sent alert {v}"))
            }
            _ => None,
        });
        let (code, severity, summary) = match &r.verdict {
            Verdict::Completed => {
                let d = r.end_ns.saturating_sub(r.start_ns);
                if d < self.cfg.slow_tls_ns {
                    return Vec::new();
                }
                (
                    "tls.slow_handshake",
                    Severity::Warning,
                    format!(
                        "{name} → {host}: TLS handshake took {:.0} ms ({})",
                        d as f64 / 1e6,
                        r.version.as_deref().unwrap_or("?")
                    ),
                )
            }
            Verdict::Alert { alert } => {
                let by = alert.from.name();
                let d = alert.description;
                let aname = alert_name(d);
                if d == 70 {
                    let what = match &r.version {
                        Some(v) if alert.from == Side::Client => {
                            format!(
                                "the client refused {v} chosen by the server (client offers {offered})"
                            )
                        }
                        _ => format!(
                            "the server refused every version the client offered ({offered})"
                        ),
                    };
                    (
                        "tls.version_mismatch",
                        Severity::Error,
                        format!("{name} → {host}: {what}; {by} sent alert {aname}"),
                    )
                } else if tls::is_certificate_alert(d) {
                    let whose = if alert.from == Side::Client {
                        "server's"
                    } else {
                        "client's"
                    };
                    let detail = lib_cert
                        .as_ref()
                        .map(|d| format!(", {d}"))
                        .unwrap_or_default();
                    (
                        "tls.untrusted_certificate",
                        Severity::Error,
                        format!(
                            "{name} → {host}: the {by} rejected the {whose} certificate (alert {aname}{detail}); {ca_note}"
                        ),
                    )
                } else {
                    (
                        "tls.handshake_failure",
                        Severity::Error,
                        format!(
                            "{name} → {host}: TLS handshake failed, {by} sent alert {aname} ({})",
                            r.version.as_deref().unwrap_or("before ServerHello")
                        ),
                    )
                }
            }
            Verdict::EncryptedAlert { from: Side::Client }
            | Verdict::Closed {
                by: Side::Client, ..
            } if lib_cert.is_some() => (
                "tls.untrusted_certificate",
                Severity::Error,
                format!(
                    "{name} → {host}: the client rejected the server's certificate ({}; the alert itself is encrypted in {}); {ca_note}",
                    lib_cert.as_deref().unwrap_or(""),
                    r.version.as_deref().unwrap_or("TLS")
                ),
            ),
            Verdict::EncryptedAlert { from } => (
                "tls.handshake_failure",
                Severity::Error,
                format!(
                    "{name} → {host}: the {} aborted the {} handshake with an encrypted alert{}",
                    from.name(),
                    r.version.as_deref().unwrap_or("TLS"),
                    if *from == Side::Client {
                        format!(
                            " after the server's certificate (most often an untrusted certificate; {ca_note})"
                        )
                    } else {
                        String::new()
                    }
                ),
            ),
            Verdict::Closed { by, reset } => (
                "tls.handshake_failure",
                Severity::Error,
                format!(
                    "{name} → {host}: the {} {} the connection {} (offered {offered})",
                    by.name(),
                    if *reset { "reset" } else { "closed" },
                    if r.version.is_some() {
                        "during the handshake"
                    } else {
                        "before answering the ClientHello"
                    }
                ),
            ),
            Verdict::NotTls { from } => (
                "tls.handshake_failure",
                Severity::Error,
                format!(
                    "{name} → {host}: the {} answered the ClientHello with something that is not TLS (plain HTTP on a TLS port?)",
                    from.name()
                ),
            ),
        };
        let key = format!("{code}|{name}|{}|{:?}", r.server, r.sni);
        if !self.reported.first(key, r.end_ns) {
            return Vec::new();
        }
        let (cause, fix) = tls_cause_and_fix(code, r, lib_cert.as_deref(), &ca_note);
        let mut e = evidence();
        e.insert(
            "endpoint_from".into(),
            serde_json::to_value(&r.endpoint).unwrap_or(Value::Null),
        );
        vec![Finding {
            code,
            severity,
            pid: r.owner.pid,
            summary,
            cause,
            fix,
            evidence: e,
        }]
    }

    fn expire_conns(&mut self, now: u64, idle: u64) {
        self.conns
            .retain(|_, c| now.saturating_sub(c.last_ns) < idle.max(1));
    }

    fn on_dns(&mut self, table: &ProcTable, w: &Wire) -> Vec<WireOutput> {
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
                self.stats.dns_malformed += 1;
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
            self.stats.dns_unmatched += 1;
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
            if d >= self.cfg.slow_dns_ns {
                r.findings = self.dns_finding(&r, "net.dns_slow", Severity::Warning);
            }
            out.push(WireOutput::Dns(Box::new(r)));
        } else if matches!(msg.rcode, 2 | 3 | 5) {
            self.held.push(HeldFailure {
                report: r,
                owner_key,
                at_ns: w.ktime_ns,
            });
        } else {
            out.push(WireOutput::Dns(Box::new(r)));
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
        let tries = if r.attempts > 1 {
            format!(", {} attempts", r.attempts)
        } else {
            String::new()
        };
        let summary = match code {
            "net.dns_failure" => format!(
                "{name}: lookup of {} ({}) failed: {} from resolver {}{tries}",
                r.name,
                r.qtype,
                r.rcode.as_deref().unwrap_or("?"),
                r.server
            ),
            "net.dns_timeout" => format!(
                "{name}: lookup of {} ({}) got no answer from resolver {} after {} attempt{} over {took:.0} ms",
                r.name,
                r.qtype,
                r.server,
                r.attempts,
                if r.attempts == 1 { "" } else { "s" }
            ),
            _ => format!(
                "{name}: lookup of {} ({}) took {took:.0} ms at resolver {}{tries}",
                r.name, r.qtype, r.server
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
        let (cause, fix) = dns_cause_and_fix(code, r);
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
            findings: Vec::new(),
        };
        r.findings = self.dns_finding(&r, "net.dns_timeout", Severity::Error);
        r
    }

    /// Time-based conclusions: unanswered queries, held failures, idle
    /// handshakes. `now_ns == u64::MAX` concludes everything (end of a trace).
    pub fn flush(&mut self, table: &ProcTable, now_ns: u64) -> Vec<WireOutput> {
        let mut out = Vec::new();
        let timeout = self.cfg.dns_timeout_ns;
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
                out.push(WireOutput::Dns(Box::new(
                    self.timeout_report(table, k, p, at),
                )));
            }
        }
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| now_ns.saturating_sub(h.at_ns) >= HOLD_NS);
        self.held = keep;
        for h in ready {
            let mut r = h.report;
            r.findings = self.dns_finding(&r, "net.dns_failure", Severity::Error);
            out.push(WireOutput::Dns(Box::new(r)));
        }
        for o in self.release_tls(table, |_, at| now_ns.saturating_sub(at) >= HOLD_NS) {
            out.push(o);
        }
        self.expire_conns(now_ns, CONN_IDLE_NS);
        self.local_clients
            .retain(|_, t| now_ns.saturating_sub(*t) < CONN_IDLE_NS);
        out
    }

    /// The process exited: its unanswered queries were given up on (timed
    /// out, as far as it is concerned) and its held failures are final.
    pub fn on_exit(&mut self, table: &ProcTable, tgid: u32, now_ns: u64) -> Vec<WireOutput> {
        let mut out = self.release_tls(table, |c, _| c.owner_tgid == tgid);
        self.lib_notes.remove(&tgid);
        let keys: Vec<LookupKey> = self
            .pending
            .keys()
            .filter(|k| k.0 == tgid as u64)
            .cloned()
            .collect();
        for k in keys {
            if let Some(p) = self.pending.remove(&k) {
                out.push(WireOutput::Dns(Box::new(
                    self.timeout_report(table, k, p, now_ns),
                )));
            }
        }
        let (mine, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.owner_key == tgid as u64);
        self.held = keep;
        for h in mine {
            let mut r = h.report;
            r.findings = self.dns_finding(&r, "net.dns_failure", Severity::Error);
            out.push(WireOutput::Dns(Box::new(r)));
        }
        out
    }
}

/// What decided a TLS finding and what to type.
fn tls_cause_and_fix(
    code: &str,
    r: &TlsReport,
    lib_cert: Option<&str>,
    ca_note: &str,
) -> (String, String) {
    let sni = r.sni.clone().unwrap_or_else(|| r.server.ip().to_string());
    let probe = format!(
        "openssl s_client -connect {} -servername {sni} </dev/null",
        r.server
    );
    let from = r
        .endpoint
        .as_ref()
        .map(|s| format!("; the server came from {}", s.describe()))
        .unwrap_or_default();
    match code {
        "tls.untrusted_certificate" => (
            format!(
                "{}; {ca_note}{from}",
                lib_cert.unwrap_or("the client refused the server's certificate")
            ),
            if r.ca_env.is_empty() {
                format!(
                    "trust the CA that signed {sni}'s certificate: copy it to /usr/local/share/ca-certificates/ and run update-ca-certificates, or export SSL_CERT_FILE=/path/to/ca.pem (see the chain with {probe})"
                )
            } else {
                format!(
                    "point the CA variable at a bundle that holds the CA of {sni}'s certificate (see the chain with {probe})"
                )
            },
        ),
        "tls.version_mismatch" => (
            format!(
                "the client offers {} and the server {}{from}",
                if r.offered.is_empty() {
                    "?".to_string()
                } else {
                    r.offered.join(", ")
                },
                r.version
                    .as_deref()
                    .map(|v| format!("chose {v}"))
                    .unwrap_or_else(|| "accepts none of them".into())
            ),
            format!(
                "enable a version both support (TLS 1.2 or 1.3) on the server, or the client's minimum/maximum version setting; check with {probe} -tls1_2"
            ),
        ),
        "tls.slow_handshake" => (
            format!(
                "the handshake took {:.0} ms{from}",
                r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6
            ),
            format!(
                "time it from here with {probe}; a slow server or OCSP/CRL fetch on its side is usual"
            ),
        ),
        _ => (
            format!(
                "{}{from}",
                match &r.verdict {
                    Verdict::NotTls { .. } =>
                        "the server does not speak TLS on this port".to_string(),
                    Verdict::Closed { reset: true, .. } =>
                        "the connection was reset during the handshake".to_string(),
                    Verdict::Closed { .. } =>
                        "the connection was closed during the handshake".to_string(),
                    _ => "a TLS alert ended the handshake".to_string(),
                }
            ),
            format!("reproduce it with {probe} and compare with the client's settings"),
        ),
    }
}

/// What decided a DNS finding and what to type.
fn dns_cause_and_fix(code: &str, r: &DnsReport) -> (String, String) {
    let dig = format!("dig @{} {} {}", r.server.ip(), r.name, r.qtype);
    match code {
        "net.dns_failure" => match r.rcode.as_deref() {
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
        "net.dns_timeout" => (
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
    use crate::{dns::tests::message, tls::tests as t};

    fn wire(kind: WireKind, egress: bool, data: Vec<u8>, ns: u64) -> Wire {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (port_a, port_b) = (40000, if kind == WireKind::Dns { 53 } else { 443 });
        Wire {
            kind,
            egress,
            tcp: kind == WireKind::Tls,
            pid: 9,
            tgid: 9,
            uid: 0,
            cgroup_id: 0,
            comm: "curl".into(),
            cookie: 77,
            src: if egress { a } else { b },
            sport: if egress { port_a } else { port_b },
            dst: if egress { b } else { a },
            dport: if egress { port_b } else { port_a },
            seq: 1,
            payload_len: data.len() as u32,
            tcp_flags: 0,
            ktime_ns: ns,
            data,
        }
    }

    #[test]
    fn version_mismatch_names_offer_and_refuser() {
        let mut a = WireAnalyzer::default();
        let table = ProcTable::default();
        let ch = t::client_hello(&[0x0303], "tls13.test", &[], 0x0303);
        assert!(
            a.on_wire(&table, &wire(WireKind::Tls, true, ch, 100))
                .is_empty()
        );
        let out = a.on_wire(
            &table,
            &wire(
                WireKind::Tls,
                false,
                t::record(tls::CT_ALERT, &[2, 70]),
                200,
            ),
        );
        // A failure waits for the library's reason: released by the exit.
        assert!(out.is_empty());
        let out = a.on_exit(&table, 9, 300);
        let WireOutput::Tls(r) = &out[0] else {
            panic!()
        };
        assert_eq!(r.findings[0].code, "tls.version_mismatch");
        assert!(
            r.findings[0].summary.contains("server refused"),
            "{}",
            r.findings[0].summary
        );
        assert!(r.findings[0].summary.contains("TLS 1.2"));
        assert_eq!(r.sni.as_deref(), Some("tls13.test"));
    }

    #[test]
    fn both_ends_local_reports_once() {
        let mut a = WireAnalyzer::default();
        let table = ProcTable::default();
        let ch = t::client_hello(&[0x0304], "x", &[], 0x0303);
        a.on_wire(&table, &wire(WireKind::Tls, true, ch.clone(), 1));
        // The same packet arriving at the local server's socket.
        let mut srv = wire(WireKind::Tls, false, ch, 2);
        srv.cookie = 78;
        (srv.src, srv.sport, srv.dst, srv.dport) = (
            "10.0.0.1".parse().unwrap(),
            40000,
            "10.0.0.2".parse().unwrap(),
            443,
        );
        srv.tgid = 0;
        a.on_wire(&table, &srv);
        assert_eq!(a.conns.len(), 1);
    }

    #[test]
    fn dns_over_tcp_has_a_length_prefix() {
        let mut a = WireAnalyzer::default();
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
        let WireOutput::Dns(d) = &out[0] else {
            panic!()
        };
        assert!(d.tcp);
        assert_eq!(d.addresses, vec!["10.0.0.9".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn dns_answer_failure_and_timeout() {
        let mut a = WireAnalyzer::default();
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
        let WireOutput::Dns(r) = &out[0] else {
            panic!()
        };
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
        assert!(a.flush(&table, u64::MAX).iter().all(|o| match o {
            WireOutput::Dns(r) => r.findings.is_empty(),
            _ => true,
        }));

        a.on_wire(
            &table,
            &wire(WireKind::Dns, true, message(4, "nope.test", 1, 0, &[]), 50),
        );
        a.on_wire(
            &table,
            &wire(WireKind::Dns, false, message(4, "nope.test", 1, 3, &[]), 60),
        );
        let out = a.on_exit(&table, 9, 70);
        let WireOutput::Dns(r) = &out[0] else {
            panic!()
        };
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
        let WireOutput::Dns(r) = &out[0] else {
            panic!()
        };
        assert_eq!(r.findings[0].code, "net.dns_timeout");
        assert_eq!(r.attempts, 2);
    }
}
