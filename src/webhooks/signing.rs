//! Standard Webhooks signatures (standardwebhooks.com), both sides.
//!
//! * The secret is `whsec_` + base64 of 24 random bytes (Svix's size; the spec allows 24 to 64).
//!   The HMAC key is the decoded bytes, not the text.
//! * `webhook-signature: v1,<base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"))>`;
//!   during a secret rotation's overlap one `v1,…` per secret, space-separated.
//! * [`verify`] is the receiver's half: every signature is compared in constant time (`hmac`'s
//!   `verify_slice`), and a timestamp outside the tolerance is refused, so a captured request
//!   cannot be replayed later.
//! * The seed's format, for endpoints that opt in: `X-Webhook-Signature: sha256=<hex(HMAC-SHA256(
//!   secret text, body))>`. It signs no timestamp, so it gives no replay protection.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const SECRET_PREFIX: &str = "whsec_";
/// Svix's secret size.
const SECRET_BYTES: usize = 24;
/// How far `webhook-timestamp` may be from now, either way, by default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// More signatures than this in one header is not a rotation, it is an attack on the verifier.
const MAX_SIGNATURES: usize = 16;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
pub const LEGACY_HEADER_SIGNATURE: &str = "x-webhook-signature";
pub const LEGACY_HEADER_TIMESTAMP: &str = "x-webhook-timestamp";

/// A fresh `whsec_…` secret.
pub fn generate_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The HMAC key of a secret: the base64 after `whsec_` (the prefix is optional, as in Svix).
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD.decode(b64).ok().filter(|k| !k.is_empty())
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// `v1,<base64>` for one key.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1,{}",
        STANDARD.encode(mac(key, id, timestamp, body).finalize().into_bytes())
    )
}

/// The `webhook-signature` value for every key, space-separated.
pub fn signature_header(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| sign(k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The seed's `sha256=<hex>`: HMAC-SHA256 keyed with the secret's text, over the body alone.
pub fn legacy_signature(secret_text: &str, body: &[u8]) -> String {
    let mut m =
        HmacSha256::new_from_slice(secret_text.as_bytes()).expect("HMAC takes any key length");
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// Why a delivery did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing or unreadable header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the tolerance (a replay, or a skewed clock)")]
    TimestampOutOfTolerance,
    #[error("no usable secret (expected whsec_ followed by base64)")]
    BadSecret,
    #[error("no signature matches")]
    NoMatch,
}

/// Verifies a Standard Webhooks delivery: `secrets` are the endpoint's current (and, during a
/// rotation, previous) `whsec_…` secrets; `tolerance` defaults to [`DEFAULT_TOLERANCE`].
pub fn verify<S: AsRef<str>>(
    headers: &http::HeaderMap,
    body: &[u8],
    secrets: &[S],
    tolerance: Option<Duration>,
) -> Result<(), VerifyError> {
    verify_at(
        headers,
        body,
        secrets,
        tolerance.unwrap_or(DEFAULT_TOLERANCE),
        crate::db::now().timestamp(),
    )
}

/// [`verify`] at a given time (tests).
pub fn verify_at<S: AsRef<str>>(
    headers: &http::HeaderMap,
    body: &[u8],
    secrets: &[S],
    tolerance: Duration,
    now: i64,
) -> Result<(), VerifyError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(VerifyError::MissingHeader(name))
    };
    let id = header(HEADER_ID)?;
    let ts: i64 = header(HEADER_TIMESTAMP)?
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let signatures = header(HEADER_SIGNATURE)?;
    if now.abs_diff(ts) > tolerance.as_secs() {
        return Err(VerifyError::TimestampOutOfTolerance);
    }
    let keys: Vec<Vec<u8>> = secrets
        .iter()
        .filter_map(|s| secret_key(s.as_ref()))
        .collect();
    if keys.is_empty() {
        return Err(VerifyError::BadSecret);
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .take(MAX_SIGNATURES)
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    for key in &keys {
        let expected = mac(key, id, ts, body);
        // verify_slice compares in constant time.
        if candidates
            .iter()
            .any(|c| expected.clone().verify_slice(c).is_ok())
        {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn headers(id: &str, ts: i64, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER_ID, HeaderValue::from_str(id).unwrap());
        h.insert(
            HEADER_TIMESTAMP,
            HeaderValue::from_str(&ts.to_string()).unwrap(),
        );
        h.insert(HEADER_SIGNATURE, HeaderValue::from_str(sig).unwrap());
        h
    }

    /// The Standard Webhooks reference vector (from the spec's test suite).
    #[test]
    fn the_spec_vector_verifies() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let ts = 1614265330;
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&secret_key(secret).unwrap(), id, ts, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let h = headers(id, ts, &sig);
        assert_eq!(
            verify_at(&h, body, &[secret], DEFAULT_TOLERANCE, ts),
            Ok(())
        );
        assert_eq!(
            verify_at(&h, b"{}", &[secret], DEFAULT_TOLERANCE, ts),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify_at(&h, body, &[secret], DEFAULT_TOLERANCE, ts + 301),
            Err(VerifyError::TimestampOutOfTolerance)
        );
        assert_eq!(
            verify_at(&h, body, &[generate_secret()], DEFAULT_TOLERANCE, ts),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn any_of_several_signatures_and_secrets_verifies() {
        let (old, new) = (generate_secret(), generate_secret());
        let keys = [secret_key(&new).unwrap(), secret_key(&old).unwrap()];
        let header = signature_header(&keys, "evt", 10, b"b");
        assert_eq!(header.split(' ').count(), 2);
        for s in [&old, &new] {
            assert_eq!(
                verify_at(
                    &headers("evt", 10, &header),
                    b"b",
                    &[s],
                    DEFAULT_TOLERANCE,
                    10
                ),
                Ok(())
            );
        }
        assert!(generate_secret().starts_with(SECRET_PREFIX));
        assert_eq!(secret_key(&generate_secret()).unwrap().len(), SECRET_BYTES);
    }

    #[test]
    fn the_legacy_format_is_the_seeds() {
        // hex(HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"))
        assert_eq!(
            legacy_signature("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
