//! The exec signal's finding codes: each one's severities and what it
//! means (README's table), and its reference text (`findings.md` beside this
//! file). docs/findings.md and README's table are generated from these
//! (`cargo xtask docs`); a code not listed here cannot pass the catalogue test.

use crate::finding::{Blame, CodeDoc, Severity, SignalFindings};

pub const PATH_SHADOWED: &str = "path.shadowed";
pub const GO_VERSION_TOO_OLD: &str = "go.version_too_old";
pub const GO_GOROOT_MISMATCH: &str = "go.goroot_mismatch";
pub const GO_TOOLCHAIN_SWITCH: &str = "go.toolchain_switch";
pub const GO_TOOLCHAIN_DOWNLOAD_FAILED: &str = "go.toolchain_download_failed";
pub const CONDA_ENV_MISMATCH: &str = "conda.env_mismatch";
pub const EXEC_NOT_FOUND: &str = "exec.not_found";
pub const ENV_DIVERGED: &str = "env.diverged";

pub const FINDINGS: SignalFindings = SignalFindings {
    codes: &[
        CodeDoc {
            code: PATH_SHADOWED,
            blame: Blame::Toolchain,
            severities: &[Severity::Warning],
            means: "the bare name ran one binary that contradicts the process's own settings (GOROOT, the go.mod `go` line, the active venv/conda env) while a later one on PATH would meet them; version-manager shims are recognised, never \"shadowing\"",
        },
        CodeDoc {
            code: GO_VERSION_TOO_OLD,
            blame: Blame::Toolchain,
            severities: &[Severity::Error, Severity::Warning],
            means: "go.mod needs a newer Go than the one that ran, and it cannot switch (Go < 1.21, `GOTOOLCHAIN=local`)",
        },
        CodeDoc {
            code: GO_GOROOT_MISMATCH,
            blame: Blame::Toolchain,
            severities: &[Severity::Error, Severity::Warning],
            means: "the `go` that ran belongs to one GOROOT, `$GOROOT` points at another",
        },
        CodeDoc {
            code: GO_TOOLCHAIN_SWITCH,
            blame: Blame::Toolchain,
            severities: &[Severity::Info],
            means: "`go` re-executed another Go toolchain (GOTOOLCHAIN, `toolchain` line in go.mod)",
        },
        CodeDoc {
            code: GO_TOOLCHAIN_DOWNLOAD_FAILED,
            blame: Blame::Network,
            severities: &[Severity::Error],
            means: "`go` was switching to the toolchain go.mod asks for and fetching it from GOPROXY failed: which version, why, and the network cause",
        },
        CodeDoc {
            code: CONDA_ENV_MISMATCH,
            blame: Blame::Toolchain,
            severities: &[Severity::Warning],
            means: "the binary (or a script's `#!` interpreter) belongs to a conda env or venv other than the active one (or no conda env is active), or an entry point runs another env's python",
        },
        CodeDoc {
            code: EXEC_NOT_FOUND,
            blame: Blame::Toolchain,
            severities: &[Severity::Error],
            means: "every PATH candidate failed (from the exec attempts the kernel saw); what was tried",
        },
        CodeDoc {
            code: ENV_DIVERGED,
            blame: Blame::Toolchain,
            severities: &[Severity::Warning],
            means: "the same toolchain ran minutes ago, same user, with another value of GOPATH, GOPROXY, CONDA_PREFIX, ...; says when one came from a systemd unit",
        },
    ],
    doc: include_str!("findings.md"),
};
