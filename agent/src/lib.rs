//! The agent's library: everything but argument parsing lives here so the
//! integration tests drive the same code the binary runs.
//!
//! Layers, each importing only those below it (docs/architecture.md):
//! `app` (modes: live, trace, check) → `sink` (text, JSON, OTLP, health,
//! trace report) → `verdict` (what failed a traced command) → `pipeline` (hands events to signals and between them) →
//! `signal::*` (per-signal state, rules and report types) → `process`
//! (process table, file views, identity) and `events` (ring buffer, decode)
//! → `bpf` (load, probe, attach, maps) → `agent_common` (the kernel ABI).
//! Pure parsers of untrusted bytes live in the `agent-parse` crate.

pub use agent_parse::{btf, buildinfo, scrub};

pub mod app;
pub mod bpf;
pub mod clock;
pub mod config;
pub mod events;
pub mod finding;
#[cfg(test)]
mod fuzz_tests;
/// What several modules' unit tests need.
#[cfg(test)]
pub(crate) mod test_util {
    /// A FIFO at `p` (a file that would block whoever opens it to read).
    pub(crate) fn mkfifo(p: impl AsRef<std::path::Path>) {
        use rustix::fs::{CWD, FileType, Mode, mknodat};
        mknodat(
            CWD,
            p.as_ref(),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }
}
pub mod pipeline;
pub mod process;
pub mod render;
pub mod signal;
pub mod sink;
pub mod verdict;
