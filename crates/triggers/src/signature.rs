//! Webhook signatures: `X-Hearth-Signature: sha256=HEX`, the HMAC-SHA256
//! (RFC 2104) of the request body keyed with the webhook's shared secret, as
//! GitHub's `X-Hub-Signature-256` is made.

use sha2::{Digest, Sha256};

/// The header a signed webhook request carries.
pub const HEADER: &str = "x-hearth-signature";

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer.into()
}

/// The header value for `body` signed with `secret`: `sha256=HEX`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex(&hmac_sha256(secret.as_bytes(), body)))
}

/// Whether `header` (the request's signature header, if any) signs `body`
/// with `secret`. Compared in constant time.
pub fn verify(secret: &str, body: &[u8], header: Option<&str>) -> bool {
    let expected = sign(secret, body);
    header.is_some_and(|h| constant_time_eq(h.trim().as_bytes(), expected.as_bytes()))
}

/// What a refused request is told.
pub const REFUSED: &str = "the X-Hearth-Signature header is missing or wrong: send sha256=HEX, the \
                           HMAC-SHA256 of the body keyed with the webhook's secret";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_the_rfc_4231_vectors() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex(&mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn verify_takes_the_right_signature_only() {
        let good = sign("s3cret", b"{}");
        assert!(verify("s3cret", b"{}", Some(&good)));
        assert!(verify("s3cret", b"{}", Some(&format!(" {good} "))));
        assert!(!verify("s3cret", b"{} ", Some(&good)));
        assert!(!verify("other", b"{}", Some(&good)));
        assert!(!verify("s3cret", b"{}", None));
        assert!(!verify("s3cret", b"{}", Some("sha256=")));
    }
}
