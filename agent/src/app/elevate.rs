//! Self-elevation: `agent`, `agent trace` and `agent check --probe` typed
//! without privileges re-run themselves through sudo (or doas), by their own
//! absolute path, after saying so in one line.
//!
//! Owns: deciding whether elevation is needed, finding the tool, handing the
//! user's environment over. The environment is never put on the command
//! line (`ps` shows it): with sudo we `exec` it, so sudo keeps our
//! environment as its own and the elevated agent reads it from
//! `/proc/<sudo>/environ` ([`crate::process::invoker`]); doas keeps no process, so we
//! stay alive as the elevated agent's parent and it reads ours.
//! Must not: elevate anything but this binary.

use std::{
    ffi::{OsStr, OsString},
    io::IsTerminal as _,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::PathBuf,
    process::Command,
};

/// Hidden flag the elevated copy gets: its settings (`AGENT_*`, `OTEL_*`,
/// `NO_COLOR`, `CLICOLOR_FORCE`) come from the environment the user typed them in, which sudo's
/// `env_reset` took away.
pub const ELEVATED_FLAG: &str = "--elevated";

#[derive(Debug, thiserror::Error)]
pub enum ElevateError {
    #[error(
        "loading BPF programs needs root, and neither sudo nor doas is installed: run it as root (`su -c '{0}'`)"
    )]
    NoTool(String),
    #[error(
        "loading BPF programs needs root, and sudo needs a password but there is no terminal to ask on: run `sudo {0}` from a terminal"
    )]
    NoTerminal(String),
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        source: std::io::Error,
    },
}

use crate::app::privs::{CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN};

/// True when this process cannot load and attach BPF programs: not root and
/// without CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN) in its effective set.
pub fn needed() -> bool {
    if rustix::process::geteuid().as_raw() == 0 {
        return false;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = crate::app::check::cap_eff(&status);
    let has = |c: u32| eff & (1u64 << c) != 0;
    !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)))
}

/// An executable named `name` on `path` (PATH semantics), or in the usual
/// places when PATH lacks them.
pub fn find_tool(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The command line as a person would retype it (for messages only).
pub fn shell_words(args: &[OsString]) -> String {
    args.iter()
        .map(|a| {
            let s = a.to_string_lossy();
            if !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Our own executable, by absolute path (not PATH: sudo's `secure_path` may
/// not hold it).
fn self_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|p| {
            // A binary replaced while running reads as "… (deleted)".
            let s = p.as_os_str().as_bytes();
            match s.strip_suffix(b" (deleted)") {
                Some(t) => PathBuf::from(OsStr::from_bytes(t)),
                None => p,
            }
        })
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// Re-run this command through sudo or doas. Returns only on failure (sudo:
/// we are replaced) or with the elevated copy's exit code (doas).
pub fn reexec(args: &[OsString]) -> Result<i32, ElevateError> {
    let exe = self_exe();
    let path = std::env::var_os("PATH");
    let mut shown = vec![exe.to_string_lossy().into_owned()];
    shown.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
    // Shown to the user and kept in terminal logs: scrubbed like any argv.
    let shown: Vec<OsString> = crate::scrub::scrub_argv(&shown)
        .into_iter()
        .map(OsString::from)
        .collect();
    let retype = shell_words(&shown);
    // sudo first, then doas; `AGENT_ELEVATE=doas` (or `sudo`) picks one.
    let order: &[&'static str] = match std::env::var("AGENT_ELEVATE").as_deref() {
        Ok("doas") => &["doas"],
        Ok("sudo") => &["sudo"],
        _ => &["sudo", "doas"],
    };
    let tool = order
        .iter()
        .find_map(|t| find_tool(t, path.as_deref()).map(|p| (*t, p)))
        .ok_or_else(|| ElevateError::NoTool(retype.clone()))?;
    let terminal = std::fs::File::open("/dev/tty").is_ok() || std::io::stdin().is_terminal();
    let mut cmd = Command::new(&tool.1);
    if tool.0 == "sudo" && !terminal {
        // No terminal to type a password on: succeed without one or say so.
        let ok = Command::new(&tool.1)
            .args(["-n", "true"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(ElevateError::NoTerminal(retype));
        }
        cmd.arg("-n");
    }
    cmd.arg("--").arg(&exe).arg(ELEVATED_FLAG).args(args);
    eprintln!(
        "agent: loading BPF programs needs root: running `{} {retype}` (--no-elevate: don't)",
        tool.0
    );
    if tool.0 == "sudo" {
        // sudo keeps our environment as its own and stays our ancestor.
        let e = cmd.exec();
        return Err(ElevateError::Spawn {
            tool: tool.1.display().to_string(),
            source: e,
        });
    }
    // doas replaces itself with the agent: we stay as its parent so that
    // it can read our environment, and wait. Terminal signals reach the
    // elevated agent and its command directly.
    // SAFETY: ignoring SIGINT/SIGQUIT in this process only; no handlers exist yet.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let status = cmd.status().map_err(|source| ElevateError::Spawn {
        tool: tool.1.display().to_string(),
        source,
    })?;
    Ok(crate::app::traced::exit_code_of(status))
}

/// Settings of the agent itself that the elevated copy takes from the
/// environment the user typed them in.
pub fn is_setting_for_elevated(name: &[u8]) -> bool {
    name.starts_with(b"AGENT_")
        || name.starts_with(b"OTEL_")
        || name == b"NO_COLOR"
        || name == b"CLICOLOR_FORCE"
}

/// In the elevated copy, before any thread exists: take the agent's own
/// settings from the invoking user's environment.
pub fn adopt_settings(from: &[(OsString, OsString)]) {
    for (k, v) in from {
        if is_setting_for_elevated(k.as_bytes()) {
            // SAFETY: called from main before the runtime or any other thread
            // starts, so nothing reads the environment concurrently.
            unsafe { std::env::set_var(k, v) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_a_shell() {
        let a: Vec<OsString> = [
            "/usr/local/bin/agent",
            "trace",
            "--",
            "sh",
            "-c",
            "echo $HOME; it's",
        ]
        .map(OsString::from)
        .to_vec();
        assert_eq!(
            shell_words(&a),
            r"/usr/local/bin/agent trace -- sh -c 'echo $HOME; it'\''s'"
        );
    }

    #[test]
    fn tools_are_found_on_path_then_in_the_usual_places() {
        let d = std::env::temp_dir().join(format!("elevate-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let t = d.join("fakesudo");
        std::fs::write(&t, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_tool("fakesudo", Some(d.as_os_str())), Some(t.clone()));
        // Not executable: not a tool.
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(find_tool("fakesudo", Some(d.as_os_str())), None);
        // Relative PATH entries are never used by a root-bound lookup.
        assert_eq!(find_tool("fakesudo", Some(OsStr::new("."))), None);
        assert!(find_tool("sh", Some(OsStr::new(""))).is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn only_the_agents_own_settings_are_adopted() {
        assert!(is_setting_for_elevated(b"OTEL_EXPORTER_OTLP_ENDPOINT"));
        assert!(is_setting_for_elevated(b"AGENT_LOG"));
        assert!(!is_setting_for_elevated(b"PATH"));
        assert!(!is_setting_for_elevated(b"LD_PRELOAD"));
    }
}
