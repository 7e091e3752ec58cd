//! Go build information (`.go.buildinfo`) read from an executable: the Go
//! version it was built with, its main package and module, and build
//! settings. Works on stripped and PIE binaries (falls back to scanning for
//! the magic when section headers are gone) and on the pre-1.18 pointer format.
//!
//! Owns: parsing untrusted ELF bytes (bounds-checked, never panics).

use object::{
    LittleEndian,
    elf::{ELFCLASS64, ELFDATA2LSB, FileHeader64, PF_W, PT_LOAD, SHT_NOBITS, SectionHeader64},
    read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _, SectionTable},
};

const MAGIC: &[u8] = b"\xff Go buildinf:";

#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct BuildInfo {
    /// e.g. `go1.22.3`.
    pub go_version: String,
    /// Main package path, e.g. `cmd/go`.
    pub path: String,
    /// Main module path and version.
    pub main_module: Option<(String, String)>,
    /// `build` settings (`GOOS`, `CGO_ENABLED`, `-ldflags`, `vcs.revision`, ...).
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    /// Is this the `go` command itself?
    pub fn is_go_command(&self) -> bool {
        self.path == "cmd/go"
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildInfoError {
    #[error("not an ELF file")]
    NotElf,
    #[error("no Go build information (not a Go binary)")]
    NotGo,
    #[error("Go build information is malformed: {0}")]
    Malformed(&'static str),
}

// Checked readers: every offset comes from the file (an `e_shoff` near
// 2^64 must be "absent", not an overflow).
fn bytes_at<const N: usize>(b: &[u8], o: usize) -> Option<[u8; N]> {
    b.get(o..o.checked_add(N)?)?.try_into().ok()
}
fn u32le(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes_at(b, o)?))
}
fn u64le(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes_at(b, o)?))
}

/// The ELF container, read with `object`'s lazy header API (nothing is
/// parsed ahead: a sparse image of a huge binary stays cheap); only Go's
/// own structures are parsed by hand here.
struct Elf<'a> {
    b: &'a [u8],
    h: &'a FileHeader64<LittleEndian>,
}

impl<'a> Elf<'a> {
    fn parse(b: &'a [u8]) -> Result<Self, BuildInfoError> {
        if b.len() < 64 || &b[..4] != b"\x7fELF" {
            return Err(BuildInfoError::NotElf);
        }
        // ELFCLASS64, little-endian only (the machines we run on). The
        // header as the kernel takes it: `FileHeader::parse` would also
        // want EI_VERSION, which exec does not check.
        let (h, _) = object::pod::from_bytes::<FileHeader64<LittleEndian>>(b)
            .map_err(|()| BuildInfoError::NotElf)?;
        if h.e_ident.class != ELFCLASS64 || h.e_ident.data != ELFDATA2LSB {
            return Err(BuildInfoError::Malformed(
                "only 64-bit little-endian ELF is read",
            ));
        }
        Ok(Self { b, h })
    }

    /// The section table (names included); `None` without one or when it
    /// does not parse.
    fn sections(&self) -> Option<SectionTable<'a, FileHeader64<LittleEndian>>> {
        self.h
            .sections(LittleEndian, self.b)
            .ok()
            .filter(|t| !t.is_empty())
    }

    fn section(&self, name: &str) -> Option<&'a SectionHeader64<LittleEndian>> {
        self.sections()?
            .section_by_name(LittleEndian, name.as_bytes())
            .map(|(_, s)| s)
    }

    fn section_data(&self, name: &str) -> Option<&'a [u8]> {
        self.section(name)?.data(LittleEndian, self.b).ok()
    }

    /// File offset of a virtual address inside a loaded segment, and how
    /// many file bytes of that segment follow it.
    fn vaddr_to_offset_len(&self, va: u64) -> Option<(u64, u64)> {
        let e = LittleEndian;
        self.h
            .program_headers(e, self.b)
            .ok()?
            .iter()
            .find_map(|p| {
                let (off, vaddr, filesz) = (p.p_offset(e), p.p_vaddr(e), p.p_filesz(e));
                (p.p_type(e) == PT_LOAD && va >= vaddr && va < vaddr.checked_add(filesz)?)
                    .then(|| Some((off.checked_add(va - vaddr)?, vaddr + filesz - va)))
                    .flatten()
            })
    }

    fn vaddr_to_offset(&self, va: u64) -> Option<u64> {
        self.vaddr_to_offset_len(va).map(|(o, _)| o)
    }

    fn at_vaddr(&self, va: u64, len: usize) -> Option<&'a [u8]> {
        let (off, avail) = self.vaddr_to_offset_len(va)?;
        if (len as u64) > avail {
            return None;
        }
        let start = off as usize;
        self.b.get(start..start.checked_add(len)?)
    }
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x: u64 = 0;
    for (i, &c) in b.iter().enumerate().take(10) {
        x |= u64::from(c & 0x7f) << (7 * i);
        if c < 0x80 {
            return Some((x, i + 1));
        }
    }
    None
}

