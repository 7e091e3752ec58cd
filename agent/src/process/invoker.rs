//! Who asked for this agent, and the world they live in: the account, groups,
//! environment, working directory and umask that a traced command must run
//! with so that it behaves exactly as it would have without the agent.
//!
//! Owns: finding the invoking user from the process ancestry (sudo stays alive
//! as our ancestor and its `/proc/<pid>/environ` is what the user's shell gave
//! it; an unprivileged copy of ourselves that elevated through doas does the
//! same), the fallbacks when no such ancestor exists (`DOAS_USER`,
//! `PKEXEC_UID`, `SUDO_UID` of run0), `--user NAME`, and saying which source
//! was used. Must not: spawn anything or change the agent's own credentials.

use std::{
    ffi::{CString, OsStr, OsString},
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
    path::{Path, PathBuf},
};

/// Variables that configure the agent itself: they reach a traced command
/// only when they were in the user's own environment (sudo's), never from the
/// agent's (`sudo OTEL_EXPORTER_OTLP_HEADERS=… agent trace`).
pub fn is_agent_setting(name: &[u8]) -> bool {
    name.starts_with(b"AGENT_")
        || name.starts_with(b"OTEL_EXPORTER_")
        || name.starts_with(b"SUDO_")
        || name == b"DOAS_USER"
        || name == b"PKEXEC_UID"
}

/// Where the traced command's identity and environment came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The environment the user's shell gave `sudo` (process `pid`).
    Sudo { pid: u32 },
    /// Our own unprivileged copy that re-ran itself through doas (`pid`).
    SelfElevated { pid: u32 },
    /// `doas` typed by the user: it keeps no process and no environment.
    Doas,
    /// `pkexec`: it keeps no process and no environment.
    Pkexec,
    /// `SUDO_UID` in our environment with no sudo process among our ancestors
    /// (run0 sets it; or the sudo process is gone).
    SudoUidVariable,
    /// `--user NAME`.
    UserFlag,
    /// A root login: nobody elevated, the user is root.
    RootLogin,
    /// Not root: the agent runs the command as itself.
    Unprivileged,
}

impl Source {
    /// One phrase for the report: "sudo (pid 123) …".
    pub fn describe(&self) -> String {
        match self {
            Source::Sudo { pid } => format!("the environment your shell gave sudo (pid {pid})"),
            Source::SelfElevated { pid } => {
                format!("the environment of the unprivileged agent (pid {pid}) that ran doas")
            }
            Source::Doas => "a login-like environment (doas passes no environment; type `agent trace -- …` without doas to hand yours over)".into(),
            Source::Pkexec => "a login-like environment (pkexec passes no environment; type `agent trace -- …` without pkexec to hand yours over)".into(),
            Source::SudoUidVariable => "a login-like environment (SUDO_UID is set but no sudo process is among the agent's ancestors)".into(),
            Source::UserFlag => "a login-like environment (--user)".into(),
            Source::RootLogin => "the agent's own environment (a root login: nobody elevated it)".into(),
            Source::Unprivileged => "the agent's own environment".into(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Source::Sudo { .. } => "sudo",
            Source::SelfElevated { .. } => "self_elevated",
            Source::Doas => "doas",
            Source::Pkexec => "pkexec",
            Source::SudoUidVariable => "sudo_uid_variable",
            Source::UserFlag => "user_flag",
            Source::RootLogin => "root_login",
            Source::Unprivileged => "unprivileged",
        }
    }
}

/// The account and world a traced command runs in.
#[derive(Debug, Clone)]
pub struct Invoker {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub user: String,
    pub home: Option<PathBuf>,
    /// The complete environment for the command, in order.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    pub umask: Option<u32>,
    pub source: Source,
}

#[derive(Debug, thiserror::Error)]
pub enum InvokerError {
    #[error("no account named {0:?} (--user)")]
    NoSuchUser(String),
}

/// Fields of `/proc/<pid>/status` we use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub ppid: u32,
    /// real, effective, saved, fs
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub umask: Option<u32>,
}

/// Parse `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> Status {
    let mut s = Status::default();
    let ids = |v: &str| {
        let mut out = [u32::MAX; 4];
        for (i, n) in v.split_whitespace().take(4).enumerate() {
            out[i] = n.parse().unwrap_or(u32::MAX);
        }
        out
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Name" => s.name = v.to_string(),
            "PPid" => s.ppid = v.parse().unwrap_or(0),
            "Uid" => s.uid = ids(v),
            "Gid" => s.gid = ids(v),
            "Groups" => {
                s.groups = v
                    .split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            }
            "Umask" => s.umask = u32::from_str_radix(v, 8).ok(),
            _ => {}
        }
    }
    s
}

