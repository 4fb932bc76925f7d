//! The input fingerprint: a hash of each part of a campaign's inputs that
//! changes its messages, kept in the state when the campaign starts, so a
//! later run can say which part changed ([`Input`]) before sending anything.

use std::fmt;
use std::io::Read;

use sha2::{Digest, Sha256};

use crate::Error;
use crate::config::Campaign;

/// A part of a campaign's inputs with its own hash in the state.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Input {
    /// The recipients CSV, byte for byte.
    Recipients,
    /// The subject, the HTML and text templates, the List-Unsubscribe URL.
    Templates,
    /// From, Reply-To and the campaign name (part of every Message-ID).
    Sender,
}

impl Input {
    /// Every part, in the order they are reported.
    pub const ALL: [Input; 3] = [Input::Recipients, Input::Templates, Input::Sender];

    /// The key of its hash in the state's meta table. Persisted: never
    /// change one, or every campaign started before reads as changed.
    pub fn meta_key(self) -> &'static str {
        match self {
            Input::Recipients => "fingerprint.recipients",
            Input::Templates => "fingerprint.templates",
            Input::Sender => "fingerprint.sender",
        }
    }
}

impl fmt::Display for Input {
    /// For people: `the recipients CSV`, `the templates or subject`...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Input::Recipients => "the recipients CSV",
            Input::Templates => "the templates or subject",
            Input::Sender => "the sender or campaign name",
        })
    }
}

/// The parts of the inputs that changed since the campaign started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangedInputs(pub Vec<Input>);

impl ChangedInputs {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether this part changed.
    pub fn contains(&self, input: Input) -> bool {
        self.0.contains(&input)
    }
}

impl fmt::Display for ChangedInputs {
    /// The parts for people, joined by `, `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, input) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{input}")?;
        }
        Ok(())
    }
}

/// The hash of each [`Input`] of a campaign, as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    /// In [`Input::ALL`]'s order.
    hashes: [(Input, String); 3],
}

impl Fingerprint {
    /// The hash of one part (hex SHA-256).
    pub(crate) fn hash(&self, input: Input) -> &str {
        self.hashes
            .iter()
            .find(|(i, _)| *i == input)
            .map_or("", |(_, h)| h.as_str())
    }

    /// `(meta key, hash)` for each part, to store.
    pub(crate) fn meta(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.hashes.iter().map(|(i, h)| (i.meta_key(), h.as_str()))
    }

    /// The parts whose stored hash (`stored(meta key)`) is not this one.
    pub(crate) fn changed(&self, stored: impl Fn(&str) -> Option<String>) -> ChangedInputs {
        ChangedInputs(
            self.hashes
                .iter()
                .filter(|(i, h)| stored(i.meta_key()).as_deref() != Some(h.as_str()))
                .map(|(i, _)| *i)
                .collect(),
        )
    }
}

/// Hashes of what changes the messages: the CSV, the templates, the sender.
pub(crate) fn fingerprint(c: &Campaign) -> Result<Fingerprint, Error> {
    let cfg = &c.config.campaign;
    let csv_path = c.path(&cfg.recipients);
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(&csv_path).map_err(|e| Error::Io {
        path: csv_path.clone(),
        source: e,
    })?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::Io {
            path: csv_path.clone(),
            source: e,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let csv = hex(&h.finalize());
    let mut t = Sha256::new();
    t.update(cfg.subject.as_bytes());
    for p in [&cfg.html, &cfg.text].into_iter().flatten() {
        t.update([0]);
        t.update(std::fs::read(c.path(p)).unwrap_or_default());
    }
    t.update([0]);
    t.update(
        cfg.list_unsubscribe
            .as_deref()
            .unwrap_or_default()
            .as_bytes(),
    );
    let templates = hex(&t.finalize());
    let settings = sender_hash(cfg);
    Ok(Fingerprint {
        hashes: [
            (Input::Recipients, csv),
            (Input::Templates, templates),
            (Input::Sender, settings),
        ],
    })
}

/// The hash of [`Input::Sender`] alone (From, Reply-To, campaign name),
/// without reading the CSV: it is also what tells a campaign from another
/// of the same name in PostgreSQL (`state.rs`).
pub(crate) fn sender_hash(cfg: &crate::config::CampaignSection) -> String {
    let mut s = Sha256::new();
    s.update(cfg.from.as_bytes());
    s.update([0]);
    s.update(cfg.reply_to.as_deref().unwrap_or_default().as_bytes());
    s.update([0]);
    s.update(cfg.name.as_bytes());
    hex(&s.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn print(recipients: &str, templates: &str, sender: &str) -> Fingerprint {
        Fingerprint {
            hashes: [
                (Input::Recipients, recipients.into()),
                (Input::Templates, templates.into()),
                (Input::Sender, sender.into()),
            ],
        }
    }

    #[test]
    fn changes_are_named_by_part() {
        let stored: HashMap<String, String> = print("a", "b", "c")
            .meta()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let get = |k: &str| stored.get(k).cloned();
        assert!(print("a", "b", "c").changed(get).is_empty());
        let changed = print("x", "b", "y").changed(get);
        assert_eq!(
            changed,
            ChangedInputs(vec![Input::Recipients, Input::Sender])
        );
        assert!(changed.contains(Input::Recipients));
        assert!(!changed.contains(Input::Templates));
        assert_eq!(
            changed.to_string(),
            "the recipients CSV, the sender or campaign name"
        );
        // A state without hashes (from before fingerprints): everything changed.
        assert_eq!(print("a", "b", "c").changed(|_| None).0, Input::ALL);
    }

    #[test]
    fn meta_keys_stay_what_old_states_hold() {
        let keys: Vec<_> = Input::ALL.iter().map(|i| i.meta_key()).collect();
        assert_eq!(
            keys,
            [
                "fingerprint.recipients",
                "fingerprint.templates",
                "fingerprint.sender"
            ]
        );
    }
}
