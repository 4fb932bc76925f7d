//! `edm check --online`: each relay reached and authenticated, nothing sent
//! (docs/transports.md#checking-the-relays-edm-check---online).
//!
//! - SMTP: connect, EHLO, STARTTLS when configured, AUTH when a user is set,
//!   then QUIT: the session edm's workers open.
//! - Amazon SES v2: GetAccount (the quota, when the endpoint offers it) and
//!   GetEmailIdentity for the sender's domain, else its address.
//! - Resend: `GET /domains` (the key, and whether the sender's domain is
//!   verified); a sending-only key cannot list domains, which is said.

use edm_delivery::{
    ApiKey, Credentials, DomainCheck, ResendSettings, ResendTransport, SesSettings, SesTransport,
};
use serde::Serialize;

use crate::config::{Campaign, RelayKind, RelaySection};
use crate::send::SendOptions;

/// What the check found for one relay.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RelayCheck {
    /// The relay's name.
    pub relay: String,
    /// `smtp`, `ses` or `resend`.
    pub kind: String,
    /// Where it is (`host:port`, the endpoint).
    pub target: String,
    /// True when the relay can be used to send.
    pub ok: bool,
    /// What was checked, one line each, in order; the failure last.
    pub steps: Vec<String>,
}

impl RelayCheck {
    fn new(relay: &str, kind: &str, target: String) -> RelayCheck {
        RelayCheck {
            relay: relay.to_string(),
            kind: kind.to_string(),
            target,
            ok: true,
            steps: Vec::new(),
        }
    }

    fn step(&mut self, s: impl Into<String>) {
        self.steps.push(s.into());
    }

    fn fail(&mut self, s: impl Into<String>) {
        self.ok = false;
        self.steps.push(s.into());
    }
}

/// Checks the campaign's relays, sending nothing: every relay of a pool,
/// one after the other, in the order of the file (issue 12 point 5). A
/// relay that cannot be set up (missing credentials) is a failed relay, not
/// an `Err`.
pub async fn check_online(c: &Campaign) -> Vec<RelayCheck> {
    if !c.is_pool() {
        return vec![check_one(c).await];
    }
    let mut out = Vec::new();
    for r in &c.config.relay {
        out.push(check_one(&single(c, r)).await);
    }
    out
}

/// The campaign as if `r` were its only relay: the checks below read the
/// one relay's keys (`[smtp]`, [`Campaign::ses`], [`Campaign::resend`]).
fn single(c: &Campaign, r: &RelaySection) -> Campaign {
    let mut one = c.clone();
    one.config.relay = vec![r.clone()];
    if let Some(s) = c.relay_smtp(r) {
        one.config.smtp = s;
    }
    one
}

async fn check_one(c: &Campaign) -> RelayCheck {
    let name = c.relay_name().to_string();
    match c.relay_kind() {
        RelayKind::Smtp => smtp(c, &name).await,
        RelayKind::Ses => ses(c, &name).await,
        RelayKind::Resend => resend(c, &name).await,
    }
}

async fn smtp(c: &Campaign, name: &str) -> RelayCheck {
    let s = &c.config.smtp;
    let mut r = RelayCheck::new(name, "smtp", format!("{}:{}", s.host, c.port()));
    if let Some(why) = crate::send::plaintext_auth_refusal(c, &s.host) {
        r.fail(why);
        return r;
    }
    // The error names the table the password belongs to.
    let key = if c.config.relay.is_empty() {
        "[smtp]".to_string()
    } else {
        format!("[[relay]] {name:?}")
    };
    let password = match c.password_of(s, &key) {
        Ok(p) => p,
        Err(e) => {
            r.fail(e.to_string());
            return r;
        }
    };
    let opts = SendOptions::default();
    let cfg = crate::send::delivery_config(c, &opts);
    let smtp = crate::send::smtp_settings(c, &opts, password);
    let transport = match crate::send::transport(c, &cfg, smtp) {
        Ok(t) => t,
        Err(e) => {
            r.fail(e.to_string());
            return r;
        }
    };
    match transport.open().await {
        Ok(conn) => {
            let mut done = vec!["connected", "EHLO"];
            if s.security == crate::config::SecurityName::Starttls {
                done.push("STARTTLS");
            }
            if s.security == crate::config::SecurityName::Tls {
                done.insert(1, "TLS");
            }
            if s.username.is_some() {
                done.push("AUTH accepted");
            }
            conn.close().await;
            done.push("QUIT");
            r.step(done.join(", "));
        }
        Err(f) => r.fail(f.to_string()),
    }
    r
}

