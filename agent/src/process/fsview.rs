//! A view of a process's filesystem: paths resolve under a root
//! (`/proc/<pid>/root` for a live process, so files inside containers
//! resolve; any directory in tests). Symlinks are followed inside the root,
//! never out of it.
//!
//! Owns: read-only file access for analysis. Must not: write anything.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
};

mod open;
mod paths;

pub use open::*;
pub use paths::*;

/// File identity and attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub is_file: bool,
    pub is_dir: bool,
    pub nlink: u64,
    /// Served by a FUSE server (set by [`open_file`] only).
    #[serde(default)]
    pub fuse: bool,
}

impl Meta {
    fn of(md: &std::fs::Metadata) -> Meta {
        Meta {
            dev: md.dev(),
            ino: md.ino(),
            mode: md.permissions().mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            mtime: md.mtime(),
            is_file: md.is_file(),
            is_dir: md.is_dir(),
            nlink: md.nlink(),
            fuse: false,
        }
    }
}

impl Meta {
    pub fn executable(&self) -> bool {
        self.is_file && self.mode & 0o111 != 0
    }
}

#[derive(Clone, Debug)]
pub struct FsView {
    root: PathBuf,
    /// An open handle on another mount namespace's root: stays valid after
    /// the process exits, unlike `/proc/<pid>/root`.
    _hold: Option<std::sync::Arc<std::fs::File>>,
}

