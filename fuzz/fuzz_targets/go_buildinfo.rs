//! Go build info and the pclntab function table on arbitrary ELF bytes
//! (seeded with real Go binaries: normal, PIE, `-s -w`, stripped).
#![no_main]

use agent_parse::buildinfo;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = buildinfo::parse(data);
    let _ = buildinfo::go_func_offset(data, "crypto/tls.(*Conn).sendAlertLocked");
});
