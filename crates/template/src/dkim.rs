//! DKIM signing (RFC 6376) of finished messages, with mail-auth.
//!
//! The key is parsed once ([`Dkim::new`]); [`Templates`](crate::Templates)
//! then signs every rendered message, after mail-builder has serialised it
//! and before the size and line-length preflight, so the limits are checked
//! on the bytes that go on the wire.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::Error;

/// The headers signed on every message, when present.
///
/// RFC 8058 §4 requires both List-Unsubscribe headers to be covered by a
/// valid DKIM signature for one-click unsubscribe to be honoured; RFC 6376
/// §5.4.1 lists the rest as the ones worth protecting.
/// `Feedback-ID` (Gmail's Feedback Loop) counts only when signed.
pub const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "Reply-To",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// [`SIGNED_HEADERS`] without `Date` and `Message-ID`, for a relay that
/// replaces them: Amazon SES sets its own Message-ID (and may rewrite Date),
/// which would break a signature covering them (docs/transports.md).
pub const SIGNED_HEADERS_WITHOUT_ID_AND_DATE: [&str; 10] = [
    "From",
    "Reply-To",
    "To",
    "Subject",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// The signature algorithm, which must match the key.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DkimAlgorithm {
    /// `rsa-sha256`: an RSA key of 2048 to 4096 bits, PKCS#1 or PKCS#8 PEM.
    Rsa,
    /// `ed25519-sha256` (RFC 8463): an Ed25519 key in PKCS#8 PEM.
    Ed25519,
}

impl DkimAlgorithm {
    /// The name used in configuration: `rsa` or `ed25519`.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::Rsa => "rsa",
            DkimAlgorithm::Ed25519 => "ed25519",
        }
    }

    /// Parses a configuration name (`rsa`, `rsa-sha256`, `ed25519`,
    /// `ed25519-sha256`; any case).
    pub fn parse(name: &str) -> Option<DkimAlgorithm> {
        match name.trim().to_ascii_lowercase().as_str() {
            "rsa" | "rsa-sha256" => Some(DkimAlgorithm::Rsa),
            "ed25519" | "ed25519-sha256" => Some(DkimAlgorithm::Ed25519),
            _ => None,
        }
    }
}

/// What a DKIM signer needs. The caller reads `key_pem` from the key file.
#[derive(Clone, PartialEq, Eq)]
pub struct DkimConfig {
    /// The selector: the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The signing domain (`d=`), normally the From domain or a parent of it
    /// so that DMARC aligns.
    pub domain: String,
    /// The private key, PEM text (PKCS#8, or PKCS#1 for RSA).
    pub key_pem: String,
    /// Which algorithm the key is for.
    pub algorithm: DkimAlgorithm,
}

