//! AUTH PLAIN and LOGIN (RFC 4954, RFC 4616), checked against the one
//! configured user.

use std::mem;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};

use super::{Mode, Session};

impl Session {
    pub(super) fn auth(&mut self, mechanism: u64, initial_response: &str) {
        if self.shared.config.auth.is_none() {
            self.send(503, "5.5.1 AUTH not enabled");
        } else if !self.greeted {
            self.send(503, "5.5.1 Send EHLO first");
        } else if self.authenticated {
            self.send(503, "5.5.1 Already authenticated");
        } else if self.mail_from.is_some() {
            self.send(503, "5.5.1 AUTH not permitted during a mail transaction");
        } else if mechanism == AUTH_PLAIN {
            if initial_response.is_empty() {
                self.mode = Mode::AuthPlain;
                self.send(334, "");
            } else {
                self.check_plain(initial_response.as_bytes());
            }
        } else if mechanism == AUTH_LOGIN {
            if initial_response.is_empty() {
                self.mode = Mode::AuthLoginUser;
                self.send(334, "VXNlcm5hbWU6"); // "Username:"
            } else {
                self.login_user(initial_response.as_bytes());
            }
        } else {
            self.send(504, "5.5.4 Unrecognized authentication type");
        }
    }

    /// A response line during AUTH (RFC 4954 §4).
    pub(super) fn auth_line(&mut self, line: &[u8]) {
        let mode = mem::replace(&mut self.mode, Mode::Command);
        if line == b"*" {
            self.send(501, "5.0.0 Authentication cancelled");
            return;
        }
        match mode {
            Mode::AuthPlain => self.check_plain(line),
            Mode::AuthLoginUser => self.login_user(line),
            Mode::AuthLoginPassword(user) => match decode(line) {
                Some(password) => {
                    let password = String::from_utf8_lossy(&password).into_owned();
                    self.check_credentials(&user, &password);
                }
                None => self.send(501, "5.5.2 Invalid base64"),
            },
            _ => {}
        }
    }

    fn login_user(&mut self, encoded: &[u8]) {
        match decode(encoded) {
            Some(user) => {
                self.mode = Mode::AuthLoginPassword(String::from_utf8_lossy(&user).into_owned());
                self.send(334, "UGFzc3dvcmQ6"); // "Password:"
            }
            None => self.send(501, "5.5.2 Invalid base64"),
        }
    }

    /// `authzid NUL authcid NUL password` (RFC 4616).
    fn check_plain(&mut self, encoded: &[u8]) {
        let Some(decoded) = decode(encoded) else {
            self.send(501, "5.5.2 Invalid base64");
            return;
        };
        let mut parts = decoded.split(|&b| b == 0);
        let (_authzid, user, password) = (parts.next(), parts.next(), parts.next());
        match (user, password, parts.next()) {
            (Some(user), Some(password), None) => {
                let user = String::from_utf8_lossy(user).into_owned();
                let password = String::from_utf8_lossy(password).into_owned();
                self.check_credentials(&user, &password);
            }
            _ => self.send(501, "5.5.2 Malformed PLAIN response"),
        }
    }

    fn check_credentials(&mut self, user: &str, password: &str) {
        let ok = self
            .shared
            .config
            .auth
            .as_ref()
            .is_some_and(|(u, p)| u == user && p == password);
        if ok {
            self.authenticated = true;
            self.send(235, "2.7.0 Authentication successful");
        } else {
            self.send(535, "5.7.8 Authentication credentials invalid");
        }
    }
}

/// Base64 of an AUTH exchange; `=` stands for an empty response (RFC 4954 §4).
fn decode(encoded: &[u8]) -> Option<Vec<u8>> {
    if encoded == b"=" {
        return Some(Vec::new());
    }
    BASE64.decode(encoded).ok()
}
