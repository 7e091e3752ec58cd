//! The workloads: what one operation of each is, and the servers they talk to.

#[allow(
    clippy::wildcard_imports,
    reason = "one module split in parts that share its items"
)]
use super::*;

/// Debian's Go, by path (a version manager's `go` first on PATH would add
/// its own start-up).
pub(super) const GO: &str = "/usr/lib/go-1.19/bin/go";

/// A loopback listener with a deep accept queue: std's 128 overflows under
/// load and each dropped SYN then costs a 1 s retransmit.
pub(super) fn listener() -> Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// `openssl s_server` on loopback with a fresh self-signed certificate, for
/// the TLS workloads: one port answering handshakes, one serving a 256 MiB
/// file. Killed on drop.
pub(super) struct TlsServers {
    pub(super) children: Vec<Child>,
    pub(super) handshake_port: u16,
    pub(super) bulk_port: u16,
}

pub(super) const TLS_BULK_BYTES: u64 = 256 << 20;

impl TlsServers {
    pub(super) fn start(dir: &Path) -> Result<Self> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let st = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("openssl req failed");
        }
        let big = dir.join("big");
        let f = std::fs::File::create(&big)?;
        f.set_len(TLS_BULK_BYTES)?;
        let (hp, bp) = (free_port()?, free_port()?);
        let mut children = Vec::new();
        for (port, mode) in [(hp, "-www"), (bp, "-WWW")] {
            children.push(
                Command::new("openssl")
                    .args(["s_server", "-quiet", mode, "-accept", &port.to_string()])
                    .arg("-cert")
                    .arg(&cert)
                    .arg("-key")
                    .arg(&key)
                    .current_dir(dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("openssl s_server")?,
            );
        }
        for p in [hp, bp] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                if Instant::now() > deadline {
                    bail!("openssl s_server did not listen on {p}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Self {
            children,
            handshake_port: hp,
            bulk_port: bp,
        })
    }
}

impl Drop for TlsServers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) static TLS_PORTS: std::sync::OnceLock<(u16, u16)> = std::sync::OnceLock::new();

/// The real build's GOCACHE (in the bench's directory, warmed first).
pub(super) static GO_CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The exec workload's binary: a static `true` built here with gcc (no
/// dynamic loader in the measurement), else /bin/true.
pub(super) static TRUE_BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The exec workload's binary (see [`TRUE_BIN`]).
pub(super) fn true_bin() -> &'static Path {
    TRUE_BIN.get().map_or(Path::new("/bin/true"), |p| p)
}

pub(super) fn build_static_true(dir: &Path) -> PathBuf {
    let src = dir.join("true.c");
    let bin = dir.join("true-static");
    let built = std::fs::write(&src, "int main(void) { return 0; }\n").is_ok()
        && Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
    if built {
        bin
    } else {
        eprintln!("bench: gcc -static failed; the exec workload runs /bin/true (dynamic)");
        PathBuf::from("/bin/true")
    }
}

/// How long each measured run lasts: long enough that the short bursts of
/// other activity on a small VM average out, equal for every mode.
pub(super) const RUN: Duration = Duration::from_secs(3);

/// One run of a workload: operations done (bytes for the bulk transfer) and
/// the seconds they took.
#[derive(Clone, Copy, Debug)]
pub(super) struct Done {
    pub(super) ops: u64,
    pub(super) secs: f64,
}

impl Done {
    /// Ops/s, or MB/s for the bulk transfer.
    pub(super) fn rate(self, w: Workload) -> f64 {
        match w {
            Workload::TlsBulk => self.ops as f64 / 1e6 / self.secs,
            _ => self.ops as f64 / self.secs,
        }
    }
    /// Operations as the per-operation figures count them (one bulk
    /// transfer is TLS_BULK_BYTES).
    pub(super) fn count(self, w: Workload) -> f64 {
        match w {
            Workload::TlsBulk => self.ops as f64 / TLS_BULK_BYTES as f64,
            _ => self.ops as f64,
        }
    }
}

