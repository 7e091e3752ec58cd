//! The kernel BTF reader on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = agent_parse::btf::Btf::parse(data) {
        let _ = btf.member_offset("task_struct", "tgid");
    }
});
