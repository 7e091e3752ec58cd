//! Starting the command of `agent trace` exactly as its user would have:
//! their uid, gid and supplementary groups, environment, working directory,
//! umask and resource limits, in a process group of its own that owns the
//! terminal (so Ctrl-C reaches the command, and the agent lives on to print
//! its report), and that dies with the agent.
//!
//! Owns: the fork/exec of the traced command and handing the terminal back.
//! Must not: decide who the user is ([`crate::process::invoker`] does).

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, os::unix::process::CommandExt as _};

use crate::process::invoker::{Invoker, Source};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("no command given (usage: agent trace -- <command> [args])")]
    Empty,
    #[error("cannot run {prog} as {user}: {source}")]
    Exec {
        prog: String,
        user: String,
        source: std::io::Error,
    },
}

/// Resource limits as the agent found them, before it raised any.
#[derive(Clone, Copy)]
struct Limits {
    memlock: libc::rlimit,
    nofile: libc::rlimit,
}

static INITIAL_LIMITS: std::sync::OnceLock<Limits> = std::sync::OnceLock::new();

/// As libc's struct, for the `setrlimit` between fork and exec.
fn getrlimit(r: rustix::process::Resource) -> libc::rlimit {
    let l = rustix::process::getrlimit(r);
    libc::rlimit {
        rlim_cur: l.current.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: l.maximum.unwrap_or(libc::RLIM_INFINITY),
    }
}

/// Remember the limits the agent was started with (call first in main):
/// the loader raises RLIMIT_MEMLOCK, and a traced command must not inherit it.
pub fn save_initial_limits() {
    let _ = INITIAL_LIMITS.set(Limits {
        memlock: getrlimit(rustix::process::Resource::Memlock),
        nofile: getrlimit(rustix::process::Resource::Nofile),
    });
}

/// Supplementary groups of this process.
pub fn current_groups() -> Vec<libc::gid_t> {
    rustix::process::getgroups()
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

/// A terminal we hold in the foreground (stdin, stdout or stderr).
fn foreground_tty() -> Option<libc::c_int> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    [i.as_fd(), o.as_fd(), e.as_fd()]
        .into_iter()
        .find(|&fd| {
            rustix::termios::isatty(fd)
                && rustix::termios::tcgetpgrp(fd).ok() == Some(rustix::process::getpgrp())
        })
        .map(|fd| fd.as_raw_fd())
}

/// Give the terminal's foreground to process group `pgid` (SIGTTOU ignored
/// meanwhile: a background caller would otherwise be stopped).
fn give_terminal(fd: libc::c_int, pgid: libc::pid_t) {
    // SAFETY: signal disposition and tcsetpgrp on our own terminal fd; the
    // previous disposition is restored right after.
    unsafe {
        let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(fd, pgid);
        libc::signal(libc::SIGTTOU, old);
    }
}

/// The running traced command.
pub struct Traced {
    pub child: tokio::process::Child,
    pub pid: u32,
    tty: Option<libc::c_int>,
}

impl Traced {
    /// Send `sig` to the command's whole process group.
    pub fn signal_group(&self, sig: libc::c_int) {
        let (Some(pid), Some(sig)) = (
            rustix::process::Pid::from_raw(self.pid as i32),
            rustix::process::Signal::from_named_raw(sig),
        ) else {
            return;
        };
        let _ = rustix::process::kill_process_group(pid, sig);
    }

