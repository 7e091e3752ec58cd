//! Plaintext HTTP error responses: the status line of a 4xx/5xx answer
//! received by a connecting socket (the kernel keeps its first 16 bytes).
//!
//! A healthy machine is silent: 404 and 410 are how a module proxy says "not
//! here" (Go then tries the next entry of GOPROXY), so they are findings only
//! when the pipeline ties them to something that failed: a toolchain
//! download. Other errors are findings when they come from a server that a
//! setting named (`GOPROXY`, `PIP_INDEX_URL`, …): "your GOPROXY answered
//! HTTP 504" has a cause and a fix; a random site's 500 does not.
//!
//! Owns: status-line parsing and the `http.error_status` finding.
//! Must not: read headers or bodies (they never leave the kernel).

pub mod codes;

use std::net::SocketAddr;

use serde_json::json;

use crate::{
    events::Wire,
    finding::{Dedup, Finding, Severity, evidence},
    process::{endpoints::EndpointSource, fsview::basename, names::HostNames, table::ProcTable},
};

/// An HTTP status code and its standard reason phrase (the server's own
/// phrase is not shown: it is text a server chose).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// The status of a captured status line: `HTTP/1.x DDD`, 400..=599.
    pub fn parse(line: &[u8]) -> Option<Status> {
        let rest = line.strip_prefix(b"HTTP/1.")?;
        let (&minor, rest) = rest.split_first()?;
        let rest = rest.strip_prefix(b" ")?;
        if !minor.is_ascii_digit() || rest.len() < 3 || !rest[..3].iter().all(u8::is_ascii_digit) {
            return None;
        }
        if rest.get(3).is_some_and(|b| *b != b' ' && *b != b'\r') {
            return None;
        }
        let code = rest[..3]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        (400..600).contains(&code).then_some(Status(code))
    }

    /// "not found here" in a module proxy's protocol: the client moves on.
    pub fn is_not_found(self) -> bool {
        matches!(self.0, 404 | 410)
    }

    pub fn reason(self) -> &'static str {
        match self.0 {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            407 => "Proxy Authentication Required",
            408 => "Request Timeout",
            410 => "Gone",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ if self.0 < 500 => "client error",
            _ => "server error",
        }
    }

    /// `HTTP 404 Not Found`.
    pub fn describe(self) -> String {
        format!("HTTP {} {}", self.0, self.reason())
    }
}

/// One error response and what it means.
#[derive(Clone, Debug)]
pub struct HttpReport {
    pub pid: u32,
    pub status: Status,
    /// The setting that named the server, if any.
    pub endpoint: Option<EndpointSource>,
    /// `http.error_status` for this response. Shown on its own when
    /// `standalone`; otherwise only when the pipeline ties it to a failure
    /// (a toolchain download).
    pub finding: Finding,
    pub standalone: bool,
    pub ktime_ns: u64,
}

#[derive(Default)]
pub struct HttpTracker {
    reported: Dedup,
    /// Error responses seen (every one the kernel kept).
    pub seen: u64,
    /// Captures that were not an HTTP/1.x error status line.
    pub malformed: u64,
}

impl HttpTracker {
    pub fn on_wire(
        &mut self,
        table: &ProcTable,
        w: &Wire,
        names: &dyn HostNames,
    ) -> Option<HttpReport> {
        let Some(status) = Status::parse(&w.data) else {
            self.malformed += 1;
            return None;
        };
        self.seen += 1;
        let (ip, port) = w.remote();
        let host = names.name_for(w.tgid, ip);
        let exec = table.get(w.tgid).and_then(|p| p.current());
        let endpoint = exec.and_then(|e| {
            crate::process::endpoints::source_of(&e.exe, &e.env, &e.argv, ip, port, host)
        });
        // Not-found is the protocol's "try elsewhere"; anything else from a
        // server nobody named is not ours to judge.
        let standalone = endpoint.is_some() && !status.is_not_found();
        let dst = SocketAddr::new(ip, port);
        let key = format!("http|{}|{dst}|{}", w.tgid, status.0);
        if !self.reported.first(key, w.ktime_ns) {
            return None;
        }
        let name = exec
            .map(|e| basename(&e.exe).to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| w.comm.clone());
        let shown = match host {
            Some(h) => format!("{h} ({dst})"),
            None => dst.to_string(),
        };
        let note = endpoint
            .as_ref()
            .map(|s| format!(" ({})", s.note()))
            .unwrap_or_default();
        let (cause, fix) = match &endpoint {
            Some(src) => (
                format!(
                    "the server answered {}; the address came from {}",
                    status.describe(),
                    src.describe()
                ),
                if status.is_not_found() {
                    format!(
                        "the server does not have what was asked for: point {} at a server that serves it",
                        src.variable
                    )
                } else if status.0 < 500 {
                    format!(
                        "the server refused the request: check the credentials or access {} needs, or point it at a server that works",
                        src.variable
                    )
                } else {
                    format!(
                        "the server (or the upstream behind it) is failing: retry later, check its logs, or point {} at a server that works",
                        src.variable
                    )
                },
            ),
            None => (
                format!("the server answered {}", status.describe()),
                "check the URL and the server".to_string(),
            ),
        };
        let finding = Finding {
            code: codes::ERROR_STATUS,
            severity: Severity::Error,
            pid: w.tgid,
            summary: format!("{name} → {shown}{note} answered {}", status.describe()),
            cause,
            fix,
            evidence: evidence(&[
                ("status", json!(status.0)),
                ("destination", json!(dst.to_string())),
                ("host", json!(host)),
                ("comm", json!(w.comm)),
                ("endpoint_from", json!(endpoint)),
            ]),
        };
        Some(HttpReport {
            pid: w.tgid,
            status,
            endpoint,
            finding,
            standalone,
            ktime_ns: w.ktime_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{WireKind, tests::wire},
        process::names::NoNames,
    };

    #[test]
    fn status_lines() {
        assert_eq!(Status::parse(b"HTTP/1.1 404 Not"), Some(Status(404)));
        assert_eq!(Status::parse(b"HTTP/1.0 504\r\n"), Some(Status(504)));
        assert_eq!(Status::parse(b"HTTP/1.1 410"), Some(Status(410)));
        for bad in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"HTTP/1.1 302 Found",
            b"HTTP/1.1 600 Odd",
            b"HTTP/1.1 4x4 No",
            b"HTTP/1.1 4044 No",
            b"HTTP/2 404 No",
            b"HTTP/1.1 40",
            b"",
            b"GET / HTTP/1.1",
        ] {
            assert_eq!(
                Status::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(Status(504).describe(), "HTTP 504 Gateway Timeout");
        assert_eq!(Status(418).describe(), "HTTP 418 client error");
    }

    #[test]
    fn an_unnamed_servers_errors_are_not_findings_of_their_own() {
        let table = ProcTable::default();
        let mut t = HttpTracker::default();
        let w = wire(WireKind::Http, false, b"HTTP/1.1 503 Ser".to_vec(), 10);
        let r = t.on_wire(&table, &w, &NoNames).expect("a report");
        assert_eq!(r.status, Status(503));
        assert!(!r.standalone && r.endpoint.is_none());
        assert_eq!(r.finding.code, "http.error_status");
        // The same answer again within the minute: once.
        assert!(t.on_wire(&table, &w, &NoNames).is_none());
        let junk = wire(WireKind::Http, false, b"HTTP/1.1 200 OK".to_vec(), 20);
        assert!(t.on_wire(&table, &junk, &NoNames).is_none());
        assert_eq!((t.seen, t.malformed), (2, 1));
    }
}
