//! The suite's checks that run no test: formatting, size limits, clippy
//! on both sides and on each OTLP feature set, the deploy manifests.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{Stages, cargo, cargo_with_linker, lint, run, toolchain};

pub(crate) fn static_checks(st: &mut Stages, nightly: &str) -> Result<()> {
    st.run("fmt --check", |_| {
        run(cargo().args(["fmt", "--all", "--", "--check"]))
    })?;
    st.run("source size limits", |_| {
        lint::run(&toolchain::workspace_root())
    })?;
    st.run("clippy (userspace)", |_| {
        run(cargo_with_linker()?.args([
            "clippy",
            "--workspace",
            "--exclude",
            "agent-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    st.run(
        "OTLP feature sets (clippy each; unit tests without OTLP)",
        |_| {
            for f in [
                &[][..],
                &["--features", "otlp-http"],
                &["--features", "otlp-grpc"],
            ] {
                run(cargo_with_linker()?
                    .args([
                        "clippy",
                        "-p",
                        "agent",
                        "--all-targets",
                        "--no-default-features",
                    ])
                    .args(f)
                    .args(["--", "-D", "warnings"]))?;
            }
            run(cargo_with_linker()?.args([
                "test",
                "-p",
                "agent",
                "--lib",
                "-q",
                "--no-default-features",
            ]))
        },
    )?;
    st.run("clippy (bpf)", |_| {
        let mut c = cargo_with_linker()?;
        c.current_dir(toolchain::workspace_root().join("agent-ebpf"));
        c.arg(format!("+{nightly}")).args([
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);
        run(&mut c)
    })?;
    st.run("deploy manifests (kubernetes-validate, hadolint)", |_| {
        let root = toolchain::workspace_root();
        let deploy = root.join("deploy");
        let mut kv = Command::new("kubernetes-validate");
        kv.arg("--strict").arg("--quiet").current_dir(&deploy);
        kv.args([
            "kubernetes/base/namespace.yaml",
            "kubernetes/base/serviceaccount.yaml",
            "kubernetes/base/daemonset.yaml",
            "kubernetes/overlays/k8s-api/rbac.yaml",
            "otel-collector.yaml",
        ]);
        run(&mut kv).context("kubernetes-validate (pip install -r tests/requirements.txt)")?;
        run(Command::new("hadolint").arg(deploy.join("Dockerfile")))
            .context("hadolint (pip install -r tests/requirements.txt)")
    })?;
    Ok(())
}
