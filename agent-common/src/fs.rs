//! Failed file operations of tracked (toolchain) processes.

use crate::EventHeader;

/// Bytes of the path kept.
pub const FS_PATH_LEN: usize = 256;

/// `FsEvent::op`.
pub const FS_OP_OPEN: u32 = 1;
pub const FS_OP_MKDIR: u32 = 2;
pub const FS_OP_UNLINK: u32 = 3;
pub const FS_OP_RENAME: u32 = 4;
pub const FS_OP_CREAT: u32 = 5;

/// `AT_FDCWD`: the path is relative to the working directory (or absolute).
pub const FS_AT_FDCWD: i32 = -100;

/// In-flight operation between sys_enter and sys_exit, by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FsInflight {
    /// User pointer to the path.
    pub path: u64,
    pub op: u32,
    /// `open` flags (O_WRONLY/O_RDWR/O_CREAT tell a write).
    pub flags: u32,
    /// Directory fd the path is relative to (`FS_AT_FDCWD` for cwd).
    pub dfd: i32,
    pub _pad: u32,
}

/// A failed file operation (EACCES, EPERM or EROFS).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FsEvent {
    pub hdr: EventHeader,
    pub uid: u32,
    pub gid: u32,
    pub op: u32,
    pub flags: u32,
    pub dfd: i32,
    /// Positive errno.
    pub errno: i32,
    pub path: [u8; FS_PATH_LEN],
}

const _: () = assert!(core::mem::size_of::<FsEvent>() == 24 + 4 * 6 + FS_PATH_LEN);
