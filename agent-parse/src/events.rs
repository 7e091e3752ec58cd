//! Decoding of raw ring-buffer records into owned, typed events.
//!
//! Owns: turning untrusted bytes (records the kernel side wrote, read from
//! shared memory) into [`Event`]s: every length is checked, the kind is
//! decoded with `TryFrom`, and nothing here panics (fuzzed: `fuzz/`,
//! target `event_decode`). The agent's `events` module re-exports it.
//! Must not: interpret events (that is the process table and the rules).

use agent_common::{
    ARGV0_LEN, EXEC_F_ARGV_FAULT, EXEC_F_ARGV_TRUNCATED, EXEC_F_ENV_FAULT, EXEC_F_ENV_SKIPPED,
    EXEC_F_ENV_TRUNCATED, EXEC_F_EXECVEAT, EXEC_F_FILENAME_IS_EXE, EXEC_F_FILENAME_TRUNCATED,
    EXEC_F_NO_ENTER, EventHeader, EventKind, ExecFixed, ExitEvent, ForkEvent, FsEvent,
    IPPROTO_TCP_U8, TCP_F_NO_START, TCP_PHASE_ESTABLISHED, TCP_PHASE_FAILED, TCP_PHASE_START,
    TcpEvent, TlsLibEvent, WIRE_DIR_EGRESS, WIRE_KIND_DNS, WIRE_KIND_HTTP, WIRE_KIND_TLS,
    WireFixed,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A record that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the event header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{kind} record of {got} bytes, need at least {need}")]
    Truncated {
        kind: &'static str,
        got: usize,
        need: usize,
    },
    #[error("exec record data lengths ({argv}+{env}) exceed the {avail} bytes received")]
    BadLengths { argv: u32, env: u32, avail: usize },
    #[error(
        "wire record claims {cap} captured bytes of a {payload}-byte payload, {avail} received"
    )]
    BadCapture {
        cap: u16,
        payload: u32,
        avail: usize,
    },
}

/// A decoded exec attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    /// Thread that called exec.
    pub pid: u32,
    /// Process (after a successful exec, the tgid; the thread group it ran in).
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// Boot-time ns at the call and at completion.
    pub enter_ns: u64,
    pub ktime_ns: u64,
    /// 0 on success, or the errno (positive).
    pub errno: i32,
    /// The path the caller passed.
    pub filename: String,
    /// The file the kernel ran (empty on failure).
    pub exe: String,
    /// Caller's `comm` at the time of the call.
    pub comm: String,
    pub argv: Vec<String>,
    /// Allow-listed `(name, value)` pairs, in environment order.
    pub env: Vec<(String, String)>,
    pub argv_truncated: bool,
    pub env_truncated: bool,
    /// The kernel read the environment: false for execs outside toolchain
    /// trees and for compilers, whose environment nothing uses (`env` is then
    /// empty; the process table's `env_of` looks at the parents').
    pub env_read: bool,
    pub filename_truncated: bool,
    /// The call's entry was not seen (argv/env/filename unknown).
    pub no_enter: bool,
    pub execveat: bool,
    /// The process's working directory, read from `/proc` by the ring
    /// reader the moment the record left the kernel (a tool that fails in
    /// a few ms is gone before its exec is analysed). Not in the record:
    /// `None` from [`decode`].
    pub cwd: Option<String>,
}

impl Exec {
    pub fn ok(&self) -> bool {
        self.errno == 0
    }

    /// Value of an allow-listed variable (the first occurrence, as glibc `getenv` does).
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Process exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub tgid: u32,
    pub ktime_ns: u64,
    /// `(status << 8) | signal` as the kernel keeps it.
    pub raw_code: u32,
}

impl Exit {
    /// Exit status when the process exited normally.
    pub fn status(&self) -> Option<i32> {
        (self.raw_code & 0x7f == 0).then_some(((self.raw_code >> 8) & 0xff) as i32)
    }
    /// Terminating signal, if killed by one.
    pub fn signal(&self) -> Option<i32> {
        let s = (self.raw_code & 0x7f) as i32;
        (s != 0).then_some(s)
    }
}

/// fork/clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fork {
    pub parent_tgid: u32,
    pub child_pid: u32,
    pub ktime_ns: u64,
}

/// Stage of a TCP connection set-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpPhase {
    /// SYN sent.
    Start,
    Established,
    /// Failed; `Tcp::err` says why (0: closed by the application first).
    Failed,
}

