//! The DNS message parser (names, compression pointers, answers) on arbitrary bytes.
#![no_main]

use agent_parse::dns;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = dns::parse(data) {
        let _ = m.addresses().count();
    }
});
