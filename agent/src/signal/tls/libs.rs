//! Where the TLS-library uprobes go: every `libssl` on the machine that
//! processes load (the system's, a conda env's own, ones loaded later with
//! `dlopen`), and every Go program that runs, each attached once per file
//! (device, inode) whatever its path.
//!
//! Owns: finding targets (ldconfig cache, `/proc/*/maps`, conda's list of
//! environments, the library directories a starting program will load from)
//! and remembering which are attached. Must not: interpret events
//! (`wirediag` does).
//!
//! A program that loads libssl with `dlopen` (Python's `import ssl`) maps it
//! tens of milliseconds after it starts: the agent looks for a libssl in the
//! directories that program's loader will search (`<prefix>/lib` of a
//! `<prefix>/bin/` program, which is where a conda env's RPATH points, and
//! `LD_LIBRARY_PATH`) when it sees the exec, and a uprobe put on a file
//! applies to processes that mapped it already.

use std::path::{Path, PathBuf};

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

/// `libssl.so*` paths in the loader's cache (`/etc/ld.so.cache`, read
/// instead of spawning `ldconfig -p` as root): its string table holds every
/// library's absolute path NUL-terminated, in both the old and the new
/// (`glibc-ld.so.cache1.1`) format, so the paths are read from it directly.
pub fn libssl_in_ld_cache(bytes: &[u8]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = bytes
        .split(|&b| b == 0)
        .filter(|s| s.first() == Some(&b'/') && s.len() < 4096)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter(|p| is_libssl(p))
        .map(PathBuf::from)
        .collect();
    v.sort();
    v.dedup();
    v
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

/// One thing a TLS library said (its uprobe), for a handshake's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LibNote {
    /// OpenSSL's `SSL_do_handshake`: how it ended and how long it took.
    OpensslHandshake(String),
    /// OpenSSL's `SSL_get_verify_result`: the X.509 verification result.
    OpensslVerifyResult(String),
    /// Go crypto/tls sent this alert (its description code).
    GoAlertSent(u8),
}

impl LibNote {
    /// The note's key in reports and evidence.
    pub fn key(&self) -> &'static str {
        match self {
            LibNote::OpensslHandshake(_) => "openssl_handshake",
            LibNote::OpensslVerifyResult(_) => "openssl_verify_result",
            LibNote::GoAlertSent(_) => "go_alert_sent",
        }
    }

    /// What it says, as text.
    pub fn text(&self) -> String {
        match self {
            LibNote::OpensslHandshake(t) | LibNote::OpensslVerifyResult(t) => t.clone(),
            LibNote::GoAlertSent(a) => agent_parse::tls::alert_name(*a).to_string(),
        }
    }

    /// What it says about the peer's certificate, if anything: OpenSSL's
    /// verification result, or an alert Go sent about the certificate.
    pub fn about_certificate(&self) -> Option<String> {
        match self {
            LibNote::OpensslVerifyResult(v) => Some(format!("OpenSSL: {v}")),
            LibNote::GoAlertSent(a) if agent_parse::tls::is_certificate_alert(*a) => Some(format!(
                "Go crypto/tls sent alert {}",
                agent_parse::tls::alert_name(*a)
            )),
            _ => None,
        }
    }
}

impl serde::Serialize for LibNote {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple as _;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(self.key())?;
        t.serialize_element(&self.text())?;
        t.end()
    }
}

/// Decode one uprobe record (`kind`, `value`, `aux` ns) into a note.
pub fn describe(kind: u32, value: i64, aux: u64) -> Option<LibNote> {
    let ms = aux as f64 / 1e6;
    match kind {
        TLSLIB_OSSL_HS_DONE => Some(LibNote::OpensslHandshake(format!(
            "completed in {ms:.1} ms"
        ))),
        TLSLIB_OSSL_HS_RET => Some(LibNote::OpensslHandshake(format!(
            "SSL_do_handshake returned {value} after {ms:.1} ms"
        ))),
        TLSLIB_OSSL_VERIFY => Some(LibNote::OpensslVerifyResult(x509_error_name(value))),
        TLSLIB_GO_ALERT => Some(LibNote::GoAlertSent(value as u8)),
        _ => None,
    }
}

