//! What reading a Go binary's build info and a function's offset costs:
//! `cargo run --release -p agent-parse --example elf_cost -- BINARY...`
//! (the sparse image read from the file, the build info, one function's
//! offset in `.gopclntab`), median of 200 rounds each.

use std::time::Instant;

use agent_parse::buildinfo::{self, BUILDINFO_SECTIONS, PCLNTAB_SECTIONS};

fn main() {
    for path in std::env::args().skip(1) {
        let Ok(f) = std::fs::File::open(&path) else {
            eprintln!("{path}: cannot open");
            continue;
        };
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        let wanted: Vec<&str> = BUILDINFO_SECTIONS
            .iter()
            .chain(PCLNTAB_SECTIONS)
            .chain(&[".text"])
            .copied()
            .collect();
        let mut times = Vec::new();
        let mut found = None;
        for _ in 0..200 {
            let t = Instant::now();
            let img = buildinfo::read_image(&f, size, &wanted);
            let bi = img.as_deref().and_then(|i| buildinfo::parse(i).ok());
            let off = img
                .as_deref()
                .and_then(|i| buildinfo::go_func_offset(i, "crypto/tls.(*Conn).sendAlertLocked"));
            times.push(t.elapsed().as_micros());
            found = Some((bi.map(|b| b.go_version), off));
        }
        times.sort_unstable();
        println!("{path}: {} µs median ({found:?})", times[times.len() / 2]);
    }
}
