//! `cargo xtask install`: build as the user, copy with the least elevation.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{build_release, is_root, run, toolchain};

/// Whether this process may create files in `dir`.
fn writable(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated path valid for the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// `cargo xtask install`: build as the user who typed it, then copy; only the
/// copy is elevated, and only when `dir` is not the user's to write.
pub fn install(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let root = toolchain::workspace_root();
    // `sudo cargo xtask install` in a user's checkout would leave root-owned
    // files in their target/ and caches: refuse, and say what to type.
    if is_root()
        && let Some(owner) = std::fs::metadata(&root).ok().map(|m| m.uid())
        && owner != 0
        && std::env::var_os("SUDO_UID").is_some()
    {
        bail!(
            "run `cargo xtask install` as yourself, not through sudo: it builds as you and asks sudo only to copy the binary"
        );
    }
    build_release()?;
    let src = root.join("target/release/agent");
    let dst = dir.join("agent");
    if writable(dir) {
        // Copy to a temporary name then rename, so a running agent is not disturbed.
        let tmp = dir.join(".agent.new");
        std::fs::copy(&src, &tmp)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        std::fs::rename(&tmp, &dst)?;
    } else {
        let tool = ["sudo", "doas"]
            .into_iter()
            // Found on PATH: spawning it at all works.
            .find(|t| Command::new(t).arg("-V").output().is_ok())
            .with_context(|| {
                format!(
                    "{} is not writable by you and neither sudo nor doas is installed: use --dir DIR (a directory of yours on PATH, e.g. ~/.local/bin)",
                    dir.display()
                )
            })?;
        eprintln!(
            "xtask: {} is not writable by you: copying with `{tool} install -m 0755 {} {}` ({tool} may ask for your password)",
            dir.display(),
            src.display(),
            dst.display()
        );
        run(Command::new(tool)
            .args(["install", "-m", "0755"])
            .arg(&src)
            .arg(&dst))
        .with_context(|| format!("{tool} install (or use --dir DIR, a directory of yours)"))?;
    }
    let on_path =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d == dir));
    eprintln!(
        "xtask: installed {}; run `agent` (typed without root it re-runs itself through sudo){}",
        dst.display(),
        if on_path {
            String::new()
        } else {
            format!(
                " — {} is not on your PATH: run it as {}",
                dir.display(),
                dst.display()
            )
        }
    );
    Ok(())
}