fn varint_string(b: &[u8]) -> Option<(&[u8], usize)> {
    let (n, used) = uvarint(b)?;
    let n = usize::try_from(n).ok()?;
    let s = b.get(used..used.checked_add(n)?)?;
    Some((s, used + n))
}

/// Parse Go build information from the bytes of an executable.
pub fn parse(bytes: &[u8]) -> Result<BuildInfo, BuildInfoError> {
    let elf = Elf::parse(bytes)?;
    let data = match elf.section_data(".go.buildinfo") {
        Some(d) if d.starts_with(MAGIC) => d,
        // Section headers but no build info section: not Go (the scan
        // below is for binaries stripped of their section headers).
        _ if elf.sections().is_some() => return Err(BuildInfoError::NotGo),
        _ => {
            // Stripped of section headers: the blob is 16-byte aligned in a data segment.
            let mut found = None;
            let mut i = 0;
            while i + MAGIC.len() <= bytes.len() {
                if &bytes[i..i + MAGIC.len()] == MAGIC {
                    found = Some(&bytes[i..]);
                    break;
                }
                i += 16;
            }
            found.ok_or(BuildInfoError::NotGo)?
        }
    };
    if data.len() < 32 {
        return Err(BuildInfoError::Malformed("short header"));
    }
    let ptr_size = data[14] as usize;
    let flags = data[15];
    let (version, modinfo) = if flags & 2 != 0 {
        // Go 1.18+: inline varint-prefixed strings after the 32-byte header.
        let rest = &data[32..];
        let (v, used) = varint_string(rest).ok_or(BuildInfoError::Malformed("version"))?;
        let (m, _) = varint_string(&rest[used..]).ok_or(BuildInfoError::Malformed("modinfo"))?;
        (v.to_vec(), m.to_vec())
    } else {
        // Before 1.18: two pointers to Go string headers {ptr, len}.
        if ptr_size != 8 || flags & 1 != 0 {
            return Err(BuildInfoError::Malformed("unsupported pointer format"));
        }
        let read_str = |at: usize| -> Option<Vec<u8>> {
            let hdr_va = u64le(data, at)?;
            let hdr = elf.at_vaddr(hdr_va, 16)?;
            let ptr = u64le(hdr, 0)?;
            let len = usize::try_from(u64le(hdr, 8)?).ok()?;
            if len > 1 << 20 {
                return None;
            }
            Some(elf.at_vaddr(ptr, len)?.to_vec())
        };
        (
            read_str(16).ok_or(BuildInfoError::Malformed("version pointer"))?,
            read_str(24).unwrap_or_default(),
        )
    };
    let mut bi = BuildInfo {
        go_version: String::from_utf8_lossy(&version).into_owned(),
        ..Default::default()
    };
    // modinfo is wrapped in 16-byte sentinels.
    let m = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        &modinfo[..]
    };
    for line in String::from_utf8_lossy(m).lines() {
        let mut it = line.splitn(2, '\t');
        match (it.next(), it.next()) {
            (Some("path"), Some(p)) => bi.path = p.to_string(),
            (Some("mod"), Some(rest)) => {
                let mut f = rest.split('\t');
                bi.main_module = Some((
                    f.next().unwrap_or("").to_string(),
                    f.next().unwrap_or("").to_string(),
                ));
            }
            (Some("build"), Some(kv)) => {
                if let Some((k, v)) = kv.split_once('=') {
                    bi.settings.push((k.to_string(), v.to_string()));
                }
            }
            _ => {}
        }
    }
    if bi.go_version.is_empty() {
        return Err(BuildInfoError::Malformed("empty version"));
    }
    Ok(bi)
}

