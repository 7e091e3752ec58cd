//! The network signals' client spans: a connection set-up, a lookup, a
//! handshake, each with its findings as events.

use opentelemetry_semantic_conventions::attribute as semconv;

use super::{SpanBuilder, at};
use crate::{
    events::Tcp,
    process::table::ProcTable,
    signal::{
        dns::DnsReport,
        tcp::{ConnReport, Outcome},
        tls::TlsReport,
    },
    sink::otlp::model::{kv_bool, kv_int, kv_str, kv_str_array},
};

impl SpanBuilder {
    /// A connection set-up: its client span.
    pub(super) fn tcp_span(
        &mut self,
        tcp: &Tcp,
        report: &ConnReport,
        analysed: bool,
        table: &ProcTable,
    ) {
        let failed = !matches!(report.outcome, Outcome::Established | Outcome::Cancelled);
        if !(analysed || failed || !report.findings.is_empty()) {
            return;
        }
        let cx = self.context(table, tcp.tgid, tcp.tgid, &[]);
        let end = at(self.offset, tcp.ktime_ns);
        let start = if tcp.no_start {
            end
        } else {
            at(self.offset, tcp.start_ns)
        };
        let mut attributes = vec![
            kv_str(semconv::SERVER_ADDRESS, tcp.dst.to_string()),
            kv_int(semconv::SERVER_PORT, tcp.dport as i64),
            kv_str(semconv::NETWORK_PEER_ADDRESS, tcp.dst.to_string()),
            kv_int(semconv::NETWORK_PEER_PORT, tcp.dport as i64),
            kv_str(semconv::NETWORK_LOCAL_ADDRESS, tcp.src.to_string()),
            kv_int(semconv::NETWORK_LOCAL_PORT, tcp.sport as i64),
            kv_str(semconv::NETWORK_TRANSPORT, "tcp"),
            kv_str(
                semconv::NETWORK_TYPE,
                if tcp.dst.is_ipv4() { "ipv4" } else { "ipv6" },
            ),
            kv_int(semconv::PROCESS_PID, tcp.tgid as i64),
            kv_str("agent.tcp.outcome", report.outcome.name()),
            kv_int("agent.tcp.syn_retransmits", tcp.syn_retrans as i64),
        ];
        let mut status = None;
        if failed {
            // Without BTF the reason is unknown: semconv's fallback value.
            let err = if tcp.err > 0 {
                crate::finding::errno_name(tcp.err)
            } else {
                "_OTHER".to_string()
            };
            status = Some(format!("connect {}: {err}", report.outcome.name()));
            attributes.push(kv_str(semconv::ERROR_TYPE, err));
        }
        if let Some(p) = &report.proxy {
            attributes.push(kv_str("agent.proxy.variable", p.variable.clone()));
            attributes.push(kv_bool("agent.proxy.is_destination", p.is_destination));
        }
        // Span names stay low-cardinality (the semantic conventions): the
        // address is an attribute.
        self.finished(
            "connect".to_string(),
            &cx,
            start,
            end,
            attributes,
            &report.findings,
            status,
        );
    }

    /// A lookup: its client span.
    pub(super) fn dns_span(&mut self, report: &DnsReport, analysed: bool, table: &ProcTable) {
        if !(analysed || !report.findings.is_empty()) {
            return;
        }
        let cx = self.context(table, report.owner.pid, report.owner.pid, &[]);
        let mut attributes = vec![
            kv_str(semconv::DNS_QUESTION_NAME, report.name.clone()),
            // Not in the semantic conventions (0.33): ours, in their style.
            kv_str("agent.dns.question.type", report.qtype.clone()),
            kv_str(semconv::SERVER_ADDRESS, report.server.ip().to_string()),
            kv_int(semconv::SERVER_PORT, report.server.port() as i64),
            kv_str(
                semconv::NETWORK_TRANSPORT,
                if report.tcp { "tcp" } else { "udp" },
            ),
            kv_int(semconv::PROCESS_PID, report.owner.pid as i64),
            kv_int("agent.dns.attempts", report.attempts as i64),
            kv_str_array(
                semconv::DNS_ANSWERS,
                &report
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>(),
            ),
        ];
        if let Some(rc) = &report.rcode {
            attributes.push(kv_str("agent.dns.response_code", rc.clone()));
        }
        let error = match (&report.rcode, report.timed_out) {
            (_, true) => Some("timeout".to_string()),
            (Some(rc), _) if rc != "NOERROR" => Some(rc.clone()),
            _ => None,
        };
        let status = error.map(|e| {
            attributes.push(kv_str(semconv::ERROR_TYPE, e.clone()));
            format!("lookup {}: {e}", report.name)
        });
        self.finished(
            "dns query".to_string(),
            &cx,
            at(self.offset, report.start_ns),
            at(self.offset, report.end_ns),
            attributes,
            &report.findings,
            status,
        );
    }

    /// A handshake: its client span.
    pub(super) fn tls_span(&mut self, report: &TlsReport, analysed: bool, table: &ProcTable) {
        let failed = !matches!(report.verdict, agent_parse::tls::Verdict::Completed);
        if !(analysed || failed || !report.findings.is_empty()) {
            return;
        }
        let cx = self.context(table, report.owner.pid, report.owner.pid, &[]);
        // `server.address` is the name the client asked for (the SNI) when
        // it sent one, as the conventions want it (they retired
        // `tls.client.server_name` for it); the IP is the peer's address.
        let server = match &report.sni {
            Some(sni) => sni.clone(),
            None => report.server.ip().to_string(),
        };
        let mut attributes = vec![
            kv_str(semconv::SERVER_ADDRESS, server),
            kv_int(semconv::SERVER_PORT, report.server.port() as i64),
            kv_str(
                semconv::NETWORK_PEER_ADDRESS,
                report.server.ip().to_string(),
            ),
            kv_int(semconv::NETWORK_PEER_PORT, report.server.port() as i64),
            kv_str(semconv::NETWORK_TRANSPORT, "tcp"),
            kv_int(semconv::PROCESS_PID, report.owner.pid as i64),
            kv_str("agent.tls.local_side", report.local.name()),
            kv_str("agent.tls.offered_versions", report.offered.join(",")),
        ];
        if let Some(v) = &report.version {
            attributes.push(kv_str(semconv::TLS_PROTOCOL_NAME, "tls"));
            attributes.push(kv_str(
                semconv::TLS_PROTOCOL_VERSION,
                v.trim_start_matches("TLS ").to_string(),
            ));
        }
        if let Some(c) = report.cipher_suite {
            attributes.push(kv_str(
                semconv::TLS_CIPHER,
                crate::signal::tls::cipher_name(c),
            ));
        }
        let status = failed.then(|| {
            let why = agent_parse::tls::verdict_reason(&report.verdict);
            attributes.push(kv_str(semconv::ERROR_TYPE, why.clone()));
            format!("TLS handshake: {why}")
        });
        self.finished(
            "tls handshake".to_string(),
            &cx,
            at(self.offset, report.start_ns),
            at(self.offset, report.end_ns),
            attributes,
            &report.findings,
            status,
        );
    }
}
