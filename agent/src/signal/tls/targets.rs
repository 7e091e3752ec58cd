//! The files that carry TLS-library probes, and how long they keep them.
//!
//! A uprobe holds its file's inode (a deleted binary's blocks stay on disk)
//! and a BPF link descriptor for as long as it is attached. On a CI host
//! `go test ./...` builds, runs and deletes a test binary per package, each
//! a Go program the agent probes: without a lifecycle, descriptors pile up
//! and deleted binaries are never freed. So every probed file is kept by
//! (device, inode) with the group of links attached to it; a file that is
//! gone (deleted, or its path now names another file) has its probes
//! released at the next sweep, the set is capped (least recently used first,
//! never a file probed ahead of time: host toolchains, what a traced command
//! can reach), deleted files are never probed, and every one of these is
//! counted.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

/// How long a library directory's listing is trusted.
const DIR_RECHECK: Duration = Duration::from_secs(30);
/// Directories remembered at most (then forgotten all at once).
const DIRS_KEPT: usize = 4096;
/// Probed files at most; past it the least recently used is released.
pub const MAX_TARGETS: usize = 1024;

/// A file with probes.
#[derive(Debug)]
struct Target {
    path: PathBuf,
    /// The collector's link group of this file.
    group: u64,
    used: Instant,
    /// Probed ahead of time (start-up, a traced command's reach): kept
    /// while it exists.
    pinned: bool,
}

/// What happened to probed files, cumulative.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TargetStats {
    /// Files that got probes.
    pub attached: u64,
    /// Released because the file was deleted or replaced.
    pub released_gone: u64,
    /// Released to stay under [`MAX_TARGETS`].
    pub evicted: u64,
    /// Not probed: the file was already deleted (a process still ran it).
    pub skipped_deleted: u64,
    /// Not probed: a FUSE server serves the file.
    pub skipped_fuse: u64,
    /// Files with probes now.
    pub current: u64,
}

/// A file claimed for probing: attach its links under `group`.
#[derive(Debug, PartialEq, Eq)]
pub struct Claim {
    pub key: (u64, u64),
    pub group: u64,
    /// A file released to make room: its link group.
    pub evicted: Option<u64>,
}

/// Files already probed, by (device, inode), and directories looked at lately.
#[derive(Debug, Default)]
pub struct Targets {
    files: HashMap<(u64, u64), Target>,
    dirs: HashMap<String, Instant>,
    next_group: u64,
    stats: TargetStats,
}

impl Targets {
    /// `path` is to be probed unless it is probed already (then it counts
    /// as used), missing, or deleted (a process's `/proc/<pid>/exe` of a
    /// removed file: counted, never probed).
    #[cfg(test)]
    pub fn claim(&mut self, path: &Path, pinned: bool, now: Instant) -> Option<Claim> {
        let m = crate::process::fsview::FsView::host().stat(path.to_str()?)?;
        self.claim_file(path, &m, pinned, now)
    }

    /// A file already opened (`m`: its `fstat`) is to be probed at `path`
    /// unless it is probed already (then it counts as used), deleted (a
    /// process's `/proc/<pid>/exe` of a removed file: counted, never
    /// probed) or served by FUSE (counted, never probed: attaching reads
    /// the file in the agent itself, and any user's FUSE server can choose
    /// never to answer the agent).
    pub fn claim_file(
        &mut self,
        path: &Path,
        m: &crate::process::fsview::Meta,
        pinned: bool,
        now: Instant,
    ) -> Option<Claim> {
        let key = (m.dev, m.ino);
        if let Some(t) = self.files.get_mut(&key) {
            t.used = now;
            t.pinned |= pinned;
            return None;
        }
        if m.nlink == 0 {
            self.stats.skipped_deleted += 1;
            return None;
        }
        if m.fuse {
            self.stats.skipped_fuse += 1;
            return None;
        }
        let evicted = if self.files.len() >= MAX_TARGETS {
            self.evict_one()
        } else {
            None
        };
        self.next_group += 1;
        let group = self.next_group;
        self.files.insert(
            key,
            Target {
                path: path.to_path_buf(),
                group,
                used: now,
                pinned,
            },
        );
        self.stats.attached += 1;
        Some(Claim {
            key,
            group,
            evicted,
        })
    }

