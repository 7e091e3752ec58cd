//! Exec and exit events.
//!
//! An [`ExecEvent`] is variable-length on the wire: the fixed part
//! ([`ExecFixed`]) followed by `argv_len` bytes of NUL-separated argv and
//! `env_len` bytes of NUL-separated `NAME=value` pairs (allow-listed only).

use crate::EventHeader;

/// Bytes kept of the path the caller passed to `execve`.
pub const FILENAME_LEN: usize = 256;
/// Bytes kept of the path the kernel actually executed (`bprm->filename`).
pub const EXE_LEN: usize = 256;
/// Maximum argv bytes kept (all args, NUL separated).
pub const ARGV_MAX: usize = 2048;
/// Maximum environment bytes kept (allow-listed pairs, NUL separated).
pub const ENV_MAX: usize = 2048;
/// Bytes of one argv string / env pair read at most.
pub const ARG_LEN: usize = 512;
/// argv entries read at most.
pub const MAX_ARGS: u32 = 64;
/// Environment entries inspected at most (allow-listed or not).
pub const MAX_ENV_SCAN: u32 = 256;
/// Bytes of each environment entry compared with the allow-list: a name of up
/// to `ENV_KEY_LEN - 1` bytes plus its `=`. Longer names can't be allow-listed.
pub const ENV_KEY_LEN: usize = 32;
/// Words of the env-name prefix bitmap (65536 bits: first two bytes of `NAME=`).
pub const ENV_PREFIX_WORDS: u32 = 1024;

/// Bit index in the prefix bitmap of an environment entry starting with `b0 b1`.
pub const fn env_prefix_index(b0: u8, b1: u8) -> u32 {
    ((b0 as u32) << 8) | b1 as u32
}

/// Size of the variable data area: argv then env.
pub const DATA_LEN: usize = ARGV_MAX + ENV_MAX;

/// Flag: argv was cut (more than [`MAX_ARGS`] entries or [`ARGV_MAX`] bytes, or one arg > [`ARG_LEN`]).
pub const EXEC_F_ARGV_TRUNCATED: u32 = 1 << 0;
/// Flag: env was cut (more than [`MAX_ENV_SCAN`] entries scanned or [`ENV_MAX`] bytes, or a value > [`ARG_LEN`]).
pub const EXEC_F_ENV_TRUNCATED: u32 = 1 << 1;
/// Flag: the requested filename was longer than [`FILENAME_LEN`].
pub const EXEC_F_FILENAME_TRUNCATED: u32 = 1 << 2;
/// Flag: the exec was seen completing but its `sys_enter` was not: the caller's name and the start time are unknown.
pub const EXEC_F_NO_ENTER: u32 = 1 << 3;
/// Flag: the call was `execveat` rather than `execve`.
pub const EXEC_F_EXECVEAT: u32 = 1 << 4;
/// Flag: reading argv from user memory failed part-way.
pub const EXEC_F_ARGV_FAULT: u32 = 1 << 5;
/// Flag: a successful exec whose `filename` equals `exe` (the kernel's
/// `bprm->filename` is the caller's string): the `filename` field carries the
/// caller's `argv[0]` instead (up to [`ARGV0_LEN`] bytes), because a `#!`
/// script's new argv starts with its interpreter.
pub const EXEC_F_FILENAME_IS_EXE: u32 = 1 << 6;
/// Flag: the new program's environment could not be read (unexpected stack
/// layout or a fault): `env` is empty.
pub const EXEC_F_ENV_FAULT: u32 = 1 << 7;
/// Flag: a successful exec whose environment was not read, by policy (one
/// outside toolchain trees, or a compiler: see [`TOOL_TRACK`], [`TOOL_QUIET`]):
/// `env` is empty because nobody asked.
pub const EXEC_F_ENV_SKIPPED: u32 = 1 << 8;

/// `TOOLS` map value: a toolchain command. Its exec reads the environment,
/// starts a tracked tree (whose every exec reads it too) and wakes the reader.
pub const TOOL_TRACK: u8 = 1;
/// `TOOLS` map value: a network client whose findings cite its environment
/// (proxies, CA files, index URLs): the environment is read, nothing tracked.
pub const TOOL_ENV: u8 = 2;
/// `TOOLS` map value: a compiler, assembler or linker a toolchain runs by
/// the hundred (`compile`, `asm`, `link`, `gcc`, …). Its exec neither wakes
/// the reader (the wakeup, a self-IPI of ~20 µs on a VM, is for programs that
/// may make a TLS handshake before the next drain; these make none) nor
/// reads the environment (~7 µs; it is the parent's, where userspace looks).
pub const TOOL_QUIET: u8 = 3;

/// Bytes of a new program's environment strings copied in one read at
/// `sched_process_exec` (power of two); entries beyond it are left out and
/// the event is flagged [`EXEC_F_ENV_TRUNCATED`].
pub const ENV_BLOCK: usize = 16384;