    /// Take the terminal back for the report.
    pub fn reclaim_terminal(&mut self) {
        if let Some(fd) = self.tty.take() {
            give_terminal(fd, rustix::process::getpgrp().as_raw_nonzero().get());
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        self.reclaim_terminal();
    }
}

/// Start `argv` as `inv`.
pub fn spawn(argv: &[String], inv: &Invoker) -> Result<Traced, SpawnError> {
    spawn_gated(argv, inv, None)
}

/// A process's exit code as a shell reports it: its own, or 128 + the
/// signal that ended it.
pub fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The hidden first argument of the gate: `agent __trace-gate FD PROG ARGS…`.
pub const GATE_ARG: &str = "__trace-gate";

/// The gate, in the child of a served `agent trace` (call first in main):
/// wait until a byte can be read from FD (the trace service follows this
/// process from then on), then become the command; 126 if the gate closes
/// instead, 127 if the command cannot be run. It is a program of its own
/// because the parent's spawn returns only once its child has exec'd.
pub fn gate_main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    let fd = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse::<std::os::fd::RawFd>().ok());
    let (Some(fd), Some(prog)) = (fd, args.get(1)) else {
        eprintln!("agent: {GATE_ARG} FD PROG [ARGS]");
        return std::process::ExitCode::from(2);
    };
    // SAFETY: the descriptor number was handed over by our parent, which
    // left it open for us alone; nothing else in this process owns it.
    let gate = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut b = [0u8; 1];
    let opened = loop {
        match rustix::io::read(&gate, &mut b) {
            Err(rustix::io::Errno::INTR) => continue,
            r => break r.is_ok_and(|n| n == 1),
        }
    };
    drop(gate);
    if !opened {
        return std::process::ExitCode::from(126);
    }
    let err = std::process::Command::new(prog).args(&args[2..]).exec();
    eprintln!("agent trace: cannot run {}: {err}", prog.to_string_lossy());
    std::process::ExitCode::from(127)
}

/// Start `argv` as `inv`; with a `gate`, the child is [`gate_main`], which
/// waits before the command's exec until a byte can be read from the gate.
/// `gate` is the pipe's read end and the raw write end the parent keeps
/// (the child closes its copy, so that the parent closing its own reads as
/// end of file).
pub fn spawn_gated(
    argv: &[String],
    inv: &Invoker,
    gate: Option<(std::os::fd::OwnedFd, std::os::fd::RawFd)>,
) -> Result<Traced, SpawnError> {
    use std::os::fd::AsRawFd as _;
    let gate_fds = gate.as_ref().map(|(r, w)| (r.as_raw_fd(), *w));
    let (prog, args) = argv.split_first().ok_or(SpawnError::Empty)?;
    let mut cmd = match gate_fds {
        None => std::process::Command::new(prog),
        Some((r, _)) => {
            let mut c = std::process::Command::new("/proc/self/exe");
            c.arg(GATE_ARG).arg(r.to_string()).arg(prog);
            c
        }
    };
    cmd.args(args);
    cmd.env_clear();
    cmd.envs(inv.env.iter().map(|(k, v)| (k, v)));
    // Its own process group: Ctrl-C on the terminal (given to it below) and
    // the agent's forwarded SIGTERM/SIGHUP reach the whole command tree.
    cmd.process_group(0);
    let euid = rustix::process::geteuid().as_raw();
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    let change_ids = euid == 0 && !matches!(inv.source, Source::RootLogin | Source::Unprivileged);
    let groups: Vec<libc::gid_t> = inv.groups.clone();
    let (uid, gid) = (inv.uid, inv.gid);
    let umask = inv.umask;
    let cwd = inv
        .cwd
        .as_ref()
        .and_then(|c| CString::new(c.as_os_str().as_bytes()).ok());
    let limits = INITIAL_LIMITS.get().copied();
    let tty = foreground_tty();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(fd) = tty {
                // Take the terminal from inside too, so the command never
                // reads it from the background (the parent does the same).
                let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(fd, libc::getpid());
                libc::signal(libc::SIGTTOU, old);
            }
            if let Some(l) = limits {
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &l.memlock);
                libc::setrlimit(libc::RLIMIT_NOFILE, &l.nofile);
            }
            if change_ids
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(m) = umask {
                libc::umask(m as libc::mode_t);
            }
            // After the id change, which clears it: the command dies with us.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(129);
            }
            // As the user: a directory they cannot enter is their error.
            if let Some(d) = &cwd
                && libc::chdir(d.as_ptr()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((r, w)) = gate_fds {
                // The gate's read end crosses the exec; the write end is
                // the parent's alone.
                libc::close(w);
                if libc::fcntl(r, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| SpawnError::Exec {
            prog: prog.clone(),
            user: inv.user.clone(),
            source,
        })?;
    // The child has its own copy (closed at its exec).
    drop(gate);
    let pid = child.id().unwrap_or(0);
    if let Some(fd) = tty {
        give_terminal(fd, pid as libc::pid_t);
    }
    Ok(Traced { child, pid, tty })
}
