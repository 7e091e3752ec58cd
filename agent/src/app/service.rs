//! The trace service: a running agent (the systemd unit, a DaemonSet pod
//! with the host's /run mounted) lets a user without sudo `agent trace`
//! their own command, and shows them nothing of anybody else's processes.
//!
//! Protocol: one JSON object per line over a SOCK_STREAM unix socket.
//! 1. client → [`Hello`], with SCM_RIGHTS carrying a pidfd of its child,
//!    which waits before its exec;
//! 2. service → [`Reply::Ready`] once the child's tree is followed (or
//!    [`Reply::Error`], and the client kills the child);
//! 3. client → [`Exited`] when the child is done;
//! 4. service → [`Reply::Done`]: the report rendered as the client asked.
//!
//! A tree is followed only when the process behind the pidfd is the peer's
//! own child (its parent is the peer's SO_PEERCRED pid) with all four of its
//! uids the peer's: a user cannot name another's process, and the child
//! has not exec'd anything setuid yet. The report holds that tree's records
//! only. Connections are served on threads of their own (bounded by
//! [`MAX_SESSIONS`]); the live loop only gets requests through a channel.
//!
//! Owns: the socket, the checks, the sessions' records. Must not: touch the
//! kernel other than through [`Instrumentation`] (the live loop's).

use std::{
    collections::{HashMap, HashSet},
    io::{Read as _, Write as _},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{
    session::Instrumentation,
    trace::{RenderAsk, Rendered, render_result},
};
use crate::{
    pipeline::{Output, Pipeline},
    sink::report::{KeptOutputs, TraceResult},
};

/// Where the systemd unit puts the socket, and where `agent trace` looks.
pub const DEFAULT_SOCKET: &str = "/run/agent/trace.sock";
/// The environment variable that names another socket, for both sides.
pub const SOCKET_ENV: &str = "AGENT_TRACE_SOCKET";
/// Sessions at once; the next connection is refused with a message.
pub const MAX_SESSIONS: usize = 32;
/// The largest [`Hello`] (a command line is at most ARG_MAX, 2 MiB).
const MAX_HELLO: usize = 4 << 20;
/// Records kept per session (each process's execs are bounded already);
/// past it they are counted, not kept.
const MAX_KEPT: usize = 50_000;
/// A client that connected must say hello within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const PROTOCOL: u32 = 1;

/// The first line a client sends, with its child's pidfd.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    pub v: u32,
    pub argv: Vec<String>,
    pub ask: RenderAsk,
}

/// The client's second line: how its command ended.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Exited {
    /// The exit code, or 128 + the signal that ended it.
    pub code: i32,
    /// A signal the client received and handed to the command's group.
    pub interrupted_by: Option<i32>,
}

/// What the service answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Ready,
    Error(String),
    Done(Box<Rendered>),
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the message is over {0} bytes")]
    TooLong(usize),
    #[error("protocol version {0} (this agent speaks {PROTOCOL})")]
    Version(u32),
    #[error("no pidfd came with the hello")]
    NoPidfd,
    #[error("the process is gone")]
    Gone,
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("{MAX_SESSIONS} traces are running already; try again later")]
    Busy,
    #[error("the agent is stopping")]
    Stopping,
    #[error("cannot serve {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a process may not be traced for a peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("pid {pid} is not your child (its parent is {ppid})")]
    NotChild { pid: u32, ppid: u32 },
    #[error("pid {pid} does not run as you alone (uids {uids:?})")]
    OtherUser { pid: u32, uids: Vec<u32> },
    #[error("pid {0}: its status is unreadable")]
    Unreadable(u32),
}

/// Whether process `pid`, whose `/proc/PID/status` is `status`, may be
/// traced for the peer `(peer_pid, peer_uid)`: the peer's own child, with
/// real, effective, saved and file uid all the peer's.
pub fn check_peer(pid: u32, status: &str, peer_pid: u32, peer_uid: u32) -> Result<(), Refusal> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let ppid: u32 = field("PPid")
        .and_then(|v| v.parse().ok())
        .ok_or(Refusal::Unreadable(pid))?;
    let uids: Vec<u32> = field("Uid")
        .ok_or(Refusal::Unreadable(pid))?
        .split_whitespace()
        .map(|u| u.parse().map_err(|_| Refusal::Unreadable(pid)))
        .collect::<Result<_, _>>()?;
    if uids.len() != 4 {
        return Err(Refusal::Unreadable(pid));
    }
    if ppid != peer_pid {
        return Err(Refusal::NotChild { pid, ppid });
    }
    if uids.iter().any(|&u| u != peer_uid) {
        return Err(Refusal::OtherUser { pid, uids });
    }
    Ok(())
}

/// The pid a pidfd of ours refers to; `None` once that process is gone.
fn pidfd_pid(fd: BorrowedFd<'_>) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    pidfd_pid_of(&info)
}