async fn ses(c: &Campaign, name: &str) -> RelayCheck {
    let Some(s) = c.ses() else {
        let mut r = RelayCheck::new(name, "ses", String::new());
        r.fail("the relay's keys do not read");
        return r;
    };
    let target = s
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("https://email.{}.amazonaws.com", s.region));
    let mut r = RelayCheck::new(name, "ses", target);
    let credentials = match Credentials::load(s.profile.as_deref(), |k| std::env::var(k).ok()) {
        Ok(cr) => cr,
        Err(e) => {
            r.fail(e);
            return r;
        }
    };
    let t = match SesTransport::new(SesSettings {
        region: s.region,
        endpoint: s.endpoint,
        credentials,
        configuration_set: None,
        campaign: String::new(),
        connect_timeout: s.connect_timeout,
        request_timeout: s.request_timeout,
    }) {
        Ok(t) => t,
        Err(e) => {
            r.fail(e);
            return r;
        }
    };
    match t.send_quota().await {
        Ok(Some(q)) => r.step(format!(
            "GetAccount: {:.0} of {:.0} sent in the last 24 hours, MaxSendRate {}/s",
            q.sent_last_24_hours, q.max_24_hour_send, q.max_send_rate
        )),
        Ok(None) => r.step("GetAccount: not offered by this endpoint (quota not checked)"),
        Err(f) => {
            r.fail(format!("GetAccount: {f}"));
            return r;
        }
    }
    let Some(from) = edm_template::Mailbox::parse(&c.config.campaign.from).ok() else {
        r.fail("[campaign] from does not parse: no sender identity to check");
        return r;
    };
    let address = from.address().to_string();
    let domain = edm_model::domain_of(&address);
    for identity in [domain.as_str(), address.as_str()] {
        match t.identity_verified(identity).await {
            Ok(Some(true)) => {
                r.step(format!("sender identity {identity}: verified"));
                return r;
            }
            Ok(Some(false)) => {
                r.fail(format!(
                    "sender identity {identity}: not verified yet (SES refuses to send from it)"
                ));
                return r;
            }
            Ok(None) => continue,
            Err(f) => {
                r.fail(format!("GetEmailIdentity {identity}: {f}"));
                return r;
            }
        }
    }
    r.fail(format!(
        "sender identity: neither {domain} nor {address} is an identity of this SES account (verify one before sending)"
    ));
    r
}

async fn resend(c: &Campaign, name: &str) -> RelayCheck {
    let Some(s) = c.resend() else {
        let mut r = RelayCheck::new(name, "resend", String::new());
        r.fail("the relay's keys do not read");
        return r;
    };
    let target = s
        .endpoint
        .clone()
        .unwrap_or_else(|| "https://api.resend.com".into());
    let mut r = RelayCheck::new(name, "resend", target);
    let key = match c.resend_api_key(&s) {
        Ok(k) => k,
        Err(e) => {
            r.fail(e.to_string());
            return r;
        }
    };
    let t = match ResendTransport::new(ResendSettings {
        endpoint: s.endpoint,
        api_key: ApiKey::new(key),
        campaign: String::new(),
        connect_timeout: s.connect_timeout,
        request_timeout: s.request_timeout,
    }) {
        Ok(t) => t,
        Err(e) => {
            r.fail(e);
            return r;
        }
    };
    let Some(domain) = c.from_domain() else {
        r.fail("[campaign] from does not parse: no sender domain to check");
        return r;
    };
    match t.check_domain(&domain).await {
        Ok(DomainCheck::Verified) => {
            r.step("API key accepted (GET /domains)");
            r.step(format!("sender domain {domain}: verified"));
        }
        Ok(DomainCheck::NotVerified(status)) => {
            r.step("API key accepted (GET /domains)");
            r.fail(format!(
                "sender domain {domain}: {status}, not verified (Resend refuses to send from it with 403)"
            ));
        }
        Ok(DomainCheck::Missing) => {
            r.step("API key accepted (GET /domains)");
            r.fail(format!(
                "sender domain {domain}: not a domain of this Resend account (add and verify it at resend.com/domains)"
            ));
        }
        Ok(DomainCheck::SendingOnlyKey) => {
            r.step("API key accepted: a sending-only key (401 restricted_api_key on GET /domains), so the sender domain's verification is not checked");
        }
        Err(f) => r.fail(f.to_string()),
    }
    r
}

/// The human lines: one per relay, its steps under it.
pub fn human(checks: &[RelayCheck]) -> String {
    let mut out = String::new();
    for r in checks {
        out.push_str(&format!(
            "relay {:?} ({} {}): {}\n",
            r.relay,
            r.kind,
            r.target,
            if r.ok { "ok" } else { "FAILED" }
        ));
        for (i, s) in r.steps.iter().enumerate() {
            let last_failure = !r.ok && i + 1 == r.steps.len();
            out.push_str(if last_failure { "  error: " } else { "  " });
            out.push_str(s);
            out.push('\n');
        }
    }
    out
}
