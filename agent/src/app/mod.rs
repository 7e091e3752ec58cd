//! The agent's modes and what only they do: options, the live loop, `agent
//! trace` around one command (and the service that runs it for users
//! without sudo), `agent check`, elevation and privileges.

pub mod check;
pub mod cli;
pub mod elevate;
pub mod filter;
pub mod live;
pub mod options;
pub mod outfile;
pub mod privs;
#[cfg(test)]
mod readme_tests;
pub mod service;
mod session;
pub mod teardown;
pub mod trace;
pub mod trace_client;
pub mod trace_opts;
pub mod traced;

pub use live::live;
pub use options::RunOptions;
pub use session::loss_json;
pub use trace::{trace, trace_collect};
