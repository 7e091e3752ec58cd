//! TLS on the wire: reassembles captured TCP segments into TLS records and
//! parses the plaintext part of a handshake (ClientHello, ServerHello /
//! HelloRetryRequest, alerts, ChangeCipherSpec, the first encrypted record of
//! each side), then says how the handshake ended.
//!
//! Owns: the parser and the per-connection handshake state machine.
//! Must not: touch the kernel, print, or panic: every byte is untrusted, every
//! read is bounds-checked, and records split across segments, several records
//! per segment, retransmits, gaps and captures cut short are all handled.

mod hello;
mod record;

pub use hello::*;
pub use record::*;

use serde::Serialize;

/// Which end of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Client,
    Server,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
    fn idx(self) -> usize {
        self as usize
    }
}

/// A plaintext alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub from: Side,
    pub level: u8,
    pub description: u8,
    pub at_ns: u64,
}

/// How a handshake ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    /// Both sides finished; encrypted traffic follows.
    Completed,
    /// A side sent a plaintext alert.
    Alert { alert: Alert },
    /// A side sent an encrypted alert (TLS 1.3, or after ChangeCipherSpec):
    /// the reason is only known to the library (see the uprobes).
    EncryptedAlert { from: Side },
    /// The connection closed (FIN) or was reset before the handshake finished.
    Closed { by: Side, reset: bool },
    /// A side answered with bytes that are not TLS records (plain HTTP, SSH…).
    NotTls { from: Side },
}

/// Short machine-friendly reason of a verdict (`alert:unknown_ca`, `reset_by_server`…).
pub fn verdict_reason(v: &Verdict) -> String {
    match v {
        Verdict::Completed => "completed".into(),
        Verdict::Alert { alert } => format!("alert:{}", alert_name(alert.description)),
        Verdict::EncryptedAlert { from } => format!("encrypted_alert_from_{}", from.name()),
        Verdict::Closed { by, reset } => {
            format!(
                "{}_by_{}",
                if *reset { "reset" } else { "closed" },
                by.name()
            )
        }
        Verdict::NotTls { from } => format!("not_tls_from_{}", from.name()),
    }
}

/// The handshake of one connection, fed packet by packet.
#[derive(Debug, Default)]
pub struct Handshake {
    streams: [RecordStream; 2],
    pub client_hello: Option<ClientHello>,
    pub server_hello: Option<ServerHello>,
    pub start_ns: u64,
    /// When the verdict was reached.
    pub end_ns: Option<u64>,
    pub verdict: Option<Verdict>,
    ccs: [bool; 2],
    /// Encrypted records seen per side.
    encrypted: [u32; 2],
    /// Records that were not TLS (stream lost) or could not be parsed.
    pub malformed: u64,
}

impl Handshake {
    /// Feed a segment sent by `from`. `ends`: it carried FIN (false) or RST (true).
    pub fn feed(
        &mut self,
        from: Side,
        seq: u32,
        wire_len: usize,
        data: &[u8],
        at_ns: u64,
        ends: Option<bool>,
    ) {
        if self.start_ns == 0 {
            self.start_ns = at_ns;
        }
        if wire_len > 0 {
            let before = self.streams[from.idx()].desynced_segments;
            let recs = self.streams[from.idx()].feed(seq, wire_len, data);
            let lost = self.streams[from.idx()].desynced_segments - before;
            self.malformed += lost;
            for r in recs {
                self.on_record(from, &r, at_ns);
            }
            if lost > 0 && from == Side::Server && self.server_hello.is_none() {
                self.conclude(Verdict::NotTls { from }, at_ns);
            }
        }
        if let Some(reset) = ends
            && self.verdict.is_none()
        {
            self.conclude(Verdict::Closed { by: from, reset }, at_ns);
        }
    }

    fn conclude(&mut self, v: Verdict, at_ns: u64) {
        if self.verdict.is_none() {
            self.verdict = Some(v);
            self.end_ns = Some(at_ns);
        }
    }

