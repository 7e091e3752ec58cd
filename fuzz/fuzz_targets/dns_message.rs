//! The DNS message parser (names, compression pointers, answers) on arbitrary bytes.
#![no_main]

#[allow(dead_code)]
#[path = "../../agent/src/dns.rs"]
mod dns;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = dns::parse(data) {
        let _ = m.addresses().count();
    }
});