/// A TCP connection set-up step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub phase: TcpPhase,
    /// Connecting thread and process (0 when the SYN was not seen).
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    pub netns: u32,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// Boot-time ns of the SYN and of this event.
    pub start_ns: u64,
    pub ktime_ns: u64,
    pub syn_retrans: u32,
    /// Positive errno of a failure.
    pub err: i32,
    /// The SYN was not seen (agent started mid-connect).
    pub no_start: bool,
    pub comm: String,
    /// Kernel socket address, pairs start and outcome.
    pub sock: u64,
}

impl Tcp {
    pub fn duration_ns(&self) -> Option<u64> {
        (!self.no_start).then(|| self.ktime_ns.saturating_sub(self.start_ns))
    }
}

/// A failed file operation of a tracked process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsFault {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub ktime_ns: u64,
    /// `mkdir`, `unlink`, `rename`, `create`, `open for writing`, `open`.
    pub op: &'static str,
    /// The operation needs write access to the path or its directory.
    pub write: bool,
    pub dfd: i32,
    /// Positive errno: EACCES, EPERM or EROFS.
    pub errno: i32,
    /// As the process passed it (may be relative).
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Exec(Box<Exec>),
    Exit(Exit),
    Fork(Fork),
    Tcp(Box<Tcp>),
    Fs(Box<FsFault>),
    Wire(Box<Wire>),
    TlsLib(TlsLib),
}

/// What a TLS library said, from a uprobe (see `tlslib`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsLib {
    pub pid: u32,
    pub tgid: u32,
    /// `TLSLIB_*`.
    pub kind: u32,
    pub value: i64,
    /// Kind-specific (a duration, ns, for the handshake kinds).
    pub aux: u64,
    pub ktime_ns: u64,
    pub comm: String,
}

/// What a captured packet belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireKind {
    Tls,
    Dns,
    /// The status line of a plaintext HTTP/1.x 4xx/5xx response.
    Http,
}

/// A packet captured on the wire (first bytes of its payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wire {
    pub kind: WireKind,
    /// Sent by the local socket (else received).
    pub egress: bool,
    pub tcp: bool,
    /// Owner of the socket (0 when unknown, e.g. the server end of an accepted connection).
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    pub comm: String,
    /// Socket cookie.
    pub cookie: u64,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub seq: u32,
    /// Payload length on the wire; `data` holds its first bytes.
    pub payload_len: u32,
    pub tcp_flags: u8,
    pub ktime_ns: u64,
    /// A slice of the reader's payload buffer (no allocation per record).
    pub data: bytes::Bytes,
}

impl Wire {
    /// The local and the remote end, as (address, port).
    pub fn local(&self) -> (IpAddr, u16) {
        if self.egress {
            (self.src, self.sport)
        } else {
            (self.dst, self.dport)
        }
    }
    pub fn remote(&self) -> (IpAddr, u16) {
        if self.egress {
            (self.dst, self.dport)
        } else {
            (self.src, self.sport)
        }
    }
}