impl FsView {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            _hold: None,
        }
    }

    /// The host's view.
    pub fn host() -> Self {
        Self::new("/")
    }

    /// The view rooted at the open directory `f`.
    fn held(f: std::fs::File) -> Self {
        use std::os::fd::AsRawFd as _;
        Self {
            root: PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())),
            _hold: Some(std::sync::Arc::new(f)),
        }
    }

    /// The view of process `pid` (`proc_root` is `/proc` outside tests): the
    /// host's when it shares our mount namespace (or is gone), else its own
    /// root, held open so short-lived processes can still be analysed.
    pub fn of_process(proc_root: &Path, pid: u32) -> Self {
        let dir = proc_root.join(pid.to_string());
        let theirs = std::fs::read_link(dir.join("ns/mnt")).ok();
        // The agent's own namespace does not change: read once (for /proc).
        static OURS: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
        let read_ours = || std::fs::read_link(proc_root.join("self/ns/mnt")).ok();
        let ours = if proc_root == Path::new("/proc") {
            OURS.get_or_init(read_ours).clone()
        } else {
            read_ours()
        };
        if theirs.is_none() || theirs == ours {
            return Self::host();
        }
        match std::fs::File::open(dir.join("root")) {
            Ok(f) => Self::held(f),
            Err(_) => Self::host(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Host path of `p` (absolute inside the view) without following symlinks.
    pub fn host_path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// The host's own view (`/`): the kernel resolves paths exactly as the
    /// walk below would, in one call instead of one per component.
    pub fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Resolve symlinks of absolute `p` inside the root. `None` when a
    /// component is missing or there are too many links.
    pub fn canonical(&self, p: &str) -> Option<String> {
        match self.ask(p, Job::Canonical(p.into()), None)?.0 {
            Answer::Path(c) => Some(c),
            _ => None,
        }
    }

    /// `job` about `p` answered by a file worker, within the file-work
    /// deadline (see [`super::guard`]); `file` goes along (and is what the
    /// job reads) where the view is the host's.
    fn ask(
        &self,
        p: &str,
        job: Job,
        file: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Option<(Answer, Vec<u8>, Option<std::os::fd::OwnedFd>)> {
        use std::os::fd::AsFd as _;
        if super::guard::inline() {
            let file = file.and_then(|f| f.try_clone_to_owned().ok());
            let (a, raw, fd) = self.answer(job, file.map(std::fs::File::from));
            return Some((a, raw, fd));
        }
        let key = self.host_path(p).to_string_lossy().into_owned();
        let held = self._hold.as_ref().map(|f| f.as_fd());
        let req = Request {
            root: (!self.is_host() && held.is_none())
                .then(|| self.root.to_string_lossy().into_owned()),
            root_fd: held.is_some(),
            job,
        };
        tracing::trace!(job = ?req.job, "file question");
        let bytes = serde_json::to_vec(&req).ok()?;
        let key = (!matches!(req.job, Job::StatMany(_))).then_some(key.as_str());
        let (json, raw, fd) = super::guard::ask(key, &bytes, held.or(file))?;
        Some((serde_json::from_slice(&json).ok()?, raw, fd))
    }

    /// Answer `job` here (in a worker, or inline).
    fn answer(
        &self,
        job: Job,
        file: Option<std::fs::File>,
    ) -> (Answer, Vec<u8>, Option<std::os::fd::OwnedFd>) {
        let none = (Answer::Nothing, Vec::new(), None);
        let a = match job {
            Job::Stat(p) => self.stat_now(&p).map(Answer::Meta),
            Job::Canonical(p) => self.canonical_now(&p).map(Answer::Path),
            Job::StatMany(ps) => Some(Answer::Found(
                ps.iter()
                    .map(|p| {
                        let m = self.stat_now(p)?;
                        Some((m, self.canonical_now(p)))
                    })
                    .collect(),
            )),
            Job::FindUp(d, names) => Some(Answer::Each(
                names.iter().map(|n| self.find_up_now(&d, n)).collect(),
            )),
            Job::ReadHead(p, max) => {
                return match self
                    .open_now(&p)
                    .and_then(|(f, s)| read_file_capped(&f, s, max))
                {
                    Some(b) => (Answer::Bytes, b, None),
                    None => none,
                };
            }
            Job::BuildInfo(p) => self
                .open_now(&p)
                .and_then(|(f, size)| {
                    crate::buildinfo::read_image(&f, size, crate::buildinfo::BUILDINFO_SECTIONS)
                })
                .and_then(|b| crate::buildinfo::parse(&b).ok())
                .map(Answer::BuildInfo),
            Job::PclntabOffset(symbol) => file
                .and_then(|f| {
                    let size = f.metadata().ok()?.len();
                    crate::buildinfo::read_image(&f, size, crate::buildinfo::PCLNTAB_SECTIONS)
                })
                .and_then(|b| crate::buildinfo::go_func_offset(&b, &symbol))
                .map(Answer::Offset),
            Job::Open(p) => {
                let Some((f, _)) = self.open_now(&p) else {
                    return none;
                };
                let Ok(md) = f.metadata() else { return none };
                let mut m = Meta::of(&md);
                m.fuse = on_fuse(&f);
                return (Answer::Opened(m), Vec::new(), Some(f.into()));
            }
            Job::ListDir(d, limit) => std::fs::read_dir(self.host_path(&d)).ok().map(|rd| {
                Answer::Paths(
                    rd.flatten()
                        .take(limit)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect(),
                )
            }),
            Job::ExeFile {
                pid,
                exe,
                proc_root,
            } => Some(Answer::Path(exe_file_now(pid, &exe, Path::new(&proc_root)))),
        };
        match a {
            Some(a) => (a, Vec::new(), None),
            None => none,
        }
    }

    fn canonical_now(&self, p: &str) -> Option<String> {
        if self.kernel_resolves(p) {
            return host_canonical(p);
        }
        self.canonical_walk(p)
    }

    /// Whether the kernel may resolve `p` itself: on the host's own view,
    /// for an absolute path.
    fn kernel_resolves(&self, p: &str) -> bool {
        self.is_host() && p.starts_with('/')
    }

    /// A host path that opens what `p` names in the view: `p` itself where
    /// the kernel resolves it, else its walked resolution.
    fn openable(&self, p: &str) -> Option<PathBuf> {
        if self.kernel_resolves(p) {
            Some(PathBuf::from(p))
        } else {
            Some(self.host_path(&self.canonical_walk(p)?))
        }
    }

    /// `canonical`, a component at a time (the kernel's lookup would follow
    /// an absolute link out of a root that is not `/`).
    fn canonical_walk(&self, p: &str) -> Option<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut pending: Vec<String> = split(p);
        pending.reverse();
        let mut links = 0;
        while let Some(c) = pending.pop() {
            match c.as_str() {
                "." | "" => continue,
                ".." => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            stack.push(c);
            let cur = format!("/{}", stack.join("/"));
            let hp = self.host_path(&cur);
            let md = std::fs::symlink_metadata(&hp).ok()?;
            if md.file_type().is_symlink() {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = std::fs::read_link(&hp).ok()?;
                let t = target.to_string_lossy().to_string();
                stack.pop();
                if t.starts_with('/') {
                    stack.clear();
                }
                let mut more = split(&t);
                more.reverse();
                pending.extend(more);
            }
        }
        Some(format!("/{}", stack.join("/")))
    }

    /// `stat` (following symlinks inside the root).
    pub fn stat(&self, p: &str) -> Option<Meta> {
        match self.ask(p, Job::Stat(p.into()), None)?.0 {
            Answer::Meta(m) => Some(m),
            _ => None,
        }
    }

    fn stat_now(&self, p: &str) -> Option<Meta> {
        let md = match self.open_in_root(p, libc::O_PATH) {
            Some(r) => r.ok()?.metadata().ok()?,
            None => std::fs::metadata(self.openable(p)?).ok()?,
        };
        Some(Meta::of(&md))
    }

    pub fn is_dir(&self, p: &str) -> bool {
        self.stat(p).is_some_and(|m| m.is_dir)
    }

    /// Up to `max` bytes of the regular file at `p` (a FIFO, device or
    /// socket planted there reads as absent: see [`open_regular`]).
    pub fn read_head(&self, p: &str, max: usize) -> Option<Vec<u8>> {
        match self.ask(p, Job::ReadHead(p.into(), max), None)? {
            (Answer::Bytes, b, _) => Some(b),
            _ => None,
        }
    }

    /// [`FsView::stat`] and, for what exists, [`FsView::canonical`] of each
    /// of `paths` (a PATH search), in one question; path by path when the
    /// question does not answer in time, so only the directory that hangs
    /// is set aside (those under a stalled directory read as missing).
    pub fn stat_many(&self, paths: &[String]) -> Vec<Option<(Meta, Option<String>)>> {
        let open: Vec<String> = paths
            .iter()
            .filter(|p| {
                super::guard::inline()
                    || !super::guard::stalled(&self.host_path(p).to_string_lossy())
            })
            .cloned()
            .collect();
        let first = open.first().cloned().unwrap_or_default();
        let mut found = match self.ask(&first, Job::StatMany(open.clone()), None) {
            Some((Answer::Found(v), _, _)) if v.len() == open.len() => {
                open.into_iter()
                    .zip(v)
                    .collect::<std::collections::HashMap<_, _>>()
            }
            _ => open
                .into_iter()
                .map(|p| {
                    let m = self.stat(&p);
                    let c = m.and_then(|_| self.canonical(&p));
                    let v = m.map(|m| (m, c));
                    (p, v)
                })
                .collect(),
        };
        paths.iter().map(|p| found.remove(p).flatten()).collect()
    }

    /// Go build info of the program at `p` (headers and the build-info
    /// section read, bounded), `None` for anything else.
    pub fn build_info(&self, p: &str) -> Option<crate::buildinfo::BuildInfo> {
        match self.ask(p, Job::BuildInfo(p.into()), None)?.0 {
            Answer::BuildInfo(b) => Some(b),
            _ => None,
        }
    }

    /// The names in directory `d` (at most `limit`).
    pub fn list_dir(&self, d: &str, limit: usize) -> Vec<String> {
        let key = format!("{}/", d.trim_end_matches('/'));
        match self
            .ask(&key, Job::ListDir(d.into(), limit), None)
            .map(|r| r.0)
        {
            Some(Answer::Paths(v)) => v,
            _ => Vec::new(),
        }
    }

    fn open_now(&self, p: &str) -> Option<(std::fs::File, u64)> {
        match self.open_in_root(p, READ_FLAGS) {
            Some(r) => regular(r.ok()?),
            None => open_regular(&self.openable(p)?),
        }
    }

    /// `p` opened by the kernel inside a root that is not the host's, in
    /// one race-free lookup: `openat2` with `RESOLVE_IN_ROOT` (`..` and
    /// absolute symlinks stop at the root, as they do for the process) and
    /// no /proc magic links. A walk then an open would leave a window for a
    /// user to swap a directory for a link out of the root. `None` where the
    /// kernel lacks `openat2` (before 5.6, or a seccomp filter refusing it):
    /// the walk is used there.
    fn open_in_root(&self, p: &str, flags: i32) -> Option<std::io::Result<std::fs::File>> {
        use std::os::fd::AsFd as _;
        if self.is_host() || NO_OPENAT2.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let own;
        let dir = match &self._hold {
            Some(f) => f.as_fd(),
            None => {
                use std::os::unix::fs::OpenOptionsExt as _;
                own = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(&self.root)
                    .ok()?;
                own.as_fd()
            }
        };
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let rel = p.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        let oflags = OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC;
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(dir, rel, oflags, Mode::empty(), resolve) {
            Ok(fd) => Some(Ok(std::fs::File::from(fd))),
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                NO_OPENAT2.store(true, std::sync::atomic::Ordering::Relaxed);
                None
            }
            Err(e) => Some(Err(e.into())),
        }
    }

    pub fn read_to_string(&self, p: &str, max: usize) -> Option<String> {
        self.read_head(p, max)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// The nearest regular file `name` in `dir` or a directory above it, as
    /// tools find `go.mod` or `.python-version` (at most 64 levels).
    /// One job for the whole walk.
    pub fn find_up(&self, dir: &str, name: &str) -> Option<String> {
        self.find_up_each(dir, &[name]).pop().flatten()
    }

    /// [`FsView::find_up`] of each of `names`, in one question.
    pub fn find_up_each(&self, dir: &str, names: &[&str]) -> Vec<Option<String>> {
        let key = join(dir, names.first().copied().unwrap_or(""));
        let job = Job::FindUp(dir.into(), names.iter().map(|n| n.to_string()).collect());
        match self.ask(&key, job, None).map(|r| r.0) {
            Some(Answer::Each(v)) if v.len() == names.len() => v,
            _ => vec![None; names.len()],
        }
    }

    fn find_up_now(&self, dir: &str, name: &str) -> Option<String> {
        let mut d = dir.trim_end_matches('/');
        for _ in 0..64 {
            let p = join(if d.is_empty() { "/" } else { d }, name);
            if self.stat_now(&p).is_some_and(|m| m.is_file) {
                return Some(p);
            }
            if d.is_empty() || d == "/" {
                return None;
            }
            d = parent(d)?;
        }
        None
    }
}

/// A question about files (see [`super::guard`]): what a worker answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Job {
    Stat(String),
    /// Stat and canonical path of each (a batch: see [`FsView::stat_many`]).
    StatMany(Vec<String>),
    Canonical(String),
    FindUp(String, Vec<String>),
    ReadHead(String, usize),
    BuildInfo(String),
    /// Of the file passed along.
    PclntabOffset(String),
    Open(String),
    ListDir(String, usize),
    ExeFile {
        pid: u32,
        exe: String,
        proc_root: String,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Request {
    /// The view's root when it is a directory (tests), not the host's nor
    /// a held root (passed as the descriptor).
    root: Option<String>,
    root_fd: bool,
    job: Job,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Answer {
    Nothing,
    Meta(Meta),
    Path(String),
    Paths(Vec<String>),
    Found(Vec<Option<(Meta, Option<String>)>>),
    Each(Vec<Option<String>>),
    /// In the raw part.
    Bytes,
    BuildInfo(crate::buildinfo::BuildInfo),
    Offset(u64),
    /// The descriptor goes along.
    Opened(Meta),
}

/// A file worker's answer to one request (see [`super::guard::serve`]).
pub fn answer_request(req: &[u8], fd: Option<std::os::fd::OwnedFd>) -> super::guard::Reply {
    let Ok(r) = serde_json::from_slice::<Request>(req) else {
        return (b"\"Nothing\"".to_vec(), Vec::new(), None);
    };
    let (view, file) = match (r.root_fd, fd) {
        (true, Some(fd)) => (FsView::held(std::fs::File::from(fd)), None),
        (_, fd) => (
            r.root.map_or_else(FsView::host, FsView::new),
            fd.map(std::fs::File::from),
        ),
    };
    let (a, raw, out) = view.answer(r.job, file);
    let json = serde_json::to_vec(&a).unwrap_or_else(|_| b"\"Nothing\"".to_vec());
    (json, raw, out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "agent-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn links_out_of_a_container_root_read_the_containers_files_not_the_hosts() {
        // A host file a hostile container user would like the root agent
        // to read for them.
        let host = tempdir("fsview-host");
        std::fs::write(host.join("secret"), b"host secret").unwrap();
        let root = tempdir("fsview-root");
        let inside = root.join(host.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("secret"), b"container file").unwrap();
        std::fs::create_dir_all(root.join("home/u")).unwrap();
        let abs = host.join("secret");
        std::os::unix::fs::symlink(&abs, root.join("home/u/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../..", root.join("home/u/up")).unwrap();
        let v = FsView::new(&root);
        assert!(
            v.open_in_root("/home/u/abs", READ_FLAGS).is_some(),
            "openat2 here"
        );
        for p in [
            "/home/u/abs".to_string(),
            format!("/home/u/up{}", abs.display()),
            format!("/../../..{}", abs.display()),
        ] {
            assert_eq!(
                v.read_to_string(&p, 64).as_deref(),
                Some("container file"),
                "{p}"
            );
            assert!(v.stat(&p).unwrap().is_file, "{p}");
        }
        // /proc magic links are not followed.
        std::os::unix::fs::symlink("/proc/self/root/etc/hostname", root.join("home/u/magic"))
            .unwrap();
        assert_eq!(v.read_head("/home/u/magic", 64), None);
        std::fs::remove_dir_all(root).ok();
        std::fs::remove_dir_all(host).ok();
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let root = tempdir("fsview");
        std::fs::create_dir_all(root.join("usr/lib/go/bin")).unwrap();
        std::fs::write(root.join("usr/lib/go/bin/go"), b"x").unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/go/bin/go", root.join("usr/bin/go")).unwrap();
        let v = FsView::new(&root);
        assert_eq!(
            v.canonical("/usr/bin/go").as_deref(),
            Some("/usr/lib/go/bin/go")
        );
        assert!(v.stat("/usr/bin/go").unwrap().is_file);
        assert_eq!(
            v.canonical("/usr/bin/../bin/go").as_deref(),
            Some("/usr/lib/go/bin/go")
        );
        assert!(v.stat("/nope").is_none());
        std::fs::remove_dir_all(root).ok();
    }

    /// On the host the kernel's resolution and the walk agree: link chains,
    /// relative and absolute links, `..` after a link, missing parts, loops.
    #[test]
    fn host_resolution_matches_the_walk() {
        let d = tempdir("fshost");
        let ds = d.display().to_string();
        std::fs::create_dir_all(d.join("opt/go/bin")).unwrap();
        std::fs::write(d.join("opt/go/bin/go"), b"x").unwrap();
        std::fs::create_dir_all(d.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink(format!("{ds}/opt/go"), d.join("goroot")).unwrap();
        std::os::unix::fs::symlink("../../goroot/bin/go", d.join("usr/bin/go")).unwrap();
        std::os::unix::fs::symlink("go", d.join("usr/bin/go2")).unwrap();
        std::os::unix::fs::symlink("loop2", d.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", d.join("loop2")).unwrap();
        std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
        let v = FsView::host();
        for rel in [
            "usr/bin/go",
            "usr/bin/go2",
            "goroot/bin/../bin/go",
            "goroot/../usr/bin",
            "usr/bin/./go",
            "opt/go/bin/go",
            "missing/go",
            "loop1",
            "dangling",
            "usr/bin/go/x",
        ] {
            let p = format!("{ds}/{rel}");
            assert_eq!(v.canonical(&p), v.canonical_walk(&p), "{p}");
            let walk = v
                .canonical_walk(&p)
                .and_then(|c| std::fs::metadata(c).ok())
                .map(|m| (m.dev(), m.ino()));
            assert_eq!(v.stat(&p).map(|m| (m.dev, m.ino)), walk, "{p}");
        }
        assert_eq!(
            v.canonical(&format!("{ds}/usr/bin/go2")),
            Some(format!("{ds}/opt/go/bin/go"))
        );
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn path_helpers() {
        assert_eq!(parent("/a/b/c"), Some("/a/b"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(basename("/a/b/go"), "go");
        assert_eq!(join("/a/", "b"), "/a/b");
    }
}
