//! tracefs: where it is mounted (mounting it when absent and allowed), and
//! field offsets of tracepoint records from their `format` files, since some
//! layouts (`sched_process_fork`, `sched_process_exit`) differ across kernels.
//!
//! Owns: reading tracefs. Must not: attach anything.

use std::path::{Path, PathBuf};

/// Errors finding tracefs or a tracepoint field.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}); \
         run `mount -t tracefs nodev /sys/kernel/tracing` as root"
    )]
    NotMounted(std::io::Error),
    #[error(
        "tracefs is not mounted (the agent mounts it when it starts); \
         to mount it yourself: mount -t tracefs nodev /sys/kernel/tracing"
    )]
    Absent,
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field {field}")]
    NoField { tracepoint: String, field: String },
}

/// Mount point of tracefs according to `mounts` (the text of /proc/self/mounts).
pub fn find_in_mounts(mounts: &str) -> Option<PathBuf> {
    let mut debugfs = None;
    for line in mounts.lines() {
        let mut it = line.split_whitespace();
        let (_, Some(dir), Some(fstype)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        match fstype {
            "tracefs" => return Some(PathBuf::from(dir)),
            "debugfs" => debugfs = Some(PathBuf::from(dir).join("tracing")),
            _ => {}
        }
    }
    debugfs.filter(|p| p.join("events").is_dir())
}

/// Where tracefs is mounted, without mounting it.
pub fn find() -> Result<PathBuf, TracefsError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    find_in_mounts(&mounts).ok_or(TracefsError::Absent)
}

/// Find tracefs; mount it at /sys/kernel/tracing if absent (needs CAP_SYS_ADMIN).
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if let Some(p) = find_in_mounts(&mounts) {
        return Ok(p);
    }
    let target = Path::new("/sys/kernel/tracing");
    rustix::mount::mount(
        "nodev",
        target,
        "tracefs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|e| TracefsError::NotMounted(e.into()))?;
    tracing::info!("mounted tracefs at {}", target.display());
    Ok(target.to_path_buf())
}

pub use agent_parse::tracefs_format::field_offset_in;

/// Offset of a field of `category/name` in the running kernel.
pub fn field_offset(
    root: &Path,
    category: &str,
    name: &str,
    field: &str,
) -> Result<Option<u32>, TracefsError> {
    let path = root.join("events").join(category).join(name).join("format");
    let text =
        std::fs::read_to_string(&path).map_err(|source| TracefsError::Io { path, source })?;
    Ok(field_offset_in(&text, field))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_618: &str = "name: sched_process_fork\nformat:\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
        \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
        \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
    const FORK_515: &str = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";

    #[test]
    fn offsets_differ_by_kernel() {
        assert_eq!(field_offset_in(FORK_618, "child_pid"), Some(20));
        assert_eq!(field_offset_in(FORK_515, "child_pid"), Some(44));
        assert_eq!(field_offset_in(FORK_515, "parent_comm"), Some(8));
        assert_eq!(field_offset_in(FORK_515, "group_dead"), None);
    }

    #[test]
    fn mounts_parsing_prefers_tracefs() {
        let m = "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw 0 0\n";
        assert_eq!(
            find_in_mounts(m),
            Some(PathBuf::from("/sys/kernel/tracing"))
        );
        assert_eq!(find_in_mounts("sysfs /sys sysfs rw 0 0\n"), None);
    }
}
