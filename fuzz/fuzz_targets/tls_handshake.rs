//! The TLS record reassembly, handshake parser and verdicts on arbitrary
//! segments of both directions (see `tls::fuzz_feed`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agent_parse::tls::fuzz_feed(data);
});
