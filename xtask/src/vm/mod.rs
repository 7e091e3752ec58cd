//! `cargo xtask vm --kernel debian-6.1 -- CMD…`: boot another kernel in qemu
//! and run CMD as root inside it, on this machine's own filesystem.
//!
//! The guest is a kernel and a tiny initramfs (busybox, the 9p and overlay
//! modules of that kernel, an init script). Init mounts the host's `/` over
//! 9p read-only, lays a tmpfs overlay on it (so the guest can write without
//! touching the host), switches into it and runs CMD in this directory, the
//! way virtme-ng does: the guest sees the same toolchains, Go, Python and
//! this checkout's build as the host, and only the kernel differs.
//!
//! Emulated (TCG), not KVM: this machine kind's nested KVM fails inside the
//! guest kernel (see docs/kernels.md). qemu's TCG runs the BPF verifier and
//! JIT about 100× slower than the host, so loading the agent takes minutes.

mod cpio;
mod doc;
pub mod kernel;
pub mod smoke;
pub mod suite;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// What `run` needs.
pub struct Options {
    pub kernel: String,
    /// Hide `/sys/kernel/btf/vmlinux` from the command (an empty tmpfs over
    /// `/sys/kernel/btf`): what a kernel built without BTF shows the agent.
    pub no_btf: bool,
    pub timeout: Duration,
    pub cmd: Vec<String>,
    /// Guest memory, MiB.
    pub memory_mib: u32,
}

/// The guest prints this, then its command's exit code, as its last line.
const EXIT_MARK: &str = "xtask-vm: exit=";

/// Modules the init script loads (with their dependencies, in order).
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "veth",
    // The test network lab's rules (tests/src/netlab.rs). libcrc32c, which
    // nf_tables needs, asks for the crc32c algorithm when it loads (a soft
    // dependency, not in `depends=`): its module comes first.
    "crc32c_generic",
    "nf_tables",
    "nft_reject_inet",
    "nft_quota",
];

pub(crate) fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn cache_dir() -> PathBuf {
    crate::toolchain::tools_dir().join("vm")
}

/// POSIX shell single-quoting.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Stage one, busybox in the initramfs: modules, the host's root, switch.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /mod/*.ko; do insmod "$m" 2>&1 || echo "xtask-vm: insmod $m failed"; done
die() { echo "xtask-vm: $*"; echo "xtask-vm: exit=125"; echo o > /proc/sysrq-trigger; sleep 10; }
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576,cache=loose,ro host /host || die "9p mount failed"
mount -t tmpfs -o mode=0755 ovl /ovl
mkdir -p /ovl/up /ovl/work
mount -t overlay -o lowerdir=/host,upperdir=/ovl/up,workdir=/ovl/work root /newroot || die "overlay mount failed"
for d in proc sys dev run tmp; do mkdir -p /newroot/$d; done
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mount -t tmpfs -o mode=0755 run /newroot/run
mount -t tmpfs -o mode=1777 tmp /newroot/tmp
mkdir -p /newroot/run/xtask-vm
cp /stage2 /newroot/run/xtask-vm/stage2
exec switch_root /newroot /bin/sh /run/xtask-vm/stage2
"#;

