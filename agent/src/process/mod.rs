//! What the agent knows about processes, shared by every signal: the
//! process table, the filesystem as a process sees it, container and pod
//! identity, who invoked the agent, the endpoints a process's settings name.

pub mod endpoints;
pub mod fsview;
pub mod guard;
pub mod invoker;
pub mod k8s;
pub mod names;
pub mod owner;
pub mod pyenv;
pub mod table;

/// Working directory of process `pid` under `proc_root`, if it is still
/// there. readlink of a /proc link formats a path the kernel holds; it never
/// touches the directory's file system, so it cannot block.
pub fn cwd_of(proc_root: &std::path::Path, pid: u32) -> Option<String> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("cwd"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}
