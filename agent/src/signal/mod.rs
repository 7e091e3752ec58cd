//! One folder per signal: its correlation state, rules, findings and report
//! type. Signals never import each other; the pipeline hands one signal's
//! facts to another.

pub mod dns;
pub mod exec;
pub mod fs;
pub mod http;
pub mod tcp;
pub mod tls;
