//! Credential redaction for values that leave the agent (print, JSON, OTLP).
//!
//! URL userinfo, one rule of the scrubber ([`crate::scrub`]).
//!
//! Owns: removing `user:password@` from every URL inside a value, including
//! lists such as `GOPROXY=https://u:t@a,direct` or `NO_PROXY`-style strings.

/// What ends a URL's authority besides `/`, `?` and `#`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// Text: a command line, a shell string, a log line. Whitespace ends
    /// a URL (it never holds a raw one; the next word is not its userinfo).
    Text,
    /// One setting's value (an environment variable, a quoted assignment):
    /// the value is the URL list, so a raw space (never valid, but typed)
    /// stays inside the password it was typed into.
    Value,
}

/// Where the authority of the URL that starts at `tail` (just after its
/// `://`) ends, as RFC 3986 has it: at the first `/`, `?` or `#`, at
/// whitespace in [`Extent::Text`], or at the next URL of a value.
fn authority_end(tail: &str, extent: Extent) -> usize {
    let end = tail
        .find(|c: char| {
            matches!(c, '/' | '?' | '#') || (extent == Extent::Text && c.is_whitespace())
        })
        .unwrap_or(tail.len());
    match tail[..end].find("://") {
        Some(n) => {
            let before = &tail[..n];
            let scheme = before.len()
                - before
                    .trim_end_matches(|c: char| c.is_ascii_alphanumeric() || "+.-".contains(c))
                    .len();
            n - scheme
        }
        None => end,
    }
}

/// Replace the userinfo of every `scheme://userinfo@host` in `value` (one
/// setting's value: [`Extent::Value`]) with `***`.
pub fn redact_urls(value: &str) -> String {
    redact(value, Extent::Value)
}

/// Replace the userinfo of every `scheme://userinfo@host` in `s` with `***`.
///
/// The userinfo is what RFC 3986 says it is: after `scheme://`, up to the
/// last `@` of the authority, which ends at the first `/`, `?` or `#` (and
/// whitespace in text). So a password keeps every character it may hold
/// (`:`, `;`, `,`, `&`, `=`, `%XX`, even a raw `@`), while in a shell string
/// a candidate that spans a space or a path separator is not userinfo:
/// `GOPROXY=https://h:1 go get example.com/m@v1` keeps its command text.
/// Nested URLs (`a://b://u:p@h`) are covered.
pub fn redact(s: &str, extent: Extent) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = match tail[..authority_end(tail, extent)].rfind('@') {
            Some(at) => {
                out.push_str("***@");
                at + 1
            }
            None => 0,
        };
        // Go on after the userinfo (or right after `://`): a later URL in
        // the host, path or query is looked at by the next turn.
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// [`redact`], borrowing when nothing changes.
pub fn redact_cow(s: &str, extent: Extent) -> std::borrow::Cow<'_, str> {
    if !s.contains("://") || !s.contains('@') {
        return std::borrow::Cow::Borrowed(s);
    }
    let r = redact(s, extent);
    if r == s {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_userinfo() {
        assert_eq!(
            redact_urls("https://user:tok@proxy:3128"),
            "https://***@proxy:3128"
        );
        assert_eq!(redact_urls("http://u@h/path?q=1"), "http://***@h/path?q=1");
    }

    #[test]
    fn handles_lists_and_plain_values() {
        assert_eq!(
            redact_urls("https://a:b@goproxy.corp,https://proxy.golang.org,direct"),
            "https://***@goproxy.corp,https://proxy.golang.org,direct"
        );
        assert_eq!(redact_urls("/usr/bin:/bin"), "/usr/bin:/bin");
        assert_eq!(redact_urls("a@b"), "a@b");
        assert_eq!(redact_urls("x://"), "x://");
    }

    #[test]
    fn password_with_at_sign_is_fully_removed() {
        // userinfo may itself hold an encoded or raw '@': everything before the last one goes.
        assert_eq!(redact_urls("https://u:p@ss@host/x"), "https://***@host/x");
    }

    #[test]
    fn nested_urls_slashes_in_passwords_and_urls_in_queries() {
        assert_eq!(redact_urls("a://b://u:p@h"), "a://b://***@h");
        // A raw `/` ends the authority (RFC 3986): what follows is a path.
        assert_eq!(
            redact_urls("https://u:pa/ss@h:1/x"),
            "https://u:pa/ss@h:1/x"
        );
        assert_eq!(
            redact_urls("https://h/?next=https://u:p@g/#f"),
            "https://h/?next=https://***@g/#f"
        );
        assert_eq!(redact_urls("https://h/mod@v1"), "https://h/mod@v1");
        assert_eq!(redact_urls("https://t@h/mod@v1"), "https://***@h/mod@v1");
        assert_eq!(redact_urls("https://h/x?u=a@b"), "https://h/x?u=a@b");
        assert_eq!(
            redact_urls("http://u:p@a b http://c"),
            "http://***@a b http://c"
        );
    }

    #[test]
    fn in_text_whitespace_ends_a_url_in_a_value_it_does_not() {
        let cmd = "GOPROXY=https://localhost:18472 go mod download example.com/m@v1.0.0";
        assert_eq!(redact(cmd, Extent::Text), cmd);
        let typed = "http://bob:pa SECRET@proxy:3128";
        assert_eq!(redact(typed, Extent::Value), "http://***@proxy:3128");
        assert_eq!(redact(typed, Extent::Text), typed);
        assert_eq!(
            redact("x https://u:p@h/a@b y", Extent::Text),
            "x https://***@h/a@b y"
        );
    }

    /// Whatever surrounds it, a password in `scheme://user:password@host`
    /// never comes out (random neighbours, schemes, nesting, separators).
    #[test]
    fn no_password_survives() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let parts = [
            "https://",
            "http://",
            "socks5://",
            "a://",
            "/",
            ":",
            "@",
            "?",
            "#",
            ",",
            "|",
            " ",
            ";",
            "host",
            "h:80",
            "/p",
            "x=y",
            "",
            "direct",
            "off",
            "%40",
        ];
        // RFC 3986 userinfo: unreserved, %XX, sub-delims and ':' — plus
        // what people type anyway (a raw '@').
        let secret_chars = b"abcXYZ019:@%!$&'()*+,;=-._~";
        for _ in 0..50_000 {
            let mut s = String::new();
            for _ in 0..next(4) {
                s.push_str(parts[next(parts.len())]);
            }
            let mut secret = String::from("S3");
            for _ in 0..next(8) {
                secret.push(secret_chars[next(secret_chars.len())] as char);
            }
            secret.push_str("Q9");
            if secret.contains("://") {
                // Read as a nested URL (documented): not a password.
                continue;
            }
            let host =
                parts[next(parts.len())].replace(['@', '/', '?', '#', ',', '|', ' ', ';'], "");
            s.push_str(&format!("{}u:{secret}@{host}", parts[next(4)]));
            for _ in 0..next(4) {
                s.push_str(parts[next(parts.len())]);
            }
            let r = redact_urls(&s);
            assert!(!r.contains(&secret), "{s:?} -> {r:?}");
        }
    }
}
