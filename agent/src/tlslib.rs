//! Where the TLS-library uprobes go: every `libssl` on the machine that
//! processes load (the system's, a conda env's own, ones loaded later with
//! `dlopen`), and every Go program that runs, each attached once per file
//! (device, inode) whatever its path.
//!
//! Owns: finding targets (ldconfig cache, `/proc/*/maps`) and remembering
//! which are attached. Must not: interpret events (`wirediag` does).

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agent_common::{TLSLIB_GO_ALERT, TLSLIB_OSSL_HS_DONE, TLSLIB_OSSL_HS_RET, TLSLIB_OSSL_VERIFY};

/// The OpenSSL probes: (program, function) on every libssl.
/// `SSL_connect` and `SSL_accept` run the handshake through `SSL_do_handshake`
/// (OpenSSL 1.1 and 3.x), so probing it covers all three with fewer probes:
/// every probe costs a grace period when the agent detaches.
pub const OSSL_PROBES: &[(&str, &str)] = &[
    ("ossl_verify_result", "SSL_get_verify_result"),
    ("ossl_hs_enter", "SSL_do_handshake"),
    ("ossl_hs_exit", "SSL_do_handshake"),
];
/// The Go entry probe and the function it watches.
pub const GO_PROGRAM: &str = "go_send_alert";
pub const GO_SYMBOL: &str = "crypto/tls.(*Conn).sendAlertLocked";

/// `libssl.so*` paths in `ldconfig -p` output.
pub fn libssl_in_ldconfig(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split_once(" => ").map(|(_, p)| p.trim()))
        .filter(|p| is_libssl(p))
        .map(PathBuf::from)
        .collect()
}

/// `libssl.so*` paths mapped in one `/proc/<pid>/maps`.
pub fn libssl_in_maps(text: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && is_libssl(p))
        .map(PathBuf::from)
        .collect();
    v.dedup();
    v
}

fn is_libssl(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so"))
}

/// X509 verification error names (`X509_V_ERR_*`) that clients hit most.
pub fn x509_error_name(code: i64) -> String {
    match code {
        2 => "unable to get issuer certificate".into(),
        9 => "certificate is not yet valid".into(),
        10 => "certificate has expired".into(),
        18 => "self-signed certificate".into(),
        19 => "self-signed certificate in certificate chain".into(),
        20 => "unable to get local issuer certificate".into(),
        21 => "unable to verify the first certificate".into(),
        23 => "certificate revoked".into(),
        26 => "unsupported certificate purpose".into(),
        62 => "hostname mismatch".into(),
        64 => "IP address mismatch".into(),
        other => format!("X509 verify error {other}"),
    }
}

/// One thing a library said, for the finding's evidence.
pub fn describe(kind: u32, value: i64, aux: u64) -> Option<(&'static str, String)> {
    let ms = aux as f64 / 1e6;
    match kind {
        TLSLIB_OSSL_HS_DONE => Some(("openssl_handshake", format!("completed in {ms:.1} ms"))),
        TLSLIB_OSSL_HS_RET => Some((
            "openssl_handshake",
            format!("SSL_do_handshake returned {value} after {ms:.1} ms"),
        )),
        TLSLIB_OSSL_VERIFY => Some(("openssl_verify_result", x509_error_name(value))),
        TLSLIB_GO_ALERT => Some((
            "go_alert_sent",
            crate::tls::alert_name(value as u8).to_string(),
        )),
        _ => None,
    }
}

/// Files already probed, by (device, inode).
#[derive(Default)]
pub struct Targets {
    seen: HashSet<(u64, u64)>,
}

impl Targets {
    /// True the first time a file is offered (and it exists).
    pub fn first(&mut self, path: &Path) -> bool {
        match std::fs::metadata(path) {
            Ok(m) => self.seen.insert((m.dev(), m.ino())),
            Err(_) => false,
        }
    }

    /// Offer `path` again next time (its probe could not be attached).
    pub fn forget(&mut self, path: &Path) {
        if let Ok(m) = std::fs::metadata(path) {
            self.seen.remove(&(m.dev(), m.ino()));
        }
    }
}

/// Every libssl the machine's loader knows and every one mapped right now
/// (through `/proc/<pid>/root`, so a container's own libssl is found too).
pub fn libssl_candidates(proc_root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ldconfig in ["/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        if let Ok(o) = std::process::Command::new(ldconfig).arg("-p").output() {
            out.extend(libssl_in_ldconfig(&String::from_utf8_lossy(&o.stdout)));
            break;
        }
    }
    if let Ok(rd) = std::fs::read_dir(proc_root) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(maps) = std::fs::read_to_string(proc_root.join(pid).join("maps")) else {
                continue;
            };
            for p in libssl_in_maps(&maps) {
                let rel = p.strip_prefix("/").unwrap_or(&p);
                out.push(proc_root.join(pid).join("root").join(rel));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libssl_in_ldconfig_and_maps() {
        let ld = "\t12 libs found in cache `/etc/ld.so.cache'\n\tlibssl.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so.3\n\tlibcrypto.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libcrypto.so.3\n";
        assert_eq!(
            libssl_in_ldconfig(ld),
            vec![PathBuf::from("/lib/x86_64-linux-gnu/libssl.so.3")]
        );
        let maps = "7f00-7f01 r--p 00000000 fe:01 123 /opt/conda/envs/x/lib/libssl.so.3\n7f01-7f02 r-xp 00001000 fe:01 123 /opt/conda/envs/x/lib/libssl.so.3\n7f02-7f03 rw-p 00000000 00:00 0 \n7f03-7f04 r-xp 0 fe:01 9 /usr/lib/libc.so.6\n";
        assert_eq!(
            libssl_in_maps(maps),
            vec![PathBuf::from("/opt/conda/envs/x/lib/libssl.so.3")]
        );
        assert_eq!(x509_error_name(18), "self-signed certificate");
        assert_eq!(
            describe(TLSLIB_OSSL_HS_RET, -1, 55_100_000),
            Some((
                "openssl_handshake",
                "SSL_do_handshake returned -1 after 55.1 ms".into()
            ))
        );
        assert_eq!(
            describe(TLSLIB_GO_ALERT, 42, 0),
            Some(("go_alert_sent", "bad_certificate".into()))
        );
    }
}
