//! A build without OTLP export (`--no-default-features`, neither
//! `otlp-grpc` nor `otlp-http`): the settings are read as in a full build,
//! and one that asks for export is refused at start-up (a usage error
//! naming the feature) instead of being ignored. Nothing here is ever
//! constructed: [`Otlp`] has no values.

#[path = "otlp/config.rs"]
pub mod config;

use std::time::Duration;

pub use config::{Exporter, OtlpConfig, Protocol};

use crate::{pipeline::Output, process::table::ProcTable};

/// Why export cannot start in this build.
#[derive(Debug, thiserror::Error)]
#[error("this agent was built without OTLP export (cargo features otlp-grpc, otlp-http)")]
pub struct NotBuilt;

/// The exporter of a full build; here it has no values.
pub enum Otlp {}

impl Otlp {
    pub fn start(
        _cfg: &OtlpConfig,
        _clock_offset_ns: i128,
        _root: Option<(u32, RootSpan)>,
    ) -> Result<Self, NotBuilt> {
        Err(NotBuilt)
    }

    pub fn observe(&mut self, _o: &Output, _table: &ProcTable) {
        match *self {}
    }

    pub fn expire_spans(&mut self, _proc_root: &std::path::Path) {
        match *self {}
    }

    pub fn update_self(&self, _l: &crate::events::Losses) {
        match *self {}
    }

    pub fn stats_json(&self) -> serde_json::Value {
        match *self {}
    }

    pub async fn shutdown(self, _deadline: Duration) -> serde_json::Value {
        match self {}
    }
}

/// `agent trace`'s reserved span: none without export.
pub struct RootSpan;

impl RootSpan {
    pub fn new(_env: &[(String, String)]) -> Self {
        RootSpan
    }

    pub fn env(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
