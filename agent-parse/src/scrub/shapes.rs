//! Secrets found by their shape rather than their place: query parameters
//! with secret names, PEM private keys, and the token formats of well-known
//! services (GitHub, GitLab, AWS, Slack, Stripe, npm, JWT).

use std::borrow::Cow;

use super::{MASK, SECRET_PARAMS, secret_name};

/// `?a=1&access_token=X#f` → `?a=1&access_token=***#f`.
pub(super) fn query_params(s: Cow<'_, str>) -> Cow<'_, str> {
    if !s.contains('=') || !(s.contains('?') || s.contains('&') || s.contains(';')) {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    let mut changed = false;
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        let c = b[i];
        out.push(c as char);
        i += 1;
        if !matches!(c, b'?' | b'&' | b';') {
            // Non-ASCII bytes: copy the whole char.
            if c >= 0x80 {
                out.pop();
                let start = i - 1;
                let mut end = i;
                while end < b.len() && (b[end] & 0xC0) == 0x80 {
                    end += 1;
                }
                out.push_str(&s[start..end]);
                i = end;
            }
            continue;
        }
        let rest = &s[i..];
        let Some(eq) = rest.find('=') else { continue };
        let name = &rest[..eq];
        if name.contains(['&', '#', '?', ' ', '/']) {
            continue;
        }
        let lname = name.to_ascii_lowercase();
        let lname = lname.trim_start_matches("amp;");
        if SECRET_PARAMS.contains(&lname) || secret_name(name) {
            let vend = rest[eq + 1..]
                .find(['&', '#', ' ', '"', '\'', ';'])
                .map(|e| eq + 1 + e)
                .unwrap_or(rest.len());
            if vend > eq + 1 {
                out.push_str(name);
                out.push('=');
                out.push_str(MASK);
                i += vend;
                changed = true;
            }
        }
    }
    if changed { Cow::Owned(out) } else { s }
}

/// Token prefixes and the characters their bodies are made of.
const TOKEN_PREFIXES: &[(&str, usize)] = &[
    ("github_pat_", 20),
    ("ghp_", 20),
    ("gho_", 20),
    ("ghu_", 20),
    ("ghs_", 20),
    ("ghr_", 20),
    ("glpat-", 16),
    ("gldt-", 16),
    ("xoxb-", 10),
    ("xoxp-", 10),
    ("xoxa-", 10),
    ("xoxr-", 10),
    ("xoxs-", 10),
    ("sk_live_", 16),
    ("npm_", 30),
    ("AKIA", 16),
    ("ASIA", 16),
];

/// First bytes a token can start with (the prefixes', and `e` of a JWT):
/// most word starts are none of them and cost one lookup.
const TOKEN_FIRST: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < TOKEN_PREFIXES.len() {
        t[TOKEN_PREFIXES[i].0.as_bytes()[0] as usize] = true;
        i += 1;
    }
    t[b'e' as usize] = true;
    t
};

fn token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// A PEM private key block: its label stays, its body goes.
pub(super) fn pem_blocks(s: Cow<'_, str>) -> Cow<'_, str> {
    // Called for every word: most have no run of five dashes, and a byte
    // scan says so for less than setting up a substring search.
    let mut run = 0;
    if !s.bytes().any(|c| {
        run = if c == b'-' { run + 1 } else { 0 };
        run == 5
    }) {
        return s;
    }
    let mut s = s;
    let mut from = 0;
    while let Some(p) = s[from..].find("-----BEGIN ").map(|p| from + p) {
        let Some(head_end) = s[p..]
            .find("PRIVATE KEY-----")
            .map(|e| p + e + "PRIVATE KEY-----".len())
        else {
            break;
        };
        let end = s[head_end..]
            .find("-----END ")
            .map(|e| head_end + e)
            .unwrap_or(s.len());
        s = Cow::Owned(format!("{}{MASK}{}", &s[..head_end], &s[end..]));
        from = head_end + MASK.len();
    }
    s
}

pub(super) fn token_shapes(s: Cow<'_, str>) -> Cow<'_, str> {
    let s = pem_blocks(s);
    let mut out: Option<String> = None;
    let b = s.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        // Tokens start at a word boundary.
        if (i > 0 && token_char(b[i - 1])) || !TOKEN_FIRST[b[i] as usize] {
            i += 1;
            continue;
        }
        let mut hit = None;
        for (p, min) in TOKEN_PREFIXES {
            if b[i..].starts_with(p.as_bytes()) {
                let body = b[i + p.len()..]
                    .iter()
                    .take_while(|&&c| token_char(c))
                    .count();
                if body >= *min {
                    hit = Some((p.len(), body));
                    break;
                }
            }
        }
        if hit.is_none() && b[i..].starts_with(b"eyJ") {
            // A JWT: three base64url parts, the first two non-empty.
            let part = |at: usize| b[at..].iter().take_while(|&&c| token_char(c)).count();
            let a = part(i);
            if i + a < b.len() && b[i + a] == b'.' {
                let bb = part(i + a + 1);
                if bb > 0 && i + a + 1 + bb < b.len() && b[i + a + 1 + bb] == b'.' {
                    let c = part(i + a + 2 + bb);
                    hit = Some((0, a + 1 + bb + 1 + c));
                }
            }
        }
        match hit {
            Some((keep, body)) => {
                let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
                o.push_str(&s[copied..i + keep]);
                o.push_str(MASK);
                i += keep + body;
                copied = i;
            }
            None => i += 1,
        }
    }
    match out {
        Some(mut o) => {
            o.push_str(&s[copied..]);
            Cow::Owned(o)
        }
        None => s,
    }
}
