//! The errors of loading, probing and attaching, typed: callers decide by
//! kind and errno, never by matching message text.

/// Errors loading the object or using its maps.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "cannot load BPF programs ({0}): run as root (sudo agent) or grant CAP_BPF and \
         CAP_PERFMON; `agent check` shows what is missing"
    )]
    NotPermitted(String),
    #[error("loading the BPF object: {0}")]
    Object(String),
    #[error("map {0} missing from the BPF object")]
    NoMap(&'static str),
    #[error("map {name}: {msg}")]
    Map { name: &'static str, msg: String },
    #[error("no signal can be collected on this kernel: {0}")]
    NothingAttached(String),
}

/// Why one program could not be loaded or attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("program {0} missing from the object")]
    Missing(String),
    #[error("program {name} is not a {want} program")]
    WrongType { name: String, want: &'static str },
    #[error("tracefs not mounted")]
    NoTracefs,
    #[error("no cgroup v2 mount")]
    NoCgroup2,
    #[error("open {path}: {msg}")]
    Open { path: String, msg: String },
    #[error("kernel BTF: {0}")]
    Btf(String),
    /// The kernel (or aya) refused; `errno` when one was given.
    #[error("{msg}")]
    Kernel { msg: String, errno: Option<i32> },
}

impl HookError {
    /// The kernel said EPERM (or EACCES): a privilege is missing.
    pub fn not_permitted(&self) -> bool {
        matches!(
            self,
            HookError::Kernel {
                errno: Some(libc::EPERM | libc::EACCES),
                ..
            }
        )
    }

    /// From an aya error: its message with its causes on one line, a
    /// verifier log cut to its last lines (the reason is at the end; the
    /// whole log is at debug level), and the errno found among its causes.
    pub fn kernel(e: impl std::error::Error + 'static) -> Self {
        HookError::Kernel {
            errno: errno_of(&e),
            msg: one_line(&e),
        }
    }
}

/// The first OS error code in `e`'s chain of causes.
pub fn errno_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(io) = x.downcast_ref::<std::io::Error>()
            && let Some(n) = io.raw_os_error()
        {
            return Some(n);
        }
        cur = x.source();
    }
    None
}

/// An error and its causes on one line; a verifier log is cut to its last
/// lines, the full log is at debug level.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut chain = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        chain.push(s.to_string());
        cur = s.source();
    }
    let full = if chain.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {}", chain.join(": "))
    };
    match full.split_once("Verifier output:") {
        Some((head, log)) => {
            tracing::debug!(verifier_log = log, "program rejected");
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|l| !l.trim().is_empty())
                .take(6)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{}verifier: {}", head, tail.join(" | "))
        }
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_is_read_from_the_cause_not_the_text() {
        let e = std::io::Error::from_raw_os_error(libc::EPERM);
        let h = HookError::kernel(e);
        assert!(h.not_permitted(), "{h:?}");
        let other = HookError::kernel(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert!(!other.not_permitted());
        // Text alone decides nothing.
        let text = HookError::Kernel {
            msg: "Operation not permitted".into(),
            errno: None,
        };
        assert!(!text.not_permitted());
    }
}
