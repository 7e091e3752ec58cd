//! Where a destination came from: the settings that name the servers a
//! toolchain talks to. "go → 10.0.0.5:443 (your GOPROXY) timed out" tells a
//! person which line of their set-up to look at; the address alone does not.
//!
//! Owns: reading `GOPROXY` (with Go's list semantics: `,` and `|`, `direct`,
//! `off`, the default when unset), `GOSUMDB`, the `GOPRIVATE` /
//! `GONOSUMDB` / `GONOPROXY` hosts Go fetches directly, `PIP_INDEX_URL`,
//! `PIP_EXTRA_INDEX_URL`, and a `git` remote in argv; matching one against
//! a connection (by the name the process looked up, or an IP literal, and
//! the port). Must not: resolve names itself (only the DNS answers seen).

use std::net::IpAddr;

use serde::Serialize;

use crate::{process::fsview::basename, scrub::url::redact_urls};

/// A server a setting names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Named {
    variable: &'static str,
    /// Redacted, as shown.
    value: String,
    /// Host name or IP literal, lower case; `*.corp.example` matches subdomains.
    host: String,
    ports: Vec<u16>,
    /// Go's built-in default (the variable is unset).
    default: bool,
}

/// The setting a connection's destination came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointSource {
    /// `GOPROXY`, `PIP_INDEX_URL`, `git remote in argv`, …
    pub variable: String,
    /// Its value (URLs redacted).
    pub value: String,
    /// The variable is unset and this is the tool's default.
    pub default: bool,
}

impl EndpointSource {
    /// `your GOPROXY` / `Go's default GOPROXY`.
    pub fn note(&self) -> String {
        if self.default {
            format!("Go's default {}", self.variable)
        } else {
            format!("your {}", self.variable)
        }
    }

    /// `GOPROXY=https://… in the environment`.
    pub fn describe(&self) -> String {
        if self.default {
            format!("{} unset: Go's default {}", self.variable, self.value)
        } else if self.variable.contains(' ') {
            format!("{}: {}", self.variable, self.value)
        } else {
            format!("{}={} in the environment", self.variable, self.value)
        }
    }
}

fn url_target(url: &str) -> Option<(String, u16)> {
    let (h, p) = proxy_host_port(url)?;
    (!h.is_empty()).then(|| (h.to_ascii_lowercase(), p))
}

fn is_go(exe: &str) -> bool {
    let b = basename(exe);
    b == "go" || b.starts_with("go1.")
}

/// Every server the process's settings name.
fn named(exe: &str, env: &[(String, String)], argv: &[String]) -> Vec<Named> {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut out = Vec::new();
    let mut url = |variable: &'static str, value: &str, u: &str, default: bool| {
        if let Some((host, port)) = url_target(u) {
            out.push(Named {
                variable,
                value: redact_urls(value),
                host,
                ports: vec![port],
                default,
            });
        }
    };
    let go = is_go(exe);
    match get("GOPROXY") {
        Some(v) if !v.is_empty() => {
            for item in v.split([',', '|']).map(str::trim) {
                if !matches!(item, "" | "direct" | "off") {
                    url("GOPROXY", v, item, false);
                }
            }
        }
        _ if go => url(
            "GOPROXY",
            "https://proxy.golang.org,direct",
            "https://proxy.golang.org",
            true,
        ),
        _ => {}
    }
    match get("GOSUMDB") {
        Some("off") => {}
        Some(v) if !v.is_empty() => {
            // `name[+key] [url]`: the URL when given, else https://name.
            let mut w = v.split_whitespace();
            let name = w.next().unwrap_or("").split('+').next().unwrap_or("");
            let target = w
                .next()
                .map(str::to_string)
                .unwrap_or(format!("https://{name}"));
            url("GOSUMDB", v, &target, false);
        }
        _ if go => url("GOSUMDB", "sum.golang.org", "https://sum.golang.org", true),
        _ => {}
    }
    for var in ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"] {
        if let Some(v) = get(var) {
            for item in v.split_whitespace() {
                url(
                    if var == "PIP_INDEX_URL" {
                        "PIP_INDEX_URL"
                    } else {
                        "PIP_EXTRA_INDEX_URL"
                    },
                    v,
                    item,
                    false,
                );
            }
        }
    }
    // Module path patterns Go fetches straight from their VCS host.
    for var in ["GOPRIVATE", "GONOPROXY", "GONOSUMDB"] {
        let Some(v) = get(var) else { continue };
        for pat in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let host = pat.split('/').next().unwrap_or("").to_ascii_lowercase();
            if host.is_empty() || host == "*" {
                continue;
            }
            out.push(Named {
                variable: match var {
                    "GOPRIVATE" => "GOPRIVATE",
                    "GONOPROXY" => "GONOPROXY",
                    _ => "GONOSUMDB",
                },
                value: v.to_string(),
                host,
                ports: vec![443, 22, 80],
                default: false,
            });
        }
    }
    git_remotes(argv, &mut out);
    out
}