    /// The least recently used file that was not probed ahead of time.
    fn evict_one(&mut self) -> Option<u64> {
        let key = self
            .files
            .iter()
            .filter(|(_, t)| !t.pinned)
            .min_by_key(|(_, t)| t.used)
            .map(|(k, _)| *k)?;
        let t = self.files.remove(&key)?;
        self.stats.evicted += 1;
        Some(t.group)
    }

    /// The attach failed: forget the file (offered again next time). Its
    /// group, for whatever links did attach.
    pub fn forget(&mut self, key: (u64, u64)) -> Option<u64> {
        let t = self.files.remove(&key)?;
        self.stats.attached = self.stats.attached.saturating_sub(1);
        Some(t.group)
    }

    /// Files that are gone (their path is missing or names another file):
    /// their groups, to release.
    pub fn sweep(&mut self) -> Vec<u64> {
        let gone: Vec<(u64, u64)> = self
            .files
            .iter()
            .filter(|(key, t)| {
                std::fs::metadata(&t.path)
                    .map(|m| (m.dev(), m.ino()) != **key || m.nlink() == 0)
                    .unwrap_or(true)
            })
            .map(|(k, _)| *k)
            .collect();
        let mut groups = Vec::with_capacity(gone.len());
        for k in gone {
            if let Some(t) = self.files.remove(&k) {
                self.stats.released_gone += 1;
                groups.push(t.group);
            }
        }
        groups
    }

    /// True when `dir` was not looked at in the last 30 s (and marks it).
    pub fn dir_due(&mut self, dir: &str, now: Instant) -> bool {
        if let Some(t) = self.dirs.get(dir)
            && now.duration_since(*t) < DIR_RECHECK
        {
            return false;
        }
        if self.dirs.len() >= DIRS_KEPT {
            self.dirs.clear();
        }
        self.dirs.insert(dir.to_string(), now);
        true
    }

    pub fn stats(&self) -> TargetStats {
        TargetStats {
            current: self.files.len() as u64,
            ..self.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_files_are_released_the_cap_evicts_the_least_used_and_deleted_files_are_skipped() {
        let d = std::env::temp_dir().join(format!("targets-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        let t0 = Instant::now();
        let mut t = Targets::default();
        let a = d.join("a");
        std::fs::write(&a, b"x").expect("write");
        let c = t.claim(&a, false, t0).expect("new file");
        assert_eq!(c.evicted, None);
        assert_eq!(t.claim(&a, false, t0), None, "probed once per file");
        assert_eq!(t.claim(&d.join("missing"), false, t0), None);

        // Deleted: released at the sweep. Replaced by another file at the
        // same path: released too (the probe is on the old inode).
        let b = d.join("b");
        std::fs::write(&b, b"y").expect("write");
        let cb = t.claim(&b, true, t0).expect("new file");
        std::fs::remove_file(&a).expect("rm");
        std::fs::remove_file(&b).expect("rm");
        std::fs::write(&b, b"z").expect("write");
        let mut gone = t.sweep();
        gone.sort_unstable();
        assert_eq!(gone, vec![c.group, cb.group]);
        assert_eq!(t.stats().released_gone, 2);
        assert_eq!(t.stats().current, 0);

        // A running program whose file was deleted is never probed.
        let f = std::fs::File::open(&b).expect("open");
        std::fs::remove_file(&b).expect("rm");
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", {
            use std::os::fd::AsRawFd as _;
            f.as_raw_fd()
        }));
        assert_eq!(t.claim(&fd_path, false, t0), None);
        assert_eq!(t.stats().skipped_deleted, 1);

        // The cap: the least recently used unpinned file makes room.
        let pinned = d.join("pinned");
        std::fs::write(&pinned, b"p").expect("write");
        t.claim(&pinned, true, t0).expect("new");
        let mut first = None;
        for i in 0..MAX_TARGETS - 1 {
            let p = d.join(format!("f{i}"));
            std::fs::write(&p, b"f").expect("write");
            let c = t.claim(&p, false, t0 + Duration::from_millis(i as u64 + 1));
            first.get_or_insert(c.expect("new").group);
        }
        let extra = d.join("extra");
        std::fs::write(&extra, b"e").expect("write");
        let c = t
            .claim(&extra, false, t0 + Duration::from_secs(60))
            .expect("new");
        assert_eq!(c.evicted, first, "the oldest unpinned file goes");
        assert_eq!(t.stats().evicted, 1);
        assert_eq!(t.stats().current, MAX_TARGETS as u64);
        let _ = std::fs::remove_dir_all(&d);
    }
}
