//! Percent-decoding, by the rule of the part of a URL being read. A path
//! keeps `+` as it is (RFC 3986: it is an ordinary character there, and an
//! app's router reads it so); a query string or form body is
//! `application/x-www-form-urlencoded`, where `+` stands for a space. Two
//! functions, so that each caller names the rule it needs.

/// Decodes `%XX` escapes in a URL path; `+` stays `+`. An escape that is not
/// two hex digits is kept as written; bytes that are not UTF-8 become U+FFFD.
pub fn decode_path(s: &str) -> String {
    decode(s, false)
}

/// Decodes a query-string or form value: `%XX` escapes, and `+` as a space.
pub fn decode_query(s: &str) -> String {
    decode(s, true)
}

/// The value of `name` in a query string (`a=1&run=x`), decoded; the first
/// if it repeats.
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_query(key) == name).then(|| decode_query(value))
    })
}

fn decode(s: &str, plus_is_space: bool) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| (h << 4) | l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') if plus_is_space => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_plus_and_queries_make_it_a_space() {
        for (input, path, query) in [
            ("approval%3A1", "approval:1", "approval:1"),
            ("a+b", "a+b", "a b"),
            ("a%2Bb", "a+b", "a+b"),
            ("50%", "50%", "50%"),
            ("%zz%4", "%zz%4", "%zz%4"),
            ("%67ithub", "github", "github"),
            ("caf%C3%A9", "caf\u{e9}", "caf\u{e9}"),
            ("%FF", "\u{fffd}", "\u{fffd}"),
        ] {
            assert_eq!(decode_path(input), path, "path {input}");
            assert_eq!(decode_query(input), query, "query {input}");
        }
    }

    #[test]
    fn query_values_are_found_and_decoded() {
        assert_eq!(query_value("run=a%3A1", "run").as_deref(), Some("a:1"));
        assert_eq!(query_value("x=1&run=a+b&run=c", "run").as_deref(), Some("a b"));
        assert_eq!(query_value("run", "run").as_deref(), Some(""));
        assert_eq!(query_value("runs=1", "run"), None);
        assert_eq!(query_value("", "run"), None);
    }
}
