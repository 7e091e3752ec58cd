//! File work a user can stall, run in worker processes with a deadline.
//!
//! Any user can make a file that never answers: a FUSE server that serves
//! everyone but the agent, a hard NFS mount whose server went away. A
//! `stat`, `open` or `read` there waits in the kernel until the server
//! answers; once a FUSE server has read the request, not even SIGKILL ends
//! the wait (measured on 6.18: the thread sits in `request_wait_answer`, D
//! state). Run on the event loop, one such file would stop every report;
//! run on a thread of the agent, it would keep the whole agent from exiting
//! (a process is reaped only when all its threads have ended), so Ctrl-C
//! would print the final record and then hang.
//!
//! So every file operation on a path a user controls runs in a small pool
//! of worker processes (the agent binary itself, started with
//! [`WORKER_ARG`], keeping only the capabilities to read files, dying with
//! the agent), one request at a time each, over a Unix socket that also
//! carries file descriptors both ways (a container's root, an opened file).
//! The caller waits at most [`DEADLINE`]. A worker past its deadline is
//! killed and abandoned (it ends when the file answers; it holds nothing of
//! the agent's): its caller gets `None`, as for an unreadable file, the
//! timeout is counted and said once, and while it is stuck, jobs under the
//! same directory are refused at once rather than each waiting out a
//! deadline. At most [`MAX_WORKERS`] exist, stuck ones included; with all
//! of them stuck, jobs are refused at once (counted) until one ends.
//!
//! Cost: a round trip to a worker, ~15–25 µs, against ~0.3 µs for a cached
//! `stat`; callers ask one question per job (open + parse, a walk up the
//! tree), not one syscall.
//!
//! Without workers (unit tests, or a worker that cannot start) jobs run in
//! the caller, and a hung file can then stall it: said once.
//!
//! Owns: the pool, the wire format, the deadline and their counters. Must
//! not: know what the jobs do (`fsview` defines and answers them).

use std::{
    io::{Read as _, Write as _},
    os::{
        fd::{BorrowedFd, FromRawFd as _, OwnedFd},
        unix::net::UnixStream,
    },
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// How long a caller waits for one job. A local disk answers in
/// microseconds, a cold one or a healthy network filesystem in
/// milliseconds.
pub const DEADLINE: Duration = Duration::from_millis(250);

/// Worker processes at most, stuck ones included.
pub const MAX_WORKERS: usize = 8;

/// The argument that makes the agent binary a file worker.
pub const WORKER_ARG: &str = "__file-worker";

/// Largest request or answer accepted (answers carry at most a capped read).
const MAX_MESSAGE: usize = 32 << 20;

/// What the pool did so far (reported under `stats.file_analysis`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GuardStats {
    /// Jobs sent to a worker.
    pub jobs: u64,
    /// Jobs abandoned at their deadline (their worker killed).
    pub timeouts: u64,
    /// Jobs refused at once: their directory has a stuck job.
    pub refused_stalled: u64,
    /// Jobs refused at once: every worker is stuck.
    pub refused_busy: u64,
    /// Stuck workers that ended later (their file answered).
    pub late_answers: u64,
    /// Workers stuck now.
    pub stuck_now: u64,
    /// Workers started so far.
    pub workers_started: u64,
    /// Jobs run in the agent itself (no worker could start).
    pub inline: u64,
}

static JOBS: AtomicU64 = AtomicU64::new(0);
static TIMEOUTS: AtomicU64 = AtomicU64::new(0);
static REFUSED_STALLED: AtomicU64 = AtomicU64::new(0);
static REFUSED_BUSY: AtomicU64 = AtomicU64::new(0);
static LATE: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicU64 = AtomicU64::new(0);
static INLINE: AtomicU64 = AtomicU64::new(0);
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Workers that failed in a row (not stuck: died, refused to start).
static FAILS: AtomicUsize = AtomicUsize::new(0);

/// A worker failed: after a few in a row, jobs run inline (said once).
fn failed() {
    if FAILS.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
        ENABLED.store(false, Ordering::SeqCst);
        tracing::warn!(
            "file workers keep failing; files are analysed in the agent itself from now on (a \
             file that never answers can then stall it)"
        );
    }
}

