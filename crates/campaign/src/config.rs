//! `campaign.toml`: the campaign format. `docs/campaign.md` is its manual;
//! keep the two together. Unknown keys are errors naming the key and file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edm_delivery::defaults;
use edm_template::AttachmentEncoding;
use serde::Deserialize;

use crate::Error;

/// The slowest rate edm takes: one message in 1,000 seconds. Anything
/// slower is surely a typo (and `1 / rate` would overflow a duration).
pub const MIN_RATE: f64 = 0.001;

/// The most SMTP connections (or transactions to one domain) edm opens.
pub const MAX_CONCURRENCY: usize = 1000;

/// `edm send --max-retry-wait`'s default: retries due within this long are
/// waited for in the run; later ones end it (`SendOptions::max_retry_wait`).
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(120);

/// The shortest SMTP timeout edm takes.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// What makes an SMTP relay of a pool unusable, checked for each one (the
/// single relay's `[smtp]` checks run in `validate`).
fn pool_smtp_problem(s: &SmtpSection) -> Option<String> {
    if s.port == Some(0) {
        return Some("port = 0: a port is 1 to 65535".into());
    }
    if s.username.is_some() && s.password_env.is_none() && s.password_file.is_none() {
        return Some(
            "username is set but neither password_env nor password_file says where the password is"
                .into(),
        );
    }
    None
}

/// Why a messages-per-second value cannot work, if it cannot: NaN,
/// infinite, negative, or positive but under [`MIN_RATE`]. `0` is fine: it
/// means unlimited. Shared by `[delivery] rate`, the per-domain rates and
/// `edm send --rate`.
pub fn rate_problem(rate: f64) -> Option<String> {
    if rate.is_nan() {
        Some("not a number".into())
    } else if rate.is_infinite() {
        Some("infinite: write 0 (or leave it out) for unlimited".into())
    } else if rate < 0.0 {
        Some("negative: a rate is messages per second, 0 for unlimited".into())
    } else if rate > 0.0 && rate < MIN_RATE {
        Some(format!(
            "under {MIN_RATE} messages per second (one in {:.0} s or more); write 0 for unlimited",
            1.0 / MIN_RATE
        ))
    } else {
        None
    }
}

/// Why a number of connections cannot work, if it cannot: 0, or over
/// [`MAX_CONCURRENCY`].
pub fn concurrency_problem(n: usize) -> Option<String> {
    if n == 0 {
        Some("at least 1".into())
    } else if n > MAX_CONCURRENCY {
        Some(format!(
            "over {MAX_CONCURRENCY}: no relay takes that many connections from one sender"
        ))
    } else {
        None
    }
}

/// Why a `[campaign] feedback_id` is not one Gmail's Feedback Loop reads:
/// `campaign:customer:mailtype:senderid`, up to four colon-separated
/// fields, the last (the sender id, required) identifying the sender; the
/// others may be empty. Each field is letters, digits, `.`, `_`, `-`.
pub fn feedback_id_problem(f: &str) -> Option<String> {
    let fields: Vec<&str> = f.split(':').collect();
    if fields.len() > 4 {
        return Some(format!(
            "{} fields; Gmail reads at most four: campaign:customer:mailtype:senderid",
            fields.len()
        ));
    }
    if fields.last().is_none_or(|s| s.is_empty()) {
        return Some("the last field (the sender id) must not be empty".into());
    }
    if let Some(bad) = f
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || ".-_:".contains(*ch)))
    {
        return Some(format!(
            "{bad:?} is not allowed: letters, digits, '.', '_', '-', fields separated by ':'"
        ));
    }
    if f.len() > 200 {
        return Some("longer than 200 characters".into());
    }
    None
}

/// A loaded campaign: the parsed file and the directory it lives in.
#[derive(Clone, Debug)]
pub struct Campaign {
    /// The campaign directory (paths in the file are relative to it).
    pub dir: PathBuf,
    /// The `campaign.toml` path.
    pub file: PathBuf,
    /// The parsed configuration.
    pub config: Config,
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[campaign]`
    pub campaign: CampaignSection,
    /// `[smtp]`: the shorthand for one SMTP relay named `smtp`; also filled
    /// from a `[[relay]]` of kind `smtp` (empty for another kind).
    #[serde(default)]
    pub smtp: SmtpSection,
    /// `[[relay]]` tables (docs/transports.md); empty with `[smtp]`.
    #[serde(default)]
    pub relay: Vec<RelaySection>,
    /// `[delivery]`
    #[serde(default)]
    pub delivery: DeliverySection,
    /// `[limits]`
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[state]`
    #[serde(default)]
    pub state: StateSection,
    /// `[dkim]`: sign every message (see docs/preflight.md).
    #[serde(default)]
    pub dkim: Option<DkimSection>,
    /// `[store]`: the state in PostgreSQL instead of the SQLite file
    /// (docs/scaling.md); exclusive with `[state] path`.
    #[serde(default)]
    pub store: StoreSection,
    /// `[bounces]`: VERP return path, the bounce mailbox, the reputation
    /// breaker (docs/bounces.md).
    #[serde(default)]
    pub bounces: BouncesSection,
}

/// `[store]`: where the campaign state lives when it is not a SQLite file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `postgres://user@host:port/db`, never with a password (refused).
    pub url: Option<String>,
    /// The environment variable holding the password (default: `PGPASSWORD`).
    pub password_env: Option<String>,
    /// How long `edm send` waits for a PostgreSQL server that went away
    /// (a restart, a failover) before it stops (default 5 minutes).
    #[serde(default, with = "opt_duration")]
    pub reconnect_for: Option<Duration>,
}

/// `[bounces]`: how bounces and complaints come back and what they do.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BouncesSection {
    /// VERP envelope sender, e.g. `bounces+{token}@acme.example`: each
    /// recipient's MAIL FROM, `{token}` an authenticated recipient token.
    pub return_path: Option<String>,
    /// `imap` or `pop3`.
    pub kind: Option<MailboxKindName>,
    /// Mailbox server.
    pub host: Option<String>,
    /// Port (default 993 IMAP, 995 POP3 with TLS; 143 / 110 with STARTTLS).
    pub port: Option<u16>,
    /// `tls` (default) or `starttls`.
    #[serde(default)]
    pub security: MailboxSecurityName,
    /// Login.
    pub username: Option<String>,
    /// Environment variable holding the password (never in the file).
    pub password_env: Option<String>,
    /// IMAP folder to read.
    #[serde(default = "default_folder")]
    pub folder: String,
    /// IMAP folder applied messages are moved to.
    #[serde(default = "default_processed_folder")]
    pub processed_folder: String,
    /// Delete applied messages instead of moving them.
    #[serde(default)]
    pub delete: bool,
    /// Extra CA certificate (PEM), relative to the campaign directory.
    pub ca_file: Option<PathBuf>,
    /// The limit of every network step.
    #[serde(default = "mailbox_timeout", with = "duration")]
    pub timeout: Duration,
    /// With `security = "none"`, send the password in clear to a host that
    /// is not loopback.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// Read the mailbox this often during `edm send` (e.g. "5m").
    #[serde(default, with = "opt_duration")]
    pub poll: Option<Duration>,
    /// Soft bounces in a row that make a hard one.
    #[serde(default = "soft_bounce_limit")]
    pub soft_bounce_limit: u32,
    /// Hard bounce rate over the window that stops a send.
    #[serde(default = "max_bounce_rate")]
    pub max_bounce_rate: f64,
    /// Complaint rate over the window that stops a send.
    #[serde(default = "max_complaint_rate")]
    pub max_complaint_rate: f64,
}

impl Default for BouncesSection {
    fn default() -> Self {
        BouncesSection {
            return_path: None,
            kind: None,
            host: None,
            port: None,
            security: MailboxSecurityName::default(),
            username: None,
            password_env: None,
            folder: default_folder(),
            processed_folder: default_processed_folder(),
            delete: false,
            ca_file: None,
            timeout: mailbox_timeout(),
            allow_plaintext_auth: false,
            poll: None,
            soft_bounce_limit: soft_bounce_limit(),
            max_bounce_rate: max_bounce_rate(),
            max_complaint_rate: max_complaint_rate(),
        }
    }
}

/// `[bounces] kind`.
#[derive(Copy, Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MailboxKindName {
    /// IMAP4rev1 (RFC 3501).
    Imap,
    /// POP3 (RFC 1939).
    Pop3,
}

