//! What an OCI registry answers: manifests and indexes (resolved offline,
//! as a pull does), image configs, and `WWW-Authenticate` challenges.
//!
//! Input: one byte choosing the Content-Type, then the first document, and
//! after a `0xff 0xff` separator the manifest an index points to.
//! Checks: every digest a resolved image names (config and layers, used as
//! blob file names and URL paths) is `sha256:` and 64 lowercase hex digits;
//! a challenge's keys are non-empty, and its values percent-encode to
//! unreserved characters that decode back to them.
#![no_main]

use hearth_machines::image::{fuzzing, parse_reference};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [Option<&str>; 5] = [
    None,
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    Some("text/html"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let content_type = CONTENT_TYPES[usize::from(choice) % CONTENT_TYPES.len()];
    let (first, second) = match rest.windows(2).position(|w| w == [0xff, 0xff]) {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let reference = parse_reference("registry.invalid/fuzz/image:latest").expect("a valid reference");
    if let Ok(digests) = fuzzing::resolve(&reference, first, content_type, second) {
        assert!(!digests.is_empty(), "an image has a config");
        for digest in &digests {
            let hex =
                digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("{digest:?} is used as a digest"));
            assert!(
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{digest:?} is used as a digest"
            );
        }
    }
    let _ = fuzzing::config(rest);

    let Ok(header) = std::str::from_utf8(rest) else { return };
    for (key, encoded, value) in fuzzing::challenge(header).unwrap_or_default() {
        assert!(!key.is_empty() && !key.contains('='), "key {key:?}");
        assert_eq!(percent_decode(&encoded), value.as_bytes(), "{value:?} encodes as {encoded:?}");
    }
});

/// Decodes `%XX`, refusing anything outside the unreserved characters.
fn percent_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: String = bytes.by_ref().take(2).map(char::from).collect();
            out.push(u8::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("bad escape in {s:?}")));
        } else {
            assert!(
                b.is_ascii_alphanumeric() || b"-_.~".contains(&b),
                "{:?} is not encoded in {s:?}",
                b as char
            );
            out.push(b);
        }
    }
    out
}
