//! Secrets never leave the agent: the one scrubber every sink applies to
//! what it writes (text lines, JSON records, the trace report, OTLP
//! attributes and span events, finding summaries and evidence).
//!
//! Owns: the rules (docs/events.md lists them for a security review):
//! - URL userinfo: everything between `//` and the authority's last `@`
//!   (RFC 3986: the authority ends at `/`, `?`, `#` or whitespace;
//!   [`url::redact_urls`]), in any string, nested URLs included;
//! - values of secret-bearing options, attached (`--password=X`, `-pX` for
//!   mysql) or in the next word (`--token X`, `-u user:X`, `-H 'Authorization: Bearer X'`,
//!   `-e NAME=X` / `--env NAME=X` with a secret-looking NAME);
//! - headers `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`,
//!   `X-Api-Key`, `X-Auth-Token`, `Private-Token`, … wherever they appear
//!   (`git -c http.extraHeader=…`, `curl -H …`): the scheme stays, the
//!   credential goes;
//! - `NAME=value` words whose NAME looks secret (`*TOKEN*`, `*SECRET*`,
//!   `*PASSWORD*`, `*PASSWD*`, `*_KEY`, `*CREDENTIAL*`, `*AUTH*`, …);
//! - query parameters named like secrets (`access_token`, `sig`,
//!   `X-Amz-Signature`, …);
//! - well-known token shapes anywhere (GitHub `ghp_`/`github_pat_`, GitLab
//!   `glpat-`, AWS `AKIA…`, Slack `xox?-`, JWTs, PEM private key blocks).
//!
//! The diagnostic part stays: the flag's name, the user name before `:`, the
//! host, the path, the header's scheme, and every word around a secret (a
//! redaction never crosses whitespace, but for a quoted secret value).
//! Must not: decide what is printed.

mod names;
pub mod ser;
mod shapes;
pub mod url;

use names::*;

use shapes::{pem_blocks, query_params, token_shapes};

use std::borrow::Cow;

/// What replaces a secret.
pub const MASK: &str = "***";

/// How much of a command line leaves the agent (`--argv`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArgvMode {
    /// As the kernel saw it (only for a machine whose records stay local).
    Full,
    /// With secrets removed (the default).
    #[default]
    Scrubbed,
    /// The program name only.
    None,
}

static ARGV_MODE: std::sync::OnceLock<ArgvMode> = std::sync::OnceLock::new();

/// Set once at start-up (`--argv`).
pub fn set_argv_mode(m: ArgvMode) {
    let _ = ARGV_MODE.set(m);
}

pub fn argv_mode() -> ArgvMode {
    ARGV_MODE.get().copied().unwrap_or_default()
}

/// A command line for a sink, under the `--argv` mode.
pub fn argv(args: &[String]) -> Vec<String> {
    argv_as(argv_mode(), args)
}

/// A command line under `mode`.
pub fn argv_as(mode: ArgvMode, args: &[String]) -> Vec<String> {
    match mode {
        ArgvMode::Full => args.to_vec(),
        ArgvMode::None => args.iter().take(1).map(|a| value(a).into_owned()).collect(),
        ArgvMode::Scrubbed => scrub_argv(args),
    }
}

/// Scrub a command line: word rules across elements, then every element as a value.
pub fn scrub_argv(args: &[String]) -> Vec<String> {
    let prog = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_ascii_lowercase())
        .unwrap_or_default();
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut next = Next::Keep;
    for (i, a) in args.iter().enumerate() {
        if i == 0 {
            out.push(value(a).into_owned());
            continue;
        }
        // `env NAME=value …`: each assignment is one setting's value.
        let a: Cow<'_, str> = if prog == "env" && a.split_once('=').is_some_and(|(n, _)| is_name(n))
        {
            url::redact_cow(a, url::Extent::Value)
        } else {
            Cow::Borrowed(a)
        };
        let (w, n) = step(&a, next, &prog);
        // An element with spaces (a script, a header line) is also a value.
        let w = if w.contains(char::is_whitespace) {
            Cow::Owned(value(&w).into_owned())
        } else {
            w
        };
        out.push(w.into_owned());
        next = n;
    }
    out
}

/// Scrub a value for an environment variable `name`: all of it when the
/// name itself looks secret (a variable added with `--env-allow`).
pub fn env_value<'a>(name: &str, v: &'a str) -> Cow<'a, str> {
    if secret_name(name) && !v.is_empty() {
        return Cow::Borrowed(MASK);
    }
    // One setting's value: its URLs' userinfo first, as a value.
    match url::redact_cow(v, url::Extent::Value) {
        Cow::Borrowed(v) => value(v),
        Cow::Owned(o) => Cow::Owned(value(&o).into_owned()),
    }
}

