//! Credential redaction for values that leave the agent (print, JSON, OTLP).
//!
//! URL userinfo, one rule of the scrubber ([`crate::scrub`]).
//!
//! Owns: removing `user:password@` from every URL inside a value, including
//! lists such as `GOPROXY=https://u:t@a,direct` or `NO_PROXY`-style strings.

/// Where the authority of the URL that starts at `tail` (just after its
/// `://`) ends, as RFC 3986 has it: at the first `/`, `?` or `#`, at
/// whitespace (a URL never holds a raw one: in a shell string it is the
/// next word), or at the next URL of a value.
fn authority_end(tail: &str) -> usize {
    let end = tail
        .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
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

/// Replace the userinfo of every `scheme://userinfo@host` in `value` with `***`.
///
/// The userinfo is what RFC 3986 says it is: after `scheme://`, up to the
/// last `@` of the authority, which ends at the first `/`, `?`, `#` or
/// whitespace. So a password keeps every character it may hold (`:`, `;`,
/// `,`, `&`, `=`, `%XX`, even a raw `@`), while a candidate that spans a
/// space or a path separator is not userinfo: `GOPROXY=https://h:1 go get
/// example.com/m@v1` keeps its command text. Nested URLs (`a://b://u:p@h`)
/// are covered.
pub fn redact_urls(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = match tail[..authority_end(tail)].rfind('@') {
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

/// [`redact_urls`], borrowing when nothing changes.
pub fn redact_urls_cow(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains("://") || !value.contains('@') {
        return std::borrow::Cow::Borrowed(value);
    }
    let r = redact_urls(value);
    if r == value {
        std::borrow::Cow::Borrowed(value)
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
