//! What `edm send` and `edm check` (and preview, test sends) read from a
//! campaign the same way: the message spec and its template files, the CSV
//! reading options, the DKIM signer, a CSV row as a recipient. The send
//! path takes its inputs from here, never from the checker.

use std::path::Path;

use edm_model::{Recipient, RecipientId};
use edm_recipients::ReadOptions;
use edm_template::{Dkim, DkimAlgorithm, DkimConfig, Limits, MessageSpec, Source, Templates};

use crate::Error;
use crate::config::Campaign;

/// Builds the message spec from `campaign.toml`, reading the template files.
pub(crate) fn message_spec(c: &Campaign) -> Result<MessageSpec, Error> {
    let cfg = &c.config.campaign;
    let read = |p: &Path| -> Result<Source, Error> {
        let path = c.path(p);
        let body = std::fs::read_to_string(&path).map_err(|source| Error::TemplateFile {
            path: path.clone(),
            source,
        })?;
        Ok(Source {
            name: path.display().to_string(),
            body,
        })
    };
    Ok(MessageSpec {
        campaign: cfg.name.clone(),
        from: cfg.from.clone(),
        reply_to: cfg.reply_to.clone(),
        subject: cfg.subject.clone(),
        html: cfg.html.as_deref().map(read).transpose()?,
        text: cfg.text.as_deref().map(read).transpose()?,
        list_unsubscribe: cfg.list_unsubscribe.clone(),
        limits: {
            let l = c.config.limits.resolved();
            Limits {
                max_message_bytes: l.max_message_bytes,
                max_line_len: l.max_line_len,
            }
        },
    })
}

/// A CSV row as a never-attempted recipient, for rendering outside a run
/// (check, preview, test sends): the CSV line stands in for the store's id.
pub(crate) fn unsent(row: edm_recipients::Row) -> Recipient {
    Recipient {
        id: RecipientId(row.line as i64),
        line: row.line,
        email: row.email,
        values: row.values,
        attempts: 0,
        first_attempt_at: None,
    }
}

pub(crate) fn read_options(c: &Campaign) -> ReadOptions {
    ReadOptions {
        email_column: c.config.campaign.email_column.clone(),
        delimiter: c
            .config
            .campaign
            .delimiter
            .as_ref()
            .and_then(|d| d.bytes().next()),
        encoding: c.config.campaign.encoding.clone(),
    }
}

/// The campaign's DKIM signer, from the `[dkim]` section of `campaign.toml`
/// (`selector`, `domain`, `key_file` relative to the campaign directory,
/// `algorithm` = `rsa` (default) or `ed25519`); `None` without one.
///
pub fn dkim_signer(c: &Campaign) -> Result<Option<Dkim>, Error> {
    let bad = |message: String| Error::Config {
        file: c.file.clone(),
        message,
    };
    let Some(section) = c.config.dkim.clone() else {
        return Ok(None);
    };
    let algorithm = match section.algorithm.as_deref() {
        None => DkimAlgorithm::Rsa,
        Some(name) => DkimAlgorithm::parse(name).ok_or_else(|| {
            bad(format!(
                "[dkim] algorithm must be \"rsa\" or \"ed25519\", not {name:?}"
            ))
        })?,
    };
    let key_path = c.path(&section.key_file);
    let key_pem = std::fs::read_to_string(&key_path)
        .map_err(|e| bad(format!("[dkim] key_file {}: {e}", key_path.display())))?;
    // SES replaces the Message-ID: a signature over it would break
    // (docs/transports.md).
    // In a pool, the same message may go to an SES member.
    let headers: &[&str] = if c
        .config
        .relay
        .iter()
        .any(|r| r.kind == crate::config::RelayKind::Ses)
    {
        &edm_template::SIGNED_HEADERS_WITHOUT_ID_AND_DATE
    } else {
        &edm_template::SIGNED_HEADERS
    };
    let dkim = Dkim::with_headers(
        DkimConfig {
            selector: section.selector,
            domain: section.domain,
            key_pem,
            algorithm,
        },
        headers,
    )
    .map_err(|e| bad(format!("[dkim] key_file {}: {e}", key_path.display())))?;
    Ok(Some(dkim))
}

/// Compiles the campaign's templates (no state touched).
pub(crate) fn compile_templates(c: &Campaign) -> Result<Templates, Error> {
    // One description of the message, shared with `edm check` and `edm preview`.
    let spec = message_spec(c)?;
    let templates =
        Templates::compile(spec)?.with_feedback_id(c.config.campaign.feedback_id.clone());
    let templates = crate::attach::with_attachments(c, templates)?;
    Ok(match dkim_signer(c)? {
        Some(dkim) => templates.with_dkim(dkim),
        None => templates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_file_that_cannot_be_read_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("campaign.toml"),
            "[campaign]\nname = \"n\"\nfrom = \"a@acme.example\"\nsubject = \"s\"\n\
             text = \"missing.txt\"\nrecipients = \"r.csv\"\n[smtp]\nhost = \"127.0.0.1\"\n",
        )
        .unwrap();
        let c = Campaign::load(d.path()).unwrap();
        let e = message_spec(&c).unwrap_err();
        let path = d.path().join("missing.txt");
        assert!(
            matches!(&e, Error::TemplateFile { path: p, .. } if *p == path),
            "{e:?}"
        );
        // The text edm printed when this was a Finding turned into a string.
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read the template: ", path.display())),
            "{e}"
        );
        // `edm send` stops on it the same way.
        assert!(matches!(
            compile_templates(&c),
            Err(Error::TemplateFile { .. })
        ));
    }
}
