//! `cargo xtask measure-install`: the README's first command, timed from
//! nothing — a fresh clone, an empty HOME (so rustup downloads both pinned
//! toolchains, cargo the crates, and bpf-linker is built), then
//! `rustup toolchain install && cargo xtask install --dir …`. `--readme`
//! writes the measured figure into README.md, so the figure a user reads is
//! a measurement, not a guess.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::toolchain::workspace_root;

/// The README sentence the figure lives in: `… builds bpf-linker: <FIGURE> cold on 2 cores`.
const README_BEFORE: &str = "builds bpf-linker: ";
const README_AFTER: &str = " cold on";

/// `4 min 8 s`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

/// Replace the figure in the README text; `None` if the sentence is missing.
pub fn with_figure(readme: &str, figure: &str) -> Option<String> {
    let start = readme.find(README_BEFORE)? + README_BEFORE.len();
    let len = readme[start..].find(README_AFTER)?;
    // The figure is short: a longer span means the sentence changed shape.
    if len > 24 {
        return None;
    }
    Some(format!(
        "{}{figure}{}",
        &readme[..start],
        &readme[start + len..]
    ))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn measure_install(keep: bool, readme: bool) -> Result<()> {
    let ws = workspace_root();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(&ws)
        .output()
        .context("git status")?;
    if !dirty.stdout.is_empty() {
        eprintln!("xtask: note: uncommitted changes are not in the clone that is measured");
    }
    let base = std::env::temp_dir().join(format!("agent-measure-install-{}", std::process::id()));
    let home = base.join("home");
    let clone = home.join("agent");
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin)?;
    let status = Command::new("git")
        .args(["clone", "-q", "--no-hardlinks"])
        .arg(format!("file://{}", ws.display()))
        .arg(&clone)
        .status()
        .context("git clone")?;
    if !status.success() {
        bail!("git clone of {} failed", ws.display());
    }
    // rustup itself is the one thing the README assumes: placed in the empty
    // HOME as rustup-init places it (the binary in ~/.cargo/bin, the proxies
    // hard links to it), it sees no toolchain, no crate and no cache.
    let rustup = which("rustup").context("rustup is not on PATH")?;
    let cargo_bin = home.join(".cargo/bin");
    std::fs::create_dir_all(&cargo_bin)?;
    std::fs::copy(&rustup, cargo_bin.join("rustup"))
        .with_context(|| format!("copying {}", rustup.display()))?;
    for proxy in [
        "cargo",
        "rustc",
        "rustdoc",
        "rustfmt",
        "cargo-fmt",
        "cargo-clippy",
        "clippy-driver",
    ] {
        std::fs::hard_link(cargo_bin.join("rustup"), cargo_bin.join(proxy))?;
    }
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", cargo_bin.display());
    let step = |what: &str, script: &str| -> Result<Duration> {
        eprintln!("\n=== xtask: measure-install: {what}");
        let t = Instant::now();
        let st = Command::new("env")
            .arg("-i")
            .arg(format!("HOME={}", home.display()))
            .arg(format!("PATH={path}"))
            .arg("TERM=dumb")
            .args(["sh", "-c", script])
            .current_dir(&clone)
            .status()
            .with_context(|| format!("running {script}"))?;
        if !st.success() {
            bail!("{script} failed: {st} (in {})", base.display());
        }
        Ok(t.elapsed())
    };
    let r = (|| -> Result<Vec<(&str, Duration)>> {
        Ok(vec![
            (
                "rustup toolchain install (both toolchains' download)",
                step("toolchains", "rustup toolchain install")?,
            ),
            (
                "cargo xtask setup (the nightly, bpf-linker built)",
                step("setup", "cargo xtask setup")?,
            ),
            (
                "cargo xtask install (release build, copy)",
                step(
                    "install",
                    &format!("cargo xtask install --dir {}", bin.display()),
                )?,
            ),
        ])
    })();
    if !keep {
        let _ = std::fs::remove_dir_all(&base);
    }
    let steps = r?;
    let total: Duration = steps.iter().map(|(_, d)| *d).sum();
    eprintln!("\n=== xtask: measure-install: a fresh clone, an empty HOME");
    for (what, d) in &steps {
        eprintln!("  {what:<54} {:>7.1}s", d.as_secs_f64());
    }
    eprintln!(
        "  {:<54} {:>7.1}s ({})",
        "total",
        total.as_secs_f64(),
        human(total)
    );
    if readme {
        let p = ws.join("README.md");
        let text = std::fs::read_to_string(&p)?;
        let new = with_figure(&text, &human(total)).with_context(|| {
            format!("no `{README_BEFORE}… {README_AFTER}` sentence in README.md")
        })?;
        std::fs::write(&p, new)?;
        eprintln!("xtask: README.md says {}", human(total));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_figure_is_replaced_in_place() {
        let r = "# x\n#    builds bpf-linker: 9 min 57 s cold on 2 cores\nrest\n";
        assert_eq!(
            with_figure(r, "4 min 8 s").as_deref(),
            Some("# x\n#    builds bpf-linker: 4 min 8 s cold on 2 cores\nrest\n")
        );
        assert_eq!(with_figure("nothing here", "1 s"), None);
        assert_eq!(human(Duration::from_secs(248)), "4 min 8 s");
        assert_eq!(human(Duration::from_secs(42)), "42 s");
    }

    #[test]
    fn the_readme_has_the_sentence() {
        let text = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
        assert!(
            with_figure(&text, "1 s").is_some(),
            "README lost the measured figure"
        );
    }
}