/// Scrub any string (a summary, an attribute, a path, a line of text): URL
/// userinfo (RFC 3986: it never spans whitespace or a `/`), then its
/// whitespace-separated words get the command-line rules, so a script
/// (`sh -c 'curl -u a:SECRET …'`) is scrubbed like a command line and the
/// words around a secret stay as they were.
pub fn value(s: &str) -> Cow<'_, str> {
    if !may_hold_secret(s) {
        return Cow::Borrowed(s);
    }
    let s1 = pem_blocks(url::redact_cow(s, url::Extent::Text));
    let mut out = String::with_capacity(s1.len());
    let mut next = Next::Keep;
    let mut rest: &str = &s1;
    // The program of the current command in a script (`a; mysql -pX`).
    let mut prog = String::new();
    let mut at_start = true;
    while !rest.is_empty() {
        let ws = rest.len() - rest.trim_start_matches(is_sep).len();
        out.push_str(&rest[..ws]);
        rest = &rest[ws..];
        if rest.is_empty() {
            break;
        }
        let (end, quoted) = word_end(rest);
        let (w, tail) = rest.split_at(end);
        // A quoted assignment is one setting's value (its URL may hold a
        // space typed into a password).
        let w = if quoted {
            url::redact_cow(w, url::Extent::Value)
        } else {
            Cow::Borrowed(w)
        };
        let w: &str = &w;
        if at_start {
            let bare = w.trim_start_matches(['"', '\'', '(']);
            prog = bare.rsplit('/').next().unwrap_or(bare).to_ascii_lowercase();
        }
        let (scrubbed, n) = step(w, next, &prog);
        out.push_str(&scrubbed);
        next = n;
        at_start = matches!(w, "&&" | "||" | "|" | ";" | "sudo" | "env" | "exec")
            || w.ends_with(';')
            || (at_start && w.contains('=') && !w.starts_with('-'));
        rest = tail;
    }
    if out == s {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(out)
    }
}

/// One word, given what the word before made of it: the word as it may
/// leave, and what it makes of the next (a word masked as a value still
/// makes the next one secret when it is itself an option or a header
/// name: `-H 'Authorization:' http.extraHeader=Authorization: Basic X`).
fn step<'a>(w: &'a str, this: Next, prog: &str) -> (Cow<'a, str>, Next) {
    let (open, core, close) = unquote(w);
    match this {
        Next::Keep => (scrub_word(w, prog), flag_takes_secret(w)),
        Next::Secret => (
            Cow::Owned(format!("{open}{MASK}{close}")),
            flag_takes_secret(w),
        ),
        Next::AfterColon => match core.split_once(':') {
            Some((user, _)) => (
                Cow::Owned(format!("{open}{user}:{MASK}{close}")),
                flag_takes_secret(w),
            ),
            None => (scrub_word(w, prog), flag_takes_secret(w)),
        },
        // `-H 'Authorization: Bearer X'` (one word) or `-H Authorization:` `…`.
        Next::Header => (scrub_header(w), flag_takes_secret(w)),
        Next::EnvAssign => match core.split_once('=') {
            Some((name, v)) if secret_name(name) && !v.is_empty() => (
                Cow::Owned(format!("{open}{name}={MASK}{close}")),
                flag_takes_secret(w),
            ),
            _ => (scrub_word(w, prog), flag_takes_secret(w)),
        },
        Next::AfterScheme if is_scheme(core) => (Cow::Borrowed(w), Next::Secret),
        Next::AfterScheme => (
            Cow::Owned(format!("{open}{MASK}{close}")),
            flag_takes_secret(w),
        ),
        Next::Cookie => {
            let more = w.trim_end_matches(['"', '\'']).ends_with(';');
            (
                Cow::Owned(format!("{open}{MASK}{close}")),
                if more {
                    Next::Cookie
                } else {
                    flag_takes_secret(w)
                },
            )
        }
    }
}

fn is_sep(c: char) -> bool {
    c.is_whitespace()
}

/// Where the word at the start of `rest` ends, and whether it is a quoted
/// value: at whitespace, except that an assignment to a secret-named or
/// URL-valued variable whose value opens a quote (`TOKEN="a b"`,
/// `HTTPS_PROXY='http://u:p q@h'`) runs to that quote's close, as a shell
/// reads it (to the end when it never closes). Every other rule ends at
/// whitespace, so no redaction crosses an argument boundary inside a shell
/// string.
fn word_end(rest: &str) -> (usize, bool) {
    let end = rest.find(is_sep).unwrap_or(rest.len());
    let w = &rest[..end];
    let Some(eq) = w.find('=') else {
        return (end, false);
    };
    let name = w[..eq]
        .trim_start_matches(['"', '\'', '('])
        .rsplit([';', '&', '|', '(', '`'])
        .next()
        .unwrap_or("");
    let Some(q) = w[eq + 1..]
        .chars()
        .next()
        .filter(|c| matches!(c, '"' | '\''))
    else {
        return (end, false);
    };
    if !is_name(name) || !(secret_name(name) || url_name(name)) || w[eq + 2..].contains(q) {
        return (end, false);
    }
    let end = match rest[end..].find(q) {
        Some(c) => {
            let close = end + c + 1;
            close + rest[close..].find(is_sep).unwrap_or(rest.len() - close)
        }
        None => rest.len(),
    };
    (end, true)
}

