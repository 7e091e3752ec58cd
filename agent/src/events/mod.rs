//! Decoding of raw ring-buffer records into owned, typed events.
//!
//! Owns: starting the reader and the loss counters; the types and the
//! decoder (untrusted bytes → [`Event`], fuzzed) are `agent_parse::events`,
//! re-exported here.
//! Must not: interpret events (that is the process table and the rules).

pub mod reader;

pub use reader::{DRAIN_TICK, EventRx, Stats};

pub use agent_parse::events::*;

/// Load and attach the programs with the ring-buffer reader already
/// running (so nothing waits unread). Events arrive on the returned stream,
/// which holds at most `channel` events between reader and consumer; the
/// reader looks up what cannot wait (a tool's working directory) under
/// `proc_root`.
pub fn start(
    opts: &crate::bpf::CollectorOptions,
    channel: usize,
    proc_root: &std::path::Path,
) -> Result<(crate::bpf::Collector, EventRx), crate::bpf::error::LoadError> {
    let (mut collector, ring) = crate::bpf::Collector::open(opts)?;
    let rx = reader::spawn(ring, channel, proc_root.to_path_buf()).map_err(|e| {
        crate::bpf::error::LoadError::Map {
            name: "EVENTS",
            msg: format!("registering with the runtime: {e}"),
        }
    })?;
    if let Some(l) = collector.take_logger()
        && let Err(e) = crate::bpf::log::forward(l)
    {
        tracing::warn!("--bpf-log: {e}");
    }
    collector.attach_all()?;
    Ok((collector, rx))
}

/// Every count of what was lost on the way, read at one moment.
#[derive(Clone, Debug, Default)]
pub struct Losses {
    /// Kernel-side drops by cause (cumulative).
    pub kernel: Vec<(agent_common::LostCause, u64)>,
    pub received: u64,
    pub decode_errors: u64,
    /// Established connections counted in the kernel instead of sent.
    pub tcp_quiet: u64,
}

impl Losses {
    pub fn read(c: &crate::bpf::Collector, s: &Stats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Losses {
            kernel: c.lost(),
            received: s.received.load(Relaxed),
            decode_errors: s.decode_errors.load(Relaxed),
            tcp_quiet: c.tcp_quiet(),
        }
    }

    /// Everything lost (an exec without its entry record is not a loss:
    /// the program ran before the agent).
    pub fn total(&self) -> u64 {
        self.kernel
            .iter()
            .filter(|(cause, _)| *cause != agent_common::LostCause::ExecNoEnter)
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.decode_errors
    }
}

