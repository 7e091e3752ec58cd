//! File-access faults of toolchain processes: which path, which operation,
//! which errno, the first ancestor that blocks the user (owner, group,
//! mode), what the path is to the toolchain (GOROOT, GOPATH, GOMODCACHE,
//! GOCACHE, a conda prefix, a go.work), aggregated into one finding per
//! blocking place with a count.
//!
//! Owns: fault resolution and the `fs.*` rules. Must not: print.

pub mod codes;

use std::{collections::BTreeMap, path::PathBuf};

use serde_json::json;

use crate::{
    events::FsFault,
    finding::{Finding, Severity, errno_name},
    process::fsview::{FsView, basename, join, parent},
    process::pyenv::{self, PyEnv},
    process::table::ProcTable,
};

/// Why access is refused at a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// The directory or file that refuses.
    pub path: String,
    /// `search`, `write` or `read`: the permission missing there.
    pub needs: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Does `uid`/`gid` have `bit` (4 r, 2 w, 1 x) on a file of owner/group/mode?
pub fn allowed(uid: u32, gid: u32, owner: u32, group: u32, mode: u32, bit: u32) -> bool {
    if uid == 0 {
        return true;
    }
    let shift = if uid == owner {
        6
    } else if gid == group {
        3
    } else {
        0
    };
    (mode >> shift) & bit != 0
}

/// First place on the way to `path` that refuses `uid`/`gid` the access `write` needs.
pub fn blocking(fs: &FsView, path: &str, uid: u32, gid: u32, write: bool) -> Option<Blocker> {
    let mut dir = String::from("/");
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (last, dirs) = parts.split_last()?;
    let check = |p: &str, bit: u32, needs: &'static str| -> Option<Blocker> {
        let m = fs.stat(p)?;
        (!allowed(uid, gid, m.uid, m.gid, m.mode, bit)).then(|| Blocker {
            path: p.to_string(),
            needs,
            uid: m.uid,
            gid: m.gid,
            mode: m.mode & 0o7777,
        })
    };
    if let Some(b) = check("/", 1, "search") {
        return Some(b);
    }
    for d in dirs {
        dir = join(&dir, d);
        if let Some(b) = check(&dir, 1, "search") {
            return Some(b);
        }
    }
    let target = join(&dir, last);
    match fs.stat(&target) {
        // Creating, removing or renaming needs write on the directory.
        None => check(&dir, 2, "write"),
        Some(m) if m.is_dir && write => {
            check(&dir, 2, "write").or_else(|| check(&target, 2, "write"))
        }
        Some(_) if write => check(&target, 2, "write").or_else(|| check(&dir, 2, "write")),
        Some(_) => check(&target, 4, "read"),
    }
}

/// Mount point and options of the read-only filesystem holding `path`.
pub fn ro_mount(mounts: &str, path: &str) -> Option<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dir, opts) = (*f.get(1)?, *f.get(3)?);
            let inside = path == dir
                || path.starts_with(&format!("{}/", dir.trim_end_matches('/')))
                || dir == "/";
            (inside && opts.split(',').any(|o| o == "ro")).then(|| dir.to_string())
        })
        .max_by_key(|d| d.len())
}

/// What `path` is to the toolchain, from the process's environment.
pub fn role(env: &[(String, String)], fs: &FsView, path: &str) -> Option<String> {
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim_end_matches('/').to_string())
            .filter(|v| !v.is_empty())
    };
    let home = get("HOME");
    let gopath = get("GOPATH").or_else(|| home.as_ref().map(|h| format!("{h}/go")));
    let candidates = [
        (
            "GOCACHE",
            get("GOCACHE").or_else(|| home.as_ref().map(|h| format!("{h}/.cache/go-build"))),
        ),
        (
            "GOMODCACHE",
            get("GOMODCACHE").or_else(|| gopath.as_ref().map(|g| format!("{g}/pkg/mod"))),
        ),
        ("GOBIN", get("GOBIN")),
        ("GOROOT", get("GOROOT")),
        ("GOPATH", gopath),
    ];
    let inside = |p: &str, root: &str| p == root || p.starts_with(&format!("{root}/"));
    for (name, root) in candidates {
        if let Some(r) = root
            && inside(path, &r)
        {
            return Some(format!("{name} ({r})"));
        }
    }
    if basename(path) == "go.work" {
        return Some("a go.work".into());
    }
    match pyenv::env_of(fs, &join(path, "x")) {
        Some(PyEnv::Conda { name, prefix }) => Some(format!("inside conda env {name} ({prefix})")),
        Some(PyEnv::Venv { prefix }) => Some(format!("inside venv {prefix}")),
        None => None,
    }
}

#[derive(Clone, Debug)]
struct Pending {
    finding: Finding,
    count: u64,
    last_ns: u64,
    first_ns: u64,
}

