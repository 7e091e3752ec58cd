//! A small reader of kernel BTF (`/sys/kernel/btf/vmlinux`): enough to find
//! the byte offset of a struct member, so BPF programs read kernel structs at
//! this kernel's offsets instead of one kernel's hard-coded layout.
//!
//! Owns: parsing BTF bytes (untrusted input: bounds-checked, never panics).
//! Must not: touch the filesystem beyond [`Btf::from_sys_fs`].

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("struct {0} not found in BTF")]
    NoStruct(String),
    #[error("member {member} not found in struct {strukt}")]
    NoMember { strukt: String, member: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Clone, Copy, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

/// One type's header; a struct's or union's members are decoded from the
/// type section when asked for (the kernel has ~10^5 types: no allocation
/// per type, ~0.17 → ~0.03 s to parse here).
#[derive(Clone, Copy, Debug)]
struct Type {
    name: u32,
    kind: u32,
    /// For typedef/const/volatile/etc: the referenced type.
    type_ref: u32,
    /// Offset of the first member in the type section, and how many.
    members_at: u32,
    vlen: u16,
    kind_flag: bool,
}

/// Parsed BTF types (only what member lookup needs).
pub struct Btf {
    types: Vec<Type>,
    tsec: Vec<u8>,
    strings: Vec<u8>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    /// Read the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let bytes = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.into(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parse raw BTF bytes (little-endian only, like every BPF target we load on).
    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        use BtfError::Malformed;
        if b.len() < 24 {
            return Err(Malformed("short header"));
        }
        if u16::from_le_bytes([b[0], b[1]]) != MAGIC {
            return Err(Malformed("bad magic (big-endian or not BTF)"));
        }
        let hdr_len = u32_at(b, 4).ok_or(Malformed("header"))? as usize;
        let type_off = u32_at(b, 8).ok_or(Malformed("header"))? as usize;
        let type_len = u32_at(b, 12).ok_or(Malformed("header"))? as usize;
        let str_off = u32_at(b, 16).ok_or(Malformed("header"))? as usize;
        let str_len = u32_at(b, 20).ok_or(Malformed("header"))? as usize;
        let range = |off: usize, len: usize| -> Result<&[u8], BtfError> {
            let start = hdr_len
                .checked_add(off)
                .ok_or(Malformed("offset overflow"))?;
            let end = start.checked_add(len).ok_or(Malformed("offset overflow"))?;
            b.get(start..end).ok_or(Malformed("section out of bounds"))
        };
        let tsec = range(type_off, type_len)?;
        if u32::try_from(tsec.len()).is_err() {
            return Err(Malformed("type section over 4 GiB"));
        }
        let strings = range(str_off, str_len)?.to_vec();

        // Type id 0 is "void".
        let mut types = Vec::with_capacity(tsec.len() / 24);
        types.push(Type {
            name: 0,
            kind: 0,
            type_ref: 0,
            members_at: 0,
            vlen: 0,
            kind_flag: false,
        });
        let mut p = 0usize;
        while p < tsec.len() {
            let name = u32_at(tsec, p).ok_or(Malformed("truncated type"))?;
            let info = u32_at(tsec, p + 4).ok_or(Malformed("truncated type"))?;
            let size_or_type = u32_at(tsec, p + 8).ok_or(Malformed("truncated type"))?;
            p += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let extra = match kind {
                1 => 4,  // INT
                3 => 12, // ARRAY
                KIND_STRUCT | KIND_UNION => vlen * 12,
                6 => vlen * 8,             // ENUM
                13 => vlen * 8,            // FUNC_PROTO
                14 => 4,                   // VAR
                15 => vlen * 12,           // DATASEC
                17 => 4,                   // DECL_TAG
                19 => vlen * 12,           // ENUM64
                2 | 7..=12 | 16 | 18 => 0, // PTR FWD TYPEDEF VOLATILE CONST RESTRICT FUNC FLOAT TYPE_TAG
                _ => return Err(Malformed("unknown BTF kind")),
            };
            let members_at = p as u32;
            p = p.checked_add(extra).ok_or(Malformed("overflow"))?;
            if p > tsec.len() {
                return Err(Malformed("type runs past section"));
            }
            types.push(Type {
                name,
                kind,
                type_ref: size_or_type,
                members_at,
                vlen: vlen as u16,
                kind_flag: info >> 31 == 1,
            });
        }
        Ok(Btf {
            types,
            tsec: tsec.to_vec(),
            strings,
        })
    }

    fn str_at(&self, off: u32) -> Option<&str> {
        let s = self.strings.get(off as usize..)?;
        let end = s.iter().position(|&c| c == 0)?;
        std::str::from_utf8(&s[..end]).ok()
    }

    /// Whether the string at `off` is exactly `want`.
    fn str_is(&self, off: u32, want: &str) -> bool {
        let (off, w) = (off as usize, want.as_bytes());
        self.strings.get(off..off + w.len()) == Some(w)
            && self.strings.get(off + w.len()) == Some(&0)
    }

    /// The members of a struct or union, decoded from the type section
    /// (bounds were checked at parse time; a bad one ends the list).
    fn members(&self, t: &Type) -> impl Iterator<Item = Member> + '_ {
        let (at, flag) = (t.members_at as usize, t.kind_flag);
        let n = if matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            t.vlen as usize
        } else {
            0
        };
        (0..n).map_while(move |i| {
            let m = at + i * 12;
            let moff = u32_at(&self.tsec, m + 8)?;
            Some(Member {
                name: u32_at(&self.tsec, m)?,
                type_id: u32_at(&self.tsec, m + 4)?,
                bit_offset: if flag { moff & 0x00ff_ffff } else { moff },
            })
        })
    }

    /// Follow typedef/const/volatile/restrict/type_tag to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                8..=11 | 18 => id = t.type_ref,
                _ => return Some(t),
            }
        }
        None
    }

    fn find_in(&self, t: &Type, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in self.members(t) {
            if m.name != 0 {
                if self.str_at(m.name) == Some(member) {
                    return Some(m.bit_offset);
                }
            } else if let Some(inner) = self.resolve(m.type_id) {
                // Anonymous struct/union: its members are reached through it.
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(off) = self.find_in(inner, member, depth + 1)
                {
                    return Some(m.bit_offset + off);
                }
            }
        }
        None
    }

    /// Byte offset of `member` in `struct strukt` (anonymous members searched).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        // First definition wins (modules may repeat names; vmlinux does not).
        let t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && t.name != 0 && self.str_is(t.name, strukt))
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let bits = self
            .find_in(t, member, 0)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.into(),
                member: member.into(),
            })?;
        Ok(bits / 8)
    }
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Btf")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a tiny BTF blob: `struct s { int a; struct { int b; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0s\0a\0b\0int\0".to_vec(); // s=1 a=3 b=5 int=7
        let mut t = Vec::new();
        let mut push = |v: u32| t.extend_from_slice(&v.to_le_bytes());
        // [1] INT 'int' size 4
        push(7);
        push(1 << 24);
        push(4);
        push(32);
        // [2] anonymous STRUCT { b at bit 0 }
        push(0);
        push((4 << 24) | 1);
        push(4);
        push(5);
        push(1);
        push(0);
        // [3] STRUCT 's' { a at 0, anon at bit 64 }
        push(1);
        push((4 << 24) | 2);
        push(12);
        push(3);
        push(1);
        push(0);
        push(0);
        push(2);
        push(64);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.push(1);
        b.push(0);
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn finds_members_including_anonymous() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("s", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("s", "b").unwrap(), 8);
        assert!(matches!(
            btf.member_offset("s", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("t", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let b = sample();
        for n in 0..b.len() {
            let _ = Btf::parse(&b[..n]);
        }
        assert!(Btf::parse(&b[..10]).is_err());
    }

    #[test]
    fn running_kernel_task_struct() {
        // Only where the kernel exposes BTF (every CI machine here does).
        let Ok(btf) = Btf::from_sys_fs() else { return };
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        let parent = btf.member_offset("task_struct", "real_parent").unwrap();
        assert!(tgid > 0 && parent > tgid);
    }
}