fn ip(family: u16, b: &[u8; 16]) -> IpAddr {
    if family == agent_common::AF_INET {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

fn read<T: Copy>(b: &[u8]) -> Option<T> {
    if b.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked above; read_unaligned has no alignment requirement,
    // and T is a plain-old-data #[repr(C)] type for which every bit pattern is valid.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) })
}

/// Bytes up to the first NUL, lossily as UTF-8.
pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Split a NUL-separated area into strings (a final unterminated piece is kept).
fn split_nul(b: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = b
        .split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    if b.last() == Some(&0) || b.is_empty() {
        v.pop();
    }
    v
}

/// Turn the argv of a new program back into the one its caller passed.
///
/// A `#!` script (or a `binfmt_misc` format) runs as `[interpreter, (arg),
/// script, argv[1..]]`: the kernel drops the caller's `argv[0]`, which the
/// probe kept at entry (`argv0`, cut at `ARGV0_LEN - 1` bytes). Returns
/// whether the restored `argv[0]` is cut.
pub fn caller_argv(argv: &mut Vec<String>, argv0: &str, script: &str) -> bool {
    let cut = argv0.len() >= ARGV0_LEN - 1;
    let same = match argv.first() {
        Some(a) => a == argv0 || (cut && a.starts_with(argv0)),
        None => true,
    };
    if argv0.is_empty() || same {
        return false;
    }
    match argv.iter().take(3).skip(1).position(|a| a == script) {
        Some(k) => {
            argv.splice(..=k + 1, [argv0.to_string()]);
            cut
        }
        None => false,
    }
}

pub fn decode(b: &[u8]) -> Result<Event, DecodeError> {
    decode_into(b, &mut bytes::BytesMut::new())
}

/// [`decode`], with a wire record's payload appended to `payloads` and
/// split off it: the reader keeps one buffer, so payloads share its
/// allocation (which `reserve` takes back once every slice of it is
/// dropped) instead of each getting its own.
pub fn decode_into(b: &[u8], payloads: &mut bytes::BytesMut) -> Result<Event, DecodeError> {
    let hdr: EventHeader = read(b).ok_or(DecodeError::Short(b.len()))?;
    let kind = EventKind::try_from(hdr.kind).map_err(DecodeError::UnknownKind)?;
    match kind {
        EventKind::Exec => decode_exec(b),
        EventKind::Exit => {
            let e: ExitEvent = read(b).ok_or(DecodeError::Truncated {
                kind: "exit",
                got: b.len(),
                need: size_of::<ExitEvent>(),
            })?;
            Ok(Event::Exit(Exit {
                tgid: e.hdr.tgid,
                ktime_ns: e.hdr.ktime_ns,
                raw_code: e.exit_code,
            }))
        }
        EventKind::Tcp => {
            let e: TcpEvent = read(b).ok_or(DecodeError::Truncated {
                kind: "tcp",
                got: b.len(),
                need: size_of::<TcpEvent>(),
            })?;
            let phase = match e.phase {
                TCP_PHASE_START => TcpPhase::Start,
                TCP_PHASE_ESTABLISHED => TcpPhase::Established,
                TCP_PHASE_FAILED => TcpPhase::Failed,
                other => return Err(DecodeError::UnknownKind(other)),
            };
            Ok(Event::Tcp(Box::new(Tcp {
                phase,
                pid: e.hdr.pid,
                tgid: e.hdr.tgid,
                uid: e.uid,
                cgroup_id: e.cgroup_id,
                netns: e.netns,
                src: ip(e.family, &e.saddr),
                sport: e.sport,
                dst: ip(e.family, &e.daddr),
                dport: e.dport,
                start_ns: e.start_ns,
                ktime_ns: e.hdr.ktime_ns,
                syn_retrans: e.syn_retrans,
                err: e.err,
                no_start: e.flags & TCP_F_NO_START != 0,
                comm: cstr(&e.comm),
                sock: e.skaddr,
            })))
        }
        EventKind::TlsLib => {
            let e: TlsLibEvent = read(b).ok_or(DecodeError::Truncated {
                kind: "tls_lib",
                got: b.len(),
                need: size_of::<TlsLibEvent>(),
            })?;
            Ok(Event::TlsLib(TlsLib {
                pid: e.hdr.pid,
                tgid: e.hdr.tgid,
                kind: e.kind,
                value: e.value,
                aux: e.aux,
                ktime_ns: e.hdr.ktime_ns,
                comm: cstr(&e.comm),
            }))
        }
        EventKind::Wire => decode_wire(b, payloads),
        EventKind::Fs => decode_fs(b),
        EventKind::Fork => {
            let e: ForkEvent = read(b).ok_or(DecodeError::Truncated {
                kind: "fork",
                got: b.len(),
                need: size_of::<ForkEvent>(),
            })?;
            Ok(Event::Fork(Fork {
                parent_tgid: e.hdr.tgid,
                child_pid: e.child_pid,
                ktime_ns: e.hdr.ktime_ns,
            }))
        }
    }
}

/// An exec record: its fixed part, then argv and the allowed environment.
fn decode_exec(b: &[u8]) -> Result<Event, DecodeError> {
    let f: ExecFixed = read(b).ok_or(DecodeError::Truncated {
        kind: "exec",
        got: b.len(),
        need: size_of::<ExecFixed>(),
    })?;
    let data = &b[size_of::<ExecFixed>()..];
    let argv_len = f.argv_len as usize;
    let env_len = f.env_len as usize;
    if argv_len.checked_add(env_len).is_none_or(|n| n > data.len()) {
        return Err(DecodeError::BadLengths {
            argv: f.argv_len,
            env: f.env_len,
            avail: data.len(),
        });
    }
    let mut argv = split_nul(&data[..argv_len]);
    let mut argv_cut = false;
    if f.flags & EXEC_F_FILENAME_IS_EXE != 0 {
        // Read from the new program: give back the caller's argv[0].
        argv_cut = caller_argv(&mut argv, &cstr(&f.filename), &cstr(&f.exe));
    }
    let env = split_nul(&data[argv_len..argv_len + env_len])
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv, String::new()),
        })
        .collect();
    Ok(Event::Exec(Box::new(Exec {
        pid: f.hdr.pid,
        tgid: f.hdr.tgid,
        ppid: f.hdr.ppid,
        uid: f.uid,
        gid: f.gid,
        cgroup_id: f.cgroup_id,
        enter_ns: f.enter_ns,
        ktime_ns: f.hdr.ktime_ns,
        errno: f.ret.saturating_neg(),
        filename: if f.flags & EXEC_F_FILENAME_IS_EXE != 0 {
            cstr(&f.exe)
        } else {
            cstr(&f.filename)
        },
        exe: cstr(&f.exe),
        comm: cstr(&f.comm),
        argv,
        env,
        argv_truncated: argv_cut || f.flags & (EXEC_F_ARGV_TRUNCATED | EXEC_F_ARGV_FAULT) != 0,
        env_truncated: f.flags & (EXEC_F_ENV_TRUNCATED | EXEC_F_ENV_FAULT) != 0,
        env_read: f.flags & EXEC_F_ENV_SKIPPED == 0,
        filename_truncated: f.flags & EXEC_F_FILENAME_TRUNCATED != 0,
        no_enter: f.flags & EXEC_F_NO_ENTER != 0,
        execveat: f.flags & EXEC_F_EXECVEAT != 0,
        cwd: None,
    })))
}