/// A git remote on the command line: https://, ssh://, git@host:path.
fn git_remotes(argv: &[String], out: &mut Vec<Named>) {
    if argv.first().is_some_and(|a| basename(a) == "git") {
        for a in argv.iter().skip(1) {
            let scp = a
                .split_once(':')
                .filter(|(h, rest)| h.contains('@') && !rest.starts_with("//"))
                .map(|(h, _)| h.rsplit('@').next().unwrap_or("").to_string());
            if let Some(host) = scp.filter(|h| !h.is_empty()) {
                out.push(Named {
                    variable: "git remote in argv",
                    value: redact_urls(a),
                    host: host.to_ascii_lowercase(),
                    ports: vec![22],
                    default: false,
                });
            } else if let Some(scheme) = a.split_once("://").map(|(s, _)| s.to_ascii_lowercase())
                && matches!(scheme.as_str(), "https" | "http" | "ssh" | "git")
            {
                let port_default = match scheme.as_str() {
                    "ssh" => 22,
                    "git" => 9418,
                    _ => 0,
                };
                if let Some((host, port)) = url_target(a) {
                    let port = if port_default != 0 && port == 80 {
                        port_default
                    } else {
                        port
                    };
                    out.push(Named {
                        variable: "git remote in argv",
                        value: redact_urls(a),
                        host,
                        ports: vec![port],
                        default: false,
                    });
                }
            }
        }
    }
}

fn host_matches(pattern: &str, host: Option<&str>, dst: IpAddr) -> bool {
    let pattern = pattern.trim_matches(|c| c == '[' || c == ']');
    if let Ok(ip) = pattern.parse::<IpAddr>() {
        return ip == dst;
    }
    host.is_some_and(|h| name_matches(pattern, h))
}

/// A host name against a setting's host (`*.corp.example` matches subdomains).
fn name_matches(pattern: &str, host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => h.ends_with(&format!(".{suffix}")),
        None => h == pattern,
    }
}

/// The setting that named the host `name` a process looked up (any port:
/// a lookup has none).
pub fn source_of_name(
    exe: &str,
    env: &[(String, String)],
    argv: &[String],
    name: &str,
) -> Option<EndpointSource> {
    named(exe, env, argv)
        .into_iter()
        .find(|n| n.host.parse::<IpAddr>().is_err() && name_matches(&n.host, name))
        .map(|n| EndpointSource {
            variable: n.variable.to_string(),
            value: n.value,
            default: n.default,
        })
}

/// The setting that named this connection's destination (`host`: the name
/// the process looked up that answered `dst`).
pub fn source_of(
    exe: &str,
    env: &[(String, String)],
    argv: &[String],
    dst: IpAddr,
    dport: u16,
    host: Option<&str>,
) -> Option<EndpointSource> {
    named(exe, env, argv)
        .into_iter()
        .find(|n| n.ports.contains(&dport) && host_matches(&n.host, host, dst))
        .map(|n| EndpointSource {
            variable: n.variable.to_string(),
            value: n.value,
            default: n.default,
        })
}

