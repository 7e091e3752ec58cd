//! Parsers of untrusted bytes and text, and the secret scrubber: pure code
//! that builds and tests without the BPF toolchain or root
//! (`cargo test -p agent-parse`), fuzzed on its own (fuzz/).
//!
//! Owns: TLS records and handshakes, DNS messages, Go build info and
//! pclntab, BTF, tracefs formats, the scrubber. Must not: read files,
//! talk to the kernel, or know about the agent's pipeline.

pub mod btf;
pub mod buildinfo;
pub mod dns;
pub mod events;
pub mod scrub;
pub mod tls;
pub mod tracefs_format;
