//! `--output FILE`, opened as the user the agent was elevated for.

/// Send every record to `path` instead of stdout (`--output`), so a traced
/// command's own output never mixes with the agent's.
///
/// Opened as `as_user` when the agent was elevated for someone (their
/// filesystem uid, gid and groups decide, so `sudo agent --output /etc/x`
/// cannot write where the user could not, and a file it creates is theirs),
/// never through a symbolic link planted in its place (`O_NOFOLLOW`).
/// Must run before any other thread exists (fsuid and groups are per thread
/// and per process).
pub fn open(
    path: &std::path::Path,
    as_user: Option<&crate::process::invoker::Invoker>,
) -> std::io::Result<()> {
    let f = open_with(path, as_user, false)?;
    crate::sink::output::set_output_file(f);
    Ok(())
}

/// A file opened as `as_user` as `--output` is: appended to (the CI's
/// summary and outputs files), or replaced (`--junit`).
pub fn open_as(
    path: &std::path::Path,
    as_user: Option<&crate::process::invoker::Invoker>,
    replace: bool,
) -> std::io::Result<std::fs::File> {
    open_with(path, as_user, replace)
}

fn open_with(
    path: &std::path::Path,
    as_user: Option<&crate::process::invoker::Invoker>,
    replace: bool,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(!replace)
            .write(true)
            .truncate(replace)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    std::io::Error::other(format!(
                        "{} is a symbolic link: refused (give the file itself)",
                        path.display()
                    ))
                } else {
                    e
                }
            })
    };
    let root = rustix::process::geteuid().as_raw() == 0;
    let Some(u) = as_user.filter(|u| root && u.uid != 0) else {
        return open();
    };
    let saved = super::traced::current_groups();
    let groups: Vec<libc::gid_t> = u.groups.clone();
    // SAFETY: plain credential syscalls on this (only) thread, each undone
    // below; the pointer and length describe `groups`.
    unsafe {
        libc::setgroups(groups.len(), groups.as_ptr());
        libc::setfsgid(u.gid);
        libc::setfsuid(u.uid);
    }
    let r = open();
    // SAFETY: as above: back to root's own filesystem ids and groups.
    unsafe {
        libc::setfsuid(0);
        libc::setfsgid(0);
        libc::setgroups(saved.len(), saved.as_ptr());
    }
    r
}
