//! Opening and reading what users control: non-blocking, regular files
//! only, bounded; Go symbol offsets; a process's executable.

use super::*;

/// Open `path` for reading the way a root agent must open what users
/// control: non-blocking (a FIFO must not stall the event loop), no
/// controlling terminal, close-on-exec, and then only if it is a regular
/// file (not a FIFO, socket or device such as /dev/zero). Returns the file
/// and its size.
pub fn open_regular(path: &Path) -> Option<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(READ_FLAGS)
        .open(path)
        .ok()?;
    regular(f)
}

/// How a file a user controls is opened for reading (see [`open_regular`]).
pub const READ_FLAGS: i32 = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;

/// `openat2` is missing or refused here: the walk serves instead.
pub static NO_OPENAT2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `f` and its size if it is a regular file.
pub fn regular(f: std::fs::File) -> Option<(std::fs::File, u64)> {
    let m = f.metadata().ok()?;
    m.file_type().is_file().then_some((f, m.len()))
}

/// At most `max` bytes of the regular file at `path` (see [`open_regular`]).
/// Answered by a file worker (see [`super::guard`]).
pub fn read_capped(path: &Path, max: usize) -> Option<Vec<u8>> {
    FsView::host().read_head(path.to_str()?, max)
}

/// The regular file at host path `path`, opened by a file worker (see
/// [`open_regular`]), and its attributes (`fuse` set for a file a FUSE
/// server serves).
pub fn open_file(path: &Path) -> Option<(std::fs::File, Meta)> {
    let p = path.to_str()?;
    match FsView::host().ask(p, Job::Open(p.into()), None)? {
        (Answer::Opened(m), _, Some(fd)) => Some((std::fs::File::from(fd), m)),
        _ => None,
    }
}

/// Where Go's function table puts `symbol` in the open file `f` (found at
/// `path`), read by a file worker: headers and `.gopclntab` only.
pub fn pclntab_offset(f: &std::fs::File, path: &Path, symbol: &str) -> Option<u64> {
    use std::os::fd::AsFd as _;
    let key = path.to_string_lossy();
    match FsView::host()
        .ask(&key, Job::PclntabOffset(symbol.into()), Some(f.as_fd()))?
        .0
    {
        Answer::Offset(o) => Some(o),
        _ => None,
    }
}

/// The file process `pid` runs (`exe` the path its exec named), by a path
/// that outlives the process when it can (see [`exe_file_now`]); looked at
/// by a file worker.
pub fn exe_file(pid: u32, exe: &str, proc_root: &Path) -> Option<PathBuf> {
    let job = Job::ExeFile {
        pid,
        exe: exe.into(),
        proc_root: proc_root.to_string_lossy().into_owned(),
    };
    match FsView::host().ask(exe, job, None)?.0 {
        Answer::Path(p) => Some(PathBuf::from(p)),
        _ => None,
    }
}

/// The host path when it is absolute and a file (a relative name such as
/// `./client` is relative to the process's directory, not the agent's),
/// else the target of `/proc/<pid>/exe` when that path names the same file
/// here (a host process), else `/proc/<pid>/exe` itself (a container's
/// program, while the process lives).
pub fn exe_file_now(pid: u32, exe: &str, proc_root: &Path) -> String {
    let host = Path::new(exe);
    if host.is_absolute() && host.is_file() {
        return exe.to_string();
    }
    let link = proc_root.join(pid.to_string()).join("exe");
    match (std::fs::read_link(&link), std::fs::metadata(&link)) {
        (Ok(p), Ok(m))
            if p.is_absolute()
                && std::fs::metadata(&p)
                    .is_ok_and(|h| h.dev() == m.dev() && h.ino() == m.ino()) =>
        {
            p.to_string_lossy().into_owned()
        }
        _ => link.to_string_lossy().into_owned(),
    }
}

/// Whether `f` is served by a FUSE server (any user may run one).
pub fn on_fuse(f: &std::fs::File) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    rustix::fs::fstatfs(f).is_ok_and(|s| s.f_type == FUSE_SUPER_MAGIC)
}

/// At most `max` bytes of `f` (of `size` bytes).
pub fn read_file_capped(f: &std::fs::File, size: u64, max: usize) -> Option<Vec<u8>> {
    use std::io::Read as _;
    // Room for what is there up front: one read for a small head (an empty
    // Vec starts with 32-byte probe reads and grows by doubling).
    let mut buf = Vec::with_capacity(max.min(size as usize).min(64 << 20));
    f.take(max as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}
