//! What a campaign's message is made of, before compilation.

/// Everything needed to compile a campaign's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageSpec {
    /// Campaign name: part of every Message-ID, so it must stay the same
    /// across resumes of one campaign.
    pub campaign: String,
    /// `Acme News <news@acme.example>` or a bare address.
    pub from: String,
    /// Same forms as `from`.
    pub reply_to: Option<String>,
    /// Handlebars source of the subject (not escaped).
    pub subject: String,
    /// The HTML body template (HTML-escaped).
    pub html: Option<Source>,
    /// The plain-text body template (not escaped).
    pub text: Option<Source>,
    /// Handlebars source of the unsubscribe URL (not escaped); when set, the
    /// List-Unsubscribe headers are added (RFC 2369, RFC 8058).
    pub list_unsubscribe: Option<String>,
    /// Checks run on every rendered message.
    pub limits: Limits,
}

/// A template read from a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Where it came from (a file path): used in error messages.
    pub name: String,
    /// The handlebars source.
    pub body: String,
}

/// The longest line RFC 5322 §2.1.1 allows, CRLF excluded: the default of
/// [`Limits::max_line_len`] and of `[limits] max_line_len`.
pub const MAX_LINE_LEN: usize = 998;

/// Limits a rendered message must keep (the relay's, usually).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message in bytes, headers included; `None` for no limit.
    pub max_message_bytes: Option<usize>,
    /// Longest line in bytes, CRLF excluded. RFC 5322 §2.1.1 says 998.
    pub max_line_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: None,
            max_line_len: MAX_LINE_LEN,
        }
    }
}
