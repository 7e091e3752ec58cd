//! DNS messages from the wire: header, questions and the answers that matter
//! for diagnosis (addresses, aliases).
//!
//! Owns: the parser. Must not: panic or loop on hostile input: every read is
//! bounds-checked, names are at most 255 bytes, compression pointers must
//! point strictly backwards (which refuses every loop) and are followed at
//! most 32 times, and counts are capped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// Why a message could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("message of {0} bytes is shorter than a DNS header")]
    Short(usize),
    #[error("name runs past the end of the message")]
    NameTruncated,
    #[error("compression pointer does not point backwards (loop)")]
    PointerLoop,
    #[error("name longer than 255 bytes")]
    NameTooLong,
    #[error("reserved label type 0x{0:02x}")]
    LabelType(u8),
    #[error("message has no question")]
    NoQuestion,
}

/// Answers parsed per message, at most.
const MAX_ANSWERS: usize = 32;
const MAX_JUMPS: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AnswerData {
    Addr(IpAddr),
    Name(String),
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub name: String,
    pub rtype: u16,
    pub ttl: u32,
    pub data: AnswerData,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    pub id: u16,
    pub response: bool,
    pub opcode: u8,
    pub rcode: u8,
    pub truncated: bool,
    pub question: Question,
    pub answers: Vec<Answer>,
    /// Answer records present but not parsed (cut short by the capture, or past the cap).
    pub answers_missing: u16,
}

impl Message {
    /// Addresses in the answers.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.answers.iter().filter_map(|a| match a.data {
            AnswerData::Addr(ip) => Some(ip),
            _ => None,
        })
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Read a (possibly compressed) name at `off`; returns it and the offset after it.
pub fn read_name(msg: &[u8], mut off: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    // Every pointer must point before the label that holds it.
    let mut limit = off;
    loop {
        let len = *msg.get(off).ok_or(DnsError::NameTruncated)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    return Ok((
                        if name.is_empty() { ".".into() } else { name },
                        end.unwrap_or(off + 1),
                    ));
                }
                let label = msg
                    .get(off + 1..off + 1 + len as usize)
                    .ok_or(DnsError::NameTruncated)?;
                if name.len() + label.len() + 1 > 255 {
                    return Err(DnsError::NameTooLong);
                }
                if !name.is_empty() {
                    name.push('.');
                }
                for &c in label {
                    // Printable ASCII as is, anything else escaped as \DDD.
                    if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                        name.push(c as char);
                    } else {
                        name.push_str(&format!("\\{c:03}"));
                    }
                }
                off += 1 + len as usize;
            }
            0xc0 => {
                let lo = *msg.get(off + 1).ok_or(DnsError::NameTruncated)?;
                let target = (((len & 0x3f) as usize) << 8) | lo as usize;
                jumps += 1;
                if target >= limit || jumps > MAX_JUMPS {
                    return Err(DnsError::PointerLoop);
                }
                end.get_or_insert(off + 2);
                limit = target;
                off = target;
            }
            other => return Err(DnsError::LabelType(other)),
        }
    }
}

/// Parse a DNS message (UDP payload; for TCP, without the 2-byte length).
pub fn parse(msg: &[u8]) -> Result<Message, DnsError> {
    if msg.len() < 12 {
        return Err(DnsError::Short(msg.len()));
    }
    let id = u16_at(msg, 0).unwrap_or(0);
    let flags = u16_at(msg, 2).unwrap_or(0);
    let qd = u16_at(msg, 4).unwrap_or(0);
    let an = u16_at(msg, 6).unwrap_or(0);
    if qd == 0 {
        return Err(DnsError::NoQuestion);
    }
    let (qname, mut off) = read_name(msg, 12)?;
    let qtype = u16_at(msg, off).ok_or(DnsError::NameTruncated)?;
    off += 4;
    // Further questions (never seen in practice) are skipped.
    for _ in 1..qd {
        let (_, o) = read_name(msg, off)?;
        off = o + 4;
    }
    let mut m = Message {
        id,
        response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0xf) as u8,
        rcode: (flags & 0xf) as u8,
        truncated: flags & 0x0200 != 0,
        question: Question { name: qname, qtype },
        answers: Vec::new(),
        answers_missing: 0,
    };
    for i in 0..an {
        if i as usize >= MAX_ANSWERS {
            m.answers_missing = an - i;
            break;
        }
        let parsed = (|| {
            let (name, o) = read_name(msg, off).ok()?;
            let rtype = u16_at(msg, o)?;
            let ttl = u32_at(msg, o + 4)?;
            let rdlen = u16_at(msg, o + 8)? as usize;
            let rd = msg.get(o + 10..o + 10 + rdlen)?;
            let data = match (rtype, rd.len()) {
                (1, 4) => AnswerData::Addr(IpAddr::V4(Ipv4Addr::new(rd[0], rd[1], rd[2], rd[3]))),
                (28, 16) => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(rd);
                    AnswerData::Addr(IpAddr::V6(Ipv6Addr::from(a)))
                }
                (5, _) => AnswerData::Name(read_name(msg, o + 10).ok()?.0),
                _ => AnswerData::Other,
            };
            Some((
                Answer {
                    name,
                    rtype,
                    ttl,
                    data,
                },
                o + 10 + rdlen,
            ))
        })();
        match parsed {
            Some((a, o)) => {
                m.answers.push(a);
                off = o;
            }
            None => {
                m.answers_missing = an - i;
                break;
            }
        }
    }
    Ok(m)
}