impl std::fmt::Debug for DkimConfig {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimConfig")
            .field("selector", &self.selector)
            .field("domain", &self.domain)
            .field("key_pem", &"<redacted>")
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// A DKIM signer, built once from a [`DkimConfig`] and shared by every
/// rendering thread (`Send + Sync`).
pub struct Dkim {
    signer: DkimSigner<DkimKey, Done>,
    selector: String,
    domain: String,
    algorithm: DkimAlgorithm,
    /// The public key as published in DNS (`p=`), base64.
    public_key: String,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dkim")
            .field("selector", &self.selector)
            .field("domain", &self.domain)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Dkim {
    /// Parses the key and checks the selector and domain.
    ///
    /// Errors ([`Error::Dkim`]) say what is wrong in words an operator can act
    /// on: not PEM, the wrong kind of key for the algorithm, an RSA key of an
    /// unsupported size, an empty selector or domain.
    pub fn new(cfg: DkimConfig) -> Result<Dkim, Error> {
        Dkim::with_headers(cfg, &SIGNED_HEADERS)
    }

    /// [`Dkim::new`], signing `headers` (when present) instead of
    /// [`SIGNED_HEADERS`].
    pub fn with_headers(cfg: DkimConfig, headers: &[&str]) -> Result<Dkim, Error> {
        let bad = |reason: String| Error::Dkim { reason };
        let selector = cfg.selector.trim().to_owned();
        let domain = cfg.domain.trim().trim_end_matches('.').to_ascii_lowercase();
        check_label("selector", &selector).map_err(bad)?;
        check_label("domain", &domain).map_err(bad)?;
        if !domain.contains('.') {
            return Err(bad(format!("domain {domain:?} has no dot")));
        }

        let der = PrivateKeyDer::from_pem_slice(cfg.key_pem.as_bytes()).map_err(|e| {
            bad(format!(
                "the key is not a PEM private key ({e}); expected \
                 -----BEGIN PRIVATE KEY----- (PKCS#8) or -----BEGIN RSA PRIVATE KEY-----"
            ))
        })?;
        let (key, public_key) = match (cfg.algorithm, der) {
            (DkimAlgorithm::Rsa, der @ (PrivateKeyDer::Pkcs1(_) | PrivateKeyDer::Pkcs8(_))) => {
                let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| {
                    bad(format!(
                        "not a usable RSA key ({e}); edm needs an RSA key of 2048 to 4096 bits \
                         (or set algorithm = \"ed25519\" for an Ed25519 key)"
                    ))
                })?;
                let public = rsa_spki(&key.public_key());
                (DkimKey::Rsa(key), public)
            }
            (DkimAlgorithm::Ed25519, PrivateKeyDer::Pkcs8(der)) => {
                // OpenSSL writes PKCS#8 v1 (no public key inside): accept it.
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                    .map_err(|e| {
                        bad(format!(
                            "not a usable Ed25519 key ({e}) (or set algorithm = \"rsa\" for \
                                 an RSA key)"
                        ))
                    })?;
                let public = key.public_key();
                (DkimKey::Ed25519(key), public)
            }
            (DkimAlgorithm::Ed25519, PrivateKeyDer::Pkcs1(_)) => {
                return Err(bad(
                    "the key is an RSA key but algorithm is ed25519: set algorithm = \"rsa\""
                        .to_owned(),
                ));
            }
            (_, _) => {
                return Err(bad(
                    "unsupported key type (an EC key?): use an RSA or Ed25519 key".to_owned(),
                ));
            }
        };

        let signer = DkimSigner::from_key(key)
            .domain(domain.clone())
            .selector(selector.clone())
            .headers(headers.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        let dkim = Dkim {
            signer,
            selector,
            domain,
            algorithm: cfg.algorithm,
            public_key: BASE64.encode(public_key),
        };
        // A key can parse and still not sign (ring refuses some): find out now.
        dkim.signature_header(b"From: a@example.com\r\n\r\nx\r\n")
            .map_err(|reason| bad(format!("the key cannot sign: {reason}")))?;
        Ok(dkim)
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The algorithm.
    pub fn algorithm(&self) -> DkimAlgorithm {
        self.algorithm
    }

    /// Where the public key must be published: `<selector>._domainkey.<domain>`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record to publish at [`Dkim::dns_name`]:
    /// `v=DKIM1; k=rsa; p=...` (SubjectPublicKeyInfo for RSA, the raw 32-byte
    /// key for Ed25519, RFC 8463 §4.2).
    pub fn dns_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.as_str(),
            self.public_key
        )
    }

    /// The `DKIM-Signature: ...\r\n` header for a finished message (headers,
    /// blank line, body; CRLF line endings).
    pub fn signature_header(&self, message: &[u8]) -> Result<String, String> {
        self.signer
            .sign(message)
            .map(|signature| signature.to_header())
            .map_err(|e| e.to_string())
    }

    /// The message with its `DKIM-Signature` header prepended.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let header = self.signature_header(message)?;
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }
}

/// A selector or domain must be non-empty DNS labels: letters, digits, `-`,
/// `_` and dots. Anything else would break the signature header or the DNS
/// name.
fn check_label(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    let ok = value.split('.').all(|l| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !ok {
        return Err(format!(
            "{what} {value:?} is not a DNS name (letters, digits, `-`, `_`, dots)"
        ));
    }
    Ok(())
}

/// Wraps a DER RSAPublicKey (what ring gives) into the SubjectPublicKeyInfo
/// that DKIM records carry in practice (`openssl rsa -pubout`).
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption, NULL }.
    const ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0u8];
    bit_string.extend_from_slice(rsa_public_key);
    let mut inner = ALGORITHM.to_vec();
    der(0x03, &bit_string, &mut inner);
    let mut out = Vec::with_capacity(inner.len() + 4);
    der(0x30, &inner, &mut out);
    out
}

/// Appends a DER tag-length-value.
fn der(tag: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names() {
        assert_eq!(DkimAlgorithm::parse("RSA"), Some(DkimAlgorithm::Rsa));
        assert_eq!(
            DkimAlgorithm::parse("ed25519-sha256"),
            Some(DkimAlgorithm::Ed25519)
        );
        assert_eq!(DkimAlgorithm::parse("rsa-sha1"), None);
    }

    #[test]
    fn labels() {
        assert!(check_label("selector", "s2024-01").is_ok());
        assert!(check_label("domain", "mail.acme.example").is_ok());
        assert!(check_label("selector", "").is_err());
        assert!(check_label("selector", "a;b").is_err());
        assert!(check_label("domain", "a..b").is_err());
    }

    #[test]
    fn der_lengths() {
        let mut out = Vec::new();
        der(0x04, &[1; 5], &mut out);
        assert_eq!(&out[..2], &[0x04, 5]);
        let mut out = Vec::new();
        der(0x04, &[1; 300], &mut out);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn dkim_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Dkim>();
    }
}