/// A wire record: its fixed part, then the captured payload (into `payloads`).
fn decode_wire(b: &[u8], payloads: &mut bytes::BytesMut) -> Result<Event, DecodeError> {
    let f: WireFixed = read(b).ok_or(DecodeError::Truncated {
        kind: "wire",
        got: b.len(),
        need: size_of::<WireFixed>(),
    })?;
    let data = &b[size_of::<WireFixed>()..];
    let cap = f.cap_len as usize;
    if cap > data.len() || cap > f.payload_len as usize {
        return Err(DecodeError::BadCapture {
            cap: f.cap_len,
            payload: f.payload_len,
            avail: data.len(),
        });
    }
    let kind = match f.kind {
        WIRE_KIND_TLS => WireKind::Tls,
        WIRE_KIND_DNS => WireKind::Dns,
        WIRE_KIND_HTTP => WireKind::Http,
        other => return Err(DecodeError::UnknownKind(other as u32)),
    };
    Ok(Event::Wire(Box::new(Wire {
        kind,
        egress: f.dir == WIRE_DIR_EGRESS,
        tcp: f.proto == IPPROTO_TCP_U8,
        pid: f.hdr.pid,
        tgid: f.hdr.tgid,
        uid: f.uid,
        cgroup_id: f.cgroup_id,
        comm: cstr(&f.comm),
        cookie: f.cookie,
        src: ip(f.family, &f.saddr),
        sport: f.sport,
        dst: ip(f.family, &f.daddr),
        dport: f.dport,
        seq: f.seq,
        payload_len: f.payload_len,
        tcp_flags: f.tcp_flags,
        ktime_ns: f.hdr.ktime_ns,
        data: {
            payloads.extend_from_slice(&data[..cap]);
            payloads.split().freeze()
        },
    })))
}

/// A failed file access: the operation and whether it writes.
fn decode_fs(b: &[u8]) -> Result<Event, DecodeError> {
    let e: FsEvent = read(b).ok_or(DecodeError::Truncated {
        kind: "fs",
        got: b.len(),
        need: size_of::<FsEvent>(),
    })?;
    const O_ACCMODE: u32 = 3;
    const O_CREAT: u32 = 0o100;
    let (op, write) = match e.op {
        agent_common::FS_OP_MKDIR => ("mkdir", true),
        agent_common::FS_OP_UNLINK => ("unlink", true),
        agent_common::FS_OP_RENAME => ("rename", true),
        agent_common::FS_OP_CREAT => ("create", true),
        agent_common::FS_OP_OPEN if e.flags & O_CREAT != 0 => ("create", true),
        agent_common::FS_OP_OPEN if e.flags & O_ACCMODE != 0 => ("open for writing", true),
        agent_common::FS_OP_OPEN => ("open", false),
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Event::Fs(Box::new(FsFault {
        pid: e.hdr.pid,
        tgid: e.hdr.tgid,
        uid: e.uid,
        gid: e.gid,
        ktime_ns: e.hdr.ktime_ns,
        op,
        write,
        dfd: e.dfd,
        errno: e.errno,
        path: cstr(&e.path),
    })))
}
