//! Live mode's filters: `--pid` (a process tree), `--uid`, `--comm`,
//! `--cgroup` (a subtree), `--namespace` and `--pod`.
//!
//! `--uid` is applied in the kernel too (the exec programs compare the real
//! uid with a load-time global and record nothing else, so a filtered agent
//! does less work per foreign exec); the rest is decided here, per process,
//! from the exec record the process table holds and, for a process whose
//! exec the agent never saw (it started earlier), from `/proc`. A process's
//! tree, cgroup and pod are decided at its exec and kept until the next one
//! or its exit (a container's init joins its cgroup, then execs); its uid
//! and name are read again at each record.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use crate::process::{k8s::PodDirectory, table::ProcTable};

/// The cgroup v2 hierarchy's mount point, from /proc/self/mounts (a hybrid
/// hierarchy has it at /sys/fs/cgroup/unified), /sys/fs/cgroup if none is listed.
pub fn cgroup_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| crate::bpf::kernel::cgroup2_in_mounts(&m))
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// Bound on the per-process decisions kept (cleared, then rebuilt, past it).
const MAX_DECIDED: usize = 65_536;

/// Bound on the cgroup directories walked below `--cgroup` per refresh.
const MAX_CGROUPS: usize = 16_384;

/// Why a filter flag was refused (a usage error).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("--uid {0}: no such user")]
    NoUser(String),
    #[error("--cgroup {0}: no cgroup v2 directory of that path or id under {1}")]
    NoCgroup(String, String),
    #[error("--pid 0: give the process id of a running process")]
    PidZero,
}

/// What the user asked for, resolved: a uid number, a cgroup path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterSpec {
    pub pids: Vec<u32>,
    pub uid: Option<u32>,
    pub comms: Vec<String>,
    /// The cgroup's path below the cgroup v2 root, `/` first (`/system.slice`).
    pub cgroup: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl FilterSpec {
    /// From the flags; `--uid` by name or number, `--cgroup` by path (below
    /// `cgroup_root` or relative to it) or by id (its directory's inode).
    pub fn from_flags(
        pids: &[u32],
        uid: Option<&str>,
        comms: &[String],
        cgroup: Option<&str>,
        namespace: Option<&str>,
        pod: Option<&str>,
        cgroup_root: &Path,
    ) -> Result<Self, FilterError> {
        if pids.contains(&0) {
            return Err(FilterError::PidZero);
        }
        let uid = match uid {
            None => None,
            Some(u) => Some(match u.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    crate::process::invoker::account_by_name(u)
                        .ok_or_else(|| FilterError::NoUser(u.to_string()))?
                        .uid
                }
            }),
        };
        let cgroup = cgroup
            .map(|c| {
                resolve_cgroup(cgroup_root, c).ok_or_else(|| {
                    FilterError::NoCgroup(c.into(), cgroup_root.display().to_string())
                })
            })
            .transpose()?;
        Ok(FilterSpec {
            pids: pids.to_vec(),
            uid,
            comms: comms.to_vec(),
            cgroup,
            namespace: namespace.map(str::to_string),
            pod: pod.map(str::to_string),
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == FilterSpec::default()
    }
}

/// `--cgroup`'s argument as a path below `root` (`/` first): an absolute
/// path under `root`, a path relative to it, or a directory's inode number.
pub fn resolve_cgroup(root: &Path, arg: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(id) = arg.parse::<u64>() {
        let mut found = None;
        walk_cgroups(root, &mut |rel, ino| {
            if ino == id {
                found = Some(rel.to_string());
            }
            found.is_none()
        });
        return found;
    }
    let p = Path::new(arg);
    let rel = p.strip_prefix(root).unwrap_or(p);
    let rel = rel.to_string_lossy();
    let rel = format!("/{}", rel.trim_matches('/'));
    let full = root.join(rel.trim_start_matches('/'));
    std::fs::metadata(&full)
        .ok()
        .filter(|m| m.is_dir() && m.ino() != 0)
        .map(|_| rel)
}

/// Each directory below `root` (itself included) as (path below root,
/// inode), breadth first, at most [`MAX_CGROUPS`]; `f` returns false to stop.
fn walk_cgroups(root: &Path, f: &mut dyn FnMut(&str, u64) -> bool) {
    use std::os::unix::fs::MetadataExt as _;
    let mut queue = std::collections::VecDeque::from([PathBuf::from("/")]);
    let mut seen = 0usize;
    while let Some(rel) = queue.pop_front() {
        seen += 1;
        if seen > MAX_CGROUPS {
            return;
        }
        let full = root.join(rel.strip_prefix("/").unwrap_or(&rel));
        let Ok(meta) = std::fs::symlink_metadata(&full) else {
            continue;
        };
        if !f(&rel.to_string_lossy(), meta.ino()) {
            return;
        }
        let Ok(dir) = std::fs::read_dir(&full) else {
            continue;
        };
        for e in dir.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(rel.join(e.file_name()));
            }
        }
    }
}

