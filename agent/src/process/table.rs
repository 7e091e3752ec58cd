//! The process table: one entry per live (or recently exited) process, keyed
//! by tgid and checked against pid reuse with the exec/fork time; parent links
//! from the kernel's `real_parent` and from fork events; entries expire.
//!
//! Owns: lineage and the exec history of each process. Must not: judge
//! anything (that is `analysis`).

use std::collections::{HashMap, VecDeque};

use crate::events::{Exec, Exit, Fork};

/// Stable identity of a process image: pid plus the boot-time ns it began at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcId {
    pub tgid: u32,
    pub start_ns: u64,
}

#[derive(Clone, Debug)]
pub struct Proc {
    pub id: ProcId,
    pub ppid: u32,
    /// Successful execs of this process, oldest first (a process can exec
    /// again): the first and the latest `MAX_EXECS - 1`.
    pub execs: Vec<std::sync::Arc<Exec>>,
    /// Failed exec attempts, oldest first (bounded).
    pub failed: Vec<std::sync::Arc<Exec>>,
    pub exit: Option<Exit>,
}

impl Proc {
    pub fn current(&self) -> Option<&Exec> {
        self.execs.last().map(|e| e.as_ref())
    }
}

/// How long an exited process stays for late events and report building.
pub const EXITED_TTL_NS: u64 = 30_000_000_000;
/// Bound on the failed exec attempts kept per process.
pub const MAX_FAILED: usize = 64;
/// Bound on the successful execs kept per process (first + latest).
pub const MAX_EXECS: usize = 16;
/// Bound on entries; beyond it the oldest exited ones go first.
pub const MAX_PROCS: usize = 65_536;
/// Bound on the bytes of the exec records held (argv, environment, paths:
/// up to tens of KiB each); beyond it exited processes go first, oldest
/// first, before their 30 s are up.
pub const MAX_BYTES: usize = 16 << 20;

/// What an exec record weighs in memory, estimated: its strings and a fixed
/// overhead per record and per string.
fn exec_bytes(e: &Exec) -> usize {
    256 + e.filename.len()
        + e.exe.len()
        + e.comm.len()
        + e.argv.iter().map(|a| 24 + a.len()).sum::<usize>()
        + e.env
            .iter()
            .map(|(k, v)| 48 + k.len() + v.len())
            .sum::<usize>()
}

/// The bytes of `p`'s own exec records (not the image it inherited at fork,
/// which its parent holds).
fn owned_bytes(p: &Proc) -> usize {
    p.execs
        .iter()
        .chain(&p.failed)
        .filter(|e| e.tgid == p.id.tgid)
        .map(|e| exec_bytes(e))
        .sum()
}

#[derive(Default)]
pub struct ProcTable {
    procs: HashMap<u32, Proc>,
    exited: VecDeque<(u64, ProcId)>,
    /// Entries dropped to stay under [`MAX_PROCS`].
    pub evicted: u64,
    /// Middle execs dropped from processes over [`MAX_EXECS`].
    pub execs_dropped: u64,
    /// Estimated bytes of the exec records held ([`MAX_BYTES`] at most,
    /// live processes aside).
    pub bytes: usize,
}

