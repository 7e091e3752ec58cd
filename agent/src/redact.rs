//! Credential redaction for values that leave the agent (print, JSON, OTLP).
//!
//! Owns: removing `user:password@` from every URL inside a value, including
//! lists such as `GOPROXY=https://u:t@a,direct` or `NO_PROXY`-style strings.

/// Replace the userinfo of every `scheme://userinfo@host` in `value` with `***`.
pub fn redact_urls(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', or a list separator.
        let end = tail
            .find(['/', '?', '#', ',', '|', ' ', ';'])
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
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
}