/// Split a NUL-separated environment block into pairs (bounded: 4 MiB is
/// more than the kernel lets execve pass).
pub fn parse_environ(block: &[u8]) -> Vec<(OsString, OsString)> {
    block
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=')?;
            (eq > 0).then(|| {
                (
                    OsString::from_vec(kv[..eq].to_vec()),
                    OsString::from_vec(kv[eq + 1..].to_vec()),
                )
            })
        })
        .collect()
}

/// More than the kernel lets execve pass.
const ENVIRON_CAP: usize = 4 << 20;

/// An account from the password database.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

/// `getpwnam_r`/`getpwuid_r`: one entry.
fn passwd(by: Result<&str, u32>) -> Option<Account> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for an out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res: *mut libc::passwd = std::ptr::null_mut();
    let rc = match by {
        Ok(name) => {
            let c = CString::new(name).ok()?;
            // SAFETY: every pointer is valid for the call; buf's length is passed.
            unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) }
        }
        // SAFETY: as above.
        Err(uid) => unsafe {
            libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res)
        },
    };
    if rc != 0 || res.is_null() {
        return None;
    }
    let s = |p: *const libc::c_char| {
        if p.is_null() {
            return OsString::new();
        }
        // SAFETY: getpw*_r filled `pw` with NUL-terminated strings inside `buf`, alive here.
        OsStr::from_bytes(unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes()).to_os_string()
    };
    Some(Account {
        name: s(pw.pw_name).to_string_lossy().into_owned(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: PathBuf::from(s(pw.pw_dir)),
        shell: PathBuf::from(s(pw.pw_shell)),
    })
}

pub fn account_by_name(name: &str) -> Option<Account> {
    passwd(Ok(name))
}

pub fn account_by_uid(uid: u32) -> Option<Account> {
    passwd(Err(uid))
}

/// The account's groups as `initgroups` would set them.
pub fn group_list(a: &Account) -> Vec<u32> {
    let Ok(name) = CString::new(a.name.as_str()) else {
        return vec![a.gid];
    };
    let mut n: libc::c_int = 64;
    for _ in 0..4 {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `groups` has room for `count` entries; name is NUL-terminated.
        let rc =
            unsafe { libc::getgrouplist(name.as_ptr(), a.gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        n = count.max(n.saturating_mul(2));
    }
    vec![a.gid]
}

/// A login-like environment for `a` (what `sudo -i`/`su -` would start
/// from), plus `keep` variables taken from `own`.
pub fn login_env(
    a: &Account,
    own: &[(OsString, OsString)],
    keep: &[String],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("HOME".into(), a.home.clone().into_os_string()),
        ("USER".into(), a.name.clone().into()),
        ("LOGNAME".into(), a.name.clone().into()),
        ("SHELL".into(), a.shell.clone().into_os_string()),
        (
            "PATH".into(),
            if a.uid == 0 {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            } else {
                "/usr/local/bin:/usr/bin:/bin".into()
            },
        ),
    ];
    for (k, v) in own {
        let name = k.as_bytes();
        let wanted = [b"TERM".as_slice(), b"LANG", b"LC_ALL", b"COLORTERM"].contains(&name)
            || keep.iter().any(|n| n.as_bytes() == name);
        if wanted {
            env.retain(|(e, _)| e != k);
            env.push((k.clone(), v.clone()));
        }
    }
    env
}

/// The agent's own environment without its own settings.
pub fn own_env_for_command(own: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    own.iter()
        .filter(|(k, _)| !is_agent_setting(k.as_bytes()))
        .cloned()
        .collect()
}

/// What [`find`] reads: `/proc` (a temp dir in tests) and our own state.
pub struct Probe<'a> {
    pub proc_root: &'a Path,
    pub self_pid: u32,
    pub euid: u32,
    /// (dev, ino) of our own executable, to recognise an unprivileged copy of us.
    pub self_exe: Option<(u64, u64)>,
    pub own_env: Vec<(OsString, OsString)>,
}

