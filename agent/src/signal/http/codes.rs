//! The http signal's finding codes: each one's severities and what it
//! means (README's table), and its reference text (`findings.md` beside this
//! file). docs/findings.md and README's table are generated from these
//! (`cargo xtask docs`); a code not listed here cannot pass the catalogue test.

use crate::finding::{Blame, CodeDoc, Severity, SignalFindings};

pub const ERROR_STATUS: &str = "http.error_status";

pub const FINDINGS: SignalFindings = SignalFindings {
    codes: &[CodeDoc {
        code: ERROR_STATUS,
        blame: Blame::Network,
        severities: &[Severity::Error],
        means: "a plaintext `http://` server that a setting named answered 4xx/5xx (\"go → 10.0.0.5:3000 (your GOPROXY) answered HTTP 504 Gateway Timeout\"); a 404 only when it was a toolchain download",
    }],
    doc: include_str!("findings.md"),
};
