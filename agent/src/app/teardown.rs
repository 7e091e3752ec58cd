//! Exiting without waiting for the kernel to detach the probes.
//!
//! Releasing a perf-event tracepoint link waits for an RCU grace period in
//! the kernel, one link after another (~45 ms each here, ~1.2 s for the
//! agent's 25), and a uprobe's release waits too. A process that simply
//! exits pays that in its exit path, so `agent trace -- cmd` returned its
//! command's exit code, and Ctrl-C gave the prompt back, over a second late.
//!
//! Instead the binary leaves its collector alone ([`leave`]) and [`exit`]
//! forks a child that shares every file descriptor, then exits at once. The
//! child waits until its parent is gone (end of file on a pipe only the
//! parent wrote to), then exits too: its references are now the last ones,
//! so the kernel detaches the probes in the child's exit path while the
//! caller has already moved on. The child closes stdin/stdout/stderr first,
//! so a pipe reading the agent's output sees its end when the parent exits.
//!
//! Owns: process exit of the `agent` binary. Must not: be used by a process
//! that goes on running (a left collector's probes stay attached until exit).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::bpf::Collector;

static LEFT: AtomicBool = AtomicBool::new(false);

/// Keep `collector`'s probes attached until the process exits (see the
/// module documentation); the process must then end through [`exit`].
pub fn leave(collector: Collector) {
    LEFT.store(true, Ordering::SeqCst);
    std::mem::forget(collector);
}

/// Flush output and exit with `code`, handing the release of any left probes
/// to a child when there are some; exits slowly (in this process) if no
/// child can be made.
pub fn exit(code: i32) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    if LEFT.load(Ordering::SeqCst) {
        hand_off();
    }
    std::process::exit(code)
}

fn hand_off() {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        tracing::debug!("pipe2 failed: detaching in this process");
        return;
    }
    let [rd, wr] = fds;
    // SAFETY: the child below only makes async-signal-safe calls (close,
    // read, _exit), as required after fork in a multi-threaded process.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: async-signal-safe calls on descriptors this process owns.
            unsafe {
                libc::close(wr);
                for fd in 0..3 {
                    libc::close(fd);
                }
                let mut b = 0u8;
                // Blocks until the parent, the only other writer, has exited
                // (0) or a signal interrupts it (-1, EINTR: wait again).
                while libc::read(rd, (&raw mut b).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::_exit(0)
            }
        }
        -1 => {
            tracing::debug!("fork failed: detaching in this process");
            // SAFETY: closing our own descriptors.
            unsafe {
                libc::close(rd);
                libc::close(wr);
            }
        }
        // The write end stays open until this process exits.
        // SAFETY: closing our own descriptor.
        _ => unsafe {
            libc::close(rd);
        },
    }
}