/// What `sys_enter_execve` keeps until the exec completes: the caller's
/// pointers (read only if the exec fails, while they are still valid), its
/// name and the start time. A successful exec's argv and environment are read
/// from the new program's stack, where the kernel laid them out contiguously.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecStart {
    /// `bpf_ktime_get_boot_ns()` at `sys_enter`.
    pub enter_ns: u64,
    /// User pointers passed to the call.
    pub filename: u64,
    pub argv: u64,
    pub envp: u64,
    /// `EXEC_F_*` bits known at entry.
    pub flags: u32,
    /// Thread id that owns the slot (0: free).
    pub tid: u32,
    /// The caller's `comm`.
    pub comm: [u8; 16],
    /// The caller's `argv[0]`, NUL-terminated (cut at `ARGV0_LEN - 1` bytes).
    pub argv0: [u8; ARGV0_LEN],
}

/// Bytes of the caller's `argv[0]` kept at `sys_enter` (see [`ExecStart`]).
pub const ARGV0_LEN: usize = 64;

/// Slots of the exec-start table, indexed by `tid % EXEC_SLOTS` (power of two).
pub const EXEC_SLOTS: u32 = 16384;

impl ExecStart {
    /// A start record that knows nothing but `flags`.
    pub const fn empty(flags: u32) -> Self {
        Self {
            enter_ns: 0,
            filename: 0,
            argv: 0,
            envp: 0,
            flags,
            tid: 0,
            comm: [0; 16],
            argv0: [0; ARGV0_LEN],
        }
    }
}

const _: () = assert!(core::mem::size_of::<ExecStart>() == 120);
const _: () = assert!(EXEC_SLOTS.is_power_of_two());

/// Fixed part of an exec event.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecFixed {
    /// `hdr.tgid` is the process after exec; `hdr.pid` the thread that called exec.
    pub hdr: EventHeader,
    /// `bpf_ktime_get_boot_ns()` at `sys_enter_execve`.
    pub enter_ns: u64,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// 0 on success, `-errno` on failure.
    pub ret: i32,
    /// `EXEC_F_*` bits.
    pub flags: u32,
    /// Number of argv strings kept.
    pub argc: u32,
    /// Bytes of argv in the data area.
    pub argv_len: u32,
    /// Number of allow-listed env pairs kept.
    pub envc: u32,
    /// Bytes of env in the data area (after argv).
    pub env_len: u32,
    /// NUL-terminated path given to `execve` (as the caller wrote it).
    pub filename: [u8; FILENAME_LEN],
    /// NUL-terminated path the kernel executed (empty for failures).
    pub exe: [u8; EXE_LEN],
    /// Process name (`comm`) at the time of the call (the caller's name).
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<ExecFixed>() == 24 + 8 + 8 + 4 * 8 + 256 + 256 + 16);

/// Fixed part plus the variable data area, as built in the kernel.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    /// Fixed fields.
    pub fixed: ExecFixed,
    /// argv bytes then env bytes; only the used prefix goes on the wire.
    /// Twice [`DATA_LEN`] plus one read so variable-offset writes stay provably in bounds.
    pub data: [u8; DATA_LEN + ARG_LEN],
}

/// Process exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitEvent {
    /// Header; `pid == tgid` (only group leaders are reported).
    pub hdr: EventHeader,
    /// Raw `task->exit_code`: `(status << 8) | signal`.
    pub exit_code: u32,
    /// Explicit padding.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ExitEvent>() == 32);

/// Data of an allow-list LPM-trie key: `NAME=` then zero padding; the stored
/// prefix length covers `NAME=` exactly, so one longest-prefix lookup of an
/// entry's first bytes tells whether its name is allow-listed (no per-byte
/// branching in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnvKey {
    /// `NAME=` bytes, zero padded.
    pub name: [u8; ENV_KEY_LEN],
}

impl EnvKey {
    /// Key data and prefix length in bits for `name`; `None` if it is empty,
    /// longer than `ENV_KEY_LEN - 1`, or contains `=` or NUL.
    pub fn new(name: &[u8]) -> Option<(Self, u32)> {
        if name.is_empty() || name.len() >= ENV_KEY_LEN {
            return None;
        }
        let mut key = Self::default();
        let mut i = 0;
        while i < name.len() {
            if name[i] == b'=' || name[i] == 0 {
                return None;
            }
            key.name[i] = name[i];
            i += 1;
        }
        key.name[i] = b'=';
        Some((key, ((name.len() + 1) * 8) as u32))
    }
}

/// A new task: `hdr` is the parent (the caller of fork/clone).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ForkEvent {
    /// Parent's header (`pid`/`tgid` of the forking task).
    pub hdr: EventHeader,
    /// Thread id of the child (equals its tgid when it is a new process).
    pub child_pid: u32,
    /// Explicit padding.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ForkEvent>() == 32);
