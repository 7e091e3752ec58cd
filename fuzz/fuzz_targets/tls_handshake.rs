//! The TLS record reassembly, handshake parser and verdicts on arbitrary
//! segments of both directions (see `tls::fuzz_feed`).
#![no_main]

#[allow(dead_code)]
#[path = "../../agent/src/tls.rs"]
mod tls;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tls::fuzz_feed(data);
});
