//! Lossless text form of file names.
//!
//! Unix names are bytes, and not always UTF-8; the catalog and manifests
//! store text. UTF-8 runs are kept, `\` becomes `\\`, and every other byte
//! `\xNN`, so any name round-trips exactly and readable names stay readable.

pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_escaped(&mut out, s);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                push_escaped(&mut out, std::str::from_utf8(good).unwrap());
                let n = e.error_len().unwrap_or(bad.len());
                for b in &bad[..n] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
    out
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
}

/// Inverse of [`escape`]. `None` for text [`escape`] cannot produce.
pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            match b.get(i + 1)? {
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                }
                b'x' => {
                    let hex = std::str::from_utf8(b.get(i + 2..i + 4)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 4;
                }
                _ => return None,
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_bytes() {
        for case in [
            &b"plain/name.txt"[..],
            b"back\\slash",
            b"\xff\xfe latin1 \xe9",
            "ünïcødé".as_bytes(),
            b"\\x41 literal",
        ] {
            let e = escape(case);
            assert_eq!(unescape(&e).unwrap(), case, "{e}");
        }
        assert_eq!(escape(b"a\xffb"), "a\\xffb");
    }
}