/// The `Pid:` of a pidfd's fdinfo (-1 or 0 once the process is gone).
fn pidfd_pid_of(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|&p| p > 0)
        .and_then(|p| u32::try_from(p).ok())
}

/// `/proc/PID/status`, bounded (a few KiB in practice).
fn read_status(pid: u32) -> Result<String, ServiceError> {
    let f = std::fs::File::open(format!("/proc/{pid}/status")).map_err(|_| ServiceError::Gone)?;
    let mut s = String::new();
    f.take(64 << 10).read_to_string(&mut s)?;
    Ok(s)
}

/// One line (without its newline) and the first descriptor passed with it.
fn read_line_fd(s: &UnixStream, max: usize) -> Result<(Vec<u8>, Option<OwnedFd>), ServiceError> {
    let mut line = Vec::new();
    let mut fd = None;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let (n, got) = crate::process::guard::recvmsg_fd(s, &mut buf)?;
        if fd.is_none() {
            fd = got;
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..end]);
            return Ok((line, fd));
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > max {
            return Err(ServiceError::TooLong(max));
        }
    }
}

/// One line of `s` (the client sends nothing past it before the answer).
fn read_line(s: &UnixStream, max: usize) -> Result<Vec<u8>, ServiceError> {
    Ok(read_line_fd(s, max)?.0)
}

fn write_json(mut s: &UnixStream, v: &impl serde::Serialize) -> Result<(), ServiceError> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    s.write_all(&line)?;
    Ok(())
}

/// What a connection asks of the live loop.
pub enum Request {
    Start {
        root: u32,
        hello: Hello,
        ready: oneshot::Sender<u64>,
        done: oneshot::Sender<Rendered>,
    },
    Exited {
        id: u64,
        exited: Exited,
    },
    /// The client went away: the session ends without a report.
    Gone {
        id: u64,
    },
}

/// The socket, bound while the agent is still privileged.
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
}

/// Bind `path` (its directory made if missing, a stale socket replaced),
/// open to every local user: who may trace what is checked per connection.
pub fn bind(path: &Path) -> Result<Bound, ServiceError> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let err = |source| ServiceError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
    })
}

/// A followed tree and what it produced so far.
struct Session {
    root: u32,
    hello: Hello,
    started: std::time::Instant,
    kept: KeptOutputs,
    kept_n: usize,
    over_cap: u64,
    in_tree: HashSet<u32>,
    parents: HashMap<u32, u32>,
    root_exit_seen: bool,
    exited: Option<Exited>,
    drain_until: Option<tokio::time::Instant>,
    done: oneshot::Sender<Rendered>,
}

impl Session {
    /// After the client said its command ended: drain what is in flight,
    /// briefly once the root's exit event is in (as `agent trace` does).
    fn bring_forward(&mut self) {
        if self.exited.is_none() {
            return;
        }
        let ms = if self.root_exit_seen { 150 } else { 1500 };
        let cap = tokio::time::Instant::now() + Duration::from_millis(ms);
        self.drain_until = Some(self.drain_until.map_or(cap, |d| d.min(cap)));
    }
}

/// The live loop's side: sessions by id.
pub struct Service {
    rx: mpsc::Receiver<Request>,
    sessions: HashMap<u64, Session>,
    next_id: u64,
    path: PathBuf,
}

impl Bound {
    /// Accept from now on (call once privileges are dropped: the threads
    /// inherit the reduced set).
    pub fn serve(self) -> Service {
        let (tx, rx) = mpsc::channel(64);
        let active = Arc::new(AtomicUsize::new(0));
        let listener = self.listener;
        let spawned = std::thread::Builder::new()
            .name("trace-accept".into())
            .spawn(move || accept_loop(listener, tx, active));
        if let Err(e) = spawned {
            tracing::warn!("trace service: cannot start: {e}");
        }
        tracing::info!("trace service on {}", self.path.display());
        Service {
            rx,
            sessions: HashMap::new(),
            next_id: 1,
            path: self.path,
        }
    }
}

