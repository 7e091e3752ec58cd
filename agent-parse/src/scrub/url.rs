//! Credential redaction for values that leave the agent (print, JSON, OTLP).
//!
//! URL userinfo, one rule of the scrubber ([`crate::scrub`]).
//!
//! Owns: removing `user:password@` from every URL inside a value, including
//! lists such as `GOPROXY=https://u:t@a,direct` or `NO_PROXY`-style strings.

/// Where the URL that starts at `tail` (just after its `://`) can reach: up
/// to the scheme of the next URL in the value, or the end. A password may
/// hold any character (`;` `,` `&` `=` `+` `$` `!` `*` `'` `(` `)` `%XX`,
/// even a raw space or `/` or `@`), so list separators do not end it.
fn url_extent(tail: &str) -> usize {
    match tail.find("://") {
        Some(n) => {
            let before = &tail[..n];
            let scheme = before.len()
                - before
                    .trim_end_matches(|c: char| c.is_ascii_alphanumeric() || "+.-".contains(c))
                    .len();
            n - scheme
        }
        None => tail.len(),
    }
}

/// Replace the userinfo of every `scheme://userinfo@host` in `value` with `***`.
///
/// Errs towards removing too much: the userinfo is everything up to the last
/// `@` before the URL's query or fragment (and before the next URL of the
/// value), unless what precedes that `@` is a plain `host/path` (no `:`),
/// as in `https://host/mod@v1` (then only an `@` before the first `/`
/// counts). Nested URLs (`a://b://u:p@h`) are covered.
pub fn redact_urls(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let token = url_extent(tail);
        let q = tail[..token].find(['?', '#']).unwrap_or(token);
        let authority = tail[..q].find('/').unwrap_or(q);
        let userinfo_end = tail[..q]
            .rfind('@')
            .filter(|&at| {
                let before = &tail[..at];
                before.contains(':') || !before.contains('/')
            })
            .or_else(|| tail[..authority].rfind('@'));
        let end = match userinfo_end {
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
        assert_eq!(redact_urls("https://u:pa/ss@h:1/x"), "https://***@h:1/x");
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
        // what people type anyway (a raw space, '/', '@').
        let secret_chars = b"abcXYZ019/:@%!$&'()*+,;=-._~ ";
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
