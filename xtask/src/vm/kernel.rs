//! Kernels for `cargo xtask vm`: Debian's signed kernel packages, found in the
//! archive's package index, downloaded once and unpacked into the tool cache.
//!
//! Debian's generic flavour, not `-cloud`: only it builds 9p and
//! virtio-pci as modules, which the guest needs to mount the host's
//! filesystem (the cloud flavour has no 9p at all).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The archive every kernel comes from (the one apt uses on this machine kind).
const MIRROR: &str = "http://deb.debian.org/debian";

/// A kernel a user can name: `debian-6.1` is what Debian 12 (and, by
/// version, Amazon Linux 2023 and GKE's COS 6.1) boot.
pub struct Spec {
    pub name: &'static str,
    /// Debian release whose archive carries it.
    dist: &'static str,
    /// `linux-image-<this>…-amd64`.
    version_prefix: &'static str,
}

pub const KERNELS: &[Spec] = &[
    Spec {
        name: "debian-5.10",
        dist: "bullseye",
        version_prefix: "5.10.0-",
    },
    Spec {
        name: "debian-6.1",
        dist: "bookworm",
        version_prefix: "6.1.0-",
    },
    Spec {
        name: "debian-6.12",
        dist: "trixie",
        version_prefix: "6.12.",
    },
];

pub fn spec(name: &str) -> Result<&'static Spec> {
    KERNELS.iter().find(|k| k.name == name).with_context(|| {
        let names: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
        format!("unknown kernel {name:?}; known: {}", names.join(", "))
    })
}

/// An unpacked kernel package.
pub struct Unpacked {
    /// `uname -r` inside the guest, e.g. `6.1.0-50-amd64`.
    pub release: String,
    /// The Debian package version, e.g. `6.1.176-1`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the package.
    pub modules: PathBuf,
}

fn curl(url: &str, to: &Path) -> Result<()> {
    let part = to.with_extension("part");
    super::run_quiet(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&part)
            .arg(url),
    )
    .with_context(|| format!("downloading {url}"))?;
    std::fs::rename(&part, to)?;
    Ok(())
}

/// One package stanza of a `Packages` index: (name, version, file name).
fn stanzas(index: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    index.split("\n\n").filter_map(|s| {
        let field = |k: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(": ")))
        };
        Some((field("Package")?, field("Version")?, field("Filename")?))
    })
}

/// Debian version order, enough for kernel packages: numeric runs compare
/// as numbers, everything else byte-wise.
pub fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (num, tail) = rest.split_at(digits);
        let text_len = tail.len() - tail.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
        let (text, tail) = tail.split_at(text_len);
        out.push((num.parse().unwrap_or(0), text.to_string()));
        rest = tail;
    }
    out
}

/// The newest generic-flavour image of `spec` in a `Packages` index.
pub fn newest<'a>(spec: &Spec, index: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
    stanzas(index)
        .filter(|(p, _, _)| {
            p.strip_prefix("linux-image-")
                .and_then(|r| r.strip_prefix(spec.version_prefix))
                .and_then(|r| r.strip_suffix("-amd64"))
                // `6.1.0-50-amd64`: the ABI alone (not -cloud, -rt, -unsigned, -dbg).
                .is_some_and(|abi| !abi.is_empty() && !abi.contains('-'))
        })
        .max_by_key(|(_, v, _)| version_key(v))
}

/// Download (once) and unpack the newest package of `spec`.
pub fn fetch(spec: &Spec, cache: &Path) -> Result<Unpacked> {
    std::fs::create_dir_all(cache)?;
    let index_xz = cache.join(format!("Packages-{}.xz", spec.dist));
    // The index is re-read at most daily: a point release replaces the image.
    let stale = std::fs::metadata(&index_xz)
        .and_then(|m| m.modified())
        .map(|t| t.elapsed().map(|e| e.as_secs() > 86_400).unwrap_or(true))
        .unwrap_or(true);
    if stale {
        let url = format!("{MIRROR}/dists/{}/main/binary-amd64/Packages.xz", spec.dist);
        if let Err(e) = curl(&url, &index_xz)
            && !index_xz.exists()
        {
            return Err(e);
        }
    }
    let out = Command::new("xz").arg("-dc").arg(&index_xz).output()?;
    if !out.status.success() {
        bail!("xz -dc {} failed", index_xz.display());
    }
    let index = String::from_utf8_lossy(&out.stdout);
    let (package, version, file) = newest(spec, &index).with_context(|| {
        format!(
            "no linux-image-{}*-amd64 in {}'s index",
            spec.version_prefix, spec.dist
        )
    })?;
    let release = package.trim_start_matches("linux-image-").to_string();
    let dir = cache.join(format!("{release}_{version}"));
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        let deb = cache.join(Path::new(file).file_name().context("package file name")?);
        if !deb.exists() {
            eprintln!("xtask vm: downloading {package} {version}");
            curl(&format!("{MIRROR}/{file}"), &deb)?;
        }
        let tmp = dir.with_extension("part");
        let _ = std::fs::remove_dir_all(&tmp);
        super::run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        std::fs::rename(&tmp, &dir)?;
        let _ = std::fs::remove_file(&deb);
    }
    // Merged /usr (trixie on): the modules are under usr/lib.
    let mut modules = dir.join(format!("lib/modules/{release}"));
    if !modules.exists() {
        modules = dir.join(format!("usr/lib/modules/{release}"));
    }
    Ok(Unpacked {
        modules,
        release,
        version: version.to_string(),
        vmlinuz,
    })
}