/// Sections [`parse`] reads (pre-1.18 binaries point into the data ones).
pub const BUILDINFO_SECTIONS: &[&str] = &[".go.buildinfo", ".noptrdata", ".data", ".rodata"];
/// Sections [`go_func_offset`] reads.
/// `.gopclntab`; in PIE (and other relro) builds Go names it
/// `.data.rel.ro.gopclntab`.
pub const PCLNTAB_SECTIONS: &[&str] = &[".gopclntab", ".data.rel.ro.gopclntab"];

/// Largest file taken for a sparse image, and most bytes read into one.
const IMAGE_MAX_FILE: u64 = 4 << 30;
const IMAGE_MAX_READ: u64 = 256 << 20;

/// A sparse image of an ELF file: a zeroed buffer of the file's size in
/// which only the headers, the named sections (or, without section headers,
/// the writable segments) are read in. The rest is never touched, so only
/// the pages read are ever resident: a 300 MB binary costs what its headers
/// and build info cost (the parsers above index it like the whole file).
/// Every offset and size from the file is checked; `None` on anything odd.
pub fn read_image(f: &std::fs::File, size: u64, sections: &[&str]) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt as _;
    if !(64..=IMAGE_MAX_FILE).contains(&size) {
        return None;
    }
    let mut img = vec![0u8; usize::try_from(size).ok()?];
    let mut budget = IMAGE_MAX_READ;
    let mut fill = |img: &mut [u8], off: u64, len: u64| -> Option<()> {
        let end = off.checked_add(len)?;
        if end > size || len > budget {
            return None;
        }
        budget -= len;
        let dst = img.get_mut(off as usize..end as usize)?;
        let mut got = 0;
        while got < dst.len() {
            match f.read_at(&mut dst[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        Some(())
    };
    fill(&mut img, 0, 64)?;
    let e = LittleEndian;
    let h = *Elf::parse(&img).ok()?.h;
    let (phoff, phentsize, phnum) = (h.e_phoff(e), h.e_phentsize(e), h.e_phnum(e));
    let (shoff, shentsize, shnum) = (h.e_shoff(e), h.e_shentsize(e), h.e_shnum(e));
    let ph_len = u64::from(phentsize).checked_mul(u64::from(phnum))?;
    if ph_len > 0 {
        fill(&mut img, phoff, ph_len)?;
    }
    let sh_len = u64::from(shentsize).checked_mul(u64::from(shnum))?;
    if shoff != 0 && sh_len > 0 && fill(&mut img, shoff, sh_len).is_some() {
        // The section names, then the sections asked for.
        let strtab = {
            let headers = h.section_headers(e, img.as_slice()).ok()?;
            let s = headers.get(usize::try_from(h.shstrndx(e, img.as_slice()).ok()?).ok()?)?;
            (s.sh_offset(e), s.sh_size(e))
        };
        fill(&mut img, strtab.0, strtab.1.min(1 << 20))?;
        let wanted: Vec<(u64, u64)> = {
            let elf = Elf::parse(&img).ok()?;
            sections
                .iter()
                .filter_map(|n| elf.section(n))
                // SHT_NOBITS sections (.bss) have no file bytes.
                .filter(|s| s.sh_type(e) != SHT_NOBITS)
                .map(|s| (s.sh_offset(e), s.sh_size(e)))
                .collect()
        };
        for (off, len) in wanted {
            let _ = fill(&mut img, off, len);
        }
    } else {
        // No section headers: the build info sits in a writable segment.
        let segments: Vec<(u64, u64)> = Elf::parse(&img)
            .ok()?
            .h
            .program_headers(e, img.as_slice())
            .ok()?
            .iter()
            .filter(|p| p.p_type(e) == PT_LOAD && p.p_flags(e).0 & PF_W.0 != 0)
            .map(|p| (p.p_offset(e), p.p_filesz(e)))
            .collect();
        for (off, len) in segments {
            let _ = fill(&mut img, off, len);
        }
    }
    Some(img)
}

/// File offset of the Go function `name` (e.g. `crypto/tls.(*Conn).sendAlertLocked`)
/// from the binary's `.gopclntab`, which stays when the symbol table is
/// stripped (`-ldflags=-s`). Go 1.18+ layout; `None` when absent or older.
pub fn go_func_offset(bytes: &[u8], name: &str) -> Option<u64> {
    let elf = Elf::parse(bytes).ok()?;
    let tab = PCLNTAB_SECTIONS
        .iter()
        .find_map(|name| elf.section_data(name))?;
    // 0xfffffff0: Go 1.18–1.19, 0xfffffff1: Go 1.20+ (same header layout).
    let magic = u32le(tab, 0)?;
    if magic != 0xffff_fff0 && magic != 0xffff_fff1 {
        return None;
    }
    let ptr = *tab.get(7)? as usize;
    if ptr != 8 {
        return None;
    }
    let word = |i: usize| u64le(tab, i.checked_mul(8)?.checked_add(8)?);
    let nfunc = word(0)? as usize;
    // textStart is filled in at load time by some linkers (0 in the file):
    // entry offsets are then from the start of .text (runtime.text).
    let text_start = match word(2)? {
        0 => elf.section(".text")?.sh_addr(LittleEndian),
        t => t,
    };
    let funcname_off = word(3)? as usize;
    let ftab_off = word(7)? as usize;
    let names = tab.get(funcname_off..)?;
    let ftab = tab.get(ftab_off..)?;
    for i in 0..nfunc {
        let entry_off = u32le(ftab, i.checked_mul(8)?)?;
        let func_off = u32le(ftab, i.checked_mul(8)?.checked_add(4)?)? as usize;
        // _func: entryOff u32, nameOff i32, ...
        let name_off = u32le(ftab, func_off.checked_add(4)?)? as usize;
        let n = names.get(name_off..)?;
        let end = n.iter().position(|&c| c == 0)?;
        if &n[..end] == name.as_bytes() {
            return elf.vaddr_to_offset(text_start.checked_add(entry_off as u64)?);
        }
    }
    None
}

/// Builders of test inputs, also for the agent's own unit tests.
#[cfg(any(test, feature = "test-support"))]
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        unused_imports,
        reason = "built for the agent's tests: only the builders are used there"
    )
)]
pub mod tests {
    use super::*;

