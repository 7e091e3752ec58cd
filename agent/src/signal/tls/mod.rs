//! The TLS signal: handshakes per connection from the wire capture, what
//! the TLS libraries said through their uprobes, the `tls.*` findings
//! (`rules`), and where those uprobes go (`libs`: the target table,
//! `probes`: the attach policy).
//!
//! Owns: per-connection state, bounded and expiring. Must not: print or
//! touch the kernel beyond attaching its uprobes (`probes`).

pub mod codes;
pub mod render;

pub mod goplaces;
pub mod libs;

pub use libs::LibNote;
pub mod probes;
mod rules;
pub mod targets;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use agent_parse::tls::{Handshake, Side, Verdict, version_name};
use serde::Serialize;

use crate::{
    events::Wire,
    finding::{Dedup, Finding},
    process::{endpoints::EndpointSource, names::HostNames, owner::Owner, table::ProcTable},
    scrub::url::redact_urls,
};

/// The IANA name of a cipher suite (`TLS_AES_128_GCM_SHA256`), as the
/// semantic conventions' `tls.cipher` wants it; rustls carries the IANA
/// registry's table, so none is kept here. Its TLS 1.3 names say `TLS13_`
/// where IANA says `TLS_`. An unregistered value stays hex.
pub fn cipher_name(suite: u16) -> String {
    match rustls::CipherSuite::from(suite).as_str() {
        Some(n) => match n.strip_prefix("TLS13_") {
            Some(rest) => format!("TLS_{rest}"),
            None => n.to_string(),
        },
        None => format!("0x{suite:04x}"),
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
    pub endpoint: Option<EndpointSource>,
    /// What the owner's TLS library said (uprobes): e.g.
    /// `openssl_verify_result: self-signed certificate`.
    pub library: Vec<LibNote>,
    pub findings: Vec<Finding>,
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

const CA_VARS: &[&str] = &["SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"];
const MAX_CONNS: usize = 16_384;
const CONN_IDLE_NS: u64 = 60_000_000_000;
const HOLD_NS: u64 = 1_000_000_000;
/// Library notes older than this are not about the current handshake.
const NOTE_WINDOW_NS: u64 = 10_000_000_000;

/// Thresholds of the TLS findings.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub slow_ns: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            slow_ns: 1_000_000_000,
        }
    }
}

#[derive(Default)]
pub struct TlsTracker {
    cfg: TlsConfig,
    conns: HashMap<u64, TlsConn>,
    /// Client ends seen locally, so the server end of the same connection is
    /// not reported twice when both ends are on this host.
    local_clients: HashMap<(SocketAddr, SocketAddr), u64>,
    reported: Dedup,
    /// What TLS libraries said, per process (uprobes), until a handshake uses it.
    lib_notes: HashMap<u32, Vec<(u32, i64, u64, u64)>>,
    /// Failed handshakes held briefly: the library's reason (e.g. OpenSSL's
    /// verification result, asked for after the failure) may still come.
    held_tls: Vec<(TlsConn, u64)>,
    /// TLS segments/records that could not be followed or parsed.
    pub malformed: u64,
}

fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

impl TlsTracker {
    pub fn new(cfg: TlsConfig) -> Self {
        Self {
            cfg,
            ..Default::default()
        }
    }

    /// A TLS record segment on the wire (the cgroup skb capture).
    pub fn on_wire(
        &mut self,
        table: &ProcTable,
        w: &Wire,
        names: &dyn HostNames,
    ) -> Option<TlsReport> {
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
        self.malformed += c.hs.malformed - before;
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
        Some(self.report(table, c, names))
    }