/// Aggregates faults into findings.
#[derive(Default)]
pub struct FsTracker {
    pending: BTreeMap<String, Pending>,
    proc_root: PathBuf,
}

impl FsTracker {
    pub fn new(proc_root: PathBuf) -> Self {
        Self {
            pending: BTreeMap::new(),
            proc_root,
        }
    }

    fn absolute(&self, f: &FsFault) -> String {
        if f.path.starts_with('/') {
            return f.path.clone();
        }
        let base = if f.dfd == agent_common::FS_AT_FDCWD {
            std::fs::read_link(self.proc_root.join(f.tgid.to_string()).join("cwd"))
        } else {
            std::fs::read_link(
                self.proc_root
                    .join(f.tgid.to_string())
                    .join("fd")
                    .join(f.dfd.to_string()),
            )
        };
        match base {
            Ok(b) => join(&b.to_string_lossy(), &f.path),
            Err(_) => f.path.clone(),
        }
    }

    pub fn on_fault(&mut self, table: &ProcTable, f: &FsFault) {
        let path = self.absolute(f);
        let fs = FsView::of_process(&self.proc_root, f.tgid);
        let exec = table.get(f.tgid).and_then(|p| p.current());
        let exe = exec.map(|e| e.exe.clone()).unwrap_or_default();
        let name = if exe.is_empty() {
            "?".to_string()
        } else {
            basename(&exe).to_string()
        };
        let env = table.env_of(f.tgid);
        let blocker = if f.errno == libc::EROFS {
            None
        } else {
            blocking(&fs, &path, f.uid, f.gid, f.write)
        };
        let (code, place, detail) = if f.errno == libc::EROFS {
            // The process may be gone already: then ours (the same namespace, usually).
            let mounts =
                std::fs::read_to_string(self.proc_root.join(f.tgid.to_string()).join("mounts"))
                    .or_else(|_| std::fs::read_to_string(self.proc_root.join("self/mounts")))
                    .unwrap_or_default();
            let m = ro_mount(&mounts, &path).unwrap_or_else(|| "?".into());
            (
                codes::READ_ONLY,
                m.clone(),
                format!("{m} is mounted read-only"),
            )
        } else {
            match &blocker {
                Some(b) => (
                    codes::PERMISSION_DENIED,
                    b.path.clone(),
                    format!(
                        "{} needs {} permission: owned by {}:{}, mode {:o}",
                        b.path, b.needs, b.uid, b.gid, b.mode
                    ),
                ),
                None => (
                    codes::PERMISSION_DENIED,
                    parent(&path).unwrap_or("/").to_string(),
                    "refused although the permission bits allow it (ACL, LSM, immutable file, or the file changed since)".to_string(),
                ),
            }
        };
        let role = role(env, &fs, &place).or_else(|| role(env, &fs, &path));
        let (cause, fix) = cause_and_fix(
            f,
            env,
            &path,
            &place,
            &detail,
            blocker.as_ref(),
            role.as_deref(),
        );
        let key = format!("{code}|{}|{name}|{place}|{}", f.uid, f.errno);
        let p = self.pending.entry(key).or_insert_with(|| Pending {
            finding: Finding {
                code,
                severity: Severity::Error,
                pid: f.tgid,
                summary: format!(
                    "{name} (uid {}) cannot {} {}: {detail}{}",
                    f.uid,
                    f.op,
                    path,
                    role.as_deref()
                        .map(|r| format!("; it is {r}"))
                        .unwrap_or_default()
                ),
                cause,
                fix,
                evidence: [
                    ("exe", json!(exe)),
                    ("path", json!(path)),
                    ("operation", json!(f.op)),
                    ("errno", json!(errno_name(f.errno))),
                    ("uid", json!(f.uid)),
                    ("gid", json!(f.gid)),
                    ("blocking_path", json!(place)),
                    ("role", json!(role)),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            },
            count: 0,
            last_ns: f.ktime_ns,
            first_ns: f.ktime_ns,
        });
        p.count += 1;
        p.last_ns = f.ktime_ns;
        if let Some(b) = &blocker {
            p.finding
                .evidence
                .insert("blocking_owner_uid".into(), json!(b.uid));
            p.finding
                .evidence
                .insert("blocking_owner_gid".into(), json!(b.gid));
            p.finding
                .evidence
                .insert("blocking_mode".into(), json!(format!("{:o}", b.mode)));
            p.finding.evidence.insert("needs".into(), json!(b.needs));
        }
    }

    /// Findings idle for `idle_ns` (all with `idle_ns == 0`), with their counts.
    pub fn flush(&mut self, now_ns: u64, idle_ns: u64) -> Vec<(Finding, u64)> {
        let keys: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| idle_ns == 0 || now_ns.saturating_sub(p.last_ns) >= idle_ns)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| self.pending.remove(&k))
            .map(|mut p| {
                p.finding.evidence.insert("count".into(), json!(p.count));
                if p.count > 1 {
                    p.finding.summary.push_str(&format!(" ({} times)", p.count));
                }
                (p.finding, p.first_ns)
            })
            .collect()
    }
}

