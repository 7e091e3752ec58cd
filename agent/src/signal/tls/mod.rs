pub mod libs;
pub mod probes;