/// Is `path` the cgroup `want` or below it?
fn under(path: &str, want: &str) -> bool {
    want == "/"
        || path == want
        || path
            .strip_prefix(want)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The cgroup v2 path of a `/proc/<pid>/cgroup` text (its `0::` line).
fn cgroup_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// What does not change while a process lives: decided once.
#[derive(Clone, Copy, Debug)]
struct Lasting {
    in_tree: bool,
    in_cgroup: bool,
    in_pod: bool,
}

/// Live mode's filter, with what it decided per process.
pub struct LiveFilter {
    spec: FilterSpec,
    proc_root: PathBuf,
    cgroup_root: PathBuf,
    /// Inodes (cgroup ids) of the cgroups at or below `--cgroup`, as last walked.
    cgroup_ids: HashSet<u64>,
    /// Cgroup ids met that were not below `--cgroup` when walked.
    outside_ids: HashSet<u64>,
    /// `--pod`/`--namespace`'s answer per cgroup id, from live processes.
    pod_by_cgroup: HashMap<u64, bool>,
    pods: Option<PodDirectory>,
    decided: HashMap<u32, Lasting>,
}

impl LiveFilter {
    /// `None` when nothing is filtered.
    pub fn new(spec: &FilterSpec, proc_root: &Path, pods: Option<PodDirectory>) -> Option<Self> {
        Self::with_roots(spec, proc_root, &cgroup_root(), pods)
    }

    pub fn with_roots(
        spec: &FilterSpec,
        proc_root: &Path,
        cgroup_root: &Path,
        pods: Option<PodDirectory>,
    ) -> Option<Self> {
        if spec.is_empty() {
            return None;
        }
        let mut f = LiveFilter {
            spec: spec.clone(),
            proc_root: proc_root.to_path_buf(),
            cgroup_root: cgroup_root.to_path_buf(),
            cgroup_ids: HashSet::new(),
            outside_ids: HashSet::new(),
            pod_by_cgroup: HashMap::new(),
            pods,
            decided: HashMap::new(),
        };
        f.refresh();
        Some(f)
    }

    /// Walk `--cgroup`'s subtree again (cgroups created since: a container
    /// that started). Called from the periodic tick.
    pub fn refresh(&mut self) {
        let Some(want) = self.spec.cgroup.clone() else {
            return;
        };
        let mut ids = HashSet::new();
        let base = self.cgroup_root.join(want.trim_start_matches('/'));
        walk_cgroups(&base, &mut |_, ino| {
            ids.insert(ino);
            true
        });
        self.cgroup_ids = ids;
    }

    /// The process exited: its decision goes.
    pub fn forget(&mut self, pid: u32) {
        self.decided.remove(&pid);
    }

    /// Whether records of `pid` are shown and exported.
    pub fn admits(&mut self, pid: u32, table: &ProcTable) -> bool {
        let exec = table.get(pid).and_then(|p| p.current());
        // `/proc` only for what the exec record cannot say, and only when
        // a uid or name filter asks.
        let needs_status =
            exec.is_none() && (self.spec.uid.is_some() || !self.spec.comms.is_empty());
        let status = needs_status.then(|| self.status(pid)).flatten();
        if let Some(want) = self.spec.uid {
            let uid = exec.map(|e| e.uid).or(status.as_ref().map(|s| s.uid[0]));
            if uid != Some(want) {
                return false;
            }
        }
        if !self.spec.comms.is_empty() {
            let names: Vec<&str> = match (exec, &status) {
                (Some(e), _) => vec![e.comm.as_str(), file_name(&e.exe), file_name(&e.filename)],
                (None, Some(s)) => vec![s.name.as_str()],
                (None, None) => vec![],
            };
            if !names.iter().any(|n| self.spec.comms.iter().any(|c| c == n)) {
                return false;
            }
        }
        let l = self.lasting(pid, table);
        l.in_tree && l.in_cgroup && l.in_pod
    }

    /// `/proc/<pid>/status`, parsed; `None` once the process is gone.
    fn status(&self, pid: u32) -> Option<crate::process::invoker::Status> {
        let t =
            std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("status")).ok()?;
        Some(crate::process::invoker::parse_status(&t))
    }

    fn lasting(&mut self, pid: u32, table: &ProcTable) -> Lasting {
        if let Some(l) = self.decided.get(&pid) {
            return *l;
        }
        let l = Lasting {
            in_tree: self.spec.pids.is_empty() || self.in_tree(pid, table),
            in_cgroup: self.spec.cgroup.is_none() || self.in_cgroup(pid, table),
            in_pod: (self.spec.pod.is_none() && self.spec.namespace.is_none())
                || self.in_pod(pid, table),
        };
        if self.decided.len() >= MAX_DECIDED {
            self.decided.clear();
        }
        self.decided.insert(pid, l);
        l
    }

    /// A root of `--pid`, or below one: by the table's lineage (which knows
    /// processes gone since), then `/proc`'s for what the agent did not see
    /// fork, a decided ancestor ending the walk.
    fn in_tree(&self, pid: u32, table: &ProcTable) -> bool {
        let mut cur = pid;
        for _ in 0..64 {
            if self.spec.pids.contains(&cur) {
                return true;
            }
            if cur != pid
                && let Some(l) = self.decided.get(&cur)
            {
                return l.in_tree;
            }
            let ppid = table
                .get(cur)
                .map(|p| p.ppid)
                .or_else(|| Some(self.status(cur)?.ppid));
            match ppid {
                Some(p) if p > 1 && p != cur => cur = p,
                _ => return false,
            }
        }
        false
    }

    fn in_cgroup(&mut self, pid: u32, table: &ProcTable) -> bool {
        let id = table
            .get(pid)
            .and_then(|p| p.current())
            .map(|e| e.cgroup_id);
        if let Some(i) = id.filter(|&i| i != 0) {
            if self.cgroup_ids.contains(&i) {
                return true;
            }
            // A cgroup not seen before: made since the last walk below
            // `--cgroup` (a container that just started, its process maybe
            // gone already), or one elsewhere, walked for once only.
            if self.outside_ids.insert(i) {
                if self.outside_ids.len() > MAX_CGROUPS {
                    self.outside_ids.clear();
                }
                self.refresh();
                if self.cgroup_ids.contains(&i) {
                    return true;
                }
            }
        }
        // A cgroup made since the last walk, or no exec record: by path.
        let Some(want) = self.spec.cgroup.as_deref() else {
            return true;
        };
        let text = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup"))
            .unwrap_or_default();
        let inside = cgroup_path(&text).is_some_and(|p| under(p, want));
        if inside && let Some(i) = id.filter(|&i| i != 0) {
            self.cgroup_ids.insert(i);
        }
        inside
    }

    /// In the pod asked for: decided from `/proc` (its cgroup, its own
    /// hostname and service account) and remembered per cgroup id, so a
    /// process of the same container that exits before its record is
    /// handled (a compiler a build ran) is still recognised by its exec's
    /// cgroup id.
    fn in_pod(&mut self, pid: u32, table: &ProcTable) -> bool {
        let cgroup = table
            .get(pid)
            .and_then(|p| p.current())
            .map(|e| e.cgroup_id)
            .filter(|&i| i != 0);
        if let Some(known) = cgroup.and_then(|i| self.pod_by_cgroup.get(&i)) {
            return *known;
        }
        let ok = self.pod_of_process(pid);
        // Only what a live process said is remembered.
        if let Some(i) = cgroup
            && self.proc_root.join(pid.to_string()).is_dir()
        {
            if self.pod_by_cgroup.len() >= MAX_CGROUPS {
                self.pod_by_cgroup.clear();
            }
            self.pod_by_cgroup.insert(i, ok);
        }
        ok
    }

    fn pod_of_process(&self, pid: u32) -> bool {
        let mut info = crate::process::k8s::of_process(&self.proc_root, pid);
        if let (Some(dir), Some(uid)) = (&self.pods, &info.pod_uid)
            && let Some((name, ns)) = dir.get(uid)
        {
            info.pod_name = Some(name);
            info.namespace = Some(ns);
        }
        let ok = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        info.pod_uid.is_some()
            && ok(&self.spec.pod, &info.pod_name)
            && ok(&self.spec.namespace, &info.namespace)
    }
}

fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::table::tests_support::exec;

    fn spec() -> FilterSpec {
        FilterSpec::default()
    }

    /// A fake /proc with `status` (and `cgroup`) files, and a cgroup tree.
    fn roots() -> (PathBuf, PathBuf) {
        let d = std::env::temp_dir().join(format!(
            "agent-filter-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        let proc_root = d.join("proc");
        for (pid, ppid, name, uid, cg) in [
            (100u32, 1u32, "bash", 1000u32, "/user.slice/u-1000"),
            (101, 100, "make", 1000, "/user.slice/u-1000"),
            (200, 1, "sshd", 0, "/system.slice/ssh.service"),
        ] {
            let dir = proc_root.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("status"),
                format!("Name:\t{name}\nPPid:\t{ppid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
            )
            .unwrap();
            std::fs::write(dir.join("cgroup"), format!("0::{cg}\n")).unwrap();
        }
        let cg = d.join("cgroup");
        for p in ["user.slice/u-1000", "system.slice/ssh.service"] {
            std::fs::create_dir_all(cg.join(p)).unwrap();
        }
        (proc_root, cg)
    }

    #[test]
    fn no_flag_no_filter() {
        let (p, c) = roots();
        assert!(LiveFilter::with_roots(&spec(), &p, &c, None).is_none());
    }

    #[test]
    fn a_pid_admits_its_tree_from_the_table_and_from_proc() {
        let (p, c) = roots();
        let s = FilterSpec {
            pids: vec![100],
            ..spec()
        };
        let mut f = LiveFilter::with_roots(&s, &p, &c, None).unwrap();
        let mut t = ProcTable::default();
        // 300 forked by make (101) after the agent started: in the table.
        t.on_exec(std::sync::Arc::new(exec(300, 101, 1, "/usr/bin/go")));
        assert!(f.admits(100, &t));
        assert!(f.admits(101, &t), "a child, by /proc");
        assert!(f.admits(300, &t), "a grandchild, by the table");
        assert!(!f.admits(200, &t), "another tree");
        assert!(!f.admits(999, &t), "gone, unknown");
    }

    #[test]
    fn uid_and_comm_are_read_from_the_exec_record_each_time() {
        let (p, c) = roots();
        let s = FilterSpec {
            uid: Some(1000),
            comms: vec!["go".into()],
            ..spec()
        };
        let mut f = LiveFilter::with_roots(&s, &p, &c, None).unwrap();
        let mut t = ProcTable::default();
        let mut e = exec(300, 101, 1, "/usr/local/go/bin/go");
        e.uid = 1000;
        t.on_exec(std::sync::Arc::new(e.clone()));
        assert!(f.admits(300, &t), "go by its file name, uid 1000");
        assert!(!f.admits(101, &t), "make is not go");
        e.uid = 0;
        e.ktime_ns = 2;
        t.on_exec(std::sync::Arc::new(e));
        assert!(!f.admits(300, &t), "after an exec as root");
    }

    #[test]
    fn a_cgroup_admits_its_subtree_by_id_and_by_path() {
        use std::os::unix::fs::MetadataExt as _;
        let (p, c) = roots();
        let s = FilterSpec {
            cgroup: resolve_cgroup(&c, "user.slice"),
            ..spec()
        };
        assert_eq!(s.cgroup.as_deref(), Some("/user.slice"));
        let mut f = LiveFilter::with_roots(&s, &p, &c, None).unwrap();
        let mut t = ProcTable::default();
        let ino = std::fs::metadata(c.join("user.slice/u-1000"))
            .unwrap()
            .ino();
        let mut e = exec(300, 101, 1, "/usr/bin/go");
        e.cgroup_id = ino;
        t.on_exec(std::sync::Arc::new(e));
        assert!(f.admits(300, &t), "by the exec's cgroup id");
        assert!(f.admits(100, &t), "by /proc's path");
        assert!(!f.admits(200, &t), "system.slice");
        // By id, and by absolute path.
        let id = std::fs::metadata(c.join("system.slice")).unwrap().ino();
        assert_eq!(
            resolve_cgroup(&c, &id.to_string()).as_deref(),
            Some("/system.slice")
        );
        let abs = c.join("system.slice/ssh.service");
        assert_eq!(
            resolve_cgroup(&c, abs.to_str().unwrap()).as_deref(),
            Some("/system.slice/ssh.service")
        );
        assert_eq!(resolve_cgroup(&c, "no.slice"), None);
        assert!(!under("/user.slicex", "/user.slice"));
    }

    #[test]
    fn flags_are_checked() {
        let c = Path::new("/nonexistent");
        assert!(matches!(
            FilterSpec::from_flags(&[0], None, &[], None, None, None, c),
            Err(FilterError::PidZero)
        ));
        assert!(matches!(
            FilterSpec::from_flags(&[], Some("no-such-user-x"), &[], None, None, None, c),
            Err(FilterError::NoUser(_))
        ));
        let s = FilterSpec::from_flags(&[], Some("0"), &[], None, None, None, c).unwrap();
        assert_eq!(s.uid, Some(0));
        assert!(matches!(
            FilterSpec::from_flags(&[], None, &[], Some("x.slice"), None, None, c),
            Err(FilterError::NoCgroup(..))
        ));
    }

    #[test]
    fn a_pod_filter_needs_a_pod() {
        let (p, c) = roots();
        let s = FilterSpec {
            namespace: Some("default".into()),
            ..spec()
        };
        let mut f = LiveFilter::with_roots(&s, &p, &c, None).unwrap();
        assert!(!f.admits(100, &ProcTable::default()), "not in a pod");
    }
}