/// Working directory of process `pid` under `proc_root`, if it is still
/// there. readlink of a /proc link formats a path the kernel holds; it never
/// touches the directory's file system, so it cannot block.
pub fn cwd_of(proc_root: &std::path::Path, pid: u32) -> Option<String> {
    std::fs::read_link(proc_root.join(pid.to_string()).join("cwd"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use agent_common::{ARGV0_LEN, EXEC_F_FILENAME_IS_EXE, EventHeader, EventKind, ExecFixed};
    use std::net::IpAddr;

    /// A wire record between 10.0.0.1:40000 and 10.0.0.2 (port 443 for
    /// TLS, 53 for DNS), process 9 (`curl`).
    pub(crate) fn wire(kind: WireKind, egress: bool, data: Vec<u8>, ns: u64) -> Wire {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (port_a, port_b) = (40000, if kind == WireKind::Dns { 53 } else { 443 });
        Wire {
            kind,
            egress,
            tcp: kind == WireKind::Tls,
            pid: 9,
            tgid: 9,
            uid: 0,
            cgroup_id: 0,
            comm: "curl".into(),
            cookie: 77,
            src: if egress { a } else { b },
            sport: if egress { port_a } else { port_b },
            dst: if egress { b } else { a },
            dport: if egress { port_b } else { port_a },
            seq: 1,
            payload_len: data.len() as u32,
            tcp_flags: 0,
            ktime_ns: ns,
            data: data.into(),
        }
    }

    /// Encode an exec record the way the kernel side lays it out.
    pub(crate) fn exec_record(
        filename: &str,
        exe: &str,
        argv: &[&str],
        env: &[&str],
        ret: i32,
    ) -> Vec<u8> {
        let mut data = Vec::new();
        for a in argv {
            data.extend_from_slice(a.as_bytes());
            data.push(0);
        }
        let argv_len = data.len();
        for e in env {
            data.extend_from_slice(e.as_bytes());
            data.push(0);
        }
        let env_len = data.len() - argv_len;
        let mut f = ExecFixed {
            hdr: EventHeader {
                kind: EventKind::Exec as u32,
                pid: 10,
                tgid: 10,
                ppid: 1,
                ktime_ns: 5,
            },
            enter_ns: 4,
            cgroup_id: 1,
            uid: 1000,
            gid: 1000,
            ret,
            flags: 0,
            argc: argv.len() as u32,
            argv_len: argv_len as u32,
            envc: env.len() as u32,
            env_len: env_len as u32,
            filename: [0; 256],
            exe: [0; 256],
            comm: [0; 16],
        };
        f.filename[..filename.len()].copy_from_slice(filename.as_bytes());
        f.exe[..exe.len()].copy_from_slice(exe.as_bytes());
        // SAFETY: ExecFixed is repr(C) POD; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(&f as *const ExecFixed as *const u8, size_of::<ExecFixed>())
        };
        let mut out = bytes.to_vec();
        out.extend_from_slice(&data);
        out
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn caller_argv_restores_a_scripts_argv0() {
        let mut a = strings(&[
            "/opt/conda/bin/python3.11",
            "/opt/conda/bin/pip",
            "install",
            "x",
        ]);
        assert!(!caller_argv(&mut a, "pip", "/opt/conda/bin/pip"));
        assert_eq!(a, strings(&["pip", "install", "x"]));
        // `#!/usr/bin/env python3`: interpreter plus one argument.
        let mut a = strings(&["/usr/bin/env", "python3", "/usr/local/bin/tool", "-v"]);
        caller_argv(&mut a, "tool", "/usr/local/bin/tool");
        assert_eq!(a, strings(&["tool", "-v"]));
    }

    #[test]
    fn caller_argv_leaves_a_binary_alone() {
        for (argv0, script) in [("go", "/usr/bin/go"), ("", "/x"), ("other", "/nowhere")] {
            let mut a = strings(&["go", "version"]);
            assert!(!caller_argv(&mut a, argv0, script));
            assert_eq!(a, strings(&["go", "version"]));
        }
        // A long argv[0] kept in part is still the same argument.
        let long = "/".repeat(100);
        let mut a = vec![long.clone()];
        assert!(!caller_argv(&mut a, &long[..ARGV0_LEN - 1], "/x"));
        assert_eq!(a, vec![long.clone()]);
        // ... and restored in part to a script, it is flagged.
        let mut a = strings(&["/bin/sh", "/x", "y"]);
        assert!(caller_argv(&mut a, &long[..ARGV0_LEN - 1], "/x"));
        assert_eq!(a.len(), 2);
        let mut empty: Vec<String> = Vec::new();
        assert!(!caller_argv(&mut empty, "a", "/x"));
    }

    /// A DNS wire record with `payload`, laid out as the kernel writes it.
    fn wire_record(payload: &[u8]) -> Vec<u8> {
        let f = agent_common::WireFixed {
            hdr: EventHeader {
                kind: EventKind::Wire as u32,
                pid: 3,
                tgid: 3,
                ppid: 1,
                ktime_ns: 7,
            },
            cookie: 1,
            cgroup_id: 0,
            seq: 0,
            payload_len: payload.len() as u32,
            uid: 0,
            cap_len: payload.len() as u16,
            family: 2,
            sport: 40000,
            dport: 53,
            proto: agent_common::IPPROTO_UDP_U8,
            dir: agent_common::WIRE_DIR_EGRESS,
            kind: agent_common::WIRE_KIND_DNS,
            tcp_flags: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; 16],
        };
        // SAFETY: WireFixed is repr(C) POD; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &f as *const agent_common::WireFixed as *const u8,
                size_of::<agent_common::WireFixed>(),
            )
        };
        let mut out = bytes.to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn wire_payloads_are_slices_of_one_buffer_reused_once_dropped() {
        let mut buf = bytes::BytesMut::with_capacity(4096);
        let base = buf.as_ptr();
        let decode = |buf: &mut bytes::BytesMut, p: &[u8]| match decode_into(&wire_record(p), buf) {
            Ok(Event::Wire(w)) => w.data,
            other => panic!("{other:?}"),
        };
        let (a, b) = (decode(&mut buf, b"first"), decode(&mut buf, b"second"));
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        assert_eq!(a.as_ptr(), base, "no allocation of its own");
        assert_eq!(b.as_ptr(), base.wrapping_add(5), "right after the first");
        drop((a, b));
        // Every slice dropped: the same allocation serves again.
        buf.reserve(4096);
        assert_eq!(decode(&mut buf, b"third").as_ptr(), base);
    }

    #[test]
    fn decodes_a_successful_exec_read_from_the_new_program() {
        let mut b = exec_record(
            "pip",
            "/opt/conda/bin/pip",
            &["/opt/conda/bin/python3", "/opt/conda/bin/pip", "list"],
            &["PATH=/a"],
            0,
        );
        let flags = core::mem::offset_of!(ExecFixed, flags);
        b[flags..flags + 4].copy_from_slice(&EXEC_F_FILENAME_IS_EXE.to_ne_bytes());
        let Event::Exec(e) = decode(&b).unwrap() else {
            panic!()
        };
        assert_eq!(e.filename, "/opt/conda/bin/pip");
        assert_eq!(e.argv, strings(&["pip", "list"]));
        assert!(!e.argv_truncated);
    }

    #[test]
    fn decodes_exec_with_argv_and_env() {
        let b = exec_record(
            "go",
            "/usr/bin/go",
            &["go", "version"],
            &["GOROOT=/usr/lib/go", "PATH=/a:/b"],
            0,
        );
        let Event::Exec(e) = decode(&b).unwrap() else {
            panic!()
        };
        assert_eq!(e.filename, "go");
        assert_eq!(e.exe, "/usr/bin/go");
        assert_eq!(e.argv, vec!["go", "version"]);
        assert_eq!(e.env_var("PATH"), Some("/a:/b"));
        assert_eq!(e.env_var("GOROOT"), Some("/usr/lib/go"));
        assert!(e.ok());
    }

    #[test]
    fn failed_exec_has_errno() {
        let b = exec_record("/nope", "", &["nope"], &[], -2);
        let Event::Exec(e) = decode(&b).unwrap() else {
            panic!()
        };
        assert_eq!(e.errno, 2);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let b = exec_record("go", "/usr/bin/go", &["go", "version"], &["PATH=/a"], 0);
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "prefix {n} decoded");
        }
        assert_eq!(decode(&[0u8; 3]), Err(DecodeError::Short(3)));
        let mut bad = b.clone();
        bad[0] = 99;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn exit_status_and_signal() {
        let e = Exit {
            tgid: 1,
            ktime_ns: 0,
            raw_code: 3 << 8,
        };
        assert_eq!((e.status(), e.signal()), (Some(3), None));
        let k = Exit { raw_code: 9, ..e };
        assert_eq!((k.status(), k.signal()), (None, Some(9)));
    }
}