/// `NXDOMAIN`, `SERVFAIL`…
pub fn rcode_name(r: u8) -> &'static str {
    match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "RCODE?",
    }
}

/// `A`, `AAAA`…
pub fn qtype_name(t: u16) -> String {
    match t {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        64 => "SVCB".into(),
        65 => "HTTPS".into(),
        255 => "ANY".into(),
        other => format!("TYPE{other}"),
    }
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

    /// A query or response for `name` with the given answers (A records).
    pub fn message(id: u16, name: &str, qtype: u16, rcode: u8, answers: &[[u8; 4]]) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        let flags: u16 = if rcode != 0 || !answers.is_empty() {
            0x8180 | rcode as u16
        } else {
            0x0100
        };
        m.extend(flags.to_be_bytes());
        m.extend(1u16.to_be_bytes());
        m.extend((answers.len() as u16).to_be_bytes());
        m.extend([0, 0, 0, 0]);
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend(l.as_bytes());
        }
        m.push(0);
        m.extend(qtype.to_be_bytes());
        m.extend(1u16.to_be_bytes());
        for a in answers {
            m.extend([0xc0, 12]);
            m.extend(1u16.to_be_bytes());
            m.extend(1u16.to_be_bytes());
            m.extend(300u32.to_be_bytes());
            m.extend(4u16.to_be_bytes());
            m.extend(a);
        }
        m
    }

    #[test]
    fn query_and_answer() {
        let q = parse(&message(7, "proxy.golang.org", 1, 0, &[])).unwrap();
        assert!(!q.response);
        assert_eq!(q.question.name, "proxy.golang.org");
        let r = parse(&message(
            7,
            "proxy.golang.org",
            1,
            0,
            &[[10, 0, 0, 5], [10, 0, 0, 6]],
        ))
        .unwrap();
        assert!(r.response);
        assert_eq!(r.rcode, 0);
        assert_eq!(
            r.addresses().collect::<Vec<_>>(),
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "10.0.0.6".parse().unwrap()
            ]
        );
        assert_eq!(r.answers[0].name, "proxy.golang.org");
        let nx = parse(&message(8, "nope.test", 28, 3, &[])).unwrap();
        assert_eq!(rcode_name(nx.rcode), "NXDOMAIN");
        assert_eq!(qtype_name(nx.question.qtype), "AAAA");
    }

    #[test]
    fn refuses_pointer_loops_and_bad_input() {
        // A pointer to itself.
        let mut m = message(1, "a", 1, 0, &[]);
        m.truncate(12);
        m.extend([0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse(&m), Err(DnsError::PointerLoop));
        // Two pointers pointing at each other.
        let mut m = vec![0u8; 12];
        m[5] = 1;
        m.extend([0xc0, 14, 0xc0, 12]);
        assert_eq!(parse(&m), Err(DnsError::PointerLoop));
        assert_eq!(parse(&[0; 5]), Err(DnsError::Short(5)));
        let mut m = message(1, "abc", 1, 0, &[]);
        m.truncate(14);
        assert_eq!(parse(&m), Err(DnsError::NameTruncated));
        // Answers cut short by the capture are counted, not invented.
        let full = message(9, "x.y", 1, 0, &[[1, 2, 3, 4], [5, 6, 7, 8]]);
        let r = parse(&full[..full.len() - 3]).unwrap();
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers_missing, 1);
    }

    #[test]
    fn escapes_odd_labels() {
        let mut m = vec![0u8; 12];
        m[5] = 1;
        m.extend([3, b'a', b'.', 0xff, 0, 0, 1, 0, 1]);
        assert_eq!(parse(&m).unwrap().question.name, "a\\046\\255");
    }
}