/// `[bounces] security`.
#[derive(Copy, Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MailboxSecurityName {
    /// TLS from the first byte.
    #[default]
    Tls,
    /// STARTTLS / STLS before the login.
    Starttls,
    /// No TLS (loopback, or `allow_plaintext_auth`).
    None,
}

fn mailbox_timeout() -> Duration {
    edm_bounce::mailbox::DEFAULT_TIMEOUT
}

fn default_folder() -> String {
    "INBOX".into()
}
fn default_processed_folder() -> String {
    "processed".into()
}
/// Three soft bounces in a row make a hard one (issue 13; listmonk and
/// Mailchimp use similar counts).
fn soft_bounce_limit() -> u32 {
    3
}
/// Amazon SES puts an account under review at a 5% bounce rate.
fn max_bounce_rate() -> f64 {
    0.05
}
/// 0.1%: Gmail's bulk-sender guidelines want spam complaints under 0.1%
/// and never at 0.3%.
fn max_complaint_rate() -> f64 {
    0.001
}

mod opt_duration {
    use serde::Deserializer;
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

/// `[dkim]`: DKIM signing by edm (RFC 6376).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSection {
    /// Selector (`<selector>._domainkey.<domain>`).
    pub selector: String,
    /// Signing domain (d=), aligned with the From domain for DMARC.
    pub domain: String,
    /// PEM private key, relative to the campaign directory. Never logged.
    pub key_file: PathBuf,
    /// `rsa` (default, rsa-sha256) or `ed25519` (ed25519-sha256).
    #[serde(default)]
    pub algorithm: Option<String>,
}

/// `[campaign]`: what is sent to whom.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSection {
    /// Campaign name; part of every Message-ID.
    pub name: String,
    /// From header: `Name <address>` or a bare address; its address is the envelope sender.
    pub from: String,
    /// Optional Reply-To.
    pub reply_to: Option<String>,
    /// Subject, a handlebars template.
    pub subject: String,
    /// HTML template file.
    pub html: Option<PathBuf>,
    /// Text template file.
    pub text: Option<PathBuf>,
    /// Recipients CSV file.
    pub recipients: PathBuf,
    /// Column holding the address.
    #[serde(default = "default_email_column")]
    pub email_column: String,
    /// CSV delimiter (one character); sniffed when absent.
    pub delimiter: Option<String>,
    /// Encoding of the recipients CSV, a WHATWG label ("windows-1252",
    /// "utf-16le", "shift_jis", ...); UTF-8 when absent.
    pub encoding: Option<String>,
    /// List-Unsubscribe URL template (adds RFC 8058 one-click for https).
    pub list_unsubscribe: Option<String>,
    /// Suppression file (CSV with an email column, or one address a line).
    pub suppression: Option<PathBuf>,
    /// Add addresses that bounce as `recipient_unknown` to the shared
    /// suppression list at the end of each run.
    #[serde(default = "yes")]
    pub auto_suppress: bool,
    /// Files attached to every message (relative to the campaign directory).
    #[serde(default)]
    pub attachments: Vec<PathBuf>,
    /// CSV column naming a file to attach to that recipient's message.
    pub attachment_column: Option<String>,
    /// The only folder per-recipient attachments come from (relative to
    /// the campaign directory); `attachment_column` values are relative to it.
    #[serde(default = "default_attachment_dir")]
    pub attachment_dir: PathBuf,
    /// `Feedback-ID` header for Gmail's Feedback Loop
    /// (`campaign:customer:mailtype:senderid`), signed by DKIM.
    pub feedback_id: Option<String>,
}

fn default_attachment_dir() -> PathBuf {
    PathBuf::from("attachments")
}

fn yes() -> bool {
    true
}

fn default_email_column() -> String {
    "email".into()
}

/// `[smtp]`: the relay.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    /// Host name or address.
    pub host: String,
    /// Port (default 587 with starttls, 465 with tls, 25 otherwise).
    pub port: Option<u16>,
    /// `none`, `starttls` or `tls`.
    #[serde(default)]
    pub security: SecurityName,
    /// AUTH user name.
    pub username: Option<String>,
    /// Environment variable holding the password (never the password itself).
    pub password_env: Option<String>,
    /// File holding the password (first line).
    pub password_file: Option<PathBuf>,
    /// Name sent in EHLO (default: the From domain).
    pub helo_name: Option<String>,
    /// TCP connect and greeting timeout.
    #[serde(default = "connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Timeout for each command's reply.
    #[serde(default = "command_timeout", with = "duration")]
    pub command_timeout: Duration,
    /// Timeout for sending the message and reading the final reply.
    #[serde(default = "data_timeout", with = "duration")]
    pub data_timeout: Duration,
    /// Accept invalid certificates (self-signed test relays only).
    #[serde(default)]
    pub accept_invalid_certs: bool,
    /// Allow AUTH without TLS to a host that is not loopback.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
}

impl Default for SmtpSection {
    /// Only for a campaign whose relay is not SMTP: no host, nothing to check.
    fn default() -> Self {
        SmtpSection {
            host: String::new(),
            port: None,
            security: SecurityName::None,
            username: None,
            password_env: None,
            password_file: None,
            helo_name: None,
            connect_timeout: connect_timeout(),
            command_timeout: command_timeout(),
            data_timeout: data_timeout(),
            accept_invalid_certs: false,
            allow_plaintext_auth: false,
        }
    }
}

/// A `[[relay]]` table: its name, kind and limits, and the kind's own keys
/// (kept as written, checked by [`Campaign::load`]).
#[derive(Clone, Debug, Deserialize)]
pub struct RelaySection {
    /// Name, in reports (`relay` column) and messages.
    pub name: String,
    /// `smtp` or `ses`.
    pub kind: RelayKind,
    /// This relay's own rate (messages per second); `[delivery] rate` still
    /// caps the run.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Connections (or requests in flight) to this relay; default
    /// `[delivery] concurrency`.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// In a pool, this relay's share of the traffic relative to the others'
    /// (default 1), until it reaches its own `rate` or `concurrency`.
    #[serde(default)]
    pub weight: Option<f64>,
    /// Messages this relay may accept in 24 hours (counted from the state,
    /// across runs); once used up it leaves the pool for the run.
    #[serde(default)]
    pub daily_quota: Option<u64>,
    /// The kind's keys: `[smtp]`'s for `smtp`, [`SesSection`]'s for `ses`.
    #[serde(flatten)]
    pub settings: toml::Table,
}

/// Relay kinds.
#[derive(Copy, Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RelayKind {
    /// An SMTP relay.
    Smtp,
    /// Amazon SES v2 over its HTTP API.
    Ses,
    /// Resend over its HTTP API.
    Resend,
}

/// The keys of a `[[relay]]` of kind `ses`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SesSection {
    /// AWS region (`eu-west-1`).
    pub region: String,
    /// Base URL, for tests and SES-compatible services (default
    /// `https://email.REGION.amazonaws.com`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A profile of the shared credentials file (default: the
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` environment variables,
    /// then the `default` profile).
    #[serde(default)]
    pub profile: Option<String>,
    /// `ConfigurationSetName`, for SES's event publishing.
    #[serde(default)]
    pub configuration_set: Option<String>,
    /// Connect timeout.
    #[serde(default = "connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    #[serde(default = "command_timeout", with = "duration")]
    pub request_timeout: Duration,
}

/// The keys of a `[[relay]]` of kind `resend`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResendSection {
    /// Environment variable holding the API key (never the key itself).
    #[serde(default = "resend_api_key_env")]
    pub api_key_env: String,
    /// Base URL, for tests (default `https://api.resend.com`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Connect timeout.
    #[serde(default = "connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    #[serde(default = "command_timeout", with = "duration")]
    pub request_timeout: Duration,
}

fn resend_api_key_env() -> String {
    "RESEND_API_KEY".into()
}

/// Transport security names.
#[derive(Copy, Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SecurityName {
    /// Plain SMTP.
    #[default]
    None,
    /// STARTTLS, required.
    Starttls,
    /// Implicit TLS.
    Tls,
}

