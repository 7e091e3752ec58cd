//! Agent CPU per exported span and the exporter's memory, in-process and
//! without BPF: N process spans (exec + exit of a toolchain-named binary,
//! the real `Output`s the pipeline makes) through `otlp::Otlp` to a local
//! HTTP/protobuf receiver, until all are exported.
//!
//! `cargo run --release -p agent --example otlp_cost -- [N]`
//! CPU is the process's (getrusage) minus the receiver threads' own.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use agent::{
    events::{Exec, Exit},
    pipeline::Output,
    process::table::ProcTable,
    signal::exec::ExecAnalysis,
    sink::otlp::{Otlp, OtlpConfig},
};

fn cpu_ns(who: libc::c_int) -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(who, &mut r) };
    let t = |v: libc::timeval| v.tv_sec as u64 * 1_000_000_000 + v.tv_usec as u64 * 1000;
    t(r.ru_utime) + t(r.ru_stime)
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// HTTP/1.1 keep-alive receiver: 200 to every POST; its CPU is counted apart.
fn receiver(cpu: Arc<AtomicU64>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let cpu = cpu.clone();
            std::thread::spawn(move || {
                let mut last = cpu_ns(libc::RUSAGE_THREAD);
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                'conn: loop {
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(_) => {}
                        }
                        let l = line.to_ascii_lowercase();
                        if let Some(v) = l.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err()
                        || w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .is_err()
                    {
                        break;
                    }
                    let now = cpu_ns(libc::RUSAGE_THREAD);
                    cpu.fetch_add(now - last, Ordering::Relaxed);
                    last = now;
                }
            });
        }
    });
    port
}

fn exec(tgid: u32, ppid: u32, ns: u64) -> Exec {
    Exec {
        pid: tgid,
        tgid,
        ppid,
        uid: 1000,
        gid: 1000,
        cgroup_id: 0,
        enter_ns: ns,
        ktime_ns: ns,
        errno: 0,
        filename: "/usr/local/go/bin/go".into(),
        exe: "/usr/local/go/bin/go".into(),
        comm: "go".into(),
        argv: vec![
            "go".into(),
            "build".into(),
            "-o".into(),
            "/tmp/out".into(),
            "./...".into(),
        ],
        env: vec![("PATH".into(), "/usr/local/go/bin:/usr/bin:/bin".into())],
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
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    let recv_cpu = Arc::new(AtomicU64::new(0));
    let port = receiver(recv_cpu.clone());
    let endpoint = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rss0 = status_kib("VmRSS:");
    rt.block_on(async move {
        let cfg = OtlpConfig::from_env_and_flags(
            |k| std::env::var(k).ok(),
            Some(&endpoint),
            Some("http/protobuf"),
        )
        .expect("config")
        .expect("export on");
        let mut table = ProcTable::default();
        let c0 = cpu_ns(libc::RUSAGE_SELF);
        let t0 = Instant::now();
        let mut otlp = Otlp::start(&cfg, 0, None).expect("start");
        let analysis = ExecAnalysis {
            analysed: true,
            toolchain: true,
            ..Default::default()
        };
        for i in 0..n {
            let pid = 1000 + (i % 30_000);
            let e = Arc::new(exec(pid, 1, 1_000_000 + i as u64 * 1000));
            table.on_exec(e.clone());
            let o = Output::Exec {
                exec: e,
                analysis: Box::new(analysis.clone()),
            };
            otlp.observe(&o, &table);
            let x = Exit {
                tgid: pid,
                ktime_ns: 1_000_500 + i as u64 * 1000,
                raw_code: 0,
            };
            otlp.observe(
                &Output::Exit {
                    exit: x.clone(),
                    name: "go".into(),
                    duration_ns: Some(500),
                    analysed: true,
                },
                &table,
            );
            table.on_exit(&x);
            // ~20k spans/s offered, like a busy build (batches fill as in life).
            if i % 200 == 199 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let hwm = status_kib("VmHWM:");
        let stats = otlp.shutdown(Duration::from_secs(30)).await;
        let cpu = (cpu_ns(libc::RUSAGE_SELF) - c0).saturating_sub(recv_cpu.load(Ordering::Relaxed));
        let exported = stats["spans_exported"].as_u64().unwrap_or(0);
        println!(
            "{{\"spans\":{n},\"exported\":{exported},\"cpu_ms\":{:.1},\"cpu_us_per_span\":{:.2},\"rss_before_kib\":{rss0},\"peak_rss_kib\":{hwm},\"wall_s\":{:.2}}}",
            cpu as f64 / 1e6,
            cpu as f64 / 1e3 / exported.max(1) as f64,
            t0.elapsed().as_secs_f64()
        );
    });
}
