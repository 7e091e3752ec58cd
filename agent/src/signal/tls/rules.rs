//! The `tls.*` findings: what a handshake's verdict, the library's note and
//! the process's settings say went wrong, and what to do about it.

use super::codes;
use serde_json::{Map, Value, json};

use super::{TlsReport, TlsTracker};
use agent_parse::tls::{self, Side, Verdict, alert_name};

use crate::finding::{Finding, Severity};

impl TlsTracker {
    pub(super) fn findings(&mut self, r: &TlsReport) -> Vec<Finding> {
        let said = Said::of(r);
        let Some((code, severity, summary)) = said.verdict(r, self.cfg.slow_ns) else {
            return Vec::new();
        };
        let key = format!("{code}|{}|{}|{:?}", said.name, r.server, r.sni);
        if !self.reported.first(key, r.end_ns) {
            return Vec::new();
        }
        let (cause, fix) = tls_cause_and_fix(code, r, said.lib_cert.as_deref(), &said.ca_note);
        vec![Finding {
            code,
            severity,
            pid: r.owner.pid,
            summary,
            cause,
            fix,
            evidence: evidence(r),
        }]
    }
}

/// A TLS finding's evidence.
fn evidence(r: &TlsReport) -> Map<String, Value> {
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
                .map(|n| (n.key().to_string(), json!(n.text())))
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
    m.insert(
        "endpoint_from".into(),
        serde_json::to_value(&r.endpoint).unwrap_or(Value::Null),
    );
    m
}

/// What a TLS finding's summary says about the handshake: who, to where,
/// what was offered, the CA store in force, the library's own reason.
struct Said {
    name: String,
    host: String,
    offered: String,
    ca_note: String,
    /// What the client's library said about the certificate, if anything.
    lib_cert: Option<String>,
}

type Found = (&'static str, Severity, String);

impl Said {
    fn of(r: &TlsReport) -> Self {
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
        let ca_note = if r.ca_env.is_empty() {
            "no SSL_CERT_FILE / SSL_CERT_DIR / REQUESTS_CA_BUNDLE set: the library's default CA store was used".to_string()
        } else {
            let v: Vec<String> = r.ca_env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("CA bundle from {}", v.join(", "))
        };
        let lib_cert = r.library.iter().find_map(|n| n.about_certificate());
        Said {
            name,
            host,
            offered,
            ca_note,
            lib_cert,
        }
    }

    /// The finding a verdict makes, if any (a completed handshake only
    /// when it was slow).
    fn verdict(&self, r: &TlsReport, slow_ns: u64) -> Option<Found> {
        let Said {
            name,
            host,
            offered,
            ca_note,
            lib_cert,
        } = self;
        Some(match &r.verdict {
            Verdict::Completed => {
                let d = r.end_ns.saturating_sub(r.start_ns);
                if d < slow_ns {
                    return None;
                }
                (
                    codes::SLOW_HANDSHAKE,
                    Severity::Warning,
                    format!(
                        "{name} → {host}: TLS handshake took {:.0} ms ({})",
                        d as f64 / 1e6,
                        r.version.as_deref().unwrap_or("?")
                    ),
                )
            }
            Verdict::Alert { alert } => self.alert(r, alert),
            Verdict::EncryptedAlert { from: Side::Client }
            | Verdict::Closed {
                by: Side::Client, ..
            } if lib_cert.is_some() => (
                codes::UNTRUSTED_CERTIFICATE,
                Severity::Error,
                format!(
                    "{name} → {host}: the client rejected the server's certificate ({}; the alert itself is encrypted in {}); {ca_note}",
                    lib_cert.as_deref().unwrap_or(""),
                    r.version.as_deref().unwrap_or("TLS")
                ),
            ),
            Verdict::EncryptedAlert { from } => (
                codes::HANDSHAKE_FAILURE,
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
                codes::HANDSHAKE_FAILURE,
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
                codes::HANDSHAKE_FAILURE,
                Severity::Error,
                format!(
                    "{name} → {host}: the {} answered the ClientHello with something that is not TLS (plain HTTP on a TLS port?)",
                    from.name()
                ),
            ),
        })
    }

    /// A plaintext alert: versions refused, a certificate rejected, or another.
    fn alert(&self, r: &TlsReport, alert: &tls::Alert) -> Found {
        let Said {
            name,
            host,
            offered,
            ca_note,
            lib_cert,
        } = self;
        let by = alert.from.name();
        let d = alert.description;
        let aname = alert_name(d);
        if d == 70 {
            let what = match &r.version {
                Some(v) if alert.from == Side::Client => {
                    format!("the client refused {v} chosen by the server (client offers {offered})")
                }
                _ => format!("the server refused every version the client offered ({offered})"),
            };
            (
                codes::VERSION_MISMATCH,
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
                codes::UNTRUSTED_CERTIFICATE,
                Severity::Error,
                format!(
                    "{name} → {host}: the {by} rejected the {whose} certificate (alert {aname}{detail}); {ca_note}"
                ),
            )
        } else {
            (
                codes::HANDSHAKE_FAILURE,
                Severity::Error,
                format!(
                    "{name} → {host}: TLS handshake failed, {by} sent alert {aname} ({})",
                    r.version.as_deref().unwrap_or("before ServerHello")
                ),
            )
        }
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
        codes::UNTRUSTED_CERTIFICATE => (
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
        codes::VERSION_MISMATCH => (
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
        codes::SLOW_HANDSHAKE => (
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
