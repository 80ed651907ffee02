use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use uuid::Uuid;

/// The JWT secret of the tests (scripts/test.sh exports the same).
pub const SECRET: &str = "test-secret-for-the-ledger-integration-tests";

/// A token signed like the service's own, with any claims.
pub fn token_with(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a token")
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A valid one-hour token for a user of `agency` with `role`.
pub fn token(agency: Uuid, role: &str, sub: &str) -> String {
    token_with(
        json!({"sub": sub, "agency_id": agency, "role": role, "exp": now_secs() + 3600}),
        SECRET,
    )
}

/// An agency of its own for one test, with an admin token.
pub fn agency() -> (Uuid, String) {
    let agency = Uuid::new_v4();
    (agency, token(agency, "admin", "admin-1"))
}

/// A valid one-hour token of a platform operator (no agency).
pub fn operator() -> String {
    token_with(
        json!({"sub": "operator-1", "role": "operator", "exp": now_secs() + 3600}),
        SECRET,
    )
}

/// Unpadded base64url, as in JWTs (for hand-made tokens).
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A token with any header and claims, signed with `signature` as given
/// (e.g. empty for `alg: none`).
pub fn raw_token(header: Value, claims: Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}
