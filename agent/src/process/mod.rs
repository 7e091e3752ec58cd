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
