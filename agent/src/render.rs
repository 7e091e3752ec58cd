//! How a record is shaped, for every signal alike: the style (format,
//! colour, clock), times, colour, width, and the one interface
//! ([`Record`]) through which a sink prints any signal's record without
//! knowing which signal made it. Each signal renders its own records
//! (`signal/<name>/render.rs`); sinks only decide where lines go.
//!
//! Owns: shaping. Must not: write (see `sink::output`).

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Json,
    /// The `agent trace` report as Markdown (records stay text).
    Markdown,
}

#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub format: Format,
    pub color: bool,
    /// boot-time ns → Unix ns.
    pub clock_offset_ns: i128,
}

/// The columns a text record fits.
pub const WIDTH: usize = 120;

/// Stands for ESC in what [`paint`] makes; only the sinks turn it into ESC,
/// after every real control character of the data has been escaped.
pub const ESC_MARK: char = '\u{E01B}';

/// A record of any signal, as the text and JSON sinks print it.
pub trait Record {
    /// Whether live and trace output show it: `all` is `--all-execs`
    /// (everything), `json` the format (JSON keeps failed execs outside
    /// toolchains, which are only noise in text).
    fn shown(&self, all: bool, json: bool) -> bool;
    /// One line (or a line and its indented detail) for a person.
    fn text(&self, style: &Style) -> String;
    /// One JSON object on one line, `"type"` first, every string scrubbed.
    fn json(&self, style: &Style) -> String;
    /// The client span it makes (a connection set-up, a lookup, a
    /// handshake), if it is one worth exporting.
    fn span(&self) -> Option<SpanDesc<'_>> {
        None
    }
    /// Its measurements, each on one of its signal's [`Metric`]s.
    fn measure(&self, _m: &dyn Meter) {}
}

/// A span attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    StrArray(Vec<String>),
}

/// A finished client span as a signal describes it; the OTLP sink turns it
/// into an SDK span under its process's span (and scrubs every string).
#[derive(Debug)]
pub struct SpanDesc<'a> {
    /// Low-cardinality, as the semantic conventions want (`connect`, `dns
    /// query`): addresses are attributes.
    pub name: &'static str,
    /// The process whose span it goes under.
    pub pid: u32,
    /// Boot-time ns.
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Set when the operation failed: the span's error status.
    pub error: Option<String>,
    /// Added as span events.
    pub findings: &'a [crate::finding::Finding],
}

/// What kind of instrument a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Histogram,
    Gauge,
}

/// One exported metric: the instrument, the docs' row and the dashboard's
/// checks all come from these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub kind: MetricKind,
}

pub const fn metric(name: &'static str, unit: &'static str, kind: MetricKind) -> Metric {
    Metric { name, unit, kind }
}

/// Where a record's measurements go (the OTLP metrics sink). Labels come
/// from small fixed sets: never pids, paths or argv.
pub trait Meter {
    /// Add `n` to a counter.
    fn add(&self, m: &Metric, n: u64, labels: &[(&'static str, &str)]);
    /// Record one value of a histogram (seconds for durations).
    fn record(&self, m: &Metric, v: f64, labels: &[(&'static str, &str)]);
}

/// Serialise a JSON record for a sink, every string in it scrubbed, straight
/// from its value (no `serde_json::Value` tree on the way).
pub fn json_line<T: serde::Serialize + ?Sized>(v: &T) -> String {
    crate::scrub::ser::to_line(v)
}

pub fn unix_ns(style: &Style, ktime_ns: u64) -> i128 {
    ktime_ns as i128 + style.clock_offset_ns
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let ms = (unix_ns.rem_euclid(1_000_000_000) / 1_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn clock(style: &Style, ktime_ns: u64) -> String {
    // HH:MM:SS.mmm of the RFC 3339 string.
    rfc3339(unix_ns(style, ktime_ns))[11..23].to_string()
}

pub fn paint(style: &Style, code: &str, s: &str) -> String {
    if style.color {
        format!("{ESC_MARK}[{code}m{s}{ESC_MARK}[0m")
    } else {
        s.to_string()
    }
}

pub fn fit(mut s: String, width: usize) -> String {
    if s.chars().count() > width {
        s = s.chars().take(width.saturating_sub(1)).collect();
        s.push('…');
    }
    s
}

/// Length of `s` on screen: without the colour sequences of [`paint`].
pub fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, ESC_MARK) => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-22T11:00:00.250Z
        assert_eq!(
            rfc3339(1_795_345_200_250_000_000),
            "2026-11-22T11:00:00.250Z"
        );
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
    }
}
