//! Where the TLS-library uprobes go: the OpenSSL probes on each libssl a
//! process may load, the Go crypto/tls probe on each Go program, once per
//! file (by device and inode), by symbol or, in stripped Go binaries, at the
//! offset Go's own function table gives.
//!
//! Owns: the attach policy of the TLS-library probes. Must not: decide what
//! a probe's note means (`libs::describe`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Instant,
};

use super::{
    goplaces::{GoPlaces, GoVars, PreAttachStats},
    libs::{GO_PROGRAM, GO_SYMBOL, OSSL_PROBES, library_dirs, libssl_candidates, libssl_in_dir},
    targets::{Claim, TargetStats, Targets},
};

/// Where on a file a uprobe goes.
#[derive(Clone, Copy, Debug)]
pub enum UprobeAt<'a> {
    Symbol(&'a str),
    /// A file offset (a stripped Go binary's, from its function table).
    Offset(u64),
}

/// What this signal asks of the kernel side: uprobes on files, released a
/// group at a time. The session's instrumentation does it (the loaded
/// programs are `bpf::Collector`'s); the signal never touches them.
pub trait UprobeAttacher {
    /// Whether the TLS-library programs are loaded at all.
    fn tls_uprobes(&self) -> bool;
    /// Attach `program` at `at` in `target`, in `group`.
    fn attach_uprobe(
        &mut self,
        group: u64,
        program: &str,
        at: UprobeAt<'_>,
        target: &Path,
    ) -> Result<(), String>;
    /// Let go of every uprobe of `group`.
    fn release_uprobes(&mut self, group: u64);
}

/// The files probed so far, and when each library directory was last looked at.
#[derive(Default)]
pub struct TlsProbes {
    targets: Targets,
    /// Where the Go probe goes in each file looked at, by (device, inode,
    /// mtime, size): `None` for a file that is not a Go TLS program, so a
    /// `python3` run a thousand times is looked at once.
    offsets: HashMap<(u64, u64, i64, u64), Option<u64>>,
    /// Processes whose first TLS ClientHello was seen (their program looked
    /// at once; forgotten all at once past `CLIENTS_KEPT`).
    tls_clients: std::collections::HashSet<u32>,
    /// Paths looked at in the last [`FRESH_FOR`]: a tool run a thousand
    /// times in a build is opened (by a file worker) once per interval, not
    /// per run. A file replaced meanwhile is looked at when the interval
    /// ends (the sweep finds the old one gone).
    fresh: HashMap<PathBuf, Instant>,
    /// Where Go toolchains were looked for, and the roots watched for new ones.
    places: GoPlaces,
}

/// Go programs probed ahead of time at most: they are pinned (never
/// evicted), so they are bounded apart from [`super::targets::MAX_TARGETS`].
const MAX_PRE_ATTACHED: u64 = 256;

/// How long a looked-at path is not looked at again.
const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// TLS client processes remembered at most.
const CLIENTS_KEPT: usize = 4096;

/// Files whose Go offset is remembered at most (then forgotten all at once).
const OFFSETS_KEPT: usize = 8192;

/// Where the Go probe goes in `target`: Go's own function table (kept even
/// in stripped binaries), read from the headers and `.gopclntab` only.
/// Read by a file worker, through the same open file.
fn go_offset(f: &Opened) -> Option<u64> {
    crate::process::fsview::pclntab_offset(&f.file, Path::new(&f.key), GO_SYMBOL)
}

/// A probe target, opened once: non-blocking and only if it is a regular
/// file, so a FIFO or a device planted at (or swapped over) a user's path
/// never blocks the agent. Everything after (the offset read, the attach)
/// goes through this descriptor (`/proc/self/fd/N`), never the path again.
struct Opened {
    file: std::fs::File,
    meta: crate::process::fsview::Meta,
    /// The path it was opened by (what a stall is keyed on).
    key: String,
}

impl Opened {
    fn new(path: &Path) -> Option<Opened> {
        // Opened by a file worker (a file that never answers costs it, not
        // the event loop).
        let (file, meta) = crate::process::fsview::open_file(path)?;
        Some(Opened {
            file,
            meta,
            key: path.to_string_lossy().into_owned(),
        })
    }

