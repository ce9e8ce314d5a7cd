//! Authentication tokens: stateless, signed with a key that lives in the replicated auth state, so
//! a token issued by one member is accepted by every member.
//!
//! A token is `hex(payload).hex(HMAC-SHA256(key, payload))` with payload = expiry (unix ms, 8 bytes
//! BE) ‖ the user's generation (8 bytes BE) ‖ the user name. The generation changes whenever the
//! user's password changes or the user is deleted and re-created, which invalidates older tokens;
//! role and permission changes need no new token because permissions are checked on every request.
//! The signing key is replaced on every `AuthEnable`, invalidating every token issued before.

use ring::hmac;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// A signed token for `user` at `generation`, valid until `expires_at_ms`.
pub fn issue(key: &[u8], user: &str, generation: u64, expires_at_ms: u64) -> String {
    let mut payload = Vec::with_capacity(16 + user.len());
    payload.extend_from_slice(&expires_at_ms.to_be_bytes());
    payload.extend_from_slice(&generation.to_be_bytes());
    payload.extend_from_slice(user.as_bytes());
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &payload);
    format!("{}.{}", hex(&payload), hex(tag.as_ref()))
}

/// The user and generation a token names, if its signature is valid under `key` and it has not
/// expired at `now_ms`.
pub fn verify(key: &[u8], token: &str, now_ms: u64) -> Option<(String, u64)> {
    let (payload, tag) = token.split_once('.')?;
    let (payload, tag) = (unhex(payload)?, unhex(tag)?);
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), &payload, &tag).ok()?;
    if payload.len() < 16 {
        return None;
    }
    let expires = u64::from_be_bytes(payload[..8].try_into().ok()?);
    let generation = u64::from_be_bytes(payload[8..16].try_into().ok()?);
    if now_ms >= expires {
        return None;
    }
    Some((String::from_utf8(payload[16..].to_vec()).ok()?, generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_valid_only_with_its_key_before_expiry_and_unaltered() {
        let token = issue(b"key-1", "alice", 7, 1_000);
        assert_eq!(verify(b"key-1", &token, 999), Some(("alice".to_string(), 7)));
        assert_eq!(verify(b"key-1", &token, 1_000), None, "expired");
        assert_eq!(verify(b"key-2", &token, 10), None, "another key");
        let forged = issue(b"key-1", "root", 7, 1_000);
        let (_, forged_tag) = forged.split_once('.').unwrap();
        let (payload, _) = token.split_once('.').unwrap();
        assert_eq!(verify(b"key-1", &format!("{payload}.{forged_tag}"), 10), None, "tag of another payload");
        assert_eq!(verify(b"key-1", "not a token", 10), None);
        assert_eq!(verify(b"key-1", "zz.zz", 10), None);
    }
}