fn accept_loop(listener: UnixListener, tx: mpsc::Sender<Request>, active: Arc<AtomicUsize>) {
    for conn in listener.incoming() {
        let Ok(s) = conn else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = write_json(&s, &Reply::Error(ServiceError::Busy.to_string()));
            continue;
        }
        let (tx, mine) = (tx.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("trace-client".into())
            .spawn(move || {
                if let Err(e) = serve_client(&s, &tx) {
                    tracing::info!("trace service: {e}");
                    let _ = write_json(&s, &Reply::Error(e.to_string()));
                }
                mine.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One client from hello to report (on its own thread).
fn serve_client(s: &UnixStream, tx: &mpsc::Sender<Request>) -> Result<(), ServiceError> {
    s.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let cred = rustix::net::sockopt::socket_peercred(s.as_fd()).map_err(std::io::Error::from)?;
    let (peer_pid, peer_uid) = (cred.pid.as_raw_nonzero().get() as u32, cred.uid.as_raw());
    let (line, pidfd) = read_line_fd(s, MAX_HELLO)?;
    let hello: Hello = serde_json::from_slice(&line)?;
    if hello.v != PROTOCOL {
        return Err(ServiceError::Version(hello.v));
    }
    let pidfd = pidfd.ok_or(ServiceError::NoPidfd)?;
    let pid = pidfd_pid(pidfd.as_fd()).ok_or(ServiceError::Gone)?;
    check_peer(pid, &read_status(pid)?, peer_pid, peer_uid)?;
    // The pidfd pins the process: the same pid now means the status read
    // was of that process, not of one that reused its number.
    if pidfd_pid(pidfd.as_fd()) != Some(pid) {
        return Err(ServiceError::Gone);
    }
    let (ready_tx, ready_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    tx.blocking_send(Request::Start {
        root: pid,
        hello,
        ready: ready_tx,
        done: done_tx,
    })
    .map_err(|_| ServiceError::Stopping)?;
    let id = ready_rx
        .blocking_recv()
        .map_err(|_| ServiceError::Stopping)?;
    tracing::info!("trace service: following pid {pid} for uid {peer_uid}");
    write_json(s, &Reply::Ready)?;
    // The command may run for hours.
    s.set_read_timeout(None)?;
    let exited = read_line(s, 4096)
        .ok()
        .and_then(|l| serde_json::from_slice::<Exited>(&l).ok());
    let Some(exited) = exited else {
        let _ = tx.blocking_send(Request::Gone { id });
        return Ok(());
    };
    tx.blocking_send(Request::Exited { id, exited })
        .map_err(|_| ServiceError::Stopping)?;
    let rendered = done_rx
        .blocking_recv()
        .map_err(|_| ServiceError::Stopping)?;
    write_json(s, &Reply::Done(Box::new(rendered)))
}

impl Service {
    /// The next request; pending for ever once no connection can send one.
    pub async fn next(&mut self) -> Request {
        match self.rx.recv().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    /// A request, on the live loop.
    pub(super) fn on_request(
        &mut self,
        req: Request,
        k: &mut Instrumentation,
        pipeline: &mut Pipeline,
    ) {
        match req {
            Request::Start {
                root,
                hello,
                ready,
                done,
            } => {
                // Tracked from its (pending) exec on, with every connection
                // an event and every process analysed, as in `agent trace`.
                k.collector.track(root);
                pipeline.analyzer.trace_tree(root);
                let id = self.next_id;
                self.next_id += 1;
                self.sessions.insert(
                    id,
                    Session {
                        root,
                        hello,
                        started: std::time::Instant::now(),
                        kept: KeptOutputs::default(),
                        kept_n: 0,
                        over_cap: 0,
                        in_tree: HashSet::from([root]),
                        parents: HashMap::new(),
                        root_exit_seen: false,
                        exited: None,
                        drain_until: None,
                        done,
                    },
                );
                if ready.send(id).is_err() {
                    self.end(id, pipeline);
                }
            }
            Request::Exited { id, exited } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.exited = Some(exited);
                    s.bring_forward();
                }
            }
            Request::Gone { id } => {
                self.end(id, pipeline);
            }
        }
    }

    fn end(&mut self, id: u64, pipeline: &mut Pipeline) -> Option<Session> {
        let s = self.sessions.remove(&id)?;
        pipeline.analyzer.untrace_tree(s.root);
        Some(s)
    }

    /// An output of the live pipeline: kept by the sessions whose tree it
    /// belongs to.
    pub fn observe(&mut self, o: &Output, pipeline: &Pipeline) {
        let pid = o.pid();
        for s in self.sessions.values_mut() {
            let member = s.in_tree.contains(&pid) || pipeline.table.in_tree(pid, s.root);
            if !member {
                continue;
            }
            if s.in_tree.insert(pid) {
                super::trace::note_parent(&mut s.parents, pipeline, pid);
            }
            if let Output::Exit { exit, .. } = o
                && exit.tgid == s.root
            {
                s.root_exit_seen = true;
                s.bring_forward();
            }
            if s.kept_n >= MAX_KEPT {
                s.over_cap += 1;
                continue;
            }
            s.kept_n += 1;
            s.kept.push(o.clone());
        }
    }

    /// When the next session is due to end.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.sessions.values().filter_map(|s| s.drain_until).min()
    }

    /// End the sessions that are due: judge, render, answer.
    pub(super) fn finish_due(&mut self, k: &Instrumentation, pipeline: &mut Pipeline) {
        let now = tokio::time::Instant::now();
        let due: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.drain_until.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(mut s) = self.end(id, pipeline) else {
                continue;
            };
            for pid in s.in_tree.iter().copied().collect::<Vec<_>>() {
                super::trace::note_parent(&mut s.parents, pipeline, pid);
            }
            let exited = s.exited.take().unwrap_or(Exited {
                code: 1,
                interrupted_by: None,
            });
            let mut lost = super::session::full_stats(&k.losses(), k, pipeline);
            lost["report_execs_not_kept"] = serde_json::json!(s.kept.dropped);
            lost["report_records_not_kept"] = serde_json::json!(s.over_cap);
            let outputs = s.kept.finish();
            let judgement = crate::verdict::judge(&outputs, s.root, exited.code, &s.parents);
            let r = TraceResult {
                root_pid: s.root,
                exit_code: exited.code,
                judgement,
                outputs,
                lost,
                run_as: None,
                interrupted_by: exited.interrupted_by,
            };
            let rendered = render_result(
                &r,
                &s.hello.argv,
                &s.hello.ask,
                s.started.elapsed().as_secs_f64(),
            );
            let _ = s.done.send(rendered);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The socket `agent trace` uses when it cannot load programs itself:
/// `flag`, else `$AGENT_TRACE_SOCKET`, else [`DEFAULT_SOCKET`]; only when
/// it is a socket.
pub fn client_socket(flag: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt as _;
    let p = flag.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(SOCKET_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let p = p.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    std::fs::metadata(&p)
        .is_ok_and(|m| m.file_type().is_socket())
        .then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsh\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t40\nPid:\t40\nPPid:\t39\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n";

    #[test]
    fn the_peers_own_child_may_be_traced() {
        assert_eq!(check_peer(40, STATUS, 39, 1000), Ok(()));
    }

    #[test]
    fn another_users_process_or_a_grandchild_may_not() {
        assert_eq!(
            check_peer(40, STATUS, 39, 1001),
            Err(Refusal::OtherUser {
                pid: 40,
                uids: vec![1000; 4]
            })
        );
        assert_eq!(
            check_peer(40, STATUS, 38, 1000),
            Err(Refusal::NotChild { pid: 40, ppid: 39 })
        );
        // A setuid program run by the peer's child: the saved uid differs.
        let setuid = STATUS.replace("Uid:\t1000\t1000\t1000\t1000", "Uid:\t1000\t0\t0\t0");
        assert!(matches!(
            check_peer(40, &setuid, 39, 1000),
            Err(Refusal::OtherUser { .. })
        ));
        // Root's child is root's: root may trace it; nobody else may.
        let root = STATUS.replace("1000\t1000\t1000\t1000", "0\t0\t0\t0");
        assert_eq!(check_peer(40, &root, 39, 0), Ok(()));
        assert!(check_peer(40, &root, 39, 1000).is_err());
    }

    #[test]
    fn a_malformed_status_is_refused_not_trusted() {
        for s in [
            "",
            "PPid:\tx\nUid:\t1\t1\t1\t1\n",
            "PPid:\t39\nUid:\t1000\n",
            "PPid:\t39\n",
            "PPid:\t39\nUid:\t1000\t1000\t1000\t1000\t1000\n",
        ] {
            assert_eq!(
                check_peer(40, s, 39, 1000),
                Err(Refusal::Unreadable(40)),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_pidfd_of_a_gone_process_names_no_pid() {
        assert_eq!(
            pidfd_pid_of("pos:\t0\nflags:\t02000002\nPid:\t1234\n"),
            Some(1234)
        );
        assert_eq!(pidfd_pid_of("Pid:\t-1\n"), None);
        assert_eq!(pidfd_pid_of("Pid:\t0\n"), None);
        assert_eq!(pidfd_pid_of("flags:\t0\n"), None);
    }

    #[test]
    fn the_protocol_round_trips() {
        let hello = Hello {
            v: PROTOCOL,
            argv: vec!["go".into(), "build".into()],
            ask: RenderAsk {
                format: crate::render::Format::Json,
                color: false,
                ci: crate::sink::ci::Kind::GitHub,
                junit: true,
                exit_codes: crate::verdict::ExitCodes {
                    network: Some(75),
                    toolchain: None,
                },
            },
        };
        let back: Hello = serde_json::from_str(&serde_json::to_string(&hello).unwrap()).unwrap();
        assert_eq!(back.argv, hello.argv);
        assert_eq!(back.ask.exit_codes, hello.ask.exit_codes);
        assert_eq!(serde_json::to_string(&Reply::Ready).unwrap(), "\"ready\"");
        let e: Reply = serde_json::from_str("{\"error\":\"no\"}").unwrap();
        assert!(matches!(e, Reply::Error(m) if m == "no"));
    }
}
