//! The ring-buffer record decoder on arbitrary bytes: never panics, and what
//! it returns stays within what it was given. The input is tried as is, and
//! with its first byte turned into a record kind (so every kind's decoder
//! sees mutated bodies, not only unknown kinds).
#![no_main]

use agent_parse::events::{Event, decode};

fn check(rec: &[u8]) {
    match decode(rec) {
        Ok(Event::Wire(w)) => {
            assert!(w.data.len() <= w.payload_len as usize);
            assert!(w.data.len() < rec.len());
        }
        Ok(Event::Exec(e)) => {
            let text: usize = e.argv.iter().map(String::len).sum::<usize>()
                + e.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            // Lossy UTF-8 may triple a byte (U+FFFD); nothing comes from nowhere.
            assert!(text <= 3 * rec.len(), "{text} from {} bytes", rec.len());
        }
        _ => {}
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some((k, rest)) = data.split_first() {
        let mut rec = Vec::with_capacity(4 + rest.len());
        rec.extend_from_slice(&u32::from(k % 10).to_le_bytes());
        rec.extend_from_slice(rest);
        check(&rec);
    }
});