    /// A minimal ELF (no sections, no segments) holding a 1.18+ buildinfo blob.
    pub fn fake_go_elf(version: &str, path: &str) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b.resize(128, 0);
        let mut blob = MAGIC.to_vec();
        blob.push(8);
        blob.push(2);
        blob.resize(32, 0);
        blob.push(version.len() as u8);
        blob.extend_from_slice(version.as_bytes());
        let mut modinfo = vec![b'x'; 16];
        modinfo.extend_from_slice(format!("path\t{path}\nbuild\tGOOS=linux\n").as_bytes());
        modinfo.extend_from_slice(&[b'y'; 16]);
        blob.push(modinfo.len() as u8);
        blob.extend_from_slice(&modinfo);
        b.extend_from_slice(&blob);
        b
    }

    #[test]
    fn parses_inline_format_without_sections() {
        let bi = parse(&fake_go_elf("go1.22.3", "cmd/go")).unwrap();
        assert_eq!(bi.go_version, "go1.22.3");
        assert!(bi.is_go_command());
        assert_eq!(bi.settings, vec![("GOOS".into(), "linux".into())]);
    }

    #[test]
    fn section_table_offsets_near_u64_max_are_errors_not_panics() {
        let mut elf = fake_go_elf("go1.22.3", "cmd/go");
        for shoff in [u64::MAX, u64::MAX - 0x40, 1 << 63] {
            elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
            // Debug builds (the tests') panic on overflow: this must not.
            let _ = parse(&elf);
        }
    }

    #[test]
    fn non_go_and_garbage() {
        assert_eq!(parse(b"#!/bin/sh\n"), Err(BuildInfoError::NotElf));
        let mut elf = fake_go_elf("go1.22", "x");
        elf.truncate(100);
        assert_eq!(parse(&elf), Err(BuildInfoError::NotGo));
        let full = fake_go_elf("go1.22.3", "cmd/go");
        for n in 0..full.len() {
            let _ = parse(&full[..n]);
        }
    }

    #[test]
    fn real_go_binary_if_installed() {
        for p in ["/usr/lib/go-1.19/bin/go", "/usr/local/go/bin/go"] {
            if let Ok(b) = std::fs::read(p) {
                let bi = parse(&b).unwrap();
                assert!(bi.go_version.starts_with("go1."), "{bi:?}");
                assert_eq!(bi.path, "cmd/go");
            }
        }
        // A non-Go ELF is NotGo, never a panic.
        if let Ok(b) = std::fs::read("/bin/true") {
            assert_eq!(parse(&b), Err(BuildInfoError::NotGo));
        }
    }
}