impl ProcTable {
    pub fn get(&self, tgid: u32) -> Option<&Proc> {
        self.procs.get(&tgid)
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn on_fork(&mut self, f: &Fork) {
        // A child thread of an existing process is not a new process.
        if self.procs.get(&f.child_pid).is_some_and(|p| {
            p.exit.is_none() && p.id.start_ns < f.ktime_ns && p.id.tgid == f.parent_tgid
        }) {
            return;
        }
        if f.child_pid == f.parent_tgid {
            return;
        }
        let inherited = self
            .procs
            .get(&f.parent_tgid)
            .and_then(|p| p.execs.last().cloned());
        self.insert(Proc {
            id: ProcId {
                tgid: f.child_pid,
                start_ns: f.ktime_ns,
            },
            ppid: f.parent_tgid,
            execs: inherited.into_iter().collect(),
            failed: Vec::new(),
            exit: None,
        });
    }

    /// Record an exec; returns the process it belongs to.
    pub fn on_exec(&mut self, e: std::sync::Arc<Exec>) -> ProcId {
        let tgid = e.tgid;
        let reuse = match self.procs.get(&tgid) {
            Some(p) => p.exit.is_some(),
            None => true,
        };
        if reuse {
            self.insert(Proc {
                id: ProcId {
                    tgid,
                    start_ns: e.enter_ns.min(e.ktime_ns),
                },
                ppid: e.ppid,
                execs: Vec::new(),
                failed: Vec::new(),
                exit: None,
            });
        }
        let Some(p) = self.procs.get_mut(&tgid) else {
            return ProcId {
                tgid,
                start_ns: e.ktime_ns,
            };
        };
        if e.ppid != 0 {
            p.ppid = e.ppid;
        }
        if e.ok() {
            // The image inherited at fork is replaced by the first real exec.
            if p.execs.len() == 1 && p.execs[0].tgid != tgid {
                p.execs.clear();
            }
            // A process that re-execs itself without end keeps its first
            // exec and the latest ones: memory bounded per process.
            if p.execs.len() >= MAX_EXECS {
                let gone = p.execs.remove(1);
                if gone.tgid == tgid {
                    self.bytes = self.bytes.saturating_sub(exec_bytes(&gone));
                }
                self.execs_dropped += 1;
            }
            self.bytes += exec_bytes(&e);
            p.execs.push(e);
        } else {
            if p.failed.len() >= MAX_FAILED {
                let gone = p.failed.remove(0);
                self.bytes = self.bytes.saturating_sub(exec_bytes(&gone));
            }
            self.bytes += exec_bytes(&e);
            p.failed.push(e);
        }
        let id = p.id;
        self.trim_bytes();
        id
    }

    /// Exited processes go, oldest first, while the records held weigh
    /// more than [`MAX_BYTES`].
    fn trim_bytes(&mut self) {
        while self.bytes > MAX_BYTES {
            let Some((_, id)) = self.exited.pop_front() else {
                return;
            };
            if self.procs.get(&id.tgid).is_some_and(|p| p.id == id) {
                self.remove(id.tgid);
                self.evicted += 1;
            }
        }
    }

    /// Forget `tgid`, and the bytes of its records.
    fn remove(&mut self, tgid: u32) -> Option<Proc> {
        let p = self.procs.remove(&tgid)?;
        self.bytes = self.bytes.saturating_sub(owned_bytes(&p));
        Some(p)
    }

    pub fn on_exit(&mut self, x: &Exit) -> Option<ProcId> {
        let p = self.procs.get_mut(&x.tgid)?;
        if p.exit.is_some() {
            return None;
        }
        p.exit = Some(x.clone());
        self.exited.push_back((x.ktime_ns, p.id));
        Some(p.id)
    }

    fn insert(&mut self, p: Proc) {
        // A pid reused: the old entry's records go with it.
        self.remove(p.id.tgid);
        if self.procs.len() >= MAX_PROCS {
            self.evict_one();
        }
        self.procs.insert(p.id.tgid, p);
    }

    fn evict_one(&mut self) {
        while let Some((_, id)) = self.exited.pop_front() {
            if self.procs.get(&id.tgid).is_some_and(|p| p.id == id) {
                self.remove(id.tgid);
                self.evicted += 1;
                return;
            }
        }
        // No exited entry to drop: drop an arbitrary one rather than grow.
        if let Some(&k) = self.procs.keys().next() {
            self.remove(k);
            self.evicted += 1;
        }
    }

    /// Drop processes that exited more than [`EXITED_TTL_NS`] before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(t, id)) = self.exited.front() {
            if now_ns.saturating_sub(t) < EXITED_TTL_NS {
                break;
            }
            self.exited.pop_front();
            if self.procs.get(&id.tgid).is_some_and(|p| p.id == id) {
                self.remove(id.tgid);
            }
        }
    }

    /// Parent tgids from `tgid` upwards (bounded, cycle-safe).
    pub fn ancestors(&self, tgid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = tgid;
        for _ in 0..64 {
            let Some(p) = self.procs.get(&cur) else { break };
            if p.ppid == 0 || p.ppid == cur || out.contains(&p.ppid) {
                break;
            }
            out.push(p.ppid);
            cur = p.ppid;
        }
        out
    }

    /// The environment `tgid` runs with, as far as the kernel read it: its
    /// own exec's, or, where that exec's environment was not read (a
    /// compiler in a build), the nearest ancestor's it inherited.
    pub fn env_of(&self, tgid: u32) -> &[(String, String)] {
        std::iter::once(tgid)
            .chain(self.ancestors(tgid))
            .filter_map(|t| self.get(t)?.current())
            .find(|e| e.env_read)
            .map_or(&[], |e| e.env.as_slice())
    }

    /// Is `tgid` the root or a descendant of it?
    pub fn in_tree(&self, tgid: u32, root: u32) -> bool {
        tgid == root || self.ancestors(tgid).contains(&root)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::events::Exec;

    /// A successful exec of `exe` by `tgid`, for unit tests.
    pub(crate) fn exec(tgid: u32, ppid: u32, ns: u64, exe: &str) -> Exec {
        Exec {
            pid: tgid,
            tgid,
            ppid,
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            enter_ns: ns,
            ktime_ns: ns,
            errno: 0,
            filename: exe.into(),
            exe: exe.into(),
            comm: String::new(),
            argv: vec![exe.into()],
            env: vec![],
            argv_truncated: false,
            env_truncated: false,
            env_read: true,
            filename_truncated: false,
            no_enter: false,
            execveat: false,
            cwd: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_re_execs_itself_forever_stays_bounded() {
        let mut t = ProcTable::default();
        for i in 0..20_000u64 {
            t.on_exec(exec(77, 1, 1_000 + i, &format!("/bin/x{i}")));
        }
        let p = t.get(77).unwrap();
        assert_eq!(p.execs.len(), MAX_EXECS);
        assert_eq!(p.execs[0].exe, "/bin/x0", "the first exec stays");
        assert_eq!(p.current().unwrap().exe, "/bin/x19999", "and the latest");
        assert_eq!(t.execs_dropped, 20_000 - MAX_EXECS as u64);
        assert_eq!(
            t.bytes,
            p.execs.iter().map(|e| exec_bytes(e)).sum::<usize>()
        );
    }

    /// 100,000 short-lived processes with 8 KiB command lines, all within
    /// the 30 s an exited process is kept: the records held stay under
    /// MAX_BYTES (the oldest exited go first), live ones are kept, and the
    /// count matches what is held.
    #[test]
    fn exited_processes_are_kept_within_a_byte_budget() {
        let mut t = ProcTable::default();
        let big = "a".repeat(8 << 10);
        // A live process that must stay.
        t.on_exec(exec(1, 0, 1, "/sbin/init"));
        for i in 0..100_000u32 {
            let tgid = 1000 + i;
            let mut e = super::tests_support::exec(tgid, 1, 10 + i as u64, "/usr/bin/go");
            e.argv = vec!["go".into(), big.clone()];
            t.on_exec(Arc::new(e));
            t.on_exit(&Exit {
                tgid,
                ktime_ns: 11 + i as u64,
                raw_code: 0,
            });
            assert!(t.bytes <= MAX_BYTES + (16 << 10), "{} at {i}", t.bytes);
        }
        assert!(t.get(1).is_some(), "the live process stays");
        assert!(t.get(1000 + 99_999).is_some(), "the latest exited stays");
        assert!(t.get(1000).is_none(), "the oldest went");
        assert!(t.evicted > 90_000, "{}", t.evicted);
        let held: usize = (0..100_000u32)
            .filter_map(|i| t.get(1000 + i))
            .chain(t.get(1))
            .map(owned_bytes)
            .sum();
        assert_eq!(t.bytes, held);
    }
    use std::sync::Arc;

    fn exec(tgid: u32, ppid: u32, ns: u64, exe: &str) -> Arc<Exec> {
        Arc::new(tests_support::exec(tgid, ppid, ns, exe))
    }

    #[test]
    fn a_compilers_environment_is_the_one_it_inherited() {
        let mut t = ProcTable::default();
        let mut go = tests_support::exec(30, 1, 1, "/usr/bin/go");
        go.env = vec![("GOCACHE".into(), "/home/u/.cache/go-build".into())];
        t.on_exec(Arc::new(go));
        let mut compile =
            tests_support::exec(31, 30, 2, "/usr/lib/go/pkg/tool/linux_amd64/compile");
        compile.env_read = false;
        t.on_exec(Arc::new(compile));
        assert_eq!(t.env_of(31), t.env_of(30));
        assert_eq!(t.env_of(31)[0].0, "GOCACHE");
        // Its own, where it was read (even when empty).
        t.on_exec(exec(32, 30, 3, "/bin/env-cleared"));
        assert!(t.env_of(32).is_empty());
        assert!(t.env_of(99).is_empty(), "unknown process");
    }

    #[test]
    fn lineage_through_fork_without_exec() {
        let mut t = ProcTable::default();
        t.on_exec(exec(10, 1, 1, "/bin/sh"));
        // sh forks a subshell 11 that forks 12 which execs go.
        t.on_fork(&Fork {
            parent_tgid: 10,
            child_pid: 11,
            ktime_ns: 2,
        });
        t.on_fork(&Fork {
            parent_tgid: 11,
            child_pid: 12,
            ktime_ns: 3,
        });
        t.on_exec(exec(12, 11, 4, "/usr/bin/go"));
        assert!(t.in_tree(12, 10));
        assert_eq!(t.ancestors(12), vec![11, 10, 1]);
        assert_eq!(t.get(12).unwrap().execs.len(), 1);
        assert_eq!(t.get(11).unwrap().current().unwrap().exe, "/bin/sh");
    }

    #[test]
    fn pid_reuse_starts_a_new_process() {
        let mut t = ProcTable::default();
        let a = t.on_exec(exec(20, 1, 1, "/bin/a"));
        t.on_exit(&Exit {
            tgid: 20,
            ktime_ns: 2,
            raw_code: 0,
        });
        let b = t.on_exec(exec(20, 5, 3, "/bin/b"));
        assert_ne!(a, b);
        assert_eq!(t.get(20).unwrap().execs.len(), 1);
        assert_eq!(t.get(20).unwrap().ppid, 5);
    }

    #[test]
    fn exited_entries_expire() {
        let mut t = ProcTable::default();
        t.on_exec(exec(30, 1, 1, "/bin/a"));
        t.on_exit(&Exit {
            tgid: 30,
            ktime_ns: 10,
            raw_code: 0,
        });
        t.expire(10 + EXITED_TTL_NS - 1);
        assert!(t.get(30).is_some());
        t.expire(10 + EXITED_TTL_NS);
        assert!(t.get(30).is_none());
    }

    #[test]
    fn reexec_in_the_same_process_is_kept_in_order() {
        let mut t = ProcTable::default();
        t.on_exec(exec(40, 1, 1, "/usr/bin/go"));
        t.on_exec(exec(
            40,
            1,
            2,
            "/root/go/pkg/mod/golang.org/toolchain@v0.0.1-go1.22.0.linux-amd64/bin/go",
        ));
        let p = t.get(40).unwrap();
        assert_eq!(p.execs.len(), 2);
        assert!(p.current().unwrap().exe.contains("toolchain@"));
    }
}