/// `[delivery]`: how fast and how persistently.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    /// Messages per second, global (0 or absent: unlimited).
    pub rate: Option<f64>,
    /// Messages allowed back to back after an idle moment.
    #[serde(default = "burst")]
    pub burst: u32,
    /// SMTP connections.
    #[serde(default = "concurrency")]
    pub concurrency: usize,
    /// Attempts per recipient, the first included (throttling does not count).
    #[serde(default = "max_attempts")]
    pub max_attempts: u32,
    /// Give up on a recipient this long after its first attempt.
    #[serde(default = "retry_for", with = "duration")]
    pub retry_for: Duration,
    /// First step of the computed backoff.
    #[serde(default = "retry_base", with = "duration")]
    pub retry_base: Duration,
    /// Explicit retry schedule, overriding the computed one.
    #[serde(default, with = "durations")]
    pub retry: Vec<Duration>,
    /// How long the server may be unreachable before the run gives up.
    #[serde(default = "max_outage", with = "duration")]
    pub max_outage: Duration,
    /// Messages per rolling 24 hours, counted from the store (exact across restarts).
    pub daily_quota: Option<u64>,
    /// How long to pause when the provider says a quota is used up without saying for how long.
    #[serde(default = "quota_pause", with = "duration")]
    pub quota_pause: Duration,
    /// Per-domain limits: `[delivery.domains."gmail.com"]`.
    #[serde(default)]
    pub domains: BTreeMap<String, DomainSection>,
    /// Stop the run when this many different recipients in a row get the
    /// same permanent refusal (0: never); see docs/failures.md.
    #[serde(default = "stop_after_identical_refusals")]
    pub stop_after_identical_refusals: u32,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            rate: None,
            burst: burst(),
            concurrency: concurrency(),
            max_attempts: max_attempts(),
            retry_for: retry_for(),
            retry_base: retry_base(),
            retry: Vec::new(),
            max_outage: max_outage(),
            daily_quota: None,
            quota_pause: quota_pause(),
            domains: BTreeMap::new(),
            stop_after_identical_refusals: stop_after_identical_refusals(),
        }
    }
}

/// Limits for one domain.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSection {
    /// Messages per second to this domain.
    pub rate: Option<f64>,
    /// Transactions in flight to this domain.
    pub concurrency: Option<usize>,
}

/// `[limits]`: the relay's limits, checked before sending. Read them
/// through [`LimitsSection::resolved`]: a `provider` profile fills the keys
/// not written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// A provider's limits as defaults: `tencent` or `ses`.
    pub provider: Option<ProviderName>,
    /// Largest message in bytes.
    pub max_message_bytes: Option<usize>,
    /// Longest line in bytes (default 998, as RFC 5322 says).
    pub max_line_len: Option<usize>,
    /// Largest message without its attachments, in bytes.
    pub max_body_bytes: Option<usize>,
    /// Largest attachment (the file's bytes).
    pub max_attachment_bytes: Option<usize>,
    /// Largest total of one message's attachments.
    pub max_attachments_bytes: Option<usize>,
}

/// Providers whose limits `[limits] provider` knows.
#[derive(Copy, Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderName {
    /// Tencent Cloud SES: the whole encoded message 9 MB (warned above
    /// 8 MB), body 1 MB, attachment 5 MB, attachments 10 MB, lines under
    /// 2000 bytes, attachments base64 only.
    Tencent,
    /// Amazon SES (SMTP interface): messages up to 10 MB.
    Ses,
    /// Resend: "max 40MB per email, after Base64 encoding of the
    /// attachments" (resend.com/docs/api-reference/emails/send-email).
    Resend,
}

/// `[limits]` with the provider profile applied (explicit keys win).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedLimits {
    /// Largest message.
    pub max_message_bytes: Option<usize>,
    /// Longest line.
    pub max_line_len: usize,
    /// Largest message without attachments.
    pub max_body_bytes: Option<usize>,
    /// Largest attachment.
    pub max_attachment_bytes: Option<usize>,
    /// Largest total of attachments.
    pub max_attachments_bytes: Option<usize>,
    /// `edm check` warns about messages larger than this (the profile's
    /// own margin under `max_message_bytes`).
    pub warn_message_bytes: Option<usize>,
    /// How attachments are encoded (the profile's; base64 for Tencent).
    pub attachment_encoding: AttachmentEncoding,
}

impl LimitsSection {
    /// The limits in force: each key as written, else the provider's value,
    /// else the default (998 for lines, no limit for the rest).
    pub fn resolved(&self) -> ResolvedLimits {
        const MB: usize = 1_000_000;
        let profile = match self.provider {
            None => ResolvedLimits {
                max_line_len: edm_template::MAX_LINE_LEN,
                ..ResolvedLimits::default()
            },
            // Past about 9 MB of encoded message Tencent's SMTP endpoint
            // drops the connection instead of answering 552 (which edm would
            // otherwise retry as a mere disconnect), and it takes
            // attachments only base64-encoded.
            Some(ProviderName::Tencent) => ResolvedLimits {
                max_message_bytes: Some(9 * MB),
                max_line_len: 1999,
                max_body_bytes: Some(MB),
                max_attachment_bytes: Some(5 * MB),
                max_attachments_bytes: Some(10 * MB),
                warn_message_bytes: Some(8 * MB),
                attachment_encoding: AttachmentEncoding::Base64,
            },
            Some(ProviderName::Ses) => ResolvedLimits {
                max_message_bytes: Some(10 * MB),
                max_line_len: edm_template::MAX_LINE_LEN,
                ..ResolvedLimits::default()
            },
            Some(ProviderName::Resend) => ResolvedLimits {
                max_message_bytes: Some(40 * MB),
                max_line_len: edm_template::MAX_LINE_LEN,
                ..ResolvedLimits::default()
            },
        };
        ResolvedLimits {
            max_message_bytes: self.max_message_bytes.or(profile.max_message_bytes),
            max_line_len: self.max_line_len.unwrap_or(profile.max_line_len),
            max_body_bytes: self.max_body_bytes.or(profile.max_body_bytes),
            max_attachment_bytes: self.max_attachment_bytes.or(profile.max_attachment_bytes),
            max_attachments_bytes: self.max_attachments_bytes.or(profile.max_attachments_bytes),
            // The warning only makes sense under the profile's own cap.
            warn_message_bytes: match self.max_message_bytes {
                Some(_) => None,
                None => profile.warn_message_bytes,
            },
            attachment_encoding: profile.attachment_encoding,
        }
    }
}

/// `[state]`: where the campaign state lives.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// SQLite file (default `.edm/state.db` in the campaign directory).
    pub path: Option<PathBuf>,
    /// `normal` (survives a crash) or `full` (also survives a power loss).
    #[serde(default)]
    pub durability: DurabilityName,
}

/// Durability names.
#[derive(Copy, Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityName {
    /// synchronous=NORMAL.
    #[default]
    Normal,
    /// synchronous=FULL.
    Full,
}

// serde needs functions for its defaults; the values are edm-delivery's,
// defined once there (`edm_delivery::defaults`) for the engine too.
fn burst() -> u32 {
    defaults::BURST
}
fn concurrency() -> usize {
    defaults::CONCURRENCY
}
fn max_attempts() -> u32 {
    defaults::MAX_ATTEMPTS
}
fn stop_after_identical_refusals() -> u32 {
    defaults::STOP_AFTER_IDENTICAL_REFUSALS
}
fn retry_for() -> Duration {
    defaults::RETRY_FOR
}
fn retry_base() -> Duration {
    defaults::RETRY_BASE
}
fn max_outage() -> Duration {
    defaults::MAX_OUTAGE
}
fn quota_pause() -> Duration {
    defaults::QUOTA_PAUSE
}
fn connect_timeout() -> Duration {
    defaults::CONNECT_TIMEOUT
}
fn command_timeout() -> Duration {
    defaults::COMMAND_TIMEOUT
}
fn data_timeout() -> Duration {
    defaults::DATA_TIMEOUT
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad duration {s:?}: {e} (write e.g. \"30s\", \"2m\", \"2h\")"
            ))
        })
    }
}

mod durations {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                humantime::parse_duration(s).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "bad duration {s:?}: {e} (write e.g. \"30s\", \"2m\")"
                    ))
                })
            })
            .collect()
    }
}

