//! The signature of a webhook notice: `sha256=` and the lower-case hex
//! HMAC-SHA256 of the exact body bytes, keyed with the job's
//! `webhook.secret`, sent as `X-Transcode-Signature`. A receiver computes
//! the same over the body it got and compares in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The `X-Transcode-Signature` value of `body` under `secret`:
/// `sha256=<64 hex digits>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={:x}", mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2 (HMAC-SHA-256).
    #[test]
    fn matches_the_rfc_4231_vector() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn depends_on_every_byte_and_the_secret() {
        let body = br#"{"event":"completed","job_id":"a"}"#;
        let base = signature("s3cret", body);
        assert_ne!(
            base,
            signature("s3cret", br#"{"event":"completed","job_id":"b"}"#)
        );
        assert_ne!(base, signature("s3creT", body));
        assert_eq!(base, signature("s3cret", body));
        assert_eq!(base.len(), "sha256=".len() + 64);
    }
}