impl Probe<'_> {
    fn status(&self, pid: u32) -> Option<Status> {
        let b = crate::process::fsview::read_capped(
            &self.proc_root.join(pid.to_string()).join("status"),
            64 << 10,
        )?;
        Some(parse_status(&String::from_utf8_lossy(&b)))
    }

    fn exe_id(&self, pid: u32) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(self.proc_root.join(pid.to_string()).join("exe")).ok()?;
        Some((m.dev(), m.ino()))
    }

    fn own_var(&self, k: &str) -> Option<String> {
        self.own_env
            .iter()
            .find(|(n, _)| n.as_bytes() == k.as_bytes())
            .map(|(_, v)| v.to_string_lossy().into_owned())
    }

    /// The process whose environment and identity the user gave us: the
    /// topmost of the nearest run of sudo processes of one real uid (with
    /// `use_pty` sudo forks a monitor between itself and us), or an
    /// unprivileged copy of ourselves that elevated through doas.
    fn elevating_ancestor(&self) -> Option<(u32, Status, Source)> {
        let me = self.status(self.self_pid)?;
        let mut pid = me.ppid;
        let mut found: Option<(u32, Status)> = None;
        for _ in 0..64 {
            if pid <= 1 {
                break;
            }
            let Some(st) = self.status(pid) else { break };
            // A setuid-root sudo: effective uid 0, real uid the caller's. A
            // process of the user's named "sudo" cannot have euid 0.
            let is_sudo = st.name == "sudo" && st.uid[1] == 0;
            match &found {
                None if is_sudo => found = Some((pid, st.clone())),
                None => {
                    // Our own unprivileged copy that ran doas (doas built
                    // with PAM stays between us as a waiting parent).
                    if st.uid[0] != 0
                        && self.self_exe.is_some()
                        && self.exe_id(pid) == self.self_exe
                    {
                        return Some((pid, st, Source::SelfElevated { pid }));
                    }
                    // Wrappers between sudo and us (`sudo env X=1 agent`) are
                    // looked through; a shell is not: from a root shell
                    // (`sudo -i`, then `agent`), the user is root.
                    if !WRAPPERS.contains(&st.name.as_str()) {
                        break;
                    }
                }
                Some((_, first)) if is_sudo && st.uid[0] == first.uid[0] => {
                    found = Some((pid, st.clone()));
                }
                Some(_) => break,
            }
            pid = st.ppid;
        }
        found.map(|(pid, st)| (pid, st, Source::Sudo { pid }))
    }
}

/// Programs that run the next one without being a place a user works in.
const WRAPPERS: &[&str] = &[
    "env", "nice", "ionice", "timeout", "time", "setpriv", "stdbuf", "chrt", "taskset", "unshare",
    "doas",
];

/// Find who invoked the agent (see the module doc), or take `--user`.
pub fn find(
    p: &Probe<'_>,
    user_flag: Option<&str>,
    keep_env: &[String],
) -> Result<Invoker, InvokerError> {
    if let Some(name) = user_flag {
        let a = account_by_name(name)
            .or_else(|| name.parse().ok().and_then(account_by_uid))
            .ok_or_else(|| InvokerError::NoSuchUser(name.to_string()))?;
        return Ok(from_account(&a, p, keep_env, Source::UserFlag));
    }
    if p.euid != 0 {
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let acct = account_by_uid(uid);
        return Ok(Invoker {
            uid,
            gid,
            groups: Vec::new(),
            user: acct
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_else(|| uid.to_string()),
            home: acct.map(|a| a.home),
            env: own_env_for_command(&p.own_env),
            cwd: None,
            umask: None,
            source: Source::Unprivileged,
        });
    }
    if let Some((pid, st, source)) = p.elevating_ancestor() {
        let dir = p.proc_root.join(pid.to_string());
        let env = crate::process::fsview::read_capped(&dir.join("environ"), ENVIRON_CAP)
            .map(|b| parse_environ(&b))
            .unwrap_or_default();
        let uid = st.uid[0];
        let acct = account_by_uid(uid);
        let user = acct
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_else(|| uid.to_string());
        let home = env
            .iter()
            .find(|(k, _)| k == "HOME")
            .map(|(_, v)| PathBuf::from(v))
            .or_else(|| acct.as_ref().map(|a| a.home.clone()));
        // sudo changes its own gid, groups and umask before we can read
        // them; the process that ran it (the user's shell) still has the
        // user's own. Our own copy (doas) has them unchanged.
        let shell = match source {
            Source::Sudo { .. } => p.status(st.ppid).filter(|s| s.uid[0] == uid && st.ppid > 1),
            _ => Some(st.clone()),
        };
        let (gid, groups, umask) = match shell {
            Some(s) => (s.gid[0], s.groups, s.umask),
            None => {
                let gid = p
                    .own_var("SUDO_GID")
                    .and_then(|g| g.parse().ok())
                    .or_else(|| acct.as_ref().map(|a| a.gid))
                    .unwrap_or(st.gid[0]);
                let groups = acct.as_ref().map(group_list).unwrap_or_else(|| vec![gid]);
                (gid, groups, None)
            }
        };
        return Ok(Invoker {
            uid,
            gid,
            groups,
            user,
            home,
            env,
            cwd: std::fs::read_link(dir.join("cwd")).ok(),
            umask,
            source,
        });
    }
    // No live elevating ancestor: the tools that exec away leave a variable.
    let from_var = [
        ("DOAS_USER", Source::Doas),
        ("PKEXEC_UID", Source::Pkexec),
        ("SUDO_UID", Source::SudoUidVariable),
    ];
    for (var, source) in from_var {
        let Some(v) = p.own_var(var) else { continue };
        let acct = match v.parse::<u32>() {
            Ok(uid) => account_by_uid(uid),
            Err(_) => account_by_name(&v),
        };
        if let Some(a) = acct.filter(|a| a.uid != 0) {
            let mut inv = from_account(&a, p, keep_env, source);
            if var == "SUDO_UID"
                && let Some(gid) = p.own_var("SUDO_GID").and_then(|g| g.parse().ok())
            {
                inv.gid = gid;
            }
            return Ok(inv);
        }
    }
    Ok(Invoker {
        uid: 0,
        gid: 0,
        groups: p.status(p.self_pid).map(|s| s.groups).unwrap_or_default(),
        user: "root".into(),
        home: p.own_var("HOME").map(PathBuf::from),
        env: own_env_for_command(&p.own_env),
        cwd: None,
        umask: None,
        source: Source::RootLogin,
    })
}