/// A variable whose value is a URL or a list of them (`HTTPS_PROXY`,
/// `GOPROXY`, `PIP_INDEX_URL`, `OTEL_EXPORTER_OTLP_ENDPOINT`).
fn url_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    n.ends_with("PROXY") || n.ends_with("_URL") || n.ends_with("_URI") || n.ends_with("ENDPOINT")
}

/// A cheap test that lets most strings through untouched.
fn may_hold_secret(s: &str) -> bool {
    // One pass over the bytes (three substring searches cost more than
    // the rest of a clean string's scrub).
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, c)| match c {
        b'@' | b'=' | b':' | b'-' | b'_' => true,
        b'A' => matches!(b.get(i + 1..i + 4), Some(b"KIA" | b"SIA")),
        b'e' => b.get(i + 1..i + 3) == Some(b"yJ"),
        _ => false,
    })
}

/// What the word after this one is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Keep,
    /// All of it (`--token X`).
    Secret,
    /// After the first `:` (`-u user:pass`).
    AfterColon,
    /// A header line (`-H 'Authorization: Bearer X'`).
    Header,
    /// `NAME=value`: the value if NAME looks secret (`-e`, `--env`).
    EnvAssign,
    /// The credential after a header's scheme (`Authorization:` `Bearer` `X`).
    AfterScheme,
    /// Words of a cookie list (`Cookie:` `a=b;` `c=d`).
    Cookie,
}

fn mysql_like(prog: &str) -> bool {
    prog.starts_with("mysql") || prog.starts_with("mariadb")
}

/// Does this word make the next one secret?
fn flag_takes_secret(w: &str) -> Next {
    if SECRET_OPTS.contains(&w) {
        Next::Secret
    } else if USER_OPTS.contains(&w) {
        Next::AfterColon
    } else if HEADER_OPTS.contains(&w) {
        Next::Header
    } else if ENV_OPTS.contains(&w) {
        Next::EnvAssign
    } else if let Some(h) = header_name(w.strip_prefix("-H").unwrap_or(w))
        && w.trim_end_matches(['"', '\'']).ends_with(':')
    {
        // A header split over words: `Authorization:` then its value.
        if h == "cookie" || h == "set-cookie" {
            Next::Cookie
        } else {
            Next::AfterScheme
        }
    } else {
        Next::Keep
    }
}

fn is_scheme(w: &str) -> bool {
    [
        "bearer",
        "basic",
        "token",
        "digest",
        "negotiate",
        "ntlm",
        "aws4-hmac-sha256",
        "apikey",
        "sso-key",
        "key",
    ]
    .iter()
    .any(|s| w.eq_ignore_ascii_case(s))
}

fn unquote(w: &str) -> (&str, &str, &str) {
    let open_len = w.len() - w.trim_start_matches(['"', '\'']).len();
    let body = &w[open_len..];
    let core = body.trim_end_matches(['"', '\'', ',', ';']);
    (&w[..open_len], core, &body[core.len()..])
}

/// The secret header named at the start of `w` (after quotes and a
/// `…extraHeader=` prefix), if any.
fn header_name(w: &str) -> Option<&'static str> {
    let (_, core, _) = unquote(w);
    let core = match core.find('=') {
        Some(eq) if core[..eq].to_ascii_lowercase().ends_with("header") => &core[eq + 1..],
        _ => core,
    };
    let name = core
        .split(':')
        .next()?
        .trim()
        .trim_start_matches(['"', '\'']);
    SECRET_HEADERS
        .iter()
        .find(|h| name.eq_ignore_ascii_case(h))
        .copied()
}

