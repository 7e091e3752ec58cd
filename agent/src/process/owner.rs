//! The process a packet or a connection belongs to, as reports name it.

use serde::Serialize;

use super::{fsview::basename, table::ProcTable};

/// The process a packet belongs to.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
}

impl Owner {
    /// Process `tgid` as the process table knows it (`comm` from the kernel).
    pub fn new(table: &ProcTable, tgid: u32, comm: &str) -> Owner {
        let exe = table
            .get(tgid)
            .and_then(|p| p.current())
            .map(|e| e.exe.clone())
            .filter(|e| !e.is_empty());
        Owner {
            pid: tgid,
            comm: comm.to_string(),
            exe,
        }
    }

    /// Short name for summaries.
    pub fn name(&self) -> String {
        match (&self.exe, self.pid) {
            (Some(e), _) => basename(e).to_string(),
            (None, 0) => "a remote client".into(),
            (None, _) if !self.comm.is_empty() => self.comm.clone(),
            _ => "?".into(),
        }
    }
}
