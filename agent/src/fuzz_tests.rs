//! Mutation fuzzing of every parser of untrusted bytes, run with the unit
//! tests: valid inputs are mutated (bit flips, byte overwrites with
//! interesting values, truncations, splices) by a seeded generator, and each
//! parser must return a value or an error, never panic or read out of bounds.
//! Deterministic, so a failure reproduces; `AGENT_FUZZ_ITERS` raises the count.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn iters() -> usize {
    std::env::var("AGENT_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(8) {
        if b.is_empty() {
            b.push(rng.next() as u8);
            continue;
        }
        let i = rng.below(b.len());
        match rng.below(6) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b[i] = [0u8, 0xff, 0x7f, 0x80, b'=', 0x01][rng.below(6)],
            2 => b.truncate(i),
            3 => {
                // A little-endian length/offset field set to something large.
                let v = [u32::MAX, 0x8000_0000, 4096, 65_535][rng.below(4)].to_le_bytes();
                for (k, x) in v.iter().enumerate() {
                    if let Some(p) = b.get_mut(i + k) {
                        *p = *x;
                    }
                }
            }
            4 => {
                let j = rng.below(b.len());
                let chunk: Vec<u8> = b[j..].iter().take(64).copied().collect();
                b.splice(i..i, chunk);
            }
            _ => b.push(rng.next() as u8),
        }
    }
    b
}

fn run(seed: &[u8], salt: u64, f: impl Fn(&[u8])) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ salt);
    f(seed);
    for _ in 0..iters() {
        f(&mutate(&mut rng, seed));
    }
}

#[test]
fn ring_buffer_records() {
    let exec = crate::events::tests::exec_record(
        "go",
        "/usr/bin/go",
        &["go", "build", "./..."],
        &["PATH=/a:/b", "GOROOT=/x"],
        0,
    );
    run(&exec, 1, |b| {
        let _ = crate::events::decode(b);
    });
    let mut tcp = vec![0u8; std::mem::size_of::<agent_common::TcpEvent>()];
    tcp[0] = agent_common::EventKind::Tcp as u8;
    tcp[72] = 2; // a phase somewhere in the record
    run(&tcp, 2, |b| {
        let _ = crate::events::decode(b);
    });
}

#[test]
fn go_build_info() {
    let seed = crate::buildinfo::tests::fake_go_elf("go1.22.3", "cmd/go");
    run(&seed, 3, |b| {
        let _ = crate::buildinfo::parse(b);
        let _ = crate::buildinfo::go_func_offset(b, "crypto/tls.(*Conn).sendAlertLocked");
    });
}

#[test]
fn kernel_btf() {
    // A real, small slice of structure: the unit-test blob plus the running kernel's header.
    let mut seed = Vec::new();
    if let Ok(b) = std::fs::read("/sys/kernel/btf/vmlinux") {
        seed.extend_from_slice(&b[..b.len().min(4096)]);
    }
    if seed.is_empty() {
        seed = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
    }
    run(&seed, 4, |b| {
        if let Ok(btf) = crate::btf::Btf::parse(b) {
            let _ = btf.member_offset("task_struct", "tgid");
        }
    });
}

#[test]
fn text_formats() {
    let fmt = b"\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\n";
    run(fmt, 5, |b| {
        let _ = crate::bpf::tracefs::field_offset_in(&String::from_utf8_lossy(b), "child_pid");
    });
    let cfg = b"format = \"json\"\ntools = [\"go\"]\notlp_endpoint = \"http://c:4318\"\n";
    run(cfg, 6, |b| {
        let _ = crate::config::parse(std::path::Path::new("f.toml"), &String::from_utf8_lossy(b));
    });
    run(b"https://user:tok@proxy:3128/p,http://[::1]:80", 7, |b| {
        let s = String::from_utf8_lossy(b);
        let r = crate::scrub::url::redact_urls(&s);
        // Invariant: after every "://", the authority carries no userinfo but "***".
        let mut rest = r.as_str();
        while let Some(i) = rest.find("://") {
            let tail = &rest[i + 3..];
            let end = tail
                .find(['/', '?', '#', ',', '|', ' ', ';'])
                .unwrap_or(tail.len());
            let auth = &tail[..end];
            if let Some(at) = auth.rfind('@') {
                assert!(
                    auth[..at].ends_with("***")
                        && !auth[..at]
                            .trim_end_matches("***")
                            .contains(|c: char| c != '*'),
                    "{s:?} -> {r:?}"
                );
            }
            rest = &tail[end..];
        }
        let _ = crate::process::endpoints::proxy_host_port(&s);
    });
    run(b"#!/opt/conda/envs/a/bin/python3 -u\nimport x", 8, |b| {
        let _ = crate::process::pyenv::parse_shebang(b);
    });
}

#[test]
fn tls_handshakes() {
    use agent_parse::tls::tests as t;
    // One control byte per segment (see `tls::fuzz_feed`), then the bytes.
    let mut seed = Vec::new();
    let ch = t::client_hello(&[0x0304, 0x0303], "proxy.golang.org", &["h2"], 0x0303);
    for chunk in ch.chunks(64) {
        seed.push(((chunk.len() - 1) / 8) as u8);
        seed.extend(chunk);
    }
    let mut flight = t::server_hello(0x0304, false);
    flight.extend(t::record(agent_parse::tls::CT_ALERT, &[2, 70]));
    seed.push(0x80 | ((flight.len().min(505) - 1) / 8) as u8);
    seed.extend(&flight);
    run(&seed, 7, agent_parse::tls::fuzz_feed);
}

#[test]
fn dns_messages() {
    let seed = agent_parse::dns::tests::message(
        7,
        "proxy.golang.org",
        1,
        0,
        &[[10, 0, 0, 5], [10, 0, 0, 6]],
    );
    run(&seed, 8, |b| {
        let _ = agent_parse::dns::parse(b);
    });
    let nx = agent_parse::dns::tests::message(8, "a.b.c.d", 28, 3, &[]);
    run(&nx, 9, |b| {
        let _ = agent_parse::dns::parse(b);
    });
}

#[test]
fn wire_records() {
    let mut rec = vec![0u8; std::mem::size_of::<agent_common::WireFixed>()];
    rec[0] = agent_common::EventKind::Wire as u8;
    rec.extend(agent_parse::dns::tests::message(1, "x.test", 1, 0, &[]));
    run(&rec, 10, |b| {
        if let Ok(crate::events::Event::Wire(w)) = crate::events::decode(b) {
            let mut tls = crate::signal::tls::TlsTracker::default();
            let mut dns = crate::signal::dns::DnsTracker::default();
            let table = crate::process::table::ProcTable::default();
            let _ = dns.on_wire(&table, &w);
            let _ = tls.on_wire(&table, &w, &dns);
            let _ = dns.flush(&table, u64::MAX);
            let _ = tls.flush(&table, u64::MAX, &dns);
        }
    });
}
