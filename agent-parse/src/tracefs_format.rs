//! The text of tracefs `format` files (field offsets of tracepoint records).
//!
//! Owns: parsing. Must not: read tracefs (agent/src/tracefs.rs does).

/// Offset of `field` in a tracepoint `format` file's text, if present.
pub fn field_offset_in(format: &str, field: &str) -> Option<u32> {
    for line in format.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let Some((decl, tail)) = rest.split_once(';') else {
            continue;
        };
        // "char comm[16]" / "__data_loc char[] parent_comm" / "pid_t pid"
        let name = decl.split_whitespace().last().unwrap_or("");
        let name = name.split('[').next().unwrap_or(name);
        if name != field {
            continue;
        }
        let off = tail
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        return off.trim().parse().ok();
    }
    None
}
