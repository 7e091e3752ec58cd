//! The agent's modes and what only they do: options, the live loop, `agent
//! trace` around one command, `agent check`, elevation and privileges.

pub mod check;
pub mod elevate;
pub mod privs;
pub mod run;
pub mod teardown;
pub mod traced;
