//! Every loaded BPF program's name, verified instruction count and
//! translated size, as JSON lines: how `docs/architecture.md` compares the
//! programs with `--bpf-log` off against a build without aya-log
//! (Debian's bpftool does not show the verified count). Run as root while
//! an agent is running: `cargo run -p agent --example prog_insns`.

fn main() {
    for p in aya::programs::loaded_programs().flatten() {
        println!(
            "{{\"id\":{},\"name\":{:?},\"verified_insns\":{},\"bytes_xlated\":{}}}",
            p.id(),
            p.name_as_str().unwrap_or("?"),
            p.verified_instruction_count().unwrap_or(0),
            p.size_translated().unwrap_or(0)
        );
    }
}