fn from_account(a: &Account, p: &Probe<'_>, keep_env: &[String], source: Source) -> Invoker {
    Invoker {
        uid: a.uid,
        gid: a.gid,
        groups: group_list(a),
        user: a.name.clone(),
        home: Some(a.home.clone()),
        env: login_env(a, &p.own_env, keep_env),
        cwd: None,
        umask: None,
        source,
    }
}

/// The probe of this process.
pub fn probe_self(proc_root: &Path) -> Probe<'_> {
    use std::os::unix::fs::MetadataExt as _;
    Probe {
        proc_root,
        self_pid: std::process::id(),
        euid: rustix::process::geteuid().as_raw(),
        self_exe: std::fs::metadata("/proc/self/exe")
            .ok()
            .map(|m| (m.dev(), m.ino())),
        own_env: std::env::vars_os().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_text(name: &str, ppid: u32, ruid: u32, euid: u32, groups: &str) -> String {
        format!(
            "Name:\t{name}\nUmask:\t0027\nState:\tS (sleeping)\nPPid:\t{ppid}\nUid:\t{ruid}\t{euid}\t{euid}\t{euid}\nGid:\t{ruid}\t{euid}\t{euid}\t{euid}\nGroups:\t{groups}\n"
        )
    }

    fn fake_proc(procs: &[(u32, String, &[u8])]) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "invoker-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (pid, status, environ) in procs {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("status"), status).unwrap();
            std::fs::write(d.join("environ"), environ).unwrap();
        }
        root
    }

    fn probe<'a>(root: &'a Path, own: &[(&str, &str)]) -> Probe<'a> {
        Probe {
            proc_root: root,
            self_pid: 100,
            euid: 0,
            self_exe: None,
            own_env: own
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn status_fields() {
        let s = parse_status(&status_text("sudo", 7, 1001, 0, "1001 27 2000"));
        assert_eq!(s.name, "sudo");
        assert_eq!(s.ppid, 7);
        assert_eq!(s.uid, [1001, 0, 0, 0]);
        assert_eq!(s.groups, vec![1001, 27, 2000]);
        assert_eq!(s.umask, Some(0o027));
    }

    #[test]
    fn environ_block() {
        let e = parse_environ(b"PATH=/a:/b\0EMPTY=\0=bad\0noeq\0X=a=b\0");
        assert_eq!(
            e,
            vec![
                ("PATH".into(), "/a:/b".into()),
                ("EMPTY".into(), "".into()),
                ("X".into(), "a=b".into())
            ]
        );
    }

    #[test]
    fn the_sudo_the_user_ran_gives_the_environment_through_its_pty_monitor() {
        // shell(50, uid 1001) → sudo(60) → sudo monitor(61) → agent(100)
        let root = fake_proc(&[
            (
                50,
                status_text("bash", 1, 1001, 1001, "1001 2000"),
                b"PATH=/shell\0",
            ),
            (
                60,
                status_text("sudo", 50, 1001, 0, "0"),
                b"PATH=/home/u/env/bin:/usr/bin\0HOME=/home/u\0",
            ),
            (61, status_text("sudo", 60, 1001, 0, "0"), b"PATH=/other\0"),
            (100, status_text("agent", 61, 0, 0, "0"), b""),
        ]);
        let inv = find(&probe(&root, &[("SUDO_UID", "1001")]), None, &[]).unwrap();
        assert_eq!(inv.source, Source::Sudo { pid: 60 });
        assert_eq!((inv.uid, inv.gid), (1001, 1001));
        assert_eq!(inv.groups, vec![1001, 2000]);
        assert_eq!(inv.umask, Some(0o027));
        assert_eq!(inv.home.as_deref(), Some(Path::new("/home/u")));
        assert_eq!(
            inv.env[0],
            ("PATH".into(), "/home/u/env/bin:/usr/bin".into())
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_sudo_run_by_root_above_the_users_sudo_is_not_the_caller() {
        // root test(40) → sudo -u u(45, ruid 0) → sudo(60, ruid 1001) → agent(100)
        let root = fake_proc(&[
            (40, status_text("test", 1, 0, 0, "0"), b""),
            (45, status_text("sudo", 40, 0, 0, "0"), b"PATH=/root-path\0"),
            (
                60,
                status_text("sudo", 45, 1001, 0, "1001"),
                b"PATH=/user-path\0",
            ),
            (100, status_text("agent", 60, 0, 0, "0"), b""),
        ]);
        let inv = find(&probe(&root, &[]), None, &[]).unwrap();
        assert_eq!(inv.source, Source::Sudo { pid: 60 });
        assert_eq!(inv.uid, 1001);
        assert_eq!(inv.env, vec![("PATH".into(), "/user-path".into())]);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_fake_sudo_of_the_user_does_not_count_and_a_root_login_is_root() {
        // A user process named sudo (euid 1001) is not an elevation.
        let root = fake_proc(&[
            (
                60,
                status_text("sudo", 1, 1001, 1001, "1001"),
                b"PATH=/fake\0",
            ),
            (100, status_text("agent", 60, 0, 0, "0 10"), b""),
        ]);
        let inv = find(
            &probe(
                &root,
                &[
                    ("PATH", "/root/bin"),
                    ("AGENT_LOG", "debug"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "a=b"),
                    ("TRACEPARENT", "00-x"),
                ],
            ),
            None,
            &[],
        )
        .unwrap();
        assert_eq!(inv.source, Source::RootLogin);
        assert_eq!(inv.uid, 0);
        assert_eq!(inv.groups, vec![0, 10]);
        let _ = std::fs::remove_dir_all(&root);
        // A root shell between the user's sudo and the agent: the user is root.
        let root = fake_proc(&[
            (60, status_text("sudo", 1, 1001, 0, "1001"), b"PATH=/user\0"),
            (70, status_text("bash", 60, 0, 0, "0"), b"PATH=/root\0"),
            (80, status_text("env", 70, 0, 0, "0"), b""),
            (100, status_text("agent", 80, 0, 0, "0"), b""),
        ]);
        assert_eq!(
            find(&probe(&root, &[]), None, &[]).unwrap().source,
            Source::RootLogin
        );
        let root = fake_proc(&[
            (60, status_text("sudo", 1, 1001, 0, "1001"), b"PATH=/user\0"),
            (80, status_text("env", 60, 0, 0, "0"), b""),
            (100, status_text("agent", 80, 0, 0, "0"), b""),
        ]);
        assert_eq!(
            find(&probe(&root, &[]), None, &[]).unwrap().source,
            Source::Sudo { pid: 60 }
        );
        let names: Vec<_> = inv
            .env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["PATH", "TRACEPARENT"],
            "the agent's own settings stay out"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn login_env_keeps_only_what_is_asked() {
        let a = Account {
            name: "dev".into(),
            uid: 1001,
            gid: 1001,
            home: "/home/dev".into(),
            shell: "/bin/bash".into(),
        };
        let own: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), "/root/bin".into()),
            ("TERM".into(), "xterm".into()),
            ("GOPROXY".into(), "https://p".into()),
            ("SECRET".into(), "x".into()),
        ];
        let env = login_env(&a, &own, &["GOPROXY".into()]);
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("HOME").as_deref(), Some("/home/dev"));
        assert_eq!(get("PATH").as_deref(), Some("/usr/local/bin:/usr/bin:/bin"));
        assert_eq!(get("GOPROXY").as_deref(), Some("https://p"));
        assert_eq!(get("TERM").as_deref(), Some("xterm"));
        assert_eq!(get("SECRET"), None);
    }
}