/// Stage two, in the host's userland on the guest kernel: the mounts an
/// agent expects on a normal system, then the command.
fn stage2(opts: &Options, dir: &Path) -> String {
    let cmd = opts
        .cmd
        .iter()
        .map(|a| quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    let hide_btf = if opts.no_btf {
        "mount -t tmpfs -o mode=0555 nobtf /sys/kernel/btf\n"
    } else {
        ""
    };
    format!(
        r#"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8 NO_COLOR=1
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs shm /dev/shm
ip link set lo up
hostname xtask-vm
{hide_btf}# A checkout under /tmp (or /run) is hidden by the guest's fresh one:
# bind the host's copy (through the overlay, without submounts) back.
if [ ! -d {dir} ]; then
  mkdir -p /run/xtask-vm/root && mount --bind / /run/xtask-vm/root
  mkdir -p {dir} && mount --bind /run/xtask-vm/root{dir} {dir}
fi
echo "xtask-vm: $(uname -r) up in $(cut -d' ' -f1 /proc/uptime) s"
cd {dir}
{cmd}
echo "{EXIT_MARK}$?"
echo o > /proc/sysrq-trigger
sleep 10
"#,
        dir = quote(&dir.to_string_lossy()),
    )
}

fn initramfs(opts: &Options, modules: &[PathBuf], dir: &Path, out: &Path) -> Result<()> {
    let mut w = cpio::Writer::new(std::fs::File::create(out)?);
    for d in ["bin", "dev", "proc", "sys", "host", "ovl", "newroot", "mod"] {
        w.dir(d)?;
    }
    // The kernel opens it for init's stdio before /init runs.
    w.char_dev("dev/console", 5, 1)?;
    w.file(
        "bin/busybox",
        0o755,
        &std::fs::read("/bin/busybox").context("busybox-static is not installed")?,
    )?;
    w.file("init", 0o755, INIT.as_bytes())?;
    w.file("stage2", 0o755, stage2(opts, dir).as_bytes())?;
    for (i, m) in modules.iter().enumerate() {
        let name = m.file_name().and_then(|n| n.to_str()).unwrap_or("m.ko");
        let name = name.strip_suffix(".xz").unwrap_or(name);
        w.file(
            &format!("mod/{i:02}-{name}"),
            0o644,
            &kernel::read_module(m)?,
        )?;
    }
    w.finish()?;
    Ok(())
}

/// Install what the VM needs from Debian's packages, once.
fn ensure_host_tools() -> Result<()> {
    let missing: Vec<&str> = [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("/bin/busybox", "busybox-static"),
        ("xz", "xz-utils"),
    ]
    .into_iter()
    .filter(|(bin, _)| {
        if bin.starts_with('/') {
            !Path::new(bin).exists()
        } else {
            Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        }
    })
    .map(|(_, pkg)| pkg)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!("install {} (apt-get install)", missing.join(" "));
    }
    eprintln!("xtask vm: apt-get install {}", missing.join(" "));
    run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The result of one boot.
pub struct Outcome {
    pub code: i32,
    pub release: String,
    /// The Debian package version.
    pub version: String,
    pub boot_to_exit: Duration,
}

/// Boot, run, power off. The guest's console streams to `sink` line by line.
pub fn run(opts: &Options, sink: &mut dyn FnMut(&str)) -> Result<Outcome> {
    if !crate::is_root() {
        bail!("cargo xtask vm runs as root (the guest shares the host's / read-only through qemu)");
    }
    ensure_host_tools()?;
    let spec = kernel::spec(&opts.kernel)?;
    let k = kernel::fetch(spec, &cache_dir())?;
    let modules = kernel::closure(&k.modules, MODULES)?;
    let dir = std::env::current_dir()?;
    let initrd = cache_dir().join(format!(
        "initramfs-{}-{}.cpio",
        k.release,
        std::process::id()
    ));
    initramfs(opts, &modules, &dir, &initrd)?;
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        // One host thread for both vCPUs: under multi-threaded TCG the 6.1
        // guest twice locked up (a vCPU stuck 48 s at the static-branch site
        // in syscall_trace_enter while the agent attached syscall
        // tracepoints, i.e. during cross-CPU text patching), in 2 of 7 CI
        // runs and never on real hardware. The suite takes 668 s this way
        // instead of 451 s.
        .args(["-accel", "tcg,thread=single", "-cpu", "max", "-smp", "2"])
        .args(["-m", &opts.memory_mib.to_string()])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            // A locked-up guest panics (and, with -no-reboot, ends qemu) in
            // seconds instead of waiting out the timeout; loglevel 5 lets
            // the lockup's stack trace reach the console.
            "console=ttyS0 panic=-1 softlockup_panic=1 quiet loglevel=5 rdinit=/init",
            "-fsdev",
            "local,id=host,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=host,mount_tag=host",
            "-nic",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let pid = child.id();
    let timeout = opts.timeout;
    // A watchdog: a hung guest is killed, not waited for.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(timeout).is_err() {
            // SAFETY: kill on a pid of our own child; harmless if it is gone.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            return true;
        }
        false
    });
    let mut code = None;
    // The guest kernel's first complaint, named in the error if it stops.
    let mut oops: Option<String> = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).split(b'\n') {
            let line = String::from_utf8_lossy(&line?)
                .trim_end_matches('\r')
                .to_string();
            if let Some(c) = line.strip_prefix(EXIT_MARK) {
                code = c.trim().parse().ok();
            }
            if oops.is_none() && is_kernel_complaint(&line) {
                oops = Some(line.clone());
            }
            sink(&line);
        }
    }
    let _ = child.wait();
    let _ = tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let _ = std::fs::remove_file(&initrd);
    let boot_to_exit = started.elapsed();
    match code {
        Some(code) => Ok(Outcome {
            code,
            release: k.release,
            version: k.version,
            boot_to_exit,
        }),
        None if timed_out => bail!("the guest did not finish in {} s", timeout.as_secs()),
        None => match oops {
            Some(o) => bail!("the guest kernel stopped: {o} (its trace is above)"),
            None => bail!("the guest stopped before its command finished (see its console above)"),
        },
    }
}

/// A console line where the guest kernel reports a lockup, a BUG or a panic.
fn is_kernel_complaint(line: &str) -> bool {
    [
        "soft lockup",
        "hard LOCKUP",
        "BUG:",
        "Kernel panic",
        "rcu_sched self-detected stall",
    ]
    .iter()
    .any(|m| line.contains(m))
}

/// `cargo xtask vm`: print the guest's console, exit with the command's code.
pub fn main(opts: &Options) -> Result<()> {
    let mut stdout = std::io::stdout();
    let o = run(opts, &mut |l| {
        let _ = writeln!(stdout, "{l}");
    })?;
    eprintln!(
        "xtask vm: {} ({} {}) exited {} after {:.0} s",
        opts.kernel,
        o.release,
        o.version,
        o.code,
        o.boot_to_exit.as_secs_f64()
    );
    std::process::exit(o.code);
}
