//! AWS Signature Version 4 for the few requests edm makes (a JSON POST and a
//! GET without query), written here rather than taken from `aws-sigv4`, which
//! brings the smithy runtime crates with it (docs/transports.md). Checked
//! against AWS's published SigV4 test suite (`get-vanilla`, `post-vanilla`,
//! `get-vanilla-query-order-key-case`) in the tests below.
//!
//! Reference: <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html>

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// What a request is signed with.
pub struct Signer<'a> {
    /// Access key id.
    pub access_key_id: &'a str,
    /// Secret access key.
    pub secret_access_key: &'a str,
    /// Region (`us-east-1`).
    pub region: &'a str,
    /// Service name in the scope (`ses`).
    pub service: &'a str,
}

/// The request to sign. `headers` must include `host` and `x-amz-date`
/// (and `x-amz-security-token` with temporary credentials); they are all
/// signed.
pub struct Request<'a> {
    /// `GET`, `POST`.
    pub method: &'a str,
    /// The path, already URI-encoded (`/v2/email/outbound-emails`).
    pub path: &'a str,
    /// The query, `name=value` pairs already encoded, in any order.
    pub query: &'a str,
    /// Header names and values.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The `x-amz-date` form of a Unix time: `20150830T123600Z`.
pub fn amz_date(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let rem = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Signer<'_> {
    /// The `Authorization` header value for `req`, signed at `amz_date`
    /// (which must be the request's `x-amz-date`).
    pub fn authorization(&self, req: &Request<'_>, amz_date: &str) -> String {
        let mut headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(k, v)| {
                // Canonical headers: lowercase names, values trimmed with
                // inner runs of spaces collapsed.
                let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
                (k.to_ascii_lowercase(), v)
            })
            .collect();
        headers.sort();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_headers = headers
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let mut query: Vec<&str> = req.query.split('&').filter(|p| !p.is_empty()).collect();
        query.sort();
        let canonical_request = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            req.method,
            req.path,
            query.join("&"),
            canonical_headers,
            signed_headers,
            hex(&Sha256::digest(req.body))
        );
        let date = amz_date.get(..8).unwrap_or(amz_date);
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical_request.as_bytes()))
        );
        let k_date = hmac(
            format!("AWS4{}", self.secret_access_key).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, self.service.as_bytes());
        let k_signing = hmac(&k_service, b"aws4_request");
        let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNER: Signer<'static> = Signer {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
        service: "service",
    };
    const HEADERS: &[(&str, &str)] = &[
        ("Host", "example.amazonaws.com"),
        ("X-Amz-Date", "20150830T123600Z"),
    ];
    const PREFIX: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=";

    fn sign(method: &str, query: &str) -> String {
        SIGNER.authorization(
            &Request {
                method,
                path: "/",
                query,
                headers: HEADERS,
                body: b"",
            },
            "20150830T123600Z",
        )
    }

    /// AWS's published SigV4 test suite (aws-sig-v4-test-suite): the
    /// expected signatures are AWS's, not computed here.
    #[test]
    fn matches_the_published_test_suite() {
        assert_eq!(
            sign("GET", ""),
            format!("{PREFIX}5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
            "get-vanilla"
        );
        assert_eq!(
            sign("POST", ""),
            format!("{PREFIX}5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
            "post-vanilla"
        );
        assert_eq!(
            sign("GET", "Param2=value2&Param1=value1"),
            format!("{PREFIX}b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
            "get-vanilla-query-order-key-case: the query is sorted"
        );
    }

    #[test]
    fn amz_date_of_the_suite_time() {
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
    }
}