pub fn stats() -> GuardStats {
    GuardStats {
        jobs: JOBS.load(Ordering::Relaxed),
        timeouts: TIMEOUTS.load(Ordering::Relaxed),
        refused_stalled: REFUSED_STALLED.load(Ordering::Relaxed),
        refused_busy: REFUSED_BUSY.load(Ordering::Relaxed),
        late_answers: LATE.load(Ordering::Relaxed),
        stuck_now: POOL.stuck.lock().map_or(0, |s| s.len() as u64),
        workers_started: STARTED.load(Ordering::Relaxed),
        inline: INLINE.load(Ordering::Relaxed),
    }
}

/// Run jobs in worker processes from now on (the agent binary, which
/// answers [`WORKER_ARG`]; unit tests leave them inline).
pub fn enable_workers() {
    ENABLED.store(true, Ordering::SeqCst);
}

/// Whether a job should run inline (counted; said once).
pub fn inline() -> bool {
    if ENABLED.load(Ordering::Relaxed) {
        return false;
    }
    INLINE.fetch_add(1, Ordering::Relaxed);
    true
}

struct Worker {
    child: Child,
    sock: UnixStream,
}

struct Stuck {
    child: Child,
    /// The directory it stalls (`None`: a batch, which stalls none).
    dir: Option<String>,
    since: Instant,
}

struct Pool {
    idle: Mutex<Vec<Worker>>,
    /// Idle and busy workers.
    live: AtomicUsize,
    stuck: Mutex<Vec<Stuck>>,
}

static POOL: Pool = Pool {
    idle: Mutex::new(Vec::new()),
    live: AtomicUsize::new(0),
    stuck: Mutex::new(Vec::new()),
};

impl Pool {
    /// Stuck workers that have ended are forgotten (their directories
    /// analysed again). Returns how many are stuck still.
    fn reap(&self) -> usize {
        let Ok(mut s) = self.stuck.lock() else {
            return MAX_WORKERS;
        };
        s.retain_mut(|w| {
            if matches!(w.child.try_wait(), Ok(Some(_)) | Err(_)) {
                LATE.fetch_add(1, Ordering::Relaxed);
                if let Some(d) = &w.dir {
                    tracing::info!(
                        "a file under {d} answered after {:.1} s; analysing files there again",
                        w.since.elapsed().as_secs_f64()
                    );
                }
                false
            } else {
                true
            }
        });
        s.len()
    }

    fn stalled(&self, key: &str) -> bool {
        self.stuck.lock().is_ok_and(|s| {
            s.iter()
                .any(|w| w.dir.as_deref().is_some_and(|d| key.starts_with(d)))
        })
    }

    /// An idle worker, or a new one while under the cap.
    fn take(&self, stuck: usize) -> Option<Worker> {
        if let Some(w) = self.idle.lock().ok()?.pop() {
            return Some(w);
        }
        if self.live.load(Ordering::SeqCst) + stuck >= MAX_WORKERS {
            return None;
        }
        let w = spawn()?;
        self.live.fetch_add(1, Ordering::SeqCst);
        Some(w)
    }

    fn give_back(&self, w: Worker) {
        match self.idle.lock() {
            Ok(mut i) => i.push(w),
            Err(_) => self.discard(w),
        }
    }