/// One operation of the workload (everything but the Python TLS loop, which
/// runs its own loop in one process).
pub(super) fn one_op(w: Workload, addr: Option<std::net::SocketAddr>) -> Result<u64> {
    match w {
        Workload::ExecTrue => {
            let st = Command::new(true_bin()).status()?;
            if !st.success() {
                bail!("{} failed", true_bin().display());
            }
            Ok(1)
        }
        Workload::GoVersion => {
            let st = Command::new(GO)
                .arg("version")
                .stdout(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("go version failed");
            }
            Ok(1)
        }
        Workload::GoBuild => {
            let cache = GO_CACHE.get().context("no GOCACHE")?;
            let st = Command::new(GO)
                .args(["build", "-a", "fmt"])
                .env("GOCACHE", cache)
                .env("GOFLAGS", "")
                .stdout(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("go build -a fmt failed");
            }
            Ok(1)
        }
        Workload::TlsBulk => {
            let (_, p) = *TLS_PORTS.get().context("no TLS server")?;
            let st = Command::new("curl")
                .args(["-sSk", "-o", "/dev/null"])
                .arg(format!("https://127.0.0.1:{p}/big"))
                .status()?;
            if !st.success() {
                bail!("TLS bulk transfer failed");
            }
            Ok(TLS_BULK_BYTES)
        }
        Workload::TcpConnect => {
            let s = TcpStream::connect(addr.context("no listener")?)?;
            // Close with a reset: no TIME_WAIT pile-up across thousands of runs.
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
            drop(s);
            Ok(1)
        }
        Workload::TlsHandshake => bail!("the TLS handshake loop runs in Python"),
    }
}

/// Handshakes from one Python process until the deadline; prints how many.
pub(super) fn tls_handshake_loop(dur: Duration) -> Result<u64> {
    let (p, _) = *TLS_PORTS.get().context("no TLS server")?;
    let code = format!(
        "import socket,ssl,time\nctx=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\nctx.check_hostname=False\nctx.verify_mode=ssl.CERT_NONE\nend=time.monotonic()+{}\nn=0\nwhile time.monotonic()<end:\n s=socket.create_connection(('127.0.0.1',{p}))\n t=ctx.wrap_socket(s)\n t.close()\n n+=1\nprint(n)\n",
        dur.as_secs_f64()
    );
    // The distribution's interpreter by path: a version-manager shim found
    // first on PATH (pyenv's is a shell script) would add its own start-up.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| !p.starts_with('/') || Path::new(p).exists())
        .unwrap_or("python3");
    let out = Command::new(python).args(["-c", &code]).output()?;
    if !out.status.success() {
        bail!(
            "TLS handshake loop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("TLS handshake loop printed no count")
}

/// Run the workload on `threads` threads for `dur` (each thread finishes
/// the operation it is in).
pub(super) fn run_workload(w: Workload, threads: u64, dur: Duration) -> Result<Done> {
    let listener = match w {
        Workload::TcpConnect => Some(listener()?),
        _ => None,
    };
    let addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acceptor = listener.map(|l| {
        let done = done.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
            }
        })
    });
    let t = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || -> Result<u64> {
                if let Workload::TlsHandshake = w {
                    return tls_handshake_loop(dur);
                }
                let mut n = 0;
                while t.elapsed() < dur {
                    n += one_op(w, addr)?;
                }
                Ok(n)
            })
        })
        .collect();
    let mut ops = 0;
    for w in workers {
        ops += w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
    }
    let secs = t.elapsed().as_secs_f64();
    if let (Some(a), Some(addr)) = (acceptor, addr) {
        // Wake the acceptor once more so that it sees the flag.
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = TcpStream::connect(addr);
        let _ = a.join();
    }
    Ok(Done { ops, secs })
}

/// CPU time the whole machine spent (user, system, interrupts; not idle,
/// not steal), in ns, from /proc/stat.
pub(super) fn machine_busy_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?;
    Some(busy * 10_000_000) // USER_HZ = 100
}
