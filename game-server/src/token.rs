//! Signed session tokens: `v1.<player>.<expiry-unix-secs>.<base64url(HMAC-SHA256)>`.
//! The player id is restricted to `[A-Za-z0-9_-]{1,32}` so it needs no escaping.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

pub fn valid_player_id(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 32
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn mac(secret: &[u8], payload: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("hmac takes any key length");
    m.update(payload.as_bytes());
    m
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Issue a token for `player` valid for `ttl_secs`.
pub fn issue(secret: &[u8], player: &str, ttl_secs: u64) -> String {
    assert!(valid_player_id(player), "invalid player id {player:?}");
    let payload = format!("v1.{player}.{}", now_secs() + ttl_secs);
    let sig = mac(secret, &payload).finalize().into_bytes();
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Verify a token and return the player id it names.
pub fn verify(secret: &[u8], token: &str) -> Result<String, TokenError> {
    let (payload, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let mut parts = payload.split('.');
    let (Some("v1"), Some(player), Some(exp), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed)?;
    // verify_slice compares in constant time.
    mac(secret, payload)
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    let exp: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
    if !valid_player_id(player) {
        return Err(TokenError::Malformed);
    }
    if exp < now_secs() {
        return Err(TokenError::Expired);
    }
    Ok(player.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify() {
        let t = issue(b"k", "alice", 60);
        assert_eq!(verify(b"k", &t).unwrap(), "alice");
        assert_eq!(verify(b"other", &t), Err(TokenError::BadSignature));
        let forged = t.replacen("alice", "mallory", 1);
        assert_eq!(verify(b"k", &forged), Err(TokenError::BadSignature));
        assert_eq!(verify(b"k", "garbage"), Err(TokenError::Malformed));
    }
}
