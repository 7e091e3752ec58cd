//! The tls signal's finding codes: each one's severities and what it
//! means (README's table), and its reference text (`findings.md` beside this
//! file). docs/findings.md and README's table are generated from these
//! (`cargo xtask docs`); a code not listed here cannot pass the catalogue test.

use crate::finding::{Blame, CodeDoc, Severity, SignalFindings};

pub const VERSION_MISMATCH: &str = "tls.version_mismatch";
pub const UNTRUSTED_CERTIFICATE: &str = "tls.untrusted_certificate";
pub const HANDSHAKE_FAILURE: &str = "tls.handshake_failure";
pub const SLOW_HANDSHAKE: &str = "tls.slow_handshake";

pub const FINDINGS: SignalFindings = SignalFindings {
    codes: &[
        CodeDoc {
            code: VERSION_MISMATCH,
            blame: Blame::Network,
            severities: &[Severity::Error],
            means: "a side refused the TLS versions: what the client offered, who refused",
        },
        CodeDoc {
            code: UNTRUSTED_CERTIFICATE,
            blame: Blame::Network,
            severities: &[Severity::Error],
            means: "a side rejected the other's certificate (unknown CA, expired…), with the CA-bundle variables in force (SSL_CERT_FILE, SSL_CERT_DIR, REQUESTS_CA_BUNDLE)",
        },
        CodeDoc {
            code: HANDSHAKE_FAILURE,
            blame: Blame::Network,
            severities: &[Severity::Error],
            means: "any other failed handshake: the alert, an encrypted alert, a reset, a server that does not speak TLS",
        },
        CodeDoc {
            code: SLOW_HANDSHAKE,
            blame: Blame::Network,
            severities: &[Severity::Warning],
            means: "ClientHello to Finished over 1 s",
        },
    ],
    doc: include_str!("findings.md"),
};
