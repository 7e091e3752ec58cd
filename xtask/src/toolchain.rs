//! Installs what building the agent needs, from nothing but rustup and crates.io:
//! the pinned userspace toolchain, the pinned nightly with `rust-src`, and a
//! `bpf-linker` built against that nightly's own libLLVM (no system LLVM).
//!
//! bpf-linker is cached under `$AGENT_TOOLS_DIR` (default
//! `~/.cache/agent-build`) in a directory named after the nightly, so a second
//! run costs nothing and a change of nightly rebuilds it. The directory is
//! self-contained (the libLLVM it loads is a hard link or a copy, not a
//! symlink into one user's rustup home), so a shared, read-only cache — a CI
//! runner's, or `.ci/run`'s for the install-as-a-user test — serves every
//! account.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// bpf-linker release built from crates.io.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `channel = "..."` of a rust-toolchain.toml.
fn channel_of(file: &Path) -> Result<String> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("channel") {
            let value = rest
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            if !value.is_empty() {
                return Ok(value.to_string());
            }
        }
    }
    bail!("no `channel = \"...\"` in {}", file.display())
}

pub fn nightly() -> Result<String> {
    channel_of(&workspace_root().join("agent-ebpf/rust-toolchain.toml"))
}

pub fn stable() -> Result<String> {
    channel_of(&workspace_root().join("rust-toolchain.toml"))
}

pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AGENT_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/agent-build")
}

/// Directory holding `bpf-linker` for this nightly.
pub fn bpf_linker_bin_dir(nightly: &str) -> PathBuf {
    tools_dir().join(nightly).join("bin")
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Install both pinned toolchains (no-op when present).
pub fn ensure_toolchains() -> Result<()> {
    let stable = stable()?;
    let nightly = nightly()?;
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))?;
    let has = |name: &str| installed.lines().any(|l| l.starts_with(name));
    if !has(&stable) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &stable,
            "--profile",
            "minimal",
            "--component",
            "clippy,rustfmt",
        ]))?;
    }
    // rust-src must be there even if the toolchain was installed without it.
    if !has(&nightly) || !nightly_has_rust_src(&nightly)? {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &nightly,
            "--profile",
            "minimal",
            "--component",
            "rust-src,clippy,rustfmt",
        ]))?;
    }
    Ok(())
}

fn sysroot(nightly: &str) -> Result<PathBuf> {
    let out = output(
        Command::new("rustc")
            .arg(format!("+{nightly}"))
            .args(["--print", "sysroot"]),
    )?;
    Ok(PathBuf::from(out.trim()))
}

fn nightly_has_rust_src(nightly: &str) -> Result<bool> {
    Ok(sysroot(nightly)
        .map(|s| s.join("lib/rustlib/src/rust/library/core").is_dir())
        .unwrap_or(false))
}

/// LLVM major version of the nightly (`rustc -vV` → `LLVM version: 23.1.0`).
fn llvm_major(nightly: &str) -> Result<u32> {
    let out = output(Command::new("rustc").arg(format!("+{nightly}")).arg("-vV"))?;
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("LLVM version:") {
            let major = v.trim().split('.').next().unwrap_or("");
            return major
                .parse()
                .with_context(|| format!("parsing LLVM version {v:?}"));
        }
    }
    bail!("rustc +{nightly} -vV printed no LLVM version")
}

/// Build bpf-linker against the nightly's libLLVM unless the cached one matches.
pub fn ensure_bpf_linker() -> Result<PathBuf> {
    let nightly = nightly()?;
    let root = tools_dir().join(&nightly);
    let bin = root.join("bin/bpf-linker");
    let stamp = root.join("stamp");
    let want = format!("bpf-linker {BPF_LINKER_VERSION} for {nightly}\n");
    let prefix = root.join("llvm");
    if bin.is_file() && fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        // A cache made before the prefix was self-contained: make it so if
        // it is ours to change (an unwritable shared one is used as it is).
        if fs::read_link(prefix.join("lib/libLLVM.so")).is_ok_and(|t| t.is_absolute())
            && let Ok(lib) = nightly_libllvm(&nightly)
        {
            let _ = place_libllvm(&lib, &prefix.join("lib"));
        }
        return Ok(bin);
    }
    let major = llvm_major(&nightly)?;
    let lib = nightly_libllvm(&nightly)?;
    // LLVM_PREFIX/lib must hold libLLVM.so; the binary's rpath points here, so it stays.
    let plib = prefix.join("lib");
    place_libllvm(&lib, &plib)?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (once per nightly)",
        lib.display()
    );
    let stable = stable()?;
    run(Command::new("cargo")
        .arg(format!("+{stable}"))
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))?;
    fs::write(&stamp, want)?;
    Ok(bin)
}

/// The nightly's own libLLVM (`lib/libLLVM.so.<ver>`).
fn nightly_libllvm(nightly: &str) -> Result<PathBuf> {
    let libdir = sysroot(nightly)?.join("lib");
    fs::read_dir(&libdir)
        .with_context(|| format!("listing {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                // The real library; `libLLVM-<ver>.so` beside it is a linker script.
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM in {}", libdir.display()))
}

/// `plib/libLLVM.so` and `plib/<its name>`: a hard link to `lib` (same file
/// system), else a copy; never a symlink, which another account could not
/// follow into this one's home.
fn place_libllvm(lib: &Path, plib: &Path) -> Result<()> {
    fs::create_dir_all(plib)?;
    let name = lib.file_name().context("libLLVM has no file name")?;
    let real = plib.join(name);
    let tmp = plib.join(".libLLVM.new");
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(lib, &tmp).is_err() {
        fs::copy(lib, &tmp)
            .with_context(|| format!("copying {} to {}", lib.display(), tmp.display()))?;
    }
    fs::rename(&tmp, &real).with_context(|| format!("placing {}", real.display()))?;
    let link = plib.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    // A relative link inside the prefix is followed by every account.
    std::os::unix::fs::symlink(name, &link)
        .with_context(|| format!("symlink {}", link.display()))?;
    Ok(())
}

/// Everything needed before the agent can be built.
pub fn setup() -> Result<PathBuf> {
    ensure_toolchains()?;
    let linker = ensure_bpf_linker()?;
    Ok(linker)
}
