//! Where findings and records go: text and JSON lines, the trace report,
//! OTLP, the health endpoint.

pub mod ci;
pub mod health;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(not(feature = "otlp"))]
#[path = "otlp_off.rs"]
pub mod otlp;
pub mod output;
pub mod report;