    /// The path the kernel (and aya's symbol lookup) resolves to this very file.
    fn fd_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// The file a process runs, by a path that outlives the process
/// (short-lived programs are often gone by the time it is looked at): see
/// [`crate::process::fsview::exe_file`].
fn exe_path(pid: u32, exe: &str, proc_root: &Path) -> Option<PathBuf> {
    crate::process::fsview::exe_file(pid, exe, proc_root)
}

impl TlsProbes {
    /// `target` is to get probes: its link group, unless it has them
    /// already, is missing or deleted, or uprobes are off. A file released
    /// to stay under the cap has its links released.
    fn claim(
        &mut self,
        c: &mut dyn UprobeAttacher,
        target: &Path,
        f: &Opened,
        pinned: bool,
    ) -> Option<Claim> {
        if !c.tls_uprobes() {
            return None;
        }
        let claim = self
            .targets
            .claim_file(target, &f.meta, pinned, Instant::now())?;
        if let Some(g) = claim.evicted {
            c.release_uprobes(g);
        }
        Some(claim)
    }

    /// The attach of a claimed file failed: offered again next time.
    fn unclaim(&mut self, c: &mut dyn UprobeAttacher, claim: &Claim) {
        if let Some(g) = self.targets.forget(claim.key) {
            c.release_uprobes(g);
        }
    }

    /// Release the probes of files that are gone (deleted, replaced): their
    /// links go to the collector's released list, to be detached off the
    /// event loop. Returns how many files.
    pub fn sweep(&mut self, c: &mut dyn UprobeAttacher) -> usize {
        let gone = self.targets.sweep();
        for g in &gone {
            c.release_uprobes(*g);
        }
        gone.len()
    }

    /// What happened to probed files so far.
    pub fn stats(&self) -> TargetStats {
        self.targets.stats()
    }

    /// Attach the OpenSSL probes to every libssl known to the loader or mapped
    /// by a process now; returns how many files were new.
    pub fn probe_libssl(&mut self, c: &mut dyn UprobeAttacher, proc_root: &Path) -> usize {
        if !c.tls_uprobes() {
            return 0;
        }
        self.probe_libssl_files(c, libssl_candidates(proc_root), true)
    }

    /// A program started: attach the OpenSSL probes to the libssl files in
    /// the directories its loader will search besides the system's (looked
    /// at once per 30 s per directory), before it loads one with `dlopen`.
    /// Through the process's own root while it lives (a container's files).
    pub fn probe_libssl_near(
        &mut self,
        c: &mut dyn UprobeAttacher,
        exec: &crate::events::Exec,
        proc_root: &Path,
    ) -> usize {
        if !c.tls_uprobes() || !exec.ok() {
            return 0;
        }
        let root = proc_root.join(exec.tgid.to_string()).join("root");
        self.probe_libssl_for(c, &exec.exe, &exec.env, &root, false)
    }

    /// The OpenSSL probes on the libssl files in the directories `exe`'s
    /// loader will search besides the system's, seen through `root` (the
    /// host's files when `root` is gone).
    pub fn probe_libssl_for(
        &mut self,
        c: &mut dyn UprobeAttacher,
        exe: &str,
        env: &[(String, String)],
        root: &Path,
        pinned: bool,
    ) -> usize {
        if !c.tls_uprobes() {
            return 0;
        }
        let now = Instant::now();
        let mut files = Vec::new();
        for dir in library_dirs(exe, env) {
            if !self.targets.dir_due(&dir, now) {
                continue;
            }
            let in_root = root.join(dir.trim_start_matches('/'));
            let found = libssl_in_dir(&in_root);
            files.extend(if found.is_empty() && !root.exists() {
                libssl_in_dir(Path::new(&dir))
            } else {
                found
            });
        }
        self.probe_libssl_files(c, files, pinned)
    }

