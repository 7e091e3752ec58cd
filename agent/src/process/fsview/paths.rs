//! Path strings: split, parent, base name, join, the host's resolution.

use super::*;

/// The kernel's resolution of `p` on the host: an `O_PATH` handle on what it
/// names, and that handle's path. `None` when it does not resolve (or the
/// file was deleted meanwhile).
pub fn host_canonical(p: &str) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(p)
        .ok()?;
    use std::os::fd::AsRawFd as _;
    let t = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
    let t = t.to_str()?;
    (t.starts_with('/') && !t.ends_with(" (deleted)")).then(|| t.to_string())
}

pub fn split(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Lexical parent of an absolute path string.
pub fn parent(p: &str) -> Option<&str> {
    let t = p.trim_end_matches('/');
    let i = t.rfind('/')?;
    Some(if i == 0 { "/" } else { &t[..i] })
}

pub fn basename(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

/// Join `dir` and `name` as strings.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}