    /// A TLS library's note (uprobe): kept for the process's handshake, and
    /// it releases that process's held failures.
    pub fn on_lib(
        &mut self,
        table: &ProcTable,
        l: &crate::events::TlsLib,
        names: &dyn HostNames,
    ) -> Vec<TlsReport> {
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
            self.release(table, names, |c, _| c.owner_tgid == l.tgid)
        } else {
            Vec::new()
        }
    }

    fn release(
        &mut self,
        table: &ProcTable,
        names: &dyn HostNames,
        pick: impl Fn(&TlsConn, u64) -> bool,
    ) -> Vec<TlsReport> {
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held_tls)
            .into_iter()
            .partition(|(c, at)| pick(c, *at));
        self.held_tls = keep;
        ready
            .into_iter()
            .map(|(c, _)| self.report(table, c, names))
            .collect()
    }

    fn report(&mut self, table: &ProcTable, c: TlsConn, names: &dyn HostNames) -> TlsReport {
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
        let library: Vec<LibNote> = self
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
            .filter_map(|(k, v, _, aux)| libs::describe(k, v, aux))
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
                    .or_else(|| names.name_for(c.owner_tgid, c.server.ip())),
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
        r.findings = self.findings(&r);
        r
    }

    fn expire_conns(&mut self, now: u64, idle: u64) {
        self.conns
            .retain(|_, c| now.saturating_sub(c.last_ns) < idle.max(1));
    }

    /// Time-based conclusions: failed handshakes held for a library's
    /// reason that did not come, idle handshakes. `now_ns == u64::MAX`
    /// concludes everything (end of a trace).
    pub fn flush(
        &mut self,
        table: &ProcTable,
        now_ns: u64,
        names: &dyn HostNames,
    ) -> Vec<TlsReport> {
        let out = self.release(table, names, |_, at| now_ns.saturating_sub(at) >= HOLD_NS);
        self.expire_conns(now_ns, CONN_IDLE_NS);
        self.local_clients
            .retain(|_, t| now_ns.saturating_sub(*t) < CONN_IDLE_NS);
        out
    }

    /// The process exited: its held failures are final.
    pub fn on_exit(
        &mut self,
        table: &ProcTable,
        tgid: u32,
        names: &dyn HostNames,
    ) -> Vec<TlsReport> {
        let out = self.release(table, names, |c, _| c.owner_tgid == tgid);
        self.lib_notes.remove(&tgid);
        out
    }
}

#[cfg(test)]
mod tests {
    use agent_parse::tls::{self, tests as t};

    use super::*;
    use crate::{
        events::{WireKind, tests::wire},
        process::names::NoNames,
    };

    #[test]
    fn cipher_names_are_ianas() {
        assert_eq!(cipher_name(0x1301), "TLS_AES_128_GCM_SHA256");
        assert_eq!(cipher_name(0xc02f), "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        assert_eq!(
            cipher_name(0xcca8),
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
        );
        assert_eq!(cipher_name(0x0a0a), "0x0a0a");
    }

    #[test]
    fn version_mismatch_names_offer_and_refuser() {
        let mut a = TlsTracker::default();
        let table = ProcTable::default();
        let ch = t::client_hello(&[0x0303], "tls13.test", &[], 0x0303);
        assert!(
            a.on_wire(&table, &wire(WireKind::Tls, true, ch, 100), &NoNames)
                .is_none()
        );
        let out = a.on_wire(
            &table,
            &wire(
                WireKind::Tls,
                false,
                t::record(tls::CT_ALERT, &[2, 70]),
                200,
            ),
            &NoNames,
        );
        // A failure waits for the library's reason: released by the exit.
        assert!(out.is_none());
        let out = a.on_exit(&table, 9, &NoNames);
        let r = &out[0];
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
        let mut a = TlsTracker::default();
        let table = ProcTable::default();
        let ch = t::client_hello(&[0x0304], "x", &[], 0x0303);
        a.on_wire(&table, &wire(WireKind::Tls, true, ch.clone(), 1), &NoNames);
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
        a.on_wire(&table, &srv, &NoNames);
        assert_eq!(a.conns.len(), 1);
    }
}