    /// The version agreed, when the server said it.
    pub fn version(&self) -> Option<u16> {
        self.server_hello
            .as_ref()
            .filter(|s| !s.hello_retry)
            .map(|s| s.version)
    }

    fn on_record(&mut self, from: Side, r: &Record, at_ns: u64) {
        let i = from.idx();
        match r.content_type {
            CT_HANDSHAKE if !self.ccs[i] => {
                let mut m = Reader::new(&r.body);
                while let (Some(ty), Some(len)) = (m.u8(), m.u24()) {
                    let (body, cut) = match m.take(len) {
                        Some(b) => (b, false),
                        None => (std::mem::take(&mut m.b), true),
                    };
                    match ty {
                        HT_CLIENT_HELLO if from == Side::Client && self.client_hello.is_none() => {
                            self.client_hello = parse_client_hello(body, cut || !r.complete);
                            if self.client_hello.is_none() {
                                self.malformed += 1;
                            }
                        }
                        HT_SERVER_HELLO if from == Side::Server => match parse_server_hello(body) {
                            Some(sh) => self.server_hello = Some(sh),
                            None => self.malformed += 1,
                        },
                        _ => {}
                    }
                    if cut {
                        break;
                    }
                }
            }
            CT_HANDSHAKE => {
                // Encrypted Finished after ChangeCipherSpec (TLS ≤ 1.2).
                self.encrypted[i] += 1;
                if from == Side::Server && self.version().is_some_and(|v| v < 0x0304) {
                    self.conclude(Verdict::Completed, at_ns);
                }
            }
            CT_CHANGE_CIPHER_SPEC => {
                // In TLS 1.3 it is a no-op sent for middlebox compatibility.
                if self.version().is_some_and(|v| v < 0x0304) {
                    self.ccs[i] = true;
                }
            }
            CT_ALERT => {
                if r.len == 2 && !self.ccs[i] && r.body.len() == 2 {
                    let alert = Alert {
                        from,
                        level: r.body[0],
                        description: r.body[1],
                        at_ns,
                    };
                    // close_notify / user_canceled before the end of the handshake
                    // still mean it did not finish.
                    self.conclude(Verdict::Alert { alert }, at_ns);
                } else {
                    self.conclude(Verdict::EncryptedAlert { from }, at_ns);
                }
            }
            CT_APPLICATION_DATA => {
                self.encrypted[i] += 1;
                match self.version() {
                    Some(0x0304) if from == Side::Client => {
                        // The client's first encrypted record is its Finished,
                        // or a 19-byte encrypted alert when it gave up.
                        if self.encrypted[i] == 1 && r.len == TLS13_ENCRYPTED_ALERT_LEN {
                            self.conclude(Verdict::EncryptedAlert { from }, at_ns);
                        } else {
                            self.conclude(Verdict::Completed, at_ns);
                        }
                    }
                    Some(v) if v < 0x0304 => self.conclude(Verdict::Completed, at_ns),
                    _ => {}
                }
            }
            _ => self.malformed += 1,
        }
    }

    /// Handshake duration, ClientHello to verdict.
    pub fn duration_ns(&self) -> Option<u64> {
        self.end_ns.map(|e| e.saturating_sub(self.start_ns))
    }
}

