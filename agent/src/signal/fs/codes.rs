//! The fs signal's finding codes: each one's severities and what it
//! means (README's table), and its reference text (`findings.md` beside this
//! file). docs/findings.md and README's table are generated from these
//! (`cargo xtask docs`); a code not listed here cannot pass the catalogue test.

use crate::finding::{Blame, CodeDoc, Severity, SignalFindings};

pub const PERMISSION_DENIED: &str = "fs.permission_denied";
pub const READ_ONLY: &str = "fs.read_only";

pub const FINDINGS: SignalFindings = SignalFindings {
    codes: &[
        CodeDoc {
            code: PERMISSION_DENIED,
            blame: Blame::Toolchain,
            severities: &[Severity::Error],
            means: "a toolchain process was refused a file: the blocking directory, its owner and mode, and what it is (GOCACHE, GOROOT, a conda env, a go.work)",
        },
        CodeDoc {
            code: READ_ONLY,
            blame: Blame::Toolchain,
            severities: &[Severity::Error],
            means: "a toolchain process wrote under a read-only mount",
        },
    ],
    doc: include_str!("findings.md"),
};