    fn probe_libssl_files(
        &mut self,
        c: &mut dyn UprobeAttacher,
        files: Vec<PathBuf>,
        pinned: bool,
    ) -> usize {
        let mut n = 0;
        for p in files {
            let Some(f) = Opened::new(&p) else {
                continue;
            };
            let Some(claim) = self.claim(c, &p, &f, pinned) else {
                continue;
            };
            n += 1;
            let mut any = false;
            let at = f.fd_path();
            for (program, symbol) in OSSL_PROBES {
                match c.attach_uprobe(claim.group, program, UprobeAt::Symbol(symbol), &at) {
                    Ok(()) => {
                        any = true;
                        tracing::debug!(path = %p.display(), symbol, "OpenSSL probe attached")
                    }
                    Err(e) => {
                        tracing::debug!(path = %p.display(), symbol, error = %e, "OpenSSL probe not attached")
                    }
                }
            }
            if !any {
                self.unclaim(c, &claim);
            }
        }
        n
    }

    /// Attach the Go crypto/tls probe to the program `pid` runs (`exe` when
    /// the process is gone).
    pub fn probe_go(
        &mut self,
        c: &mut dyn UprobeAttacher,
        pid: u32,
        exe: &str,
        proc_root: &Path,
    ) -> bool {
        // A host path run again lately: not even resolved again.
        if exe.starts_with('/') && self.fresh_now(Path::new(exe)) {
            return false;
        }
        exe_path(pid, exe, proc_root).is_some_and(|t| self.probe_go_file(c, &t, false))
    }

    /// Where the Go probe goes in `target`, remembered per file version.
    fn cached_offset(&mut self, f: &Opened) -> Option<u64> {
        let m = &f.meta;
        let key = (m.dev, m.ino, m.mtime, m.size);
        if let Some(o) = self.offsets.get(&key) {
            return *o;
        }
        let o = go_offset(f);
        if self.offsets.len() >= OFFSETS_KEPT {
            self.offsets.clear();
        }
        self.offsets.insert(key, o);
        o
    }

    /// Attach the Go crypto/tls probe to the Go program at `target` (once
    /// per file): at the offset Go's own function table gives (headers and
    /// `.gopclntab` read, never the whole binary; kept in stripped builds
    /// too), else by symbol. `pinned`: probed ahead of time, kept while the
    /// file exists.
    pub fn probe_go_file(
        &mut self,
        c: &mut dyn UprobeAttacher,
        target: &Path,
        pinned: bool,
    ) -> bool {
        if !c.tls_uprobes() {
            return false;
        }
        if !pinned && self.looked_at_lately(target) {
            return false;
        }
        match Opened::new(target) {
            Some(f) => self.probe_go_opened(c, target, &f, pinned),
            None => false,
        }
    }

    /// Whether `target` was looked at in the last [`FRESH_FOR`], without
    /// marking it.
    fn fresh_now(&self, target: &Path) -> bool {
        self.fresh
            .get(target)
            .is_some_and(|t| t.elapsed() < FRESH_FOR)
    }

    /// Whether `target` was looked at in the last [`FRESH_FOR`] (else it is
    /// marked as looked at now).
    fn looked_at_lately(&mut self, target: &Path) -> bool {
        let now = Instant::now();
        if self
            .fresh
            .get(target)
            .is_some_and(|t| now.duration_since(*t) < FRESH_FOR)
        {
            return true;
        }
        if self.fresh.len() >= CLIENTS_KEPT {
            self.fresh.clear();
        }
        self.fresh.insert(target.to_path_buf(), now);
        false
    }

    /// [`TlsProbes::probe_go_file`] for a file already opened (`f`, at `target`).
    fn probe_go_opened(
        &mut self,
        c: &mut dyn UprobeAttacher,
        target: &Path,
        f: &Opened,
        pinned: bool,
    ) -> bool {
        let exe = target.display().to_string();
        let offset = self.cached_offset(f);
        let Some(claim) = self.claim(c, target, f, pinned) else {
            return false;
        };
        let at = f.fd_path();
        let r = match offset {
            Some(off) => c
                .attach_uprobe(claim.group, GO_PROGRAM, UprobeAt::Offset(off), &at)
                .map(|()| Some(off)),
            None => c
                .attach_uprobe(claim.group, GO_PROGRAM, UprobeAt::Symbol(GO_SYMBOL), &at)
                .map(|()| None),
        };
        match r {
            Ok(Some(offset)) => tracing::debug!(exe, offset, "Go crypto/tls probe attached"),
            Ok(None) => tracing::debug!(exe, "Go crypto/tls probe attached (symbol)"),
            Err(e) => {
                // Not a TLS program, or the file vanished: try again at its next run.
                self.unclaim(c, &claim);
                tracing::debug!(exe, error = %e, "Go crypto/tls probe not attached");
                return false;
            }
        }
        true
    }

