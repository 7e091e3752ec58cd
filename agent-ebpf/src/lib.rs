//! Library face of the BPF crate, so `agent` can build-depend on it (rebuild tracking only).
#![no_std]
