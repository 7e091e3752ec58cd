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

/// Make a CA named `name` in `dir` and a server certificate under it.
pub fn make(dir: &Path, name: &str) -> TestPki {
    std::fs::create_dir_all(dir).unwrap();
    let f = |s: &str| format!("{name}-{s}");
    let (ca_pem, ca_key) = self_signed(dir, &format!("{name}-ca"), &format!("DNS:{name}-ca"));
    let (ca, cakey) = (ca_pem.to_string_lossy(), ca_key.to_string_lossy());
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
            &f("server.key"),
            "-out",
            &f("server.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join(f("ext.cnf")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &f("server.csr"),
            "-CA",
            &ca,
            "-CAkey",
            &cakey,
            "-CAcreateserial",
            "-out",
            &f("server.pem"),
            "-days",
            "2",
            "-extfile",
            &f("ext.cnf"),
        ],
    );
    TestPki {
        ca_pem: ca_pem.clone(),
        ca_key: ca_key.clone(),
        server_cert: std::fs::read(dir.join(f("server.pem"))).unwrap(),
        server_key: std::fs::read(dir.join(f("server.key"))).unwrap(),
    }
}

/// A client certificate (for mutual TLS) signed by `pki`'s CA, in `dir`:
/// (certificate, key) paths.
pub fn client(dir: &Path, pki: &TestPki, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key, csr, ext) = (
        dir.join(format!("{cn}.pem")),
        dir.join(format!("{cn}.key")),
        dir.join(format!("{cn}.csr")),
        dir.join(format!("{cn}.cnf")),
    );
    let p = |x: &PathBuf| x.to_string_lossy().into_owned();
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
    std::fs::write(&ext, "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&pki.ca_pem),
            "-CAkey",
            &p(&pki.ca_key),
            "-CAcreateserial",
            "-out",
            &p(&cert),
            "-days",
            "2",
            "-extfile",
            &p(&ext),
        ],
    );
    (cert, key)
}
