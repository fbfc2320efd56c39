//! Helpers shared by the targets (`mod common;` in each).
#![allow(dead_code)]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};

/// One current-thread runtime per process, built once.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// Header lines `name: value`, one per `\n`; lines that are not a valid
/// header are skipped. Names are folded to lower case (as `HeaderName`
/// does), so a seed may write `Connection: x`.
pub fn headers(text: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim_ascii()),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// Splits fuzz input into at most `n` parts at `\0` bytes (missing parts
/// are empty).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == 0).collect();
    out.resize(n, &[]);
    out
}

/// Whether a header is one a proxy must never let a client strip through
/// `Connection`: `Host`, `X-Forwarded-*`, `Forwarded`, `X-Real-IP`.
pub fn protected(name: &HeaderName) -> bool {
    let n = name.as_str();
    n == "host" || n == "forwarded" || n == "x-real-ip" || n.starts_with("x-forwarded-")
}

/// RFC 7230 `token` characters.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Splits `s` at `sep` outside RFC 7230 quoted-strings; `None` if a
/// quoted-string is not closed.
pub fn split_quoted(s: &str, sep: u8) -> Option<Vec<&str>> {
    let b = s.as_bytes();
    let (mut out, mut start, mut i, mut quoted) = (Vec::new(), 0, 0, false);
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if quoted || i > b.len() {
        return None;
    }
    out.push(&s[start..]);
    Some(out)
}

/// The value of a `token` or `quoted-string` (unescaped); `None` if it is
/// neither.
pub fn token_or_quoted(v: &str) -> Option<String> {
    let b = v.as_bytes();
    if !b.is_empty() && b.iter().all(|&c| is_tchar(c)) {
        return Some(v.to_owned());
    }
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// One RFC 7239 `forwarded-element`: its pairs, names lower-cased, values
/// unquoted. `None` if it is not one (a pair without `=`, a name that is
/// not a token, a value neither token nor quoted-string, a name twice).
pub fn forwarded_element(element: &str) -> Option<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pair in split_quoted(element.trim_matches([' ', '\t']), b';')? {
        let (name, value) = pair.split_once('=')?;
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return None;
        }
        let name = name.to_ascii_lowercase();
        if pairs.iter().any(|(n, _)| *n == name) {
            return None;
        }
        pairs.push((name, token_or_quoted(value)?));
    }
    Some(pairs)
}