/// A module file's ELF bytes: trixie's packages compress them (`.ko.xz`),
/// which busybox's insmod does not read.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz").arg("-dc").arg(path).output()?;
        if !out.status.success() {
            bail!("xz -dc {} failed", path.display());
        }
        return Ok(out.stdout);
    }
    Ok(std::fs::read(path)?)
}

/// The `depends=` list of a module's `.modinfo` (NUL-separated strings).
pub fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    ko.split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(key.as_slice()))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `wanted` and everything they depend on, as module files in load order
/// (dependencies first). The package has no `modules.dep` (depmod writes it
/// at install time, and this machine has no kmod), so it is read from each
/// module's own `.modinfo`. Modules built into the kernel are skipped.
pub fn closure(modules: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = std::collections::HashMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().and_then(|n| n.to_str())
                && let Some(stem) = n.strip_suffix(".ko").or_else(|| n.strip_suffix(".ko.xz"))
            {
                files.insert(stem.replace('-', "_"), p);
            }
        }
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        files: &std::collections::HashMap<String, PathBuf>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let name = name.replace('-', "_");
        if !seen.insert(name.clone()) {
            return Ok(());
        }
        // Not a file: built in (or absent, which insmod would report).
        let Some(path) = files.get(&name) else {
            return Ok(());
        };
        for dep in depends(&read_module(path)?) {
            visit(&dep, files, seen, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    // Built into the image on some kernels (trixie's virtio_pci).
    let builtin: BTreeSet<String> = std::fs::read_to_string(modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Path::new(l).file_name()?.to_str()?.strip_suffix(".ko"))
        .map(|n| n.replace('-', "_"))
        .collect();
    for w in wanted {
        let name = w.replace('-', "_");
        if builtin.contains(&name) {
            continue;
        }
        if !files.contains_key(&name) {
            bail!("module {w} not in {}", modules.display());
        }
        visit(w, &files, &mut seen, &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_generic_image_is_picked() {
        let index = "Package: linux-image-6.1.0-9-amd64\nVersion: 6.1.27-1\nFilename: a.deb\n\n\
                     Package: linux-image-6.1.0-50-cloud-amd64\nVersion: 6.1.176-1\nFilename: c.deb\n\n\
                     Package: linux-image-6.1.0-50-amd64\nVersion: 6.1.176-1\nFilename: b.deb\n\n\
                     Package: linux-image-6.1.0-50-rt-amd64\nVersion: 6.1.176-1\nFilename: r.deb\n\n\
                     Package: linux-image-6.1.0-50-amd64-unsigned\nVersion: 6.1.176-1\nFilename: u.deb\n\n\
                     Package: linux-image-6.1.0-10-amd64\nVersion: 6.1.38-1\nFilename: d.deb\n";
        let k = spec("debian-6.1").unwrap();
        assert_eq!(newest(k, index).map(|s| s.2), Some("b.deb"));
        let trixie = "Package: linux-image-6.12.117+deb13-amd64\nVersion: 6.12.117-1\nFilename: t.deb\n\n\
                      Package: linux-image-6.12.9+deb13-amd64\nVersion: 6.12.9-1\nFilename: o.deb\n";
        assert_eq!(
            newest(spec("debian-6.12").unwrap(), trixie).map(|s| s.2),
            Some("t.deb")
        );
    }

    #[test]
    fn versions_compare_by_number() {
        assert!(version_key("6.1.176-1") > version_key("6.1.38-1"));
        assert!(version_key("5.10.223-1") > version_key("5.10.218-1"));
    }

    #[test]
    fn modinfo_depends_is_read() {
        let ko = b"\x7fELF...\0license=GPL\0depends=9pnet,netfs,fscache\0intree=Y\0";
        assert_eq!(depends(ko), ["9pnet", "netfs", "fscache"]);
        assert!(depends(b"\0depends=\0").is_empty());
        assert!(depends(b"nothing").is_empty());
    }

    #[test]
    fn unknown_kernels_name_the_known_ones() {
        let e = spec("debian-4.19").err().unwrap().to_string();
        assert!(e.contains("debian-6.1"), "{e}");
    }
}
