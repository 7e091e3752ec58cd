//! TLS records out of captured TCP segments: one direction of a stream,
//! reassembled across segments, retransmits, gaps and captures cut short.

/// Largest record a peer may send (2^14 plus expansion).
pub const MAX_RECORD: usize = 16384 + 2048;

pub const CT_CHANGE_CIPHER_SPEC: u8 = 20;
pub const CT_ALERT: u8 = 21;
pub const CT_HANDSHAKE: u8 = 22;
pub const CT_APPLICATION_DATA: u8 = 23;

/// One TLS record as seen in a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub content_type: u8,
    pub version: u16,
    /// Length from the record header.
    pub len: usize,
    /// The captured prefix of the body (all of it when `complete`).
    pub body: Vec<u8>,
    pub complete: bool,
}

fn plausible_header(h: &[u8]) -> bool {
    h.len() >= 5
        && (CT_CHANGE_CIPHER_SPEC..=24).contains(&h[0])
        && h[1] == 3
        && h[2] <= 4
        && (u16::from_be_bytes([h[3], h[4]]) as usize) <= MAX_RECORD
}

/// Reassembles one direction of a TCP stream into TLS records from captured
/// segments (`seq`, length on the wire, the captured prefix of the payload).
#[derive(Debug, Default)]
pub struct RecordStream {
    /// Stream position of the next byte expected.
    next_seq: Option<u32>,
    /// Header and body bytes of the record being assembled.
    pending: Vec<u8>,
    /// Bytes of the current record that were not captured and must be passed over.
    skip: usize,
    /// Lost track of record boundaries; resynchronised at a segment that
    /// starts with a plausible header.
    desync: bool,
    /// Segments (or parts) passed over because record boundaries were lost.
    pub desynced_segments: u64,
}

impl RecordStream {
    /// Feed one segment; returns the records it completed (or cut short).
    pub fn feed(&mut self, seq: u32, wire_len: usize, captured: &[u8]) -> Vec<Record> {
        let mut out = Vec::new();
        let mut data = &captured[..captured.len().min(wire_len)];
        let mut full = wire_len;
        if let Some(n) = self.next_seq {
            let delta = seq.wrapping_sub(n) as i32;
            if delta < 0 {
                // Overlaps what was seen: a retransmit. Keep only what is new.
                let dup = delta.unsigned_abs() as usize;
                if dup >= full {
                    return out;
                }
                data = data.get(dup..).unwrap_or(&[]);
                full -= dup;
                if data.is_empty() && dup > captured.len() {
                    // The new part was not captured.
                    self.lose_sync();
                }
            } else if delta > 0 {
                // A gap: bytes never seen.
                self.lose_sync();
            }
        }
        self.next_seq = Some(seq.wrapping_add(wire_len as u32));
        let mut p = 0usize;
        while p < full {
            if self.desync {
                if p == 0 && plausible_header(data) {
                    self.desync = false;
                } else {
                    self.desynced_segments += 1;
                    break;
                }
            }
            if self.skip > 0 {
                let n = self.skip.min(full - p);
                self.skip -= n;
                p += n;
                continue;
            }
            if p >= data.len() {
                // Uncaptured bytes: pass over the rest of a record whose
                // length is known; a header in them cannot be read.
                if self.pending.len() >= 5 {
                    let need = 5 + u16::from_be_bytes([self.pending[3], self.pending[4]]) as usize;
                    self.skip = need.saturating_sub(self.pending.len());
                    out.push(self.take_record(false));
                    continue;
                }
                self.lose_sync();
                self.desynced_segments += 1;
                break;
            }
            if self.pending.len() < 5 {
                let n = (5 - self.pending.len()).min(data.len() - p);
                self.pending.extend_from_slice(&data[p..p + n]);
                p += n;
                if self.pending.len() == 5 && !plausible_header(&self.pending) {
                    self.lose_sync();
                    self.desynced_segments += 1;
                    break;
                }
                continue;
            }
            let need = 5 + u16::from_be_bytes([self.pending[3], self.pending[4]]) as usize;
            let n = (need - self.pending.len()).min(data.len() - p);
            self.pending.extend_from_slice(&data[p..p + n]);
            p += n;
            if self.pending.len() == need {
                out.push(self.take_record(true));
            }
        }
        if self.pending.len() >= 5 && !self.desync {
            let need = 5 + u16::from_be_bytes([self.pending[3], self.pending[4]]) as usize;
            if need == self.pending.len() {
                out.push(self.take_record(true));
            }
        }
        out
    }

    fn lose_sync(&mut self) {
        self.desync = true;
        self.pending.clear();
        self.skip = 0;
    }

    fn take_record(&mut self, complete: bool) -> Record {
        let p = std::mem::take(&mut self.pending);
        Record {
            content_type: p[0],
            version: u16::from_be_bytes([p[1], p[2]]),
            len: u16::from_be_bytes([p[3], p[4]]) as usize,
            body: p[5..].to_vec(),
            complete,
        }
    }
}