/// A header line `Name: [scheme] credential` (one word, maybe quoted):
/// keeps the name and scheme.
fn scrub_header(w: &str) -> Cow<'_, str> {
    if header_name(w).is_none() {
        return value(w);
    }
    // The header starts after quotes and a `…extraHeader=` prefix; its
    // colon is the first one from there (a URL before it has its own).
    let lead = w.len() - w.trim_start_matches(['"', '\'']).len();
    let start = match w[lead..].find('=') {
        Some(eq) if w[lead..lead + eq].to_ascii_lowercase().ends_with("header") => lead + eq + 1,
        _ => lead,
    };
    let start = start + (w[start..].len() - w[start..].trim_start_matches(['"', '\'']).len());
    match w[start..].find(':').map(|c| start + c) {
        Some(c) => {
            let (head, val) = w.split_at(c + 1);
            let trimmed = val.trim_start();
            let lead = &val[..val.len() - trimmed.len()];
            let close_len = trimmed.len() - trimmed.trim_end_matches(['"', '\'']).len();
            let body = &trimmed[..trimmed.len() - close_len];
            let close = &trimmed[trimmed.len() - close_len..];
            let kept = match body.split_once(' ') {
                Some((scheme, _)) if is_scheme(scheme) => format!("{scheme} {MASK}"),
                _ if body.is_empty() => String::new(),
                _ => MASK.to_string(),
            };
            Cow::Owned(format!("{head}{lead}{kept}{close}"))
        }
        None => value(w),
    }
}

/// Does an environment/variable name look like it holds a secret?
pub fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    const PARTS: &[&str] = &[
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
        "PRIVATE_KEY",
        "APIKEY",
        "API_KEY",
        "ACCESS_KEY",
        "SESSION",
        "COOKIE",
    ];
    PARTS.iter().any(|p| n.contains(p))
        || n.ends_with("_KEY")
        || n.ends_with("_PASS")
        || n.ends_with("_PWD")
        || n == "PASS"
        || n == "KEY"
}

fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// Rules inside one word (no whitespace in it, or one argv element).
fn scrub_word<'a>(w: &'a str, prog: &str) -> Cow<'a, str> {
    let mut s: Cow<'a, str> = Cow::Borrowed(w);
    // `--password=X`, `--token=X`, `--user=a:X`, `--header=Authorization: …`.
    let (open, core, close) = unquote(w);
    if let Some(eq) = core.find('=')
        && core.starts_with('-')
    {
        let (flag, v) = (&core[..eq], &core[eq + 1..]);
        let rep = match flag_takes_secret(flag) {
            Next::Secret if !v.is_empty() => Some(format!("{flag}={MASK}")),
            Next::AfterColon => v.split_once(':').map(|(u, _)| format!("{flag}={u}:{MASK}")),
            Next::Header => Some(format!("{flag}={}", scrub_header(v))),
            _ => None,
        };
        if let Some(r) = rep {
            s = Cow::Owned(format!("{open}{r}{close}"));
        }
    }
    // mysql -pSECRET (attached; `-p` alone asks for it).
    if mysql_like(prog) && s.starts_with("-p") && s.len() > 2 && !s.starts_with("--") {
        s = Cow::Owned(format!("-p{MASK}"));
    }
    // curl's attached `-HAuthorization: …`.
    if let Some(h) = s.strip_prefix("-H")
        && header_name(h).is_some()
    {
        s = Cow::Owned(format!("-H{}", scrub_header(h)));
    }
    // A header in one word (`-HAuthorization:…`, `http.extraHeader=Authorization:…`).
    if header_name(&s).is_some() && s.contains(':') {
        let (_, core, _) = unquote(&s);
        // Only when the value is in this word too.
        if core
            .split_once(':')
            .is_some_and(|(_, v)| !v.trim().is_empty())
        {
            s = Cow::Owned(scrub_header(&s).into_owned());
        }
    }
    // NAME=value with a secret-looking NAME (env, shells, make).
    if let Some(eq) = s.find('=') {
        let (open, _, _) = unquote(&s);
        let name = &s[open.len()..eq];
        let name = name
            .rsplit([';', '&', '|', '(', '`'])
            .next()
            .unwrap_or(name);
        if is_name(name) && secret_name(name) && eq + 1 < s.len() {
            let v = &s[eq + 1..];
            let close_len = v.len() - v.trim_end_matches(['"', '\'', ';', ')']).len();
            let close = v[v.len() - close_len..].to_string();
            s = Cow::Owned(format!("{}={MASK}{close}", &s[..eq]));
        }
    }
    let s = match url::redact_cow(&s, url::Extent::Text) {
        Cow::Borrowed(_) => s,
        Cow::Owned(o) => Cow::Owned(o),
    };
    let s = query_params(s);
    token_shapes(s)
}

/// Scrub every string of a JSON record in place (keys stay: they are ours).
pub fn json(v: &mut serde_json::Value) {
    json_as(v, argv_mode())
}

/// [`json`] under argv mode `mode`.
pub(crate) fn json_as(v: &mut serde_json::Value, mode: ArgvMode) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Cow::Owned(o) = value(s) {
                *s = o;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| json_as(x, mode)),
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                // An argv array already went through `argv` under --argv.
                if k == "argv" && mode == ArgvMode::Full {
                    continue;
                }
                json_as(x, mode);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
