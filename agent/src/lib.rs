//! The agent's library: everything but argument parsing lives here so the
//! integration tests drive the same code the binary runs.
//!
//! Pipeline (see docs/architecture.md): `loader` + `collector` (kernel → decoded
//! events) → `proctable` (process tree, exec identity) → `toolchain`, `netdiag`,
//! `wirediag`, `fsdiag` (findings, see `finding`) → `output` (live lines, JSON, trace report).

pub use agent_parse::{btf, buildinfo, dns, scrub, tls};

pub mod check;
pub mod collector;
pub mod config;
pub mod elevate;
pub mod endpoints;
pub mod event;
pub mod finding;
pub mod fsdiag;
pub mod fsview;
#[cfg(test)]
mod fuzz_tests;
pub mod health;
pub mod hooks;
pub mod invoker;
pub mod k8s;
pub mod loader;
pub mod netdiag;
pub mod otlp;
pub mod output;
pub mod privs;
pub mod proctable;

pub mod report;
pub mod run;
pub mod teardown;
pub mod tlslib;
pub mod toolchain;
pub mod traced;
pub mod tracefs;
pub mod wirediag;