    /// A process sent its first TLS ClientHello (seen on the wire): a Go
    /// program that no probe covers yet (run outside any toolchain tree, new
    /// since start-up) gets its crypto/tls probe now, through the live
    /// process's `/proc/<pid>/exe`. This handshake has usually ended before
    /// the kernel has the probe in place (see docs/architecture.md); the
    /// program's later handshakes and later runs carry Go's own reason. One
    /// look per process, one probe per file. `exe`: the path it was run by.
    pub fn on_tls_client(
        &mut self,
        c: &mut dyn UprobeAttacher,
        tgid: u32,
        exe: Option<&str>,
        proc_root: &Path,
    ) {
        if tgid == 0 || !c.tls_uprobes() {
            return;
        }
        if self.tls_clients.len() >= CLIENTS_KEPT {
            self.tls_clients.clear();
        }
        if !self.tls_clients.insert(tgid) {
            return;
        }
        // The exec's path first: a short-lived process has often exited
        // (and its /proc entry with it) by the time its records are read.
        if exe_path(tgid, exe.unwrap_or_default(), proc_root)
            .is_some_and(|t| self.probe_go_file(c, &t, false))
        {
            tracing::debug!(tgid, "Go program probed at its first TLS handshake");
        }
    }

    /// A process is gone: forget that its ClientHello was seen.
    pub fn forget_client(&mut self, tgid: u32) {
        self.tls_clients.remove(&tgid);
    }

    /// A tool or a process of a tracked tree started (its exec record
    /// carries its environment): put the Go probe on its file now, before
    /// the exec is analysed, if the file is a Go TLS program (cached per
    /// file). The race with its first handshake is then the attach alone.
    pub fn on_exec_early(
        &mut self,
        c: &mut dyn UprobeAttacher,
        exec: &crate::events::Exec,
        proc_root: &Path,
    ) {
        if !c.tls_uprobes() || !exec.ok() || !exec.env_read {
            return;
        }
        let seen = crate::clock::boot_ns().saturating_sub(exec.ktime_ns);
        if exec.exe.starts_with('/') && self.fresh_now(Path::new(&exec.exe)) {
            return;
        }
        let Some(target) = exe_path(exec.tgid, &exec.exe, proc_root) else {
            return;
        };
        if self.looked_at_lately(&target) {
            return;
        }
        let t0 = Instant::now();
        let Some(f) = Opened::new(&target) else {
            return;
        };
        if self.cached_offset(&f).is_none() {
            return;
        }
        let read = t0.elapsed();
        if self.probe_go_opened(c, &target, &f, false) {
            tracing::debug!(
                exe = %exec.exe,
                ms = crate::clock::boot_ns().saturating_sub(exec.ktime_ns) as f64 / 1e6,
                seen_ms = seen as f64 / 1e6,
                offset_ms = read.as_secs_f64() * 1e3,
                attach_ms = (t0.elapsed() - read).as_secs_f64() * 1e3,
                "Go program seen: exec to probe attached"
            );
        }
    }
}

impl TlsProbes {
    /// A program started (`go`: it is a Go program): the crypto/tls probe on
    /// its file, the OpenSSL probes on the libssl files it may `dlopen`.
    pub fn on_exec(
        &mut self,
        c: &mut dyn UprobeAttacher,
        exec: &crate::events::Exec,
        go: bool,
        proc_root: &std::path::Path,
    ) {
        if !exec.ok() {
            return;
        }
        // Usually attached already, before the analysis (`on_exec_early`);
        // this catches the Go programs whose exec record had no environment.
        if go && self.probe_go(c, exec.tgid, &exec.exe, proc_root) {
            // From the exec in the kernel to the probe in place (the first
            // run of a program races its first handshake against this).
            tracing::debug!(
                exe = %exec.exe,
                ms = crate::clock::boot_ns().saturating_sub(exec.ktime_ns) as f64 / 1e6,
                "Go program seen: exec to probe attached (after analysis)"
            );
        }
        if exec.env_read {
            self.learn_go_places(c, &exec.env);
        }
        let n = self.probe_libssl_near(c, exec, proc_root);
        if n > 0 {
            tracing::debug!(exe = %exec.exe, n, "libssl near a program's start probed");
        }
    }