/// What decided a file-access finding and what to type.
fn cause_and_fix(
    f: &FsFault,
    env: &[(String, String)],
    path: &str,
    place: &str,
    detail: &str,
    blocker: Option<&Blocker>,
    role: Option<&str>,
) -> (String, String) {
    // `GOCACHE (/x)` → `GOCACHE` when the role is a variable's directory.
    let var = role
        .and_then(|r| r.split_once(" ("))
        .map(|(v, _)| v)
        .filter(|v| v.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
    let home = env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| v.trim_end_matches('/'))
        .filter(|h| h.len() > 1);
    let in_home = |p: &str| home.is_some_and(|h| p == h || p.starts_with(&format!("{h}/")));
    let redirect = |var: &str| {
        format!(
            "export {var}=<a directory you own> (e.g. {}/{})",
            home.unwrap_or("$HOME"),
            match var {
                "GOCACHE" => ".cache/go-build",
                "GOMODCACHE" => "go/pkg/mod",
                _ => "go",
            }
        )
    };
    if f.errno == libc::EROFS {
        let fix = match var {
            Some(v) => redirect(v),
            None => format!("write somewhere writable, or remount it: mount -o remount,rw {place}"),
        };
        return (detail.to_string(), fix);
    }
    match blocker {
        Some(b) => {
            let cause = format!(
                "{} is owned by uid {}:gid {} with mode {:o}; uid {} (gid {}) lacks {} permission there",
                b.path, b.uid, b.gid, b.mode, f.uid, f.gid, b.needs
            );
            let fix = if b.uid != f.uid && in_home(&b.path) {
                // The classic: a cache in the user's home created by `sudo go …`.
                format!("sudo chown -R $(id -u):$(id -g) {}", b.path)
            } else if let Some(v) = var {
                redirect(v)
            } else {
                format!(
                    "ask the owner of {} for {} permission (or run as a user who has it)",
                    b.path, b.needs
                )
            };
            (cause, fix)
        }
        None => (
            "the permission bits allow it: an ACL, an LSM (AppArmor/SELinux), an immutable flag, or the file changed since".to_string(),
            format!("check getfacl {place}, lsattr {path} and the kernel log for LSM denials (journalctl -k | grep -i denied)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::fsview::tests::tempdir;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn permission_bits() {
        assert!(allowed(0, 0, 1, 1, 0, 2));
        assert!(allowed(1000, 1000, 1000, 0, 0o700, 2));
        assert!(!allowed(1000, 1000, 0, 0, 0o755, 2));
        assert!(allowed(1000, 50, 0, 50, 0o750, 1));
        assert!(!allowed(1000, 1000, 0, 0, 0o750, 1));
    }

    #[test]
    fn the_first_blocking_ancestor() {
        let root = tempdir("fsdiag");
        std::fs::create_dir_all(root.join("cache/ab")).unwrap();
        std::fs::set_permissions(root.join("cache"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::create_dir_all(root.join("proj/sub")).unwrap();
        std::fs::set_permissions(root.join("proj"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let fs = FsView::new(&root);
        // Files here are owned by the test's uid: judge them as another user.
        let b = blocking(&fs, "/cache/new-entry", 4242, 4242, true).unwrap();
        assert_eq!((b.path.as_str(), b.needs), ("/cache", "write"));
        let b = blocking(&fs, "/proj/sub/go.work", 4242, 4242, false).unwrap();
        assert_eq!(
            (b.path.as_str(), b.needs, b.mode),
            ("/proj", "search", 0o750)
        );
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn read_only_mounts_and_roles() {
        let m = "/dev/vda / ext4 rw 0 0\ntmpfs /opt/conda/envs/x/lib tmpfs ro,nosuid 0 0\n";
        assert_eq!(
            ro_mount(m, "/opt/conda/envs/x/lib/site.py").as_deref(),
            Some("/opt/conda/envs/x/lib")
        );
        assert_eq!(ro_mount(m, "/home/u/f"), None);
        let env = vec![
            ("HOME".to_string(), "/home/u".to_string()),
            ("GOCACHE".to_string(), "/var/cache/go".to_string()),
        ];
        let fs = FsView::new("/nonexistent-root");
        assert_eq!(
            role(&env, &fs, "/var/cache/go/ab/x").as_deref(),
            Some("GOCACHE (/var/cache/go)")
        );
        assert_eq!(
            role(&env, &fs, "/home/u/go/pkg/mod/x").as_deref(),
            Some("GOMODCACHE (/home/u/go/pkg/mod)")
        );
        assert_eq!(
            role(&env, &fs, "/srv/p/go.work").as_deref(),
            Some("a go.work")
        );
        assert_eq!(role(&env, &fs, "/etc/passwd"), None);
    }
}