/// Drive the parser from arbitrary bytes (the fuzz targets and the mutation
/// tests): each control byte cuts the next segment: bit 7 picks the side,
/// bit 6 says the capture was cut short (the segment is longer on the wire),
/// the low 6 bits give its length; all ones rewinds the sequence (a
/// retransmit overlapping what was seen).
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_feed(data: &[u8]) {
    let mut hs = Handshake::default();
    let mut seq = [0u32; 2];
    let mut rest = data;
    let mut t = 0;
    while let Some((&ctl, tail)) = rest.split_first() {
        let from = if ctl & 0x80 != 0 {
            Side::Server
        } else {
            Side::Client
        };
        let i = from.idx();
        if ctl & 0x3f == 0x3f {
            seq[i] = seq[i].wrapping_sub(50);
        }
        let take = ((ctl as usize & 0x3f) * 8 + 1).min(tail.len());
        let (seg, tail) = tail.split_at(take);
        let wire = if ctl & 0x40 != 0 { take + 100 } else { take };
        hs.feed(from, seq[i], wire, seg, t, None);
        seq[i] = seq[i].wrapping_add(wire as u32);
        t += 1;
        rest = tail;
    }
    let _ = (hs.duration_ns(), hs.version());
    let _ = parse_client_hello(data, true);
    let _ = parse_server_hello(data);
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

    /// A ClientHello record with the given versions, SNI and ALPN.
    pub fn client_hello(versions: &[u16], sni: &str, alpn: &[&str], legacy: u16) -> Vec<u8> {
        let mut exts = Vec::new();
        let mut sn = Vec::new();
        sn.push(0u8);
        sn.extend((sni.len() as u16).to_be_bytes());
        sn.extend(sni.as_bytes());
        let mut snl = (sn.len() as u16).to_be_bytes().to_vec();
        snl.extend(sn);
        exts.extend(EXT_SERVER_NAME.to_be_bytes());
        exts.extend((snl.len() as u16).to_be_bytes());
        exts.extend(snl);
        if !alpn.is_empty() {
            let mut l = Vec::new();
            for a in alpn {
                l.push(a.len() as u8);
                l.extend(a.as_bytes());
            }
            let mut ll = (l.len() as u16).to_be_bytes().to_vec();
            ll.extend(l);
            exts.extend(EXT_ALPN.to_be_bytes());
            exts.extend((ll.len() as u16).to_be_bytes());
            exts.extend(ll);
        }
        if !versions.is_empty() {
            let mut v = vec![(versions.len() * 2) as u8];
            for x in versions {
                v.extend(x.to_be_bytes());
            }
            exts.extend(EXT_SUPPORTED_VERSIONS.to_be_bytes());
            exts.extend((v.len() as u16).to_be_bytes());
            exts.extend(v);
        }
        let mut body = legacy.to_be_bytes().to_vec();
        body.extend([7u8; 32]);
        body.push(0);
        body.extend(4u16.to_be_bytes());
        body.extend([0x13, 0x01, 0xc0, 0x2f]);
        body.extend([1, 0]);
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        handshake_record(HT_CLIENT_HELLO, &body)
    }

    pub fn server_hello(version: u16, hrr: bool) -> Vec<u8> {
        let mut body = 0x0303u16.to_be_bytes().to_vec();
        body.extend(if hrr { HRR_RANDOM } else { [9u8; 32] });
        body.push(0);
        body.extend([0x13, 0x01]);
        body.push(0);
        if version == 0x0304 {
            body.extend(6u16.to_be_bytes());
            body.extend(EXT_SUPPORTED_VERSIONS.to_be_bytes());
            body.extend(2u16.to_be_bytes());
            body.extend(0x0304u16.to_be_bytes());
        } else {
            body[0..2].copy_from_slice(&version.to_be_bytes());
        }
        handshake_record(HT_SERVER_HELLO, &body)
    }

    fn handshake_record(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut msg = vec![ty];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        record(CT_HANDSHAKE, &msg)
    }

    pub fn record(ct: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![ct, 3, 3];
        r.extend((body.len() as u16).to_be_bytes());
        r.extend(body);
        r
    }

    #[test]
    fn parses_client_hello() {
        let rec = client_hello(
            &[0x0a0a, 0x0304, 0x0303],
            "proxy.golang.org",
            &["h2"],
            0x0303,
        );
        let mut s = RecordStream::default();
        let recs = s.feed(1000, rec.len(), &rec);
        assert_eq!(recs.len(), 1);
        let ch = parse_client_hello(&recs[0].body[4..], false).unwrap();
        assert_eq!(ch.sni.as_deref(), Some("proxy.golang.org"));
        assert_eq!(ch.supported_versions, vec![0x0304, 0x0303]);
        assert_eq!(ch.alpn, vec!["h2"]);
        assert_eq!(ch.cipher_suites, vec![0x1301, 0xc02f]);
        assert_eq!(ch.offered(), vec![0x0304, 0x0303]);
        let old = client_hello(&[], "x", &[], 0x0302);
        let ch = parse_client_hello(&old[9..], false).unwrap();
        assert_eq!(ch.offered(), vec![0x0302, 0x0301]);
    }

    #[test]
    fn records_split_across_segments_and_several_per_segment() {
        let mut bytes = client_hello(&[0x0304], "a.example", &[], 0x0303);
        bytes.extend(record(CT_ALERT, &[2, 70]));
        let mut s = RecordStream::default();
        let mut all = Vec::new();
        // Three-byte segments: headers split too.
        for (i, chunk) in bytes.chunks(3).enumerate() {
            all.extend(s.feed(500 + (i * 3) as u32, chunk.len(), chunk));
        }
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|r| r.complete));
        assert_eq!(all[1].body, vec![2, 70]);
        // One segment with both.
        let mut s = RecordStream::default();
        assert_eq!(s.feed(0, bytes.len(), &bytes).len(), 2);
    }

    #[test]
    fn retransmits_gaps_and_short_captures() {
        let a = record(CT_HANDSHAKE, &[1u8; 100]);
        let b = record(CT_ALERT, &[2, 40]);
        let mut s = RecordStream::default();
        assert_eq!(s.feed(10, a.len(), &a).len(), 1);
        // Retransmit of the same bytes: nothing new.
        assert_eq!(s.feed(10, a.len(), &a).len(), 0);
        // Overlapping retransmit carrying the next record too.
        let mut ab = a.clone();
        ab.extend(&b);
        let r = s.feed(10, ab.len(), &ab);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].body, vec![2, 40]);
        // Capture cut after 20 bytes of a 105-byte record, then the next record
        // in a new segment: the first is reported cut short, the second parsed.
        let mut s = RecordStream::default();
        let r = s.feed(0, ab.len(), &ab[..20]);
        assert_eq!(r.len(), 1);
        assert!(!r[0].complete);
        assert_eq!(r[0].len, 100);
        let r = s.feed(ab.len() as u32, b.len(), &b);
        assert_eq!(r.len(), 1);
        assert!(r[0].complete);
        // A gap: resynchronised at a segment that starts with a header.
        let mut s = RecordStream::default();
        s.feed(0, 3, &a[..3]);
        let r = s.feed(1000, b.len(), &b);
        assert_eq!(r.len(), 1);
        // Garbage is not a record.
        let mut s = RecordStream::default();
        assert!(s.feed(0, 8, b"GET / HT").is_empty());
        assert_eq!(s.desynced_segments, 1);
    }

    fn run(hs: &mut Handshake, from: Side, seq: &mut [u32; 2], bytes: &[u8], t: u64) {
        let i = from as usize;
        hs.feed(from, seq[i], bytes.len(), bytes, t, None);
        seq[i] = seq[i].wrapping_add(bytes.len() as u32);
    }

    /// A handshake whose client sent a ClientHello offering `versions` at t=10.
    fn started(versions: &[u16]) -> (Handshake, [u32; 2]) {
        let mut hs = Handshake::default();
        let mut seq = [1, 1];
        let ch = client_hello(versions, "s", &[], 0x0303);
        run(&mut hs, Side::Client, &mut seq, &ch, 10);
        (hs, seq)
    }

    #[test]
    fn verdicts() {
        // Server refuses the versions: plaintext alert 70.
        let (mut hs, mut seq) = started(&[0x0303]);
        run(
            &mut hs,
            Side::Server,
            &mut seq,
            &record(CT_ALERT, &[2, 70]),
            30,
        );
        assert!(matches!(
            hs.verdict,
            Some(Verdict::Alert {
                alert: Alert {
                    from: Side::Server,
                    description: 70,
                    ..
                }
            })
        ));
        assert_eq!(hs.duration_ns(), Some(20));

        // TLS 1.3 completed: client's first encrypted record is its Finished (53 bytes).
        let (mut hs, mut seq) = started(&[0x0304]);
        let mut flight = server_hello(0x0304, false);
        flight.extend(record(CT_CHANGE_CIPHER_SPEC, &[1]));
        flight.extend(record(CT_APPLICATION_DATA, &[0; 900]));
        run(&mut hs, Side::Server, &mut seq, &flight, 20);
        assert_eq!(hs.version(), Some(0x0304));
        assert!(hs.verdict.is_none());
        run(
            &mut hs,
            Side::Client,
            &mut seq,
            &record(CT_APPLICATION_DATA, &[0; 53]),
            40,
        );
        assert_eq!(hs.verdict, Some(Verdict::Completed));
        assert_eq!(hs.duration_ns(), Some(30));

        // TLS 1.3, client rejects the certificate: a 19-byte encrypted alert.
        let (mut hs, mut seq) = started(&[0x0304]);
        run(
            &mut hs,
            Side::Server,
            &mut seq,
            &server_hello(0x0304, false),
            20,
        );
        run(
            &mut hs,
            Side::Client,
            &mut seq,
            &record(CT_APPLICATION_DATA, &[0; 19]),
            40,
        );
        assert_eq!(
            hs.verdict,
            Some(Verdict::EncryptedAlert { from: Side::Client })
        );

        // TLS 1.2: the client's plaintext unknown_ca.
        let (mut hs, mut seq) = started(&[]);
        run(
            &mut hs,
            Side::Server,
            &mut seq,
            &server_hello(0x0303, false),
            20,
        );
        run(
            &mut hs,
            Side::Client,
            &mut seq,
            &record(CT_ALERT, &[2, 48]),
            40,
        );
        assert!(matches!(
            hs.verdict,
            Some(Verdict::Alert {
                alert: Alert {
                    from: Side::Client,
                    description: 48,
                    ..
                }
            })
        ));

        // TLS 1.2 completed at the server's encrypted Finished.
        let (mut hs, mut seq) = started(&[]);
        run(
            &mut hs,
            Side::Server,
            &mut seq,
            &server_hello(0x0303, false),
            20,
        );
        let mut fin = record(CT_CHANGE_CIPHER_SPEC, &[1]);
        fin.extend(record(CT_HANDSHAKE, &[0; 40]));
        run(&mut hs, Side::Client, &mut seq, &fin, 30);
        assert!(hs.verdict.is_none());
        run(&mut hs, Side::Server, &mut seq, &fin, 50);
        assert_eq!(hs.verdict, Some(Verdict::Completed));

        // A plain HTTP server on the TLS port.
        let (mut hs, mut seq) = started(&[0x0304]);
        run(
            &mut hs,
            Side::Server,
            &mut seq,
            b"HTTP/1.1 400 Bad Request\r\n",
            20,
        );
        assert_eq!(hs.verdict, Some(Verdict::NotTls { from: Side::Server }));

        // Reset after the ClientHello.
        let (mut hs, _) = started(&[0x0304]);
        hs.feed(Side::Server, 1, 0, &[], 99, Some(true));
        assert_eq!(
            hs.verdict,
            Some(Verdict::Closed {
                by: Side::Server,
                reset: true
            })
        );
    }

    #[test]
    fn hello_retry_is_not_a_version() {
        let rec = server_hello(0x0304, true);
        let sh = parse_server_hello(&rec[9..]).unwrap();
        assert!(sh.hello_retry);
    }

    #[test]
    fn never_panics_on_prefixes() {
        let rec = client_hello(&[0x0304, 0x0303], "host", &["h2", "http/1.1"], 0x0303);
        for n in 0..rec.len() {
            let _ = parse_client_hello(&rec[9..9.max(n)], true);
            let _ = parse_server_hello(&rec[..n]);
            let mut hs = Handshake::default();
            hs.feed(Side::Client, 0, rec.len(), &rec[..n], 1, None);
        }
    }
}
