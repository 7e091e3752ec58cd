//! Everything that touches `aya::Ebpf`: kernel facts, hook probing, loading,
//! attaching, map I/O.

pub mod collector;
pub mod hooks;
pub mod loader;
pub mod tracefs;
