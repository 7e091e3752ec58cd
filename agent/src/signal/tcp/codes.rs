//! The tcp signal's finding codes: each one's severities and what it
//! means (README's table), and its reference text (`findings.md` beside this
//! file). docs/findings.md and README's table are generated from these
//! (`cargo xtask docs`); a code not listed here cannot pass the catalogue test.

use crate::finding::{Blame, CodeDoc, Severity, SignalFindings};

pub const CONNECT_REFUSED: &str = "net.connect_refused";
pub const CONNECT_TIMEOUT: &str = "net.connect_timeout";
pub const UNREACHABLE: &str = "net.unreachable";
pub const SYN_RETRANSMIT: &str = "net.syn_retransmit";
pub const SLOW_CONNECT: &str = "net.slow_connect";

pub const FINDINGS: SignalFindings = SignalFindings {
    codes: &[
        CodeDoc {
            code: CONNECT_REFUSED,
            blame: Blame::Network,
            severities: &[Severity::Error],
            means: "a TCP connect got a reset; names the process, destination and the setting it came from (\"go → 10.0.0.5:443 (your GOPROXY) refused\": GOPROXY, GOSUMDB, GOPRIVATE hosts, PIP_INDEX_URL, proxies, a git remote)",
        },
        CodeDoc {
            code: CONNECT_TIMEOUT,
            blame: Blame::Network,
            severities: &[Severity::Error],
            means: "no answer to N SYNs",
        },
        CodeDoc {
            code: UNREACHABLE,
            blame: Blame::Network,
            severities: &[Severity::Error],
            means: "ICMP host/network unreachable",
        },
        CodeDoc {
            code: SYN_RETRANSMIT,
            blame: Blame::Network,
            severities: &[Severity::Warning],
            means: "connected only after retransmitting SYNs",
        },
        CodeDoc {
            code: SLOW_CONNECT,
            blame: Blame::Network,
            severities: &[Severity::Warning],
            means: "set-up far slower than this destination's baseline or over 1 s",
        },
    ],
    doc: include_str!("findings.md"),
};