    /// Before a command starts, the TLS-library probes on every Go program
    /// and libssl it can reach (its PATH, GOROOT, the module cache's
    /// toolchains, what its command line names): its first handshake is
    /// then probed, not only later runs'.
    pub fn probe_reachable(
        &mut self,
        c: &mut dyn UprobeAttacher,
        argv: &[String],
        env: &[(String, String)],
        cwd: Option<&std::path::Path>,
        home: Option<&std::path::Path>,
    ) {
        if !c.tls_uprobes() {
            return;
        }
        let t0 = std::time::Instant::now();
        let reach = super::libs::reachable(argv, env, cwd, home);
        for p in &reach.go {
            self.probe_go_file(c, p, true);
        }
        let mut libssl = 0;
        for exe in &reach.libssl_users {
            libssl += self.probe_libssl_for(c, exe, env, Path::new("/"), true);
        }
        tracing::debug!(
            go = reach.go.len(),
            libssl,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "probed what the command can reach before it starts"
        );
    }

    /// Live mode, at start-up: the crypto/tls probe on every Go toolchain
    /// known on the host (see [`super::libs::host_go_vars`]), so a `go` the
    /// agent has not seen run yet is probed on its first run; the roots
    /// where new toolchains appear are watched from now on.
    pub fn probe_host_go(&mut self, c: &mut dyn UprobeAttacher, proc_root: &std::path::Path) {
        if !c.tls_uprobes() {
            return;
        }
        let t0 = std::time::Instant::now();
        let vars = super::libs::host_go_vars(proc_root);
        let dirs = self.places.learn(&vars);
        let looked = dirs.len();
        let n = self.pre_attach(c, dirs);
        tracing::debug!(
            dirs = looked,
            go = n,
            roots = self.places.stats.roots_watched,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "pre-attached the host's Go toolchains"
        );
    }

    /// A program's environment (an exec with its variables): the Go
    /// toolchains in places it names that were not looked at yet.
    pub fn learn_go_places(&mut self, c: &mut dyn UprobeAttacher, env: &[(String, String)]) {
        if !c.tls_uprobes() {
            return;
        }
        let dirs = self.places.learn(&GoVars::from_env(env));
        if !dirs.is_empty() {
            let n = self.pre_attach(c, dirs);
            if n > 0 {
                tracing::debug!(go = n, "pre-attached Go toolchains a new environment names");
            }
        }
    }

    /// The tick: toolchains that appeared under a watched root (a module
    /// cache's `golang.org/`, a home's `sdk/`) since the last look.
    pub fn rescan_go_toolchains(&mut self, c: &mut dyn UprobeAttacher) {
        if !c.tls_uprobes() {
            return;
        }
        let dirs = self.places.rescan();
        if !dirs.is_empty() {
            let n = self.pre_attach(c, dirs);
            tracing::debug!(go = n, "pre-attached new Go toolchains");
        }
    }

    /// The crypto/tls probe on the `go` of each directory, pinned; how many
    /// were new. Past [`MAX_PRE_ATTACHED`] the rest are counted, not probed.
    fn pre_attach(&mut self, c: &mut dyn UprobeAttacher, dirs: Vec<PathBuf>) -> usize {
        let mut n = 0;
        for d in dirs {
            if self.places.stats.pre_attached >= MAX_PRE_ATTACHED {
                self.places.stats.over_budget += 1;
                continue;
            }
            let go = d.join("go");
            if self.probe_go_file(c, &go, true) {
                self.places.stats.pre_attached += 1;
                n += 1;
            }
        }
        n
    }

    /// What pre-attaching did so far.
    pub fn pre_attach_stats(&self) -> PreAttachStats {
        self.places.stats.clone()
    }
}
