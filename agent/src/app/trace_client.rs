//! `agent trace` without privileges, through a running agent's trace
//! service ([`super::service`]): the command starts as a child of this
//! unprivileged process and waits before its exec; the service is handed a
//! pidfd of it, follows its tree, and renders the report once this process
//! says the command ended. Everything else is as in a privileged `agent
//! trace`: the terminal, Ctrl-C, the CI files (written here, as the user).

use std::{
    io::Write as _,
    os::{fd::AsFd as _, unix::net::UnixStream},
    path::Path,
    time::Duration,
};

use super::{
    options::RunOptions,
    service::{Exited, Hello, Reply},
    trace::{TermSignals, TraceOptions, emit},
};

/// How long the service may take to answer the hello, and to render.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the trace service at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("the trace service at {path} refused: {msg}")]
    Refused { path: String, msg: String },
    #[error("the trace service: {0}")]
    Io(#[from] std::io::Error),
    #[error("the trace service answered something unexpected: {0}")]
    Protocol(String),
    #[error("agent trace: {0}")]
    Spawn(#[from] super::traced::SpawnError),
}

fn send_line(
    mut s: &UnixStream,
    v: &impl serde::Serialize,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), ClientError> {
    let mut line = serde_json::to_vec(v).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    let first = crate::process::guard::sendmsg_fd(s, &line, fd)?;
    s.write_all(&line[first..])?;
    Ok(())
}

fn read_reply(s: &UnixStream) -> Result<Reply, ClientError> {
    use std::io::BufRead as _;
    let mut r = std::io::BufReader::new(s);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(ClientError::Protocol("the connection closed".into()));
    }
    serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Run `argv` as this user, traced by the service at `sock`; print the
/// report; the code to exit with.
pub async fn trace_via(
    sock: &Path,
    opts: &RunOptions,
    argv: Vec<String>,
    mut t: TraceOptions,
) -> Result<i32, ClientError> {
    let path = sock.display().to_string();
    let s = UnixStream::connect(sock).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let inv = opts
        .invoker_or_self()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let (gate_r, gate_w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(std::io::Error::from)?;
    use std::os::fd::AsRawFd as _;
    let mut sigs = TermSignals::new();
    let mut traced = super::traced::spawn_gated(&argv, &inv, Some((gate_r, gate_w.as_raw_fd())))?;
    let refuse = |traced: &mut super::traced::Traced, e: ClientError| {
        traced.signal_group(libc::SIGKILL);
        traced.reclaim_terminal();
        e
    };
    let pidfd = match rustix::process::Pid::from_raw(traced.pid as i32)
        .ok_or_else(|| std::io::Error::other("no pid"))
        .and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                .map_err(std::io::Error::from)
        }) {
        Ok(fd) => fd,
        Err(e) => return Err(refuse(&mut traced, e.into())),
    };
    let hello = Hello {
        v: 1,
        argv: argv.clone(),
        ask: t.render_ask(opts.format, opts.color),
    };
    let answer = send_line(&s, &hello, Some(pidfd.as_fd())).and_then(|()| read_reply(&s));
    drop(pidfd);
    match answer {
        Ok(Reply::Ready) => {}
        Ok(Reply::Error(msg)) => {
            return Err(refuse(&mut traced, ClientError::Refused { path, msg }));
        }
        Ok(Reply::Done(_)) => {
            return Err(refuse(
                &mut traced,
                ClientError::Protocol("a report before the command ran".into()),
            ));
        }
        Err(e) => return Err(refuse(&mut traced, e)),
    }
    // Followed: let it exec.
    (&std::fs::File::from(gate_w)).write_all(b"x")?;
    let mut interrupted_by = None;
    let status = loop {
        tokio::select! {
            st = traced.child.wait() => break st?,
            sig = sigs.recv() => {
                // As in `agent trace`: the command's group gets it, the
                // report still comes.
                traced.signal_group(sig);
                interrupted_by.get_or_insert(sig);
            }
        }
    };
    traced.reclaim_terminal();
    let code = super::traced::exit_code_of(status);
    send_line(
        &s,
        &Exited {
            code,
            interrupted_by,
        },
        None,
    )?;
    let reply = tokio::task::spawn_blocking(move || read_reply(&s))
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))
        .and_then(|r| r);
    match reply {
        Ok(Reply::Done(rendered)) => Ok(emit(&rendered, opts.format, &mut t.ci)),
        // The command ran: its code stands, the missing report is said.
        Ok(Reply::Error(msg)) => {
            eprintln!("agent: no report: the trace service at {path}: {msg}");
            Ok(code)
        }
        Ok(Reply::Ready) => {
            eprintln!("agent: no report: the trace service at {path} answered out of turn");
            Ok(code)
        }
        Err(e) => {
            eprintln!("agent: no report: {e}");
            Ok(code)
        }
    }
}