    fn discard(&self, mut w: Worker) {
        failed();
        let _ = w.child.kill();
        let _ = w.child.wait();
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    fn abandon(&self, mut w: Worker, dir: Option<String>) {
        let _ = w.child.kill();
        self.live.fetch_sub(1, Ordering::SeqCst);
        let first = match self.stuck.lock() {
            Ok(mut s) => {
                let first = dir.is_some() && !s.iter().any(|x| x.dir == dir);
                s.push(Stuck {
                    child: w.child,
                    dir: dir.clone(),
                    since: Instant::now(),
                });
                first
            }
            Err(_) => false,
        };
        if let (true, Some(dir)) = (first, dir) {
            tracing::warn!(
                "a file under {dir} did not answer within {} ms (a hung FUSE or network mount?); \
                 files there are not analysed until it does (counted in \
                 stats.file_analysis.timeouts)",
                DEADLINE.as_millis()
            );
        }
    }
}

fn spawn() -> Option<Worker> {
    let (ours, theirs) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot make a socket for a file worker: {e}");
            return None;
        }
    };
    let theirs: OwnedFd = theirs.into();
    let child = Command::new("/proc/self/exe")
        .arg(WORKER_ARG)
        .env_clear()
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    match child {
        Ok(child) => {
            STARTED.fetch_add(1, Ordering::Relaxed);
            Some(Worker { child, sock: ours })
        }
        Err(e) => {
            failed();
            tracing::warn!("cannot start a file worker: {e}");
            None
        }
    }
}

/// The directory a stuck job on `key` stalls: its parent, with a trailing
/// `/` so `/a/b/` does not cover `/a/bc`.
fn stall_dir(key: &str) -> String {
    match key.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => format!("{}/", &key[..i]),
    }
}

/// An answer: the encoded reply, raw bytes, and a descriptor.
pub type Reply = (Vec<u8>, Vec<u8>, Option<OwnedFd>);

/// Whether host path `key` is under a directory with a stuck job.
pub fn stalled(key: &str) -> bool {
    POOL.reap() > 0 && POOL.stalled(key)
}

/// Send `req` (with `fd`, if any) to a worker about host path `key` (`None`:
/// a batch about several, which a timeout stalls no directory for; the
/// caller asks again path by path); its reply, or `None` when refused, past
/// the deadline or failed.
pub fn ask(key: Option<&str>, req: &[u8], fd: Option<BorrowedFd<'_>>) -> Option<Reply> {
    let stuck = POOL.reap();
    if let Some(key) = key
        && stuck > 0
        && POOL.stalled(key)
    {
        REFUSED_STALLED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let Some(mut w) = POOL.take(stuck) else {
        if REFUSED_BUSY.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                "every file worker ({MAX_WORKERS}) is stuck on a file that does not answer (or \
                 none can start); analysis of new files is skipped until one does (counted in \
                 stats.file_analysis.refused_busy)"
            );
        }
        return None;
    };
    JOBS.fetch_add(1, Ordering::Relaxed);
    if send(&w.sock, &[req], fd).is_err() {
        POOL.discard(w);
        return None;
    }
    match wait_readable(&w.sock, DEADLINE) {
        Ok(true) => {}
        Ok(false) => {
            TIMEOUTS.fetch_add(1, Ordering::Relaxed);
            POOL.abandon(w, key.map(stall_dir));
            return None;
        }
        Err(_) => {
            POOL.discard(w);
            return None;
        }
    }
    // The worker is writing its answer now: the rest follows at once.
    let _ = w.sock.set_read_timeout(Some(Duration::from_secs(2)));
    match recv_reply(&mut w.sock) {
        Ok(r) => {
            FAILS.store(0, Ordering::Relaxed);
            POOL.give_back(w);
            Some(r)
        }
        Err(e) => {
            tracing::debug!("file worker: {e}");
            POOL.discard(w);
            None
        }
    }
}

/// Serve jobs on stdin (the socket) until it closes: the worker's main.
pub fn serve(handle: impl Fn(&[u8], Option<OwnedFd>) -> Reply) -> std::io::Result<()> {
    // SAFETY: fd 0 is the socket the agent handed over as stdin, owned by
    // this process from here on.
    let mut sock = unsafe { UnixStream::from_raw_fd(0) };
    loop {
        let (req, fd) = match recv_request(&mut sock) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let (json, raw, out_fd) = handle(&req, fd);
        let head = [
            (json.len() as u32).to_le_bytes(),
            (raw.len() as u32).to_le_bytes(),
        ]
        .concat();
        send(
            &sock,
            &[&head, &json, &raw],
            out_fd.as_ref().map(|f| {
                use std::os::fd::AsFd as _;
                f.as_fd()
            }),
        )?;
    }
}