impl Campaign {
    /// Loads `DIR/campaign.toml` (or the file itself when given a file).
    pub fn load(path: &Path) -> Result<Campaign, Error> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), path.join("campaign.toml"))
        } else {
            (
                path.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from(".")),
                path.to_path_buf(),
            )
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::Config {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| Error::Config {
            file: file.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let has_smtp = toml::from_str::<toml::Table>(&text)
            .map(|t| t.contains_key("smtp"))
            .unwrap_or(false);
        let bad = |message: String| Error::Config {
            file: file.clone(),
            message,
        };
        match (has_smtp, config.relay.len()) {
            (true, 0) => {}
            (false, 0) => {
                return Err(bad(
                    "no relay: write an [smtp] table, or [[relay]] tables (docs/transports.md)"
                        .into(),
                ));
            }
            (true, _) => {
                return Err(bad(
                    "[smtp] and [[relay]] together: [smtp] is the shorthand for one relay named \"smtp\"; move its keys into a [[relay]] with kind = \"smtp\", or drop the [[relay]] tables".into(),
                ));
            }
            (false, n) => {
                let mut names = std::collections::HashSet::new();
                let mut smtp_filled = false;
                for r in &config.relay {
                    let key = format!("[[relay]] {:?}", r.name);
                    if r.name.trim().is_empty() {
                        return Err(bad("[[relay]] name must not be empty".into()));
                    }
                    if !names.insert(r.name.as_str()) {
                        return Err(bad(format!(
                            "{key}: two [[relay]] tables have this name; names must be unique (each recipient's record says which relay sent it)"
                        )));
                    }
                    if let Some(rate) = r.rate
                        && let Some(why) = rate_problem(rate)
                    {
                        return Err(bad(format!("{key} rate = {rate}: {why}")));
                    }
                    if let Some(c) = r.concurrency
                        && let Some(why) = concurrency_problem(c)
                    {
                        return Err(bad(format!("{key} concurrency = {c}: {why}")));
                    }
                    if let Some(w) = r.weight
                        && !(w.is_finite() && w > 0.0)
                    {
                        return Err(bad(format!(
                            "{key} weight = {w}: a weight is a number above 0 (its share relative to the other relays')"
                        )));
                    }
                    if r.daily_quota == Some(0) {
                        return Err(bad(format!(
                            "{key} daily_quota = 0: nothing could be sent through it; remove the relay or the key"
                        )));
                    }
                    match r.kind {
                        RelayKind::Smtp => {
                            let smtp: SmtpSection = r.settings.clone().try_into().map_err(|e| {
                                bad(format!(
                                    "{key} (kind = \"smtp\"): {}",
                                    e.to_string().trim_end()
                                ))
                            })?;
                            if n > 1
                                && let Some(why) = pool_smtp_problem(&smtp)
                            {
                                return Err(bad(format!("{key} (kind = \"smtp\"): {why}")));
                            }
                            // The first SMTP relay also stands as `[smtp]`
                            // (checks, `edm send --test-to`).
                            if !smtp_filled {
                                config.smtp = smtp;
                                smtp_filled = true;
                            }
                        }
                        RelayKind::Ses => {
                            let _: SesSection = r.settings.clone().try_into().map_err(|e| {
                                bad(format!(
                                    "{key} (kind = \"ses\"): {}",
                                    e.to_string().trim_end()
                                ))
                            })?;
                        }
                        RelayKind::Resend => {
                            let r: ResendSection = r.settings.clone().try_into().map_err(|e| {
                                bad(format!(
                                    "{key} (kind = \"resend\"): {}",
                                    e.to_string().trim_end()
                                ))
                            })?;
                            if r.api_key_env.trim().is_empty() {
                                return Err(bad(format!(
                                    "{key} (kind = \"resend\"): api_key_env must name an environment variable"
                                )));
                            }
                        }
                    }
                }
            }
        }
        let c = Campaign { dir, file, config };
        c.validate()?;
        Ok(c)
    }

    fn bad(&self, message: impl Into<String>) -> Error {
        Error::Config {
            file: self.file.clone(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let c = &self.config;
        if c.store.url.is_some() && c.state.path.is_some() {
            return Err(self.bad(
                "[store] url and [state] path together: the state lives in one place; \
                 keep [store] url for PostgreSQL or [state] path for a SQLite file",
            ));
        }
        if let Some(url) = &c.store.url {
            crate::state::check_url(url).map_err(|e| self.bad(format!("[store] url: {e}")))?;
        }
        if c.store
            .password_env
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            return Err(self.bad("[store] password_env must name an environment variable"));
        }
        if c.campaign.name.trim().is_empty() {
            return Err(self.bad("[campaign] name must not be empty"));
        }
        if c.campaign.html.is_none() && c.campaign.text.is_none() {
            return Err(self.bad("[campaign] needs `html` or `text` (or both)"));
        }
        if let Some(d) = &c.campaign.delimiter
            && (d.len() != 1 || !d.is_ascii())
        {
            return Err(self.bad(format!(
                "[campaign] delimiter must be one ASCII character, got {d:?}"
            )));
        }
        if let Some(r) = c.delivery.rate
            && let Some(why) = rate_problem(r)
        {
            return Err(self.bad(format!("[delivery] rate = {r}: {why}")));
        }
        if let Some(why) = concurrency_problem(c.delivery.concurrency) {
            return Err(self.bad(format!(
                "[delivery] concurrency = {}: {why}",
                c.delivery.concurrency
            )));
        }
        for (domain, d) in &c.delivery.domains {
            let key = format!("[delivery.domains.{domain:?}]");
            if let Some(r) = d.rate
                && let Some(why) = rate_problem(r)
            {
                return Err(self.bad(format!("{key} rate = {r}: {why}")));
            }
            if let Some(n) = d.concurrency
                && let Some(why) = concurrency_problem(n)
            {
                return Err(self.bad(format!("{key} concurrency = {n}: {why}")));
            }
        }
        if let Some(f) = &c.campaign.feedback_id
            && let Some(why) = feedback_id_problem(f)
        {
            return Err(self.bad(format!("[campaign] feedback_id = {f:?}: {why}")));
        }
        self.validate_bounces()?;
        if self.relay_kind() != RelayKind::Smtp {
            // The checks below are about SMTP settings, except this one.
            if c.delivery.max_attempts == 0 {
                return Err(self.bad("[delivery] max_attempts must be at least 1"));
            }
            return Ok(());
        }
        if c.smtp.port == Some(0) {
            return Err(self.bad("[smtp] port = 0: a port is 1 to 65535"));
        }
        for (key, value) in [
            ("connect_timeout", c.smtp.connect_timeout),
            ("command_timeout", c.smtp.command_timeout),
            ("data_timeout", c.smtp.data_timeout),
        ] {
            if value < MIN_TIMEOUT {
                return Err(self.bad(format!(
                    "[smtp] {key} = {:?}: under {MIN_TIMEOUT:?}, no SMTP server can answer in time \
                     (RFC 5321 §4.5.3.2 suggests minutes)",
                    value
                )));
            }
        }
        if let Some(helo) = &c.smtp.helo_name {
            // It goes on the EHLO line as is: a CR or LF would end the
            // command and start another (RFC 5321 §2.3.8, §4.1.1.1).
            let why = if helo.trim().is_empty() {
                Some("is empty")
            } else if helo.contains(['\r', '\n']) {
                Some("contains a line break (CR or LF)")
            } else if helo.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
                Some("contains a space or a control character")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(self.bad(format!(
                    "[smtp] helo_name {helo:?} {why}: write a host name such as \"mail.acme.example\""
                )));
            }
        }
        if c.delivery.max_attempts == 0 {
            return Err(self.bad("[delivery] max_attempts must be at least 1"));
        }
        if c.smtp.username.is_some()
            && c.smtp.password_env.is_none()
            && c.smtp.password_file.is_none()
        {
            return Err(self.bad(
                "[smtp] username is set but neither password_env nor password_file says where the password is",
            ));
        }
        Ok(())
    }

    fn validate_bounces(&self) -> Result<(), Error> {
        let b = &self.config.bounces;
        if let Some(rp) = &b.return_path {
            let why = if rp.matches("{token}").count() != 1 {
                Some("needs {token} exactly once, e.g. \"bounces+{token}@acme.example\"")
            } else if rp
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control() || "<>\"".contains(ch))
            {
                Some("contains a space, a quote, an angle bracket or a control character")
            } else {
                match rp.rsplit_once('@') {
                    Some((local, domain))
                        if local.contains("{token}")
                            && !domain.is_empty()
                            && !domain.contains('{') =>
                    {
                        None
                    }
                    _ => Some(
                        "must be an address whose local part holds {token}, e.g. \"bounces+{token}@acme.example\"",
                    ),
                }
            };
            if let Some(why) = why {
                return Err(self.bad(format!("[bounces] return_path = {rp:?}: {why}")));
            }
        }
        if b.soft_bounce_limit == 0 {
            return Err(self.bad("[bounces] soft_bounce_limit must be at least 1"));
        }
        for (key, v) in [
            ("max_bounce_rate", b.max_bounce_rate),
            ("max_complaint_rate", b.max_complaint_rate),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return Err(self.bad(format!(
                    "[bounces] {key} = {v}: a fraction above 0 and at most 1 (0.05 is 5%)"
                )));
            }
        }
        if let Some(p) = b.poll
            && p < Duration::from_secs(10)
        {
            return Err(self.bad(format!(
                "[bounces] poll = {p:?}: at least 10s (a mailbox server limits logins)"
            )));
        }
        if b.kind.is_some() {
            if b.host.as_deref().is_none_or(|h| h.trim().is_empty()) {
                return Err(self.bad("[bounces] kind is set but host is missing"));
            }
            if b.username.is_none() || b.password_env.is_none() {
                return Err(self.bad(
                    "[bounces] a mailbox needs username and password_env (the variable holding its password)",
                ));
            }
            if b.port == Some(0) {
                return Err(self.bad("[bounces] port = 0: a port is 1 to 65535"));
            }
            for (key, f) in [
                ("folder", &b.folder),
                ("processed_folder", &b.processed_folder),
            ] {
                if f.is_empty() || !f.is_ascii() {
                    return Err(self.bad(format!(
                        "[bounces] {key} = {f:?}: an ASCII folder name (IMAP's modified UTF-7 is not written)"
                    )));
                }
            }
            if b.processed_folder == b.folder && !b.delete {
                return Err(self.bad(format!(
                    "[bounces] processed_folder = {:?} is the folder read: applied messages would be read again on every pass (choose another, or delete = true)",
                    b.processed_folder
                )));
            }
            if b.kind == Some(MailboxKindName::Pop3) && !b.delete {
                // POP3 has no folders (RFC 1939): applied messages can only be
                // left or deleted; leaving them is safe (applied once by key).
                tracing::debug!("[bounces] kind = \"pop3\" without delete: applied messages stay");
            }
        } else if b.host.is_some() || b.username.is_some() {
            return Err(self.bad(
                "[bounces] host or username without kind: write kind = \"imap\" or \"pop3\"",
            ));
        }
        Ok(())
    }

    /// The bounce mailbox of `[bounces]`, its password read from
    /// `password_env` (never logged); `None` without `kind`.
    pub fn mailbox(&self) -> Result<Option<edm_bounce::mailbox::MailboxConfig>, Error> {
        use edm_bounce::mailbox::{Kind, MailboxConfig, Security};
        let b = &self.config.bounces;
        let Some(kind) = b.kind else {
            return Ok(None);
        };
        let var = b.password_env.clone().unwrap_or_default();
        let password = match std::env::var(&var) {
            Ok(v) if !v.is_empty() => v,
            _ => {
                return Err(self.bad(format!(
                    "[bounces] password_env names ${var}, which is not set (export it before running)"
                )));
            }
        };
        let kind = match kind {
            MailboxKindName::Imap => Kind::Imap,
            MailboxKindName::Pop3 => Kind::Pop3,
        };
        let security = match b.security {
            MailboxSecurityName::Tls => Security::Tls,
            MailboxSecurityName::Starttls => Security::Starttls,
            MailboxSecurityName::None => Security::Plain,
        };
        let mut m = MailboxConfig::new(
            kind,
            b.host.as_deref().unwrap_or_default(),
            b.username.as_deref().unwrap_or_default(),
            &password,
        );
        m.port = b
            .port
            .unwrap_or_else(|| edm_bounce::mailbox::default_port(kind, security));
        m.security = security;
        m.folder = b.folder.clone();
        m.processed_folder = b.processed_folder.clone();
        m.delete = b.delete;
        m.ca_file = b.ca_file.as_deref().map(|p| self.path(p));
        m.timeout = b.timeout;
        m.allow_plaintext_auth = b.allow_plaintext_auth;
        Ok(Some(m))
    }

    /// Resolves a path from the file against the campaign directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// The state database path.
    pub fn state_path(&self) -> PathBuf {
        match &self.config.state.path {
            Some(p) => self.path(p),
            None => self.dir.join(".edm").join("state.db"),
        }
    }

    /// The configured rate (`None`: unlimited): `[delivery] rate`, capped
    /// by the relay's own `rate`.
    pub fn rate(&self) -> Option<f64> {
        let run = self.config.delivery.rate.filter(|r| *r > 0.0);
        // In a pool each relay's own rate is kept by the pool, not the run.
        let relay = self
            .single_relay()
            .and_then(|r| r.rate)
            .filter(|r| *r > 0.0);
        match (run, relay) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The relay's name: `[[relay]] name`, or `smtp` for `[smtp]`.
    pub fn relay_name(&self) -> &str {
        self.config
            .relay
            .first()
            .map_or("smtp", |r| r.name.as_str())
    }

    /// The relay's kind.
    pub fn relay_kind(&self) -> RelayKind {
        self.config
            .relay
            .first()
            .map_or(RelayKind::Smtp, |r| r.kind)
    }

    /// The relay's concurrency (`[[relay]] concurrency`, else `[delivery]`'s);
    /// for a pool, the sum of its relays' (the engine's worker count, so
    /// every relay can be kept busy at once).
    pub fn concurrency(&self) -> usize {
        if self.is_pool() {
            return self
                .config
                .relay
                .iter()
                .map(|r| self.relay_concurrency(r))
                .sum();
        }
        self.config
            .relay
            .first()
            .and_then(|r| r.concurrency)
            .unwrap_or(self.config.delivery.concurrency)
    }

    /// More than one `[[relay]]`: a pool (docs/transports.md, "Pools and
    /// failover").
    pub fn is_pool(&self) -> bool {
        self.config.relay.len() > 1
    }

    /// The one `[[relay]]`, when there is exactly one.
    fn single_relay(&self) -> Option<&RelaySection> {
        match self.config.relay.as_slice() {
            [r] => Some(r),
            _ => None,
        }
    }

    /// A relay's concurrency in a pool: its own, else `[delivery]`'s.
    pub fn relay_concurrency(&self, r: &RelaySection) -> usize {
        r.concurrency.unwrap_or(self.config.delivery.concurrency)
    }

    /// The SMTP keys of a `[[relay]]` of kind `smtp` (checked at load).
    pub fn relay_smtp(&self, r: &RelaySection) -> Option<SmtpSection> {
        (r.kind == RelayKind::Smtp)
            .then(|| r.settings.clone().try_into().ok())
            .flatten()
    }

    /// The SES keys of a `[[relay]]` of kind `ses` (checked at load).
    pub fn relay_ses(&self, r: &RelaySection) -> Option<SesSection> {
        (r.kind == RelayKind::Ses)
            .then(|| r.settings.clone().try_into().ok())
            .flatten()
    }

    /// The Resend keys of a `[[relay]]` of kind `resend` (checked at load).
    pub fn relay_resend(&self, r: &RelaySection) -> Option<ResendSection> {
        (r.kind == RelayKind::Resend)
            .then(|| r.settings.clone().try_into().ok())
            .flatten()
    }

    /// The SES relay's keys, when the relay is SES (checked at load).
    pub fn ses(&self) -> Option<SesSection> {
        let r = self.config.relay.first()?;
        (r.kind == RelayKind::Ses)
            .then(|| r.settings.clone().try_into().ok())
            .flatten()
    }

    /// The Resend relay's keys, when the relay is Resend (checked at load).
    pub fn resend(&self) -> Option<ResendSection> {
        let r = self.config.relay.first()?;
        (r.kind == RelayKind::Resend)
            .then(|| r.settings.clone().try_into().ok())
            .flatten()
    }

    /// The Resend relay's API key, read from its `api_key_env` variable.
    /// Never logged; the error names the relay and the variable, never a
    /// value.
    pub fn resend_api_key(&self, r: &ResendSection) -> Result<String, Error> {
        self.resend_api_key_of(self.relay_name(), r)
    }

    /// [`Campaign::resend_api_key`] for the relay named `name` (a pool member).
    pub fn resend_api_key_of(&self, name: &str, r: &ResendSection) -> Result<String, Error> {
        match std::env::var(&r.api_key_env) {
            Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            _ => Err(self.bad(format!(
                "[[relay]] {:?} (kind = \"resend\"): api_key_env names ${}, which is not set (export the API key before running)",
                name,
                r.api_key_env
            ))),
        }
    }

    /// The lower-cased domain of `[campaign] from`, read by edm's one From
    /// parser ([`edm_template::Mailbox::parse`]); `None` when From does not
    /// parse (compiling the templates says why).
    pub fn from_domain(&self) -> Option<String> {
        edm_template::Mailbox::parse(&self.config.campaign.from)
            .ok()
            .map(|m| edm_model::domain_of(m.address()))
    }

    /// The relay port, defaulted by security.
    pub fn port(&self) -> u16 {
        self.config
            .smtp
            .port
            .unwrap_or(match self.config.smtp.security {
                SecurityName::None => 25,
                SecurityName::Starttls => 587,
                SecurityName::Tls => 465,
            })
    }

    /// Reads the SMTP password from the environment or a file. Never logged.
    pub fn password(&self) -> Result<Option<String>, Error> {
        self.password_of(&self.config.smtp, "[smtp]")
    }

    /// Reads the password of the SMTP settings under `key` (`[smtp]`, or a
    /// `[[relay]]` of a pool). Never logged.
    pub fn password_of(&self, s: &SmtpSection, key: &str) -> Result<Option<String>, Error> {
        if s.username.is_none() {
            return Ok(None);
        }
        if let Some(var) = &s.password_env {
            return match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                _ => Err(self.bad(format!(
                    "{key} password_env names ${var}, which is not set (export it before running)"
                ))),
            };
        }
        if let Some(file) = &s.password_file {
            let path = self.path(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| self.bad(format!("{key} password_file {}: {e}", path.display())))?;
            return Ok(Some(text.lines().next().unwrap_or_default().to_string()));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> Result<Campaign, Error> {
        std::fs::write(dir.join("campaign.toml"), text).unwrap();
        Campaign::load(dir)
    }

    const MINIMAL: &str = r#"
[campaign]
name = "welcome"
from = "Acme <news@acme.example>"
subject = "Hi {{first_name}}"
text = "t.txt"
recipients = "r.csv"

[smtp]
host = "127.0.0.1"
port = 2525
"#;

    const SES_RELAY: &str = r#"
[[relay]]
name = "ses-eu"
kind = "ses"
region = "eu-west-1"
rate = 14
concurrency = 3
"#;

    #[test]
    fn a_relay_table_of_kind_resend() {
        let d = tempfile::tempdir().unwrap();
        let no_smtp = MINIMAL.replace("[smtp]\nhost = \"127.0.0.1\"\nport = 2525\n", "");
        let relay =
            "\n[[relay]]\nname = \"rs\"\nkind = \"resend\"\nendpoint = \"http://127.0.0.1:9\"\n";
        let c = write(d.path(), &format!("{no_smtp}{relay}")).unwrap();
        assert_eq!((c.relay_name(), c.relay_kind()), ("rs", RelayKind::Resend));
        let r = c.resend().unwrap();
        assert_eq!(r.api_key_env, "RESEND_API_KEY");
        assert_eq!(r.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert!(c.ses().is_none());
        let unset = ResendSection {
            api_key_env: "EDM_TEST_RESEND_KEY_NEVER_SET".into(),
            ..r
        };
        let e = c.resend_api_key(&unset).unwrap_err().to_string();
        assert!(
            e.contains("[[relay]] \"rs\"") && e.contains("$EDM_TEST_RESEND_KEY_NEVER_SET"),
            "{e}"
        );
        let e = write(d.path(), &format!("{no_smtp}{relay}region = \"x\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("(kind = \"resend\")") && e.contains("region"),
            "{e}"
        );
    }

    #[test]
    fn a_relay_table_of_kind_ses_or_smtp() {
        let d = tempfile::tempdir().unwrap();
        let no_smtp = MINIMAL.replace("[smtp]\nhost = \"127.0.0.1\"\nport = 2525\n", "");
        assert!(!no_smtp.contains("[smtp]"), "{no_smtp}");
        let c = write(d.path(), &format!("{no_smtp}{SES_RELAY}")).unwrap();
        assert_eq!(c.relay_name(), "ses-eu");
        assert_eq!(c.relay_kind(), RelayKind::Ses);
        assert_eq!(c.rate(), Some(14.0));
        assert_eq!(c.concurrency(), 3);
        let ses = c.ses().unwrap();
        assert_eq!((ses.region.as_str(), ses.endpoint), ("eu-west-1", None));

        let smtp = "\n[[relay]]\nname = \"main\"\nkind = \"smtp\"\nhost = \"mx.acme.example\"\nport = 2525\n";
        let c = write(
            d.path(),
            &format!("{no_smtp}\n[delivery]\nrate = 5\n{smtp}"),
        )
        .unwrap();
        assert_eq!(c.relay_name(), "main");
        assert_eq!(
            (c.config.smtp.host.as_str(), c.port()),
            ("mx.acme.example", 2525)
        );
        assert!(c.ses().is_none());
        assert_eq!(c.rate(), Some(5.0));

        // [smtp] alone is the relay named smtp.
        let c = write(d.path(), MINIMAL).unwrap();
        assert_eq!((c.relay_name(), c.relay_kind()), ("smtp", RelayKind::Smtp));
    }

    #[test]
    fn several_relay_tables_are_a_pool() {
        let d = tempfile::tempdir().unwrap();
        let no_smtp = MINIMAL.replace("[smtp]\nhost = \"127.0.0.1\"\nport = 2525\n", "");
        let text = format!(
            "{no_smtp}\n[delivery]\nrate = 50\nconcurrency = 4\n\n[[relay]]\nname = \"mx1\"\nkind = \"smtp\"\nhost = \"mx1.example\"\nport = 2525\nweight = 3\ndaily_quota = 1000\n{SES_RELAY}weight = 0.5\n"
        );
        let c = write(d.path(), &text).unwrap();
        assert!(c.is_pool());
        // Each relay's own rate is the pool's business; the run keeps its own.
        assert_eq!(c.rate(), Some(50.0));
        // Workers: mx1 takes [delivery]'s 4, ses-eu its own 3.
        assert_eq!(c.concurrency(), 7);
        let r = &c.config.relay;
        assert_eq!((r[0].weight, r[0].daily_quota), (Some(3.0), Some(1000)));
        assert_eq!(
            c.relay_smtp(&r[0]).map(|s| s.host),
            Some("mx1.example".into())
        );
        assert_eq!(
            c.relay_ses(&r[1]).map(|s| s.region),
            Some("eu-west-1".into())
        );
        assert!(c.relay_ses(&r[0]).is_none());
        // The first SMTP relay stands as [smtp] for the checks.
        assert_eq!(c.config.smtp.host, "mx1.example");
    }

    #[test]
    fn relay_tables_that_cannot_work_are_refused_naming_the_key() {
        let d = tempfile::tempdir().unwrap();
        let no_smtp = MINIMAL.replace("[smtp]\nhost = \"127.0.0.1\"\nport = 2525\n", "");
        let err = |text: String| write(d.path(), &text).unwrap_err().to_string();
        let e = err(format!("{MINIMAL}{SES_RELAY}"));
        assert!(e.contains("[smtp] and [[relay]] together"), "{e}");
        assert!(e.contains("campaign.toml"), "{e}");
        let e = err(no_smtp.clone());
        assert!(e.contains("no relay"), "{e}");
        // A pool: names unique, weights above 0, a daily quota above 0.
        let e = err(format!("{no_smtp}{SES_RELAY}{SES_RELAY}"));
        assert!(
            e.contains("[[relay]] \"ses-eu\": two [[relay]] tables have this name"),
            "{e}"
        );
        let e = err(format!(
            "{no_smtp}{SES_RELAY}{}weight = 0\n",
            SES_RELAY.replace("ses-eu", "ses-us")
        ));
        assert!(e.contains("[[relay]] \"ses-us\" weight = 0"), "{e}");
        let e = err(format!(
            "{no_smtp}{SES_RELAY}{}daily_quota = 0\n",
            SES_RELAY.replace("ses-eu", "ses-us")
        ));
        assert!(e.contains("[[relay]] \"ses-us\" daily_quota = 0"), "{e}");
        let e = err(format!(
            "{no_smtp}{SES_RELAY}\n[[relay]]\nname = \"mx\"\nkind = \"smtp\"\nhost = \"h\"\nport = 0\n"
        ));
        assert!(
            e.contains("[[relay]] \"mx\" (kind = \"smtp\"): port = 0"),
            "{e}"
        );
        let e = err(format!("{no_smtp}{SES_RELAY}host = \"x\"\n"));
        assert!(
            e.contains("[[relay]] \"ses-eu\" (kind = \"ses\")") && e.contains("host"),
            "{e}"
        );
        let e = err(format!(
            "{no_smtp}{}",
            SES_RELAY.replace("region = \"eu-west-1\"\n", "")
        ));
        assert!(e.contains("region"), "{e}");
        let e = err(format!(
            "{no_smtp}{}",
            SES_RELAY.replace("rate = 14", "rate = -1")
        ));
        assert!(e.contains("[[relay]] \"ses-eu\" rate = -1"), "{e}");
        let e = err(format!(
            "{no_smtp}{}",
            SES_RELAY.replace("kind = \"ses\"", "kind = \"carrier-pigeon\"")
        ));
        assert!(e.contains("kind") || e.contains("carrier-pigeon"), "{e}");
    }

    #[test]
    fn minimal_file_gets_documented_defaults() {
        let d = tempfile::tempdir().unwrap();
        let c = write(d.path(), MINIMAL).unwrap();
        assert_eq!(c.config.campaign.email_column, "email");
        assert_eq!(c.config.delivery.concurrency, 8);
        assert_eq!(c.config.delivery.max_attempts, 5);
        assert_eq!(c.config.smtp.command_timeout, Duration::from_secs(30));
        assert_eq!(c.rate(), None);
        assert_eq!(c.state_path(), d.path().join(".edm/state.db"));
    }

    #[test]
    fn the_from_domain_comes_from_the_one_from_parser() {
        let d = tempfile::tempdir().unwrap();
        let mut c = write(d.path(), MINIMAL).unwrap();
        for (from, domain) in [
            ("Acme News <News@Acme.Example>", Some("acme.example")),
            ("news@acme.example", Some("acme.example")),
            // A display name holding an address and a `>` is still only a name.
            (
                "\"x@other.example >\" <news@acme.example>",
                Some("acme.example"),
            ),
            ("Acme <news@acme.example", None),
        ] {
            c.config.campaign.from = from.into();
            assert_eq!(c.from_domain().as_deref(), domain, "{from}");
        }
    }

    #[test]
    fn keys_left_out_take_the_engines_defaults() {
        let d = tempfile::tempdir().unwrap();
        let c = write(d.path(), MINIMAL).unwrap();
        let (read, default) = (&c.config.delivery, DeliverySection::default());
        let engine = edm_delivery::RetryPolicy::default();
        for section in [read, &default] {
            assert_eq!(section.concurrency, defaults::CONCURRENCY);
            assert_eq!(section.burst, defaults::BURST);
            assert_eq!(section.max_attempts, engine.max_attempts);
            assert_eq!(section.retry_base, engine.base);
            assert_eq!(section.retry_for, engine.retry_for);
            assert_eq!(section.max_outage, defaults::MAX_OUTAGE);
            assert_eq!(section.quota_pause, defaults::QUOTA_PAUSE);
            assert_eq!(
                section.stop_after_identical_refusals,
                defaults::STOP_AFTER_IDENTICAL_REFUSALS
            );
        }
        let smtp = &c.config.smtp;
        assert_eq!(smtp.connect_timeout, defaults::CONNECT_TIMEOUT);
        assert_eq!(smtp.command_timeout, defaults::COMMAND_TIMEOUT);
        assert_eq!(smtp.data_timeout, defaults::DATA_TIMEOUT);
        assert_eq!(
            c.config.limits.resolved().max_line_len,
            edm_template::Limits::default().max_line_len
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let d = tempfile::tempdir().unwrap();
        let err = write(
            d.path(),
            &MINIMAL.replace("port = 2525", "port = 2525\nprot = 1"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("prot"), "{msg}");
        assert!(msg.contains("campaign.toml"), "{msg}");
    }

    #[test]
    fn provider_profiles_fill_the_limits_not_written() {
        let d = tempfile::tempdir().unwrap();
        let c = write(d.path(), MINIMAL).unwrap();
        let l = c.config.limits.resolved();
        assert_eq!(l.max_line_len, 998);
        assert_eq!(l.max_message_bytes, None);
        assert_eq!(l.max_attachment_bytes, None);
        let c = write(
            d.path(),
            &format!(
                "{MINIMAL}\n[limits]\nprovider = \"tencent\"\nmax_attachment_bytes = 2000000\n"
            ),
        )
        .unwrap();
        let l = c.config.limits.resolved();
        assert_eq!(l.max_body_bytes, Some(1_000_000));
        assert_eq!(l.max_attachment_bytes, Some(2_000_000), "explicit wins");
        assert_eq!(l.max_attachments_bytes, Some(10_000_000));
        assert_eq!(l.max_line_len, 1999);
        let c = write(
            d.path(),
            &format!("{MINIMAL}\n[limits]\nprovider = \"ses\"\nmax_line_len = 500\n"),
        )
        .unwrap();
        let l = c.config.limits.resolved();
        assert_eq!(l.max_message_bytes, Some(10_000_000));
        assert_eq!(l.max_line_len, 500);
        let e = write(
            d.path(),
            &format!("{MINIMAL}\n[limits]\nprovider = \"gmail\"\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("gmail"), "{e}");
    }

    #[test]
    fn durations_and_domains_parse() {
        let d = tempfile::tempdir().unwrap();
        let text = format!(
            "{MINIMAL}\n[delivery]\nrate = 20\nretry = [\"30s\", \"2m\"]\nretry_for = \"1h\"\n[delivery.domains.\"gmail.com\"]\nrate = 2\nconcurrency = 1\n"
        );
        let c = write(d.path(), &text).unwrap();
        assert_eq!(
            c.config.delivery.retry,
            vec![Duration::from_secs(30), Duration::from_secs(120)]
        );
        assert_eq!(c.config.delivery.retry_for, Duration::from_secs(3600));
        assert_eq!(c.config.delivery.domains["gmail.com"].concurrency, Some(1));
        let bad = write(d.path(), &text.replace("\"1h\"", "\"soon\"")).unwrap_err();
        assert!(bad.to_string().contains("soon"), "{bad}");
    }

    #[test]
    fn needs_a_body_and_a_password_source() {
        let d = tempfile::tempdir().unwrap();
        let e = write(d.path(), &MINIMAL.replace("text = \"t.txt\"\n", "")).unwrap_err();
        assert!(e.to_string().contains("html"), "{e}");
        let e = write(
            d.path(),
            &MINIMAL.replace("port = 2525", "port = 2525\nusername = \"u\""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("password_env"), "{e}");
    }

    #[test]
    fn password_comes_from_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let c = write(
            d.path(),
            &MINIMAL.replace(
                "port = 2525",
                "port = 2525\nusername = \"u\"\npassword_env = \"EDM_TEST_PW_UNSET_42\"",
            ),
        )
        .unwrap();
        let e = c.password().unwrap_err();
        assert!(e.to_string().contains("EDM_TEST_PW_UNSET_42"), "{e}");
    }

    /// The error of loading MINIMAL with `replace` replaced by `with`.
    fn refused(replace: &str, with: &str) -> String {
        let d = tempfile::tempdir().unwrap();
        assert!(MINIMAL.contains(replace) || replace.is_empty());
        let text = if replace.is_empty() {
            format!("{MINIMAL}{with}")
        } else {
            MINIMAL.replace(replace, with)
        };
        match write(d.path(), &text) {
            Ok(_) => panic!("accepted: {with}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rates_that_cannot_work_are_refused_naming_the_key() {
        for (value, why) in [
            ("-1", "negative"),
            ("-0.5", "negative"),
            ("nan", "not a number"),
            ("inf", "infinite"),
            ("-inf", "infinite"),
            ("0.0009", "under 0.001"),
            // 1 / rate would overflow a Duration: a panic before this check.
            ("1e-300", "under 0.001"),
        ] {
            let e = refused("", &format!("\n[delivery]\nrate = {value}\n"));
            assert!(e.contains("[delivery] rate = "), "{value}: {e}");
            assert!(e.contains(why), "{value}: {e}");
            assert!(e.contains("campaign.toml"), "{e}");
            let e = refused(
                "",
                &format!("\n[delivery.domains.\"gmail.com\"]\nrate = {value}\n"),
            );
            assert!(
                e.contains("[delivery.domains.\"gmail.com\"] rate = "),
                "{value}: {e}"
            );
            assert!(e.contains(why), "{value}: {e}");
        }
        // 0 and no rate keep meaning unlimited; 0.001 is the slowest taken.
        let d = tempfile::tempdir().unwrap();
        for ok in ["rate = 0", "rate = 0.0", "rate = 0.001", "rate = 14"] {
            let c = write(d.path(), &format!("{MINIMAL}\n[delivery]\n{ok}\n")).unwrap();
            assert_eq!(c.rate().is_none(), ok.contains("= 0") && !ok.contains('1'));
        }
        assert_eq!(rate_problem(0.0), None);
        assert_eq!(rate_problem(MIN_RATE), None);
        assert!(rate_problem(f64::MIN_POSITIVE).is_some());
    }

    #[test]
    fn ports_timeouts_helo_and_concurrency_that_cannot_work_are_refused() {
        let e = refused("port = 2525", "port = 0");
        assert!(e.contains("[smtp] port = 0"), "{e}");
        for key in ["connect_timeout", "command_timeout", "data_timeout"] {
            let e = refused("port = 2525", &format!("port = 2525\n{key} = \"50ms\""));
            assert!(e.contains(&format!("[smtp] {key} = 50ms")), "{e}");
            assert!(e.contains("under 100ms"), "{e}");
            let e = refused("port = 2525", &format!("port = 2525\n{key} = \"0s\""));
            assert!(e.contains(key), "{e}");
        }
        let d = tempfile::tempdir().unwrap();
        let c = write(
            d.path(),
            &MINIMAL.replace("port = 2525", "port = 2525\ncommand_timeout = \"100ms\""),
        )
        .unwrap();
        assert_eq!(c.config.smtp.command_timeout, MIN_TIMEOUT);
        for helo in [
            "mail.acme.example\\r\\nRCPT TO:<x@evil.example>",
            "mail\\nx",
            "mail\\rx",
        ] {
            let e = refused(
                "port = 2525",
                &format!("port = 2525\nhelo_name = \"{helo}\""),
            );
            assert!(e.contains("[smtp] helo_name"), "{e}");
            assert!(e.contains("line break"), "{e}");
        }
        let e = refused("port = 2525", "port = 2525\nhelo_name = \"a b\"");
        assert!(e.contains("[smtp] helo_name"), "{e}");
        let e = refused("port = 2525", "port = 2525\nhelo_name = \"\"");
        assert!(e.contains("is empty"), "{e}");
        for n in ["0", "1001", "100000"] {
            let e = refused("", &format!("\n[delivery]\nconcurrency = {n}\n"));
            assert!(e.contains(&format!("[delivery] concurrency = {n}")), "{e}");
            let e = refused(
                "",
                &format!("\n[delivery.domains.\"x.example\"]\nconcurrency = {n}\n"),
            );
            assert!(
                e.contains("[delivery.domains.\"x.example\"] concurrency"),
                "{e}"
            );
        }
        let c = write(
            d.path(),
            &format!("{MINIMAL}\n[delivery]\nconcurrency = 1000\n"),
        )
        .unwrap();
        assert_eq!(c.config.delivery.concurrency, MAX_CONCURRENCY);
    }

    #[test]
    fn the_tencent_profile_caps_the_encoded_message_and_sends_base64() {
        let d = tempfile::tempdir().unwrap();
        let c = write(
            d.path(),
            &format!("{MINIMAL}\n[limits]\nprovider = \"tencent\"\n"),
        )
        .unwrap();
        let l = c.config.limits.resolved();
        assert_eq!(l.max_message_bytes, Some(9_000_000));
        assert_eq!(l.warn_message_bytes, Some(8_000_000));
        assert_eq!(l.attachment_encoding, AttachmentEncoding::Base64);
        // An explicit cap replaces the profile's, and its warning.
        let c = write(
            d.path(),
            &format!("{MINIMAL}\n[limits]\nprovider = \"tencent\"\nmax_message_bytes = 5000000\n"),
        )
        .unwrap();
        let l = c.config.limits.resolved();
        assert_eq!(l.max_message_bytes, Some(5_000_000));
        assert_eq!(l.warn_message_bytes, None);
        let l = write(d.path(), MINIMAL).unwrap().config.limits.resolved();
        assert_eq!(l.attachment_encoding, AttachmentEncoding::Auto);
        assert_eq!(l.warn_message_bytes, None);
    }

    #[test]
    fn the_bounces_table_parses_with_defaults_and_builds_the_mailbox() {
        let d = tempfile::tempdir().unwrap();
        let c = write(d.path(), MINIMAL).unwrap();
        let b = &c.config.bounces;
        assert_eq!(b.return_path, None);
        assert_eq!(
            (b.soft_bounce_limit, b.max_bounce_rate, b.max_complaint_rate),
            (3, 0.05, 0.001)
        );
        assert!(c.mailbox().unwrap().is_none());

        let var = "EDM_TEST_BOUNCES_PASSWORD_CFG";
        let text = format!(
            "{MINIMAL}\n[bounces]\nreturn_path = \"bounces+{{token}}@acme.example\"\nkind = \"imap\"\nhost = \"imap.acme.example\"\nsecurity = \"starttls\"\nusername = \"b@acme.example\"\npassword_env = \"{var}\"\nca_file = \"ca.pem\"\npoll = \"5m\"\nsoft_bounce_limit = 2\n"
        );
        let c = write(d.path(), &text).unwrap();
        assert_eq!(c.config.bounces.poll, Some(Duration::from_secs(300)));
        let err = c.mailbox().unwrap_err().to_string();
        assert!(
            err.contains(var) && err.contains("[bounces] password_env"),
            "{err}"
        );
        // SAFETY: the variable's name is this test's own.
        unsafe { std::env::set_var(var, "s3cret") };
        let m = c.mailbox().unwrap().unwrap();
        assert_eq!(m.kind, edm_bounce::mailbox::Kind::Imap);
        assert_eq!((m.host.as_str(), m.port), ("imap.acme.example", 143));
        assert_eq!(m.password, "s3cret");
        assert_eq!(m.folder, "INBOX");
        assert_eq!(m.processed_folder, "processed");
        assert_eq!(m.ca_file, Some(d.path().join("ca.pem")));
        assert!(!format!("{m:?}").contains("s3cret"));
    }

    #[test]
    fn bounces_and_feedback_id_that_cannot_work_are_refused_naming_the_key() {
        for (with, says) in [
            (
                "[bounces]\nreturn_path = \"bounces@acme.example\"\n",
                "{token}",
            ),
            (
                "[bounces]\nreturn_path = \"b+{token}{token}@acme.example\"\n",
                "exactly once",
            ),
            (
                "[bounces]\nreturn_path = \"bounces@{token}.example\"\n",
                "local part",
            ),
            (
                "[bounces]\nreturn_path = \"b+{token} @acme.example\"\n",
                "space",
            ),
            ("[bounces]\nsoft_bounce_limit = 0\n", "soft_bounce_limit"),
            ("[bounces]\nmax_bounce_rate = 5\n", "max_bounce_rate = 5"),
            ("[bounces]\nmax_complaint_rate = 0\n", "max_complaint_rate"),
            ("[bounces]\npoll = \"1s\"\n", "poll"),
            ("[bounces]\nkind = \"imap\"\n", "host"),
            ("[bounces]\nkind = \"pop3\"\nhost = \"h\"\n", "password_env"),
            ("[bounces]\nhost = \"h\"\n", "without kind"),
            ("[bounces]\nkind = \"smtp\"\n", "kind"),
            ("[bounces]\nfolders = \"x\"\n", "folders"),
            (
                "[bounces]\nkind = \"imap\"\nhost = \"h\"\nusername = \"u\"\npassword_env = \"P\"\nprocessed_folder = \"INBOX\"\n",
                "is the folder read",
            ),
            (
                "[bounces]\nkind = \"imap\"\nhost = \"h\"\nusername = \"u\"\npassword_env = \"P\"\nfolder = \"Boîte\"\n",
                "ASCII",
            ),
        ] {
            let err = refused("", &format!("\n{with}"));
            assert!(err.contains(says), "{with}: {err}");
            assert!(err.contains("campaign.toml"), "{err}");
        }
        let with_id = |id: &str| {
            MINIMAL.replace(
                "recipients = \"r.csv\"",
                &format!("recipients = \"r.csv\"\nfeedback_id = \"{id}\""),
            )
        };
        let d = tempfile::tempdir().unwrap();
        for ok in ["a:b:c:sender", "sender", "::news:acme-1.2_x"] {
            assert!(write(d.path(), &with_id(ok)).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("a:b:c:d:e", "at most four"),
            ("a:b:c:", "sender id"),
            ("a b:c", "' '"),
        ] {
            let err = write(d.path(), &with_id(bad)).unwrap_err().to_string();
            assert!(
                err.contains("[campaign] feedback_id") && err.contains(says),
                "{bad}: {err}"
            );
        }
    }
}
