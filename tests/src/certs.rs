//! Test certificate authorities and server certificates, made with the
//! `openssl` command (as an operator would make a private CA).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A CA and a server certificate it signed for 127.0.0.1 and localhost.
pub struct TestPki {
    pub ca_pem: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: Vec<u8>,
    pub server_key: Vec<u8>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate for `cn` with `subjectAltName` `san`
/// (`DNS:x,IP:y`) in `dir`: (certificate, key) paths.
pub fn self_signed(dir: &Path, cn: &str, san: &str) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            &format!("subjectAltName={san}"),
            "-keyout",
            &key.to_string_lossy(),
            "-out",
            &cert.to_string_lossy(),
        ],
    );
    (cert, key)
}

/// A certificate for `cn` with the X.509 extensions `ext` (openssl
/// extfile lines), signed by the CA (`ca_pem`, `ca_key`), in `dir` as
/// `<file>.pem` and `<file>.key`: (certificate, key) paths.
fn issue(
    dir: &Path,
    ca_pem: &Path,
    ca_key: &Path,
    file: &str,
    cn: &str,
    ext: &str,
) -> (PathBuf, PathBuf) {
    let path = |suffix: &str| dir.join(format!("{file}.{suffix}"));
    let (cert, key, csr, cnf) = (path("pem"), path("key"), path("csr"), path("cnf"));
    let p = |x: &Path| x.to_string_lossy().into_owned();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    std::fs::write(&cnf, ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(ca_pem),
            "-CAkey",
            &p(ca_key),
            "-CAcreateserial",
            "-out",
            &p(&cert),
            "-days",
            "2",
            "-extfile",
            &p(&cnf),
        ],
    );
    (cert, key)
}

/// Make a CA named `name` in `dir` and a server certificate under it.
pub fn make(dir: &Path, name: &str) -> TestPki {
    std::fs::create_dir_all(dir).unwrap();
    let (ca_pem, ca_key) = self_signed(dir, &format!("{name}-ca"), &format!("DNS:{name}-ca"));
    let (cert, key) = issue(
        dir,
        &ca_pem,
        &ca_key,
        &format!("{name}-server"),
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    );
    TestPki {
        server_cert: std::fs::read(cert).unwrap(),
        server_key: std::fs::read(key).unwrap(),
        ca_pem,
        ca_key,
    }
}

/// A client certificate (for mutual TLS) signed by `pki`'s CA, in `dir`:
/// (certificate, key) paths.
pub fn client(dir: &Path, pki: &TestPki, cn: &str) -> (PathBuf, PathBuf) {
    issue(
        dir,
        &pki.ca_pem,
        &pki.ca_key,
        cn,
        cn,
        "extendedKeyUsage=clientAuth\n",
    )
}
