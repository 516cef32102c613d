//! Standard Webhooks signatures (https://www.standardwebhooks.com): the secret is
//! `whsec_<base64 key>`, and each call carries `webhook-id`, `webhook-timestamp` (Unix seconds)
//! and `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
//! `examples/webhook/verify.py` is the receiver's side.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const PREFIX: &str = "whsec_";
/// Key lengths accepted: at least 192 bits, as the specification recommends; at most 512.
const KEY_MIN: usize = 24;
const KEY_MAX: usize = 64;
/// Made secrets are 32 bytes.
const KEY_MADE: usize = 32;

/// A signing key, parsed from its `whsec_` form.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>`, or says what is wrong (never echoing the secret).
    pub fn parse(text: &str) -> Result<Secret, String> {
        let encoded = text.strip_prefix(PREFIX).ok_or_else(|| format!("must start with {PREFIX}"))?;
        let key = STANDARD.decode(encoded).map_err(|_| format!("{PREFIX} must be followed by standard base64"))?;
        if !(KEY_MIN..=KEY_MAX).contains(&key.len()) {
            return Err(format!("the key must be {KEY_MIN} to {KEY_MAX} bytes, not {}", key.len()));
        }
        Ok(Secret { key })
    }

    /// A new random secret, in its `whsec_` form.
    pub fn generate() -> Result<String, String> {
        let mut key = [0u8; KEY_MADE];
        getrandom::fill(&mut key).map_err(|e| format!("no random bytes: {e}"))?;
        Ok(format!("{PREFIX}{}", STANDARD.encode(key)))
    }

    /// The `webhook-signature` value for one call.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_reference_does() {
        // The test vector of the Standard Webhooks reference libraries.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_checked_and_made() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err().contains("whsec_"));
        assert!(Secret::parse("whsec_%%%").unwrap_err().contains("base64"));
        assert!(Secret::parse("whsec_c2hvcnQ=").unwrap_err().contains("24 to 64"));
        let made = Secret::generate().unwrap();
        assert!(Secret::parse(&made).is_ok(), "{made}");
        assert_ne!(made, Secret::generate().unwrap());
        assert!(!format!("{:?}", Secret::parse(&made).unwrap()).contains(&made[6..]));
    }
}
