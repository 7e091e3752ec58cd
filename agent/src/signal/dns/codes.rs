//! The dns signal's finding codes: each one's severities and what it
//! means (README's table), and its reference text (`findings.md` beside this
//! file). docs/findings.md and README's table are generated from these
//! (`cargo xtask docs`); a code not listed here cannot pass the catalogue test.

use crate::finding::{Blame, CodeDoc, Severity, SignalFindings};

pub const DNS_FAILURE: &str = "net.dns_failure";
pub const DNS_TIMEOUT: &str = "net.dns_timeout";
pub const DNS_SLOW: &str = "net.dns_slow";

pub const FINDINGS: SignalFindings = SignalFindings {
    codes: &[
        CodeDoc {
            code: DNS_FAILURE,
            blame: Blame::Network,
            severities: &[Severity::Error],
            means: "NXDOMAIN / SERVFAIL / REFUSED, with the name and the resolver asked (search-list misses that a later answer explains are not reported)",
        },
        CodeDoc {
            code: DNS_TIMEOUT,
            blame: Blame::Network,
            severities: &[Severity::Error],
            means: "a query no resolver answered: which resolver, how many attempts",
        },
        CodeDoc {
            code: DNS_SLOW,
            blame: Blame::Network,
            severities: &[Severity::Warning],
            means: "an answer that took over 1 s",
        },
    ],
    doc: include_str!("findings.md"),
};
