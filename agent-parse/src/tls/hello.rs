//! The plaintext hellos: ClientHello and ServerHello / HelloRetryRequest
//! bodies, and the names of versions and alerts.

use serde::Serialize;

pub(super) const HT_CLIENT_HELLO: u8 = 1;
pub(super) const HT_SERVER_HELLO: u8 = 2;

pub(super) const EXT_SERVER_NAME: u16 = 0;
pub(super) const EXT_ALPN: u16 = 16;
pub(super) const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// SHA-256("HelloRetryRequest"): the ServerHello random of a HelloRetryRequest.
pub(super) const HRR_RANDOM: [u8; 32] = [
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
];

/// An encrypted alert record in TLS 1.3: 2 bytes of alert + 1 content type + 16 bytes AEAD tag.
pub(super) const TLS13_ENCRYPTED_ALERT_LEN: usize = 19;

/// Bounds-checked big-endian reader.
pub(super) struct Reader<'a> {
    pub(super) b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        Self { b }
    }
    pub(super) fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.b.split_first()?;
        self.b = rest;
        Some(v)
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        let s = self.take(2)?;
        Some(u16::from_be_bytes([s[0], s[1]]))
    }
    pub(super) fn u24(&mut self) -> Option<usize> {
        let s = self.take(3)?;
        Some(((s[0] as usize) << 16) | ((s[1] as usize) << 8) | s[2] as usize)
    }
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Some(a)
    }
    /// A vector with a `w`-byte length prefix.
    pub(super) fn vec(&mut self, w: usize) -> Option<Reader<'a>> {
        let n = match w {
            1 => self.u8()? as usize,
            2 => self.u16()? as usize,
            _ => self.u24()?,
        };
        self.take(n).map(Reader::new)
    }
    pub(super) fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

/// What a client offered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientHello {
    pub legacy_version: u16,
    /// From `supported_versions`, GREASE removed; empty when absent.
    pub supported_versions: Vec<u16>,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub cipher_suites: Vec<u16>,
    /// The message was cut short by the capture: lists may be incomplete.
    pub partial: bool,
}

impl ClientHello {
    /// Versions offered, highest first.
    pub fn offered(&self) -> Vec<u16> {
        let mut v = if self.supported_versions.is_empty() {
            // Without the extension the client offers everything up to legacy_version.
            [0x0304u16, 0x0303, 0x0302, 0x0301]
                .into_iter()
                .filter(|&x| x <= self.legacy_version && self.legacy_version <= 0x0303)
                .collect()
        } else {
            self.supported_versions.clone()
        };
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }
}

/// What a server chose.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerHello {
    /// Negotiated version (`supported_versions` when present, else legacy).
    pub version: u16,
    pub cipher_suite: u16,
    pub hello_retry: bool,
}

fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Parse a ClientHello body (after the 4-byte handshake header). Best effort
/// on a capture cut short: whatever was read before the cut is returned.
pub fn parse_client_hello(body: &[u8], partial: bool) -> Option<ClientHello> {
    let mut r = Reader::new(body);
    let mut ch = ClientHello {
        legacy_version: r.u16()?,
        partial,
        ..Default::default()
    };
    r.take(32)?;
    r.vec(1)?;
    let Some(mut cs) = r.vec(2) else {
        ch.partial = true;
        return Some(ch);
    };
    while let Some(c) = cs.u16() {
        if !is_grease(c) {
            ch.cipher_suites.push(c);
        }
    }
    if r.vec(1).is_none() {
        ch.partial = true;
        return Some(ch);
    }
    let n = match r.u16() {
        Some(n) => n as usize,
        None => return Some(ch),
    };
    let mut exts = if r.b.len() >= n {
        Reader::new(&r.b[..n])
    } else {
        ch.partial = true;
        Reader::new(r.b)
    };
    while !exts.is_empty() {
        let (Some(ty), Some(len)) = (exts.u16(), exts.u16()) else {
            break;
        };
        let Some(data) = exts.take(len as usize) else {
            ch.partial = true;
            break;
        };
        let mut d = Reader::new(data);
        match ty {
            EXT_SERVER_NAME => {
                if let Some(mut list) = d.vec(2) {
                    while let Some(kind) = list.u8() {
                        let Some(name) = list.vec(2) else { break };
                        if kind == 0 {
                            ch.sni = Some(String::from_utf8_lossy(name.b).into_owned());
                        }
                    }
                }
            }
            EXT_ALPN => {
                if let Some(mut list) = d.vec(2) {
                    while let Some(p) = list.vec(1) {
                        ch.alpn.push(String::from_utf8_lossy(p.b).into_owned());
                    }
                }
            }
            EXT_SUPPORTED_VERSIONS => {
                if let Some(mut list) = d.vec(1) {
                    while let Some(v) = list.u16() {
                        if !is_grease(v) {
                            ch.supported_versions.push(v);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(ch)
}

/// Parse a ServerHello body (after the 4-byte handshake header).
pub fn parse_server_hello(body: &[u8]) -> Option<ServerHello> {
    let mut r = Reader::new(body);
    let legacy = r.u16()?;
    let random = r.take(32)?;
    r.vec(1)?;
    let mut sh = ServerHello {
        version: legacy,
        cipher_suite: r.u16()?,
        hello_retry: random == HRR_RANDOM,
    };
    r.u8()?;
    if let Some(mut exts) = r.vec(2) {
        while !exts.is_empty() {
            let (Some(ty), Some(len)) = (exts.u16(), exts.u16()) else {
                break;
            };
            let Some(data) = exts.take(len as usize) else {
                break;
            };
            if ty == EXT_SUPPORTED_VERSIONS && data.len() == 2 {
                sh.version = u16::from_be_bytes([data[0], data[1]]);
            }
        }
    }
    Some(sh)
}

/// `TLS 1.2`, `SSL 3.0`, or the hex value.
pub fn version_name(v: u16) -> String {
    match v {
        0x0300 => "SSL 3.0".into(),
        0x0301 => "TLS 1.0".into(),
        0x0302 => "TLS 1.1".into(),
        0x0303 => "TLS 1.2".into(),
        0x0304 => "TLS 1.3".into(),
        _ => format!("0x{v:04x}"),
    }
}

/// RFC 8446 §6 alert description names.
pub fn alert_name(d: u8) -> &'static str {
    match d {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "unknown_alert",
    }
}

/// Alerts that mean one side did not accept the other's certificate.
pub fn is_certificate_alert(d: u8) -> bool {
    matches!(d, 42 | 43 | 44 | 45 | 46 | 48)
}
