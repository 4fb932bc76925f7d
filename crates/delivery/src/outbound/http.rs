//! What the HTTP API transports (Amazon SES v2, Resend) share: how a request
//! that got no HTTP reply is classified.

use edm_model::{Category, Failure, Stage};

use crate::transport::Afterwards;

/// A request to `host` that got no HTTP reply. A failed connect never
/// reached the provider (the connection is broken, nothing was sent);
/// anything later (a timeout, a reset) may have reached it: in doubt, never
/// resent silently (docs/resume.md).
pub(crate) fn request_failure(host: &str, e: &reqwest::Error) -> (Failure, Afterwards) {
    let what = error_chain(e);
    let (stage, category, after) = match (e.is_connect(), e.is_timeout()) {
        (true, true) => (Stage::Connect, Category::ConnectTimeout, Afterwards::Broken),
        (true, false) => (Stage::Connect, Category::ConnectRefused, Afterwards::Broken),
        (false, true) => (Stage::Data, Category::ReadTimeout, Afterwards::InDoubt),
        (false, false) => (Stage::Data, Category::Disconnected, Afterwards::InDoubt),
    };
    let mut f = Failure::local(stage, category, format!("{host}: {what}"));
    f.permanent = false;
    (f, after)
}

/// An error and its sources, for the operator ("error sending request:
/// connection refused").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
