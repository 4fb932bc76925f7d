//! Deterministic Message-IDs: the same campaign and recipient always get the
//! same one, so a resend after a crash can be recognised downstream (and by
//! us, in the store), and two recipients never share one.

use sha2::{Digest, Sha256};

/// Hex digits taken from the hash: 128 bits, so collisions are out of reach
/// even across billions of messages.
const HASH_BYTES: usize = 16;
/// Longest campaign slug kept in the id.
const MAX_SLUG: usize = 40;

/// Makes Message-IDs for one campaign: `<hex(sha256(campaign NUL email))[..32]>.<slug>@<domain>`.
#[derive(Clone, Debug)]
pub(crate) struct MessageIds {
    /// The hash state after the campaign and the NUL: cloned per recipient.
    prefix: Sha256,
    /// `.<slug>@<domain>`.
    suffix: String,
}

impl MessageIds {
    pub(crate) fn new(campaign: &str, from_domain: &str) -> Self {
        let mut prefix = Sha256::new();
        prefix.update(campaign.as_bytes());
        prefix.update([0u8]);
        MessageIds {
            prefix,
            suffix: format!(".{}@{}", slug(campaign), from_domain.to_ascii_lowercase()),
        }
    }

    /// The id, without angle brackets, for a recipient address. The address
    /// is trimmed and lower-cased first, as ingest dedupes it.
    pub(crate) fn for_recipient(&self, email: &str) -> String {
        let mut hasher = self.prefix.clone();
        hasher.update(email.trim().to_lowercase().as_bytes());
        let digest = hasher.finalize();
        let mut id = String::with_capacity(HASH_BYTES * 2 + self.suffix.len());
        for byte in &digest[..HASH_BYTES] {
            id.push(hex_digit(byte >> 4));
            id.push(hex_digit(byte & 0x0f));
        }
        id.push_str(&self.suffix);
        id
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

/// The campaign name reduced to `[a-z0-9-]`, runs of anything else becoming
/// one `-`, so the id stays a valid dot-atom (RFC 5322 §3.6.4).
pub(crate) fn slug(campaign: &str) -> String {
    let mut out = String::new();
    for c in campaign.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= MAX_SLUG {
            break;
        }
    }
    let trimmed = out.trim_end_matches('-');
    if trimmed.is_empty() {
        "campaign".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slug("Spring Sale 2024!"), "spring-sale-2024");
        assert_eq!(slug("  ---  "), "campaign");
        assert_eq!(slug("Été"), "t");
        assert_eq!(slug(&"x".repeat(100)).len(), MAX_SLUG);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let ids = MessageIds::new("Spring Sale", "Acme.Example");
        let a = ids.for_recipient("Ann@Example.com");
        assert_eq!(a, ids.for_recipient(" ann@example.com"));
        assert_ne!(a, ids.for_recipient("bob@example.com"));
        assert!(a.ends_with(".spring-sale@acme.example"), "{a}");
        assert_eq!(a.split('.').next().unwrap().len(), 32);
        let other = MessageIds::new("Autumn Sale", "acme.example");
        assert_ne!(
            a.split('.').next(),
            other.for_recipient("ann@example.com").split('.').next()
        );
    }
}
