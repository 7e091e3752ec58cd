//! Builds the BPF object (agent-ebpf) with the pinned nightly and bpf-linker,
//! for `include_bytes_aligned!` in the agent. Run `cargo xtask setup` once on
//! a new machine (the README's commands do it for you).

use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;

fn nightly(root: &Path) -> anyhow::Result<String> {
    let file = root.join("agent-ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .map(|v| {
            v.trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"')
                .to_string()
        })
        .find(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("no channel in {}", file.display()))
}

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .context("agent/ has no parent")?
        .to_path_buf();
    let nightly = nightly(&root)?;
    println!(
        "cargo:rerun-if-changed={}",
        root.join("agent-ebpf/rust-toolchain.toml").display()
    );
    println!("cargo:rerun-if-env-changed=AGENT_BPF_LINKER_DIR");

    let dir = match env::var_os("AGENT_BPF_LINKER_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let tools = env::var_os("AGENT_TOOLS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                        .join(".cache/agent-build")
                });
            tools.join(&nightly).join("bin")
        }
    };
    let linker = dir.join("bpf-linker");
    if !linker.is_file() {
        bail!(
            "bpf-linker for {nightly} not found at {}: run `cargo xtask setup` once \
             (it installs the pinned toolchains and builds bpf-linker)",
            linker.display()
        );
    }
    println!("cargo:rerun-if-changed={}", linker.display());
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![dir];
    paths.extend(env::split_paths(&path));
    let joined = env::join_paths(paths)?;
    // SAFETY: build scripts are single-threaded here; nothing reads the environment concurrently.
    unsafe { env::set_var("PATH", joined) };
    // The nested cargo's progress lines would each become a `cargo:warning`.
    // SAFETY: as above.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    // The nested cargo must not inherit the userspace toolchain pin.
    // SAFETY: as above.
    unsafe { env::remove_var("RUSTUP_TOOLCHAIN") };

    let ebpf_root = root.join("agent-ebpf");
    let ebpf_root = ebpf_root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: ebpf_root,
            ..Default::default()
        }],
        Toolchain::Custom(&nightly),
    )
}
