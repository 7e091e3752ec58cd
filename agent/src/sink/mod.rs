//! Where findings and records go: text and JSON lines, the trace report,
//! OTLP, the health endpoint.

pub mod ci;
pub mod health;
pub mod otlp;
pub mod output;
pub mod records;
pub mod report;