/// Directories a program that `exe` names will load its libraries from,
/// besides the loader's own: `<prefix>/lib` for a `<prefix>/bin/` program and
/// every absolute `LD_LIBRARY_PATH` entry (from the exec's allow-listed
/// environment).
pub fn library_dirs(exe: &str, env: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(bin) = Path::new(exe).parent()
        && bin.file_name().is_some_and(|n| n == "bin")
        && let Some(prefix) = bin.parent()
        && prefix != Path::new("/")
    {
        out.push(prefix.join("lib").display().to_string());
    }
    for (k, v) in env {
        if k == "LD_LIBRARY_PATH" {
            for d in v.split(':').filter(|d| d.starts_with('/')) {
                let d = d.trim_end_matches('/').to_string();
                if !d.is_empty() && !out.contains(&d) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// `libssl.so*` files in one directory.
/// Off the caller's thread within the file-work deadline (a directory on
/// a user's `LD_LIBRARY_PATH` may be a mount that never answers).
pub fn libssl_in_dir(dir: &Path) -> Vec<PathBuf> {
    let Some(d) = dir.to_str() else {
        return Vec::new();
    };
    // Bounded: a directory of millions of entries is not a library dir.
    crate::process::fsview::FsView::host()
        .list_dir(d, 100_000)
        .into_iter()
        .map(|n| dir.join(n))
        .filter(|p| p.to_str().is_some_and(is_libssl))
        .collect()
}

/// Conda environments listed in `environments.txt` (conda appends every env
/// it creates, one path per line).
pub fn conda_envs_in(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// Every user's conda environments (`~/.conda/environments.txt` of root and
/// of each home directory).
pub fn conda_envs() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("/root/.conda/environments.txt")];
    if let Ok(rd) = std::fs::read_dir("/home") {
        files.extend(
            rd.flatten()
                .map(|e| e.path().join(".conda/environments.txt")),
        );
    }
    files
        .iter()
        // Any user's file: a FIFO or a huge file planted there must neither
        // block nor exhaust memory (1 MiB is ~10,000 environments).
        .filter_map(|f| crate::process::fsview::read_capped(f, 1 << 20))
        .flat_map(|t| conda_envs_in(&String::from_utf8_lossy(&t)))
        .collect()
}

/// Where a live agent looks for Go toolchains at start-up: the usual
/// install places (`/usr/local/go`, `/usr/lib/go-*`), conda envs' `bin/`,
/// every user's home (`/root`, `/home/*`: `~/sdk`, `~/go/pkg/mod`), and the
/// PATH, GOROOT, GOMODCACHE, GOPATH and HOME of the processes running now
/// (their environments, read bounded).
pub fn host_go_vars(proc_root: &Path) -> super::goplaces::GoVars {
    let mut v = super::goplaces::GoVars::default();
    v.add("PATH", "/usr/local/go/bin");
    if let Ok(rd) = std::fs::read_dir("/usr/lib") {
        for e in rd
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("go-"))
        {
            v.add("GOROOT", &e.path().display().to_string());
        }
    }
    for e in conda_envs() {
        v.add("PATH", &e.join("bin").display().to_string());
    }
    v.add("HOME", "/root");
    if let Ok(rd) = std::fs::read_dir("/home") {
        for e in rd.flatten().take(1024) {
            v.add("HOME", &e.path().display().to_string());
        }
    }
    if let Ok(rd) = std::fs::read_dir(proc_root) {
        for e in rd.flatten().take(65_536) {
            if !e
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            // A process's environment: 64 KiB is far more than PATH needs.
            let Some(env) =
                crate::process::fsview::read_capped(&e.path().join("environ"), 64 * 1024)
            else {
                continue;
            };
            for var in env.split(|&b| b == 0) {
                let var = String::from_utf8_lossy(var);
                if let Some((name, value)) = var.split_once('=') {
                    v.add(name, value);
                }
            }
        }
    }
    v
}

/// Every libssl the machine's loader knows and every one mapped right now
/// (through `/proc/<pid>/root`, so a container's own libssl is found too).
pub fn libssl_candidates(proc_root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    // Root-owned, but read like any file: bounded, never blocking.
    if let Some(cache) =
        crate::process::fsview::read_capped(Path::new("/etc/ld.so.cache"), 16 << 20)
    {
        out.extend(libssl_in_ld_cache(&cache));
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
    for env in conda_envs() {
        out.extend(libssl_in_dir(&env.join("lib")));
    }
    out
}

/// What a command about to start can reach, for probing before it runs:
/// the first time a Go program or a libssl is used is the run a person
/// asks about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reachable {
    /// Go programs (build info checked): every `go` on PATH, `$GOROOT/bin/go`,
    /// the toolchains `go` would switch to from the module cache, and the
    /// programs the command line names.
    pub go: Vec<PathBuf>,
    /// Programs whose loader directories may hold a private libssl
    /// (python*, curl, openssl, git, pip* on PATH, and those named).
    pub libssl_users: Vec<String>,
}

/// Words of a command line that may name programs: each argument, and the
/// words of a shell string (`sh -c 'go build && ./prog'`), at most 64.
fn command_words(argv: &[String]) -> Vec<&str> {
    argv.iter()
        .flat_map(|a| a.split(|c: char| c.is_whitespace() || ";|&()`'\"<>".contains(c)))
        .filter(|w| !w.is_empty() && !w.starts_with('-') && !w.contains('='))
        .take(64)
        .collect()
}

/// The regular, executable file at `p`.
fn executable(p: &Path) -> bool {
    p.to_str()
        .and_then(|p| crate::process::fsview::FsView::host().stat(p))
        .is_some_and(|m| m.executable())
}

/// A Go program: its build info reads (headers and one section, bounded).
pub fn is_go_program(p: &Path) -> bool {
    p.to_str()
        .and_then(|p| crate::process::fsview::FsView::host().build_info(p))
        .is_some()
}

/// The Go programs and libssl users `argv` can reach with environment
/// `env` from `cwd` (the command's own, before it starts).
pub fn reachable(
    argv: &[String],
    env: &[(String, String)],
    cwd: Option<&Path>,
    home: Option<&Path>,
) -> Reachable {
    // The command's environment, and what its own shell strings assign
    // (`sh -c 'env -i PATH=/opt/go/bin:… go …'`).
    let mut vars = super::goplaces::GoVars::from_env(env);
    if vars.home.is_empty()
        && let Some(h) = home.and_then(Path::to_str)
    {
        vars.add("HOME", h);
    }
    vars.add_assignments(argv);
    let path_dirs = vars.path.clone();
    let lookup = |name: &str| -> Option<PathBuf> {
        if name.contains('/') {
            let p = if name.starts_with('/') {
                PathBuf::from(name)
            } else {
                cwd?.join(name)
            };
            return executable(&p).then_some(p);
        }
        path_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| executable(p))
    };
    let mut go: Vec<PathBuf> = Vec::new();
    let add = |p: PathBuf, go: &mut Vec<PathBuf>| {
        if !go.contains(&p) && executable(&p) && is_go_program(&p) {
            go.push(p);
        }
    };
    for d in vars.bin_dirs() {
        add(d.join("go"), &mut go);
    }
    // Toolchains `go` switches to (golang.org/toolchain@v0.0.1-go1.X.Y.<os>-<arch>)
    // and those golang.org/dl installed (~/sdk/go1.X.Y).
    for r in vars.roots() {
        for b in super::goplaces::toolchains_under(&r) {
            add(b.join("go"), &mut go);
        }
    }
    let mut libssl_users = Vec::new();
    for w in command_words(argv) {
        if let Some(p) = lookup(w) {
            add(p.clone(), &mut go);
            let s = p.display().to_string();
            if !libssl_users.contains(&s) {
                libssl_users.push(s);
            }
        }
    }
    for name in [
        "python3", "python", "pip", "pip3", "curl", "openssl", "git", "conda",
    ] {
        if let Some(p) = lookup(name) {
            let s = p.display().to_string();
            if !libssl_users.contains(&s) {
                libssl_users.push(s);
            }
        }
    }
    Reachable { go, libssl_users }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_go_dirs_come_from_running_processes_bounded() {
        let d = crate::process::fsview::tests::tempdir("hostgo");
        let proc = d.join("proc");
        for (pid, env) in [
            (
                "10",
                &b"HOME=/h\0PATH=/opt/a/bin:/usr/bin:rel\0GOROOT=/opt/go\0"[..],
            ),
            ("11", &b"PATH=/usr/bin:/opt/b/bin\0"[..]),
            ("self", &b"PATH=/not/a/pid\0"[..]),
        ] {
            std::fs::create_dir_all(proc.join(pid)).unwrap();
            std::fs::write(proc.join(pid).join("environ"), env).unwrap();
        }
        // An environ that is a FIFO is passed over, not waited on.
        std::fs::create_dir_all(proc.join("12")).unwrap();
        crate::test_util::mkfifo(proc.join("12/environ"));
        let vars = host_go_vars(&proc);
        let dirs = vars.bin_dirs();
        assert!(vars.home.iter().any(|h| h == Path::new("/h")), "{vars:?}");
        for want in [
            "/usr/local/go/bin",
            "/opt/a/bin",
            "/usr/bin",
            "/opt/go/bin",
            "/opt/b/bin",
        ] {
            assert_eq!(
                dirs.iter().filter(|p| *p == Path::new(want)).count(),
                1,
                "{want} once in {dirs:?}"
            );
        }
        assert!(
            !dirs
                .iter()
                .any(|p| p == Path::new("/not/a/pid") || p == Path::new("rel"))
        );
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn what_a_command_can_reach_is_found_before_it_runs() {
        let d = crate::process::fsview::tests::tempdir("reach");
        use std::os::unix::fs::PermissionsExt as _;
        let exe = |p: &Path, body: &[u8]| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // A real Go program (this test binary is not one; the Go
        // installation's is): copies of it stand for the toolchains.
        let real = ["/usr/lib/go-1.19/bin/go"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .expect("Debian golang-go (.ci/run installs it)");
        let go_bytes = std::fs::read(&real).unwrap();
        exe(&d.join("bin1/go"), &go_bytes);
        exe(&d.join("bin2/go"), b"#!/bin/sh\n");
        exe(&d.join("root/bin/go"), &go_bytes);
        exe(
            &d.join("home/go/pkg/mod/golang.org/toolchain@v0.0.1-go1.99.0.linux-amd64/bin/go"),
            &go_bytes,
        );
        exe(&d.join("cwd/prog"), &go_bytes);
        exe(&d.join("bin2/python3"), b"#!/bin/sh\n");
        // A FIFO named go on PATH is passed over, not opened.
        std::fs::create_dir_all(d.join("bin3")).unwrap();
        crate::test_util::mkfifo(d.join("bin3/go"));
        let env = vec![
            (
                "PATH".to_string(),
                format!("{0}/bin3:{0}/bin1:{0}/bin2:relative", d.display()),
            ),
            ("GOROOT".to_string(), d.join("root").display().to_string()),
        ];
        let argv: Vec<String> = ["sh", "-c", "./prog && python3 -c pass; missing"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = reachable(&argv, &env, Some(&d.join("cwd")), Some(&d.join("home")));
        assert_eq!(
            r.go,
            vec![
                d.join("bin1/go"),
                d.join("root/bin/go"),
                d.join("home/go/pkg/mod/golang.org/toolchain@v0.0.1-go1.99.0.linux-amd64/bin/go"),
                d.join("cwd/prog"),
            ]
        );
        assert!(
            r.libssl_users
                .contains(&d.join("bin2/python3").display().to_string())
        );
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn finds_libssl_in_the_loader_cache_and_maps() {
        let ld = b"glibc-ld.so.cache1.1\x03\0\0\0junk\xff\0libssl.so.3\0/lib/x86_64-linux-gnu/libssl.so.3\0libcrypto.so.3\0/lib/x86_64-linux-gnu/libcrypto.so.3\0/lib/x86_64-linux-gnu/libssl.so.3\0";
        assert_eq!(
            libssl_in_ld_cache(ld),
            vec![PathBuf::from("/lib/x86_64-linux-gnu/libssl.so.3")]
        );
        // The machine's own cache agrees with what ldconfig -p prints.
        if let Ok(cache) = std::fs::read("/etc/ld.so.cache")
            && let Ok(o) = std::process::Command::new("/sbin/ldconfig")
                .arg("-p")
                .output()
        {
            let mut printed: Vec<PathBuf> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_once(" => ").map(|(_, p)| p.trim()))
                .filter(|p| is_libssl(p))
                .map(PathBuf::from)
                .collect();
            printed.sort();
            printed.dedup();
            assert_eq!(libssl_in_ld_cache(&cache), printed);
        }
        let maps = "7f00-7f01 r--p 00000000 fe:01 123 /opt/conda/envs/x/lib/libssl.so.3\n7f01-7f02 r-xp 00001000 fe:01 123 /opt/conda/envs/x/lib/libssl.so.3\n7f02-7f03 rw-p 00000000 00:00 0 \n7f03-7f04 r-xp 0 fe:01 9 /usr/lib/libc.so.6\n";
        assert_eq!(
            libssl_in_maps(maps),
            vec![PathBuf::from("/opt/conda/envs/x/lib/libssl.so.3")]
        );
        assert_eq!(x509_error_name(18), "self-signed certificate");
        let env = |v: &str| vec![("LD_LIBRARY_PATH".to_string(), v.to_string())];
        assert_eq!(
            library_dirs(
                "/opt/conda/envs/x/bin/python3.12",
                &env("/a/lib/:rel:/b::/opt/conda/envs/x/lib")
            ),
            vec!["/opt/conda/envs/x/lib", "/a/lib", "/b"]
        );
        assert_eq!(library_dirs("/bin/true", &[]), Vec::<String>::new());
        assert_eq!(
            library_dirs("/usr/libexec/x", &env("")),
            Vec::<String>::new()
        );
        assert_eq!(
            conda_envs_in("/opt/conda\n/home/u/.conda/envs/py\n\n# c\n"),
            vec![
                PathBuf::from("/opt/conda"),
                PathBuf::from("/home/u/.conda/envs/py")
            ]
        );
        let mut t = super::super::targets::Targets::default();
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        assert!(t.dir_due("/x/lib", t0));
        assert!(!t.dir_due("/x/lib", t0 + Duration::from_secs(29)));
        assert!(t.dir_due("/x/lib", t0 + Duration::from_secs(31)));
        let n = describe(TLSLIB_OSSL_HS_RET, -1, 55_100_000).expect("a note");
        assert_eq!(
            (n.key(), n.text().as_str()),
            (
                "openssl_handshake",
                "SSL_do_handshake returned -1 after 55.1 ms"
            )
        );
        let n = describe(TLSLIB_GO_ALERT, 42, 0).expect("a note");
        assert_eq!(n, LibNote::GoAlertSent(42));
        assert_eq!(
            (n.key(), n.text().as_str()),
            ("go_alert_sent", "bad_certificate")
        );
        assert_eq!(
            n.about_certificate().as_deref(),
            Some("Go crypto/tls sent alert bad_certificate")
        );
        // An alert that is not about the certificate says nothing of it.
        assert_eq!(LibNote::GoAlertSent(70).about_certificate(), None);
    }
}
