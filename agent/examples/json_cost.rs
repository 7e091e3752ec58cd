//! Agent CPU per JSON record line, in-process: an `exec` record of a
//! toolchain command (argv with a token, an allow-listed environment) and a
//! `tcp_connect` record, written the way the sinks write them (straight
//! from the value, every string scrubbed) and the way they were written
//! before (a `serde_json::Value` tree, scrubbed in place, then printed).
//! Both give the same line; the example checks that before timing.
//!
//! `cargo run --release -p agent --example json_cost -- [N]`

use std::time::Instant;

use agent::{
    events::Exec,
    render::{Format, Style, json_line},
    signal::exec::render::exec_json,
};

fn exec() -> Exec {
    Exec {
        pid: 4242,
        tgid: 4242,
        ppid: 4000,
        uid: 1000,
        gid: 1000,
        cgroup_id: 7,
        enter_ns: 1_000,
        ktime_ns: 2_000,
        errno: 0,
        filename: "/usr/local/go/bin/go".into(),
        exe: "/usr/local/go/bin/go".into(),
        comm: "make".into(),
        argv: [
            "go",
            "build",
            "-ldflags=-X main.token=ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "-o",
            "/tmp/out",
            "./...",
        ]
        .map(String::from)
        .to_vec(),
        env: [
            ("PATH", "/home/u/go/bin:/usr/local/go/bin:/usr/bin:/bin"),
            ("GOPROXY", "https://u:hunter2@proxy.corp.example/go,direct"),
            ("GOFLAGS", "-mod=mod"),
            ("HOME", "/home/u"),
            ("GOROOT", "/usr/local/go"),
            ("GOPATH", "/home/u/go"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec(),
        argv_truncated: false,
        env_truncated: false,
        env_read: true,
        filename_truncated: false,
        no_enter: false,
        execveat: false,
        cwd: None,
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let style = Style {
        format: Format::Json,
        color: false,
        clock_offset_ns: 0,
    };
    let e = exec();
    let direct = || json_line(&exec_json(&style, &e, None));
    let tree = || {
        let mut v = serde_json::to_value(exec_json(&style, &e, None)).unwrap_or_default();
        agent_parse::scrub::json(&mut v);
        v.to_string()
    };
    assert_eq!(direct(), tree(), "both ways give the same line");
    assert!(!direct().contains("hunter2") && !direct().contains("ghp_abc"));
    // Interleaved rounds (a busy machine slows both alike), median of each.
    let mut bytes = 0usize;
    let mut per: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let ways: [&dyn Fn() -> String; 2] = [&direct, &tree];
    for _ in 0..9 {
        for (w, f) in ways.iter().enumerate() {
            let t0 = Instant::now();
            for _ in 0..n / 9 {
                bytes += f().len();
            }
            per[w].push(t0.elapsed().as_nanos() as f64 / (n / 9) as f64);
        }
    }
    for (name, mut v) in ["direct", "value tree"].into_iter().zip(per) {
        v.sort_by(f64::total_cmp);
        println!(
            "{name:>10}: {:.0} ns per exec record (median of 9 rounds)",
            v[4]
        );
    }
    std::hint::black_box(bytes);
}