fn wait_readable(s: &UnixStream, timeout: Duration) -> std::io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(s, PollFlags::IN)];
        let ts = Timespec {
            tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Write `parts` (a length-prefixed request is one part), passing `fd`
/// along with the first bytes.
fn send(s: &UnixStream, parts: &[&[u8]], fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(4 + parts.iter().map(|p| p.len()).sum::<usize>());
    if parts.len() == 1 {
        msg.extend_from_slice(&(parts[0].len() as u32).to_le_bytes());
    }
    for p in parts {
        msg.extend_from_slice(p);
    }
    let first = sendmsg_fd(s, &msg, fd)?;
    (&*s).write_all(&msg[first..])
}

/// One `sendmsg` of (a prefix of) `buf`, with `fd` as SCM_RIGHTS.
pub(crate) fn sendmsg_fd(
    s: &UnixStream,
    buf: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("no room for the descriptor"));
    }
    let iov = [std::io::IoSlice::new(buf)];
    loop {
        match rustix::net::sendmsg(s, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One `recvmsg` into `buf`: bytes read and a descriptor passed with them
/// (any more are closed).
pub(crate) fn recvmsg_fd(
    s: &UnixStream,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let empty = buf.is_empty();
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let n = loop {
        match rustix::net::recvmsg(s, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => break r.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    if n == 0 && !empty {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((n, fd))
}

/// `n` bytes: `have` already read, the rest from the stream.
fn read_rest(s: &mut UnixStream, mut have: Vec<u8>, n: usize) -> std::io::Result<Vec<u8>> {
    if have.len() < n {
        let start = have.len();
        have.resize(n, 0);
        s.read_exact(&mut have[start..])?;
    }
    Ok(have)
}

fn too_big() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "message too large")
}

fn recv_request(s: &mut UnixStream) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut buf = vec![0u8; 64 << 10];
    let (n, fd) = recvmsg_fd(s, &mut buf)?;
    buf.truncate(n);
    let mut head = read_rest(s, buf, 4)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > MAX_MESSAGE {
        return Err(too_big());
    }
    head = read_rest(s, head, 4 + len)?;
    Ok((head[4..4 + len].to_vec(), fd))
}

fn recv_reply(s: &mut UnixStream) -> std::io::Result<Reply> {
    let mut buf = vec![0u8; 64 << 10];
    let (n, fd) = recvmsg_fd(s, &mut buf)?;
    buf.truncate(n);
    let head = read_rest(s, buf, 8)?;
    let jl = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let rl = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if jl.saturating_add(rl) > MAX_MESSAGE {
        return Err(too_big());
    }
    let all = read_rest(s, head, 8 + jl + rl)?;
    Ok((
        all[8..8 + jl].to_vec(),
        all[8 + jl..8 + jl + rl].to_vec(),
        fd,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_dirs_end_at_a_separator() {
        assert_eq!(stall_dir("/a/b/c"), "/a/b/");
        assert_eq!(stall_dir("/c"), "/");
        assert_eq!(stall_dir("c"), "/");
    }

    /// Requests and replies cross a socket whole, descriptors with them.
    #[test]
    fn the_wire_carries_bytes_and_descriptors() {
        use std::os::fd::AsFd as _;
        let (a, b) = UnixStream::pair().unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let server = std::thread::spawn(move || {
            let mut b = b;
            let (req, fd) = recv_request(&mut b).unwrap();
            assert!(fd.is_some());
            let raw = vec![7u8; 200_000];
            let head = [
                (req.len() as u32).to_le_bytes(),
                (raw.len() as u32).to_le_bytes(),
            ]
            .concat();
            send(&b, &[&head, &req, &raw], fd.as_ref().map(|f| f.as_fd())).unwrap();
        });
        send(&a, &[b"{\"x\":1}"], Some(f.as_fd())).unwrap();
        let mut a = a;
        let (json, raw, fd) = recv_reply(&mut a).unwrap();
        server.join().unwrap();
        assert_eq!(json, b"{\"x\":1}");
        assert_eq!(raw.len(), 200_000);
        let fd = fd.expect("a descriptor back");
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        assert!(s.contains("Name:"));
    }
}