/// `scheme://[userinfo@]host[:port][/...]` → (host, port).
pub fn proxy_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("http".to_string(), url),
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit('@').next()?;
    let default = match scheme.as_str() {
        "https" => 443,
        "socks5" | "socks5h" | "socks4" | "socks" => 1080,
        _ => 80,
    };
    if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6.split_once(']')?;
        let port = tail
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default);
        return Some((h.to_string(), port));
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((hostport.to_string(), default)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A lookup has a name and no port: names match, IP literals never do.
    #[test]
    fn a_looked_up_name_is_attributed_to_the_setting_that_names_it() {
        let e = env(&[("GOPROXY", "https://10.0.0.5,https://proxy.corp:8443|direct")]);
        let s = source_of_name("/usr/bin/go", &e, &[], "PROXY.corp.").expect("GOPROXY");
        assert_eq!((s.variable.as_str(), s.default), ("GOPROXY", false));
        assert_eq!(source_of_name("/usr/bin/go", &e, &[], "10.0.0.5"), None);
        assert_eq!(source_of_name("/usr/bin/go", &e, &[], "other.corp"), None);
        // Unset: Go's default proxy.
        let d = source_of_name("/usr/bin/go", &[], &[], "proxy.golang.org").expect("default");
        assert!(d.default, "{d:?}");
    }

    #[test]
    fn goproxy_lists_literals_and_names() {
        let e = env(&[("GOPROXY", "https://10.0.0.5,https://proxy.corp:8443|direct")]);
        let s = source_of("/usr/bin/go", &e, &[], ip("10.0.0.5"), 443, None).unwrap();
        assert_eq!(s.variable, "GOPROXY");
        assert_eq!(s.note(), "your GOPROXY");
        assert_eq!(
            s.describe(),
            "GOPROXY=https://10.0.0.5,https://proxy.corp:8443|direct in the environment"
        );
        let s = source_of(
            "/usr/bin/go",
            &e,
            &[],
            ip("10.9.9.9"),
            8443,
            Some("Proxy.Corp."),
        )
        .unwrap();
        assert_eq!(s.variable, "GOPROXY");
        // Right host, wrong port; wrong host; `direct` and `off` name nothing.
        assert_eq!(
            source_of(
                "/usr/bin/go",
                &e,
                &[],
                ip("10.9.9.9"),
                443,
                Some("proxy.corp")
            ),
            None
        );
        assert_eq!(
            source_of("/usr/bin/go", &e, &[], ip("10.0.0.6"), 443, None),
            None
        );
        let off = env(&[("GOPROXY", "off"), ("GOSUMDB", "off")]);
        assert_eq!(
            source_of(
                "/usr/bin/go",
                &off,
                &[],
                ip("10.0.0.5"),
                443,
                Some("proxy.golang.org")
            ),
            None
        );
    }

    #[test]
    fn go_defaults_only_for_go() {
        let s = source_of(
            "/usr/local/go/bin/go",
            &[],
            &[],
            ip("142.250.1.1"),
            443,
            Some("proxy.golang.org"),
        )
        .unwrap();
        assert!(s.default);
        assert_eq!(s.note(), "Go's default GOPROXY");
        let s = source_of(
            "/x/go1.22.1",
            &[],
            &[],
            ip("1.1.1.1"),
            443,
            Some("sum.golang.org"),
        )
        .unwrap();
        assert_eq!(s.variable, "GOSUMDB");
        assert_eq!(
            source_of(
                "/usr/bin/curl",
                &[],
                &[],
                ip("1.1.1.1"),
                443,
                Some("proxy.golang.org")
            ),
            None
        );
    }

    #[test]
    fn gosumdb_private_hosts_pip_and_git() {
        let e = env(&[
            ("GOSUMDB", "sum.corp+abc123 https://sumdb.corp:9443"),
            ("GOPRIVATE", "github.com/corp/*,*.internal.example"),
            ("PIP_INDEX_URL", "https://user:s3cret@pypi.corp/simple"),
            (
                "PIP_EXTRA_INDEX_URL",
                "https://a.example/simple https://b.example/simple",
            ),
        ]);
        let go = "/usr/bin/go";
        assert_eq!(
            source_of(go, &e, &[], ip("1.2.3.4"), 9443, Some("sumdb.corp"))
                .unwrap()
                .variable,
            "GOSUMDB"
        );
        assert_eq!(
            source_of(go, &e, &[], ip("1.2.3.4"), 443, Some("github.com"))
                .unwrap()
                .variable,
            "GOPRIVATE"
        );
        assert_eq!(
            source_of(go, &e, &[], ip("1.2.3.4"), 22, Some("git.internal.example"))
                .unwrap()
                .variable,
            "GOPRIVATE"
        );
        let pip = source_of(
            "/usr/bin/python3",
            &e,
            &[],
            ip("1.2.3.4"),
            443,
            Some("pypi.corp"),
        )
        .unwrap();
        assert_eq!(pip.variable, "PIP_INDEX_URL");
        assert!(!pip.value.contains("s3cret"), "{}", pip.value);
        assert_eq!(
            source_of(
                "/usr/bin/pip",
                &e,
                &[],
                ip("1.2.3.4"),
                443,
                Some("b.example")
            )
            .unwrap()
            .variable,
            "PIP_EXTRA_INDEX_URL"
        );
        let argv: Vec<String> = ["git", "clone", "git@gitlab.corp:team/x.git"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            source_of(
                "/usr/bin/git",
                &[],
                &argv,
                ip("1.2.3.4"),
                22,
                Some("gitlab.corp")
            )
            .unwrap()
            .variable,
            "git remote in argv"
        );
        let argv: Vec<String> = ["git", "fetch", "https://tok@github.com/x/y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let g = source_of(
            "/usr/bin/git",
            &[],
            &argv,
            ip("1.2.3.4"),
            443,
            Some("github.com"),
        )
        .unwrap();
        assert!(!g.value.contains("tok@"), "{}", g.value);
        // Not git: argv is not a remote.
        assert_eq!(
            source_of(
                "/usr/bin/curl",
                &[],
                &argv[1..],
                ip("1.2.3.4"),
                443,
                Some("github.com")
            ),
            None
        );
    }
}
