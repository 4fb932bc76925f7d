//! `edm send --test-to ADDR`: a few sample recipients' messages, rendered as
//! the campaign would render them, sent to one address through the real relay.
//!
//! The samples are the first valid rows of the CSV (a valid address, not a
//! duplicate of an earlier row), read with edm-recipients. The campaign's
//! state database is never opened or created: a test send leaves no trace
//! in the campaign, so the real send that follows is unaffected.
//!
//! Each message goes through edm-delivery's engine with one connection and
//! no retries: a refusal is reported as the classifier saw it, so what the
//! relay thinks of the content, the sender and the credentials is known
//! before the campaign starts. A connection that cannot be made ends the
//! test at once (no outage probing).

use std::time::Duration;

use edm_delivery::EngineEnd;
use edm_model::{DeliveryEvent, Envelope, Failure, Recipient, RecipientId, Reply};
use edm_recipients::Verdict;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::Error;
use crate::config::Campaign;
use crate::send::{SendOptions, delivery_config, smtp_settings};

/// The subject prefix of test messages unless `--no-prefix`.
pub const TEST_PREFIX: &str = "[TEST] ";

/// What `edm send --test-to` is asked to do.
#[derive(Clone, Debug)]
pub struct TestSendOptions {
    /// The one address every test message goes to (RCPT TO and To).
    pub to: String,
    /// How many sample recipients (the first valid rows). Default 3.
    pub sample: usize,
    /// Prefix subjects with [`TEST_PREFIX`].
    pub prefix: bool,
    /// Override the relay (host, port), as [`SendOptions::relay`].
    pub relay: Option<(String, u16)>,
}

impl TestSendOptions {
    /// Three samples, prefixed, through the campaign's relay.
    pub fn new(to: impl Into<String>) -> TestSendOptions {
        TestSendOptions {
            to: to.into(),
            sample: 3,
            prefix: true,
            relay: None,
        }
    }
}

/// What became of one test message.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum TestOutcome {
    /// The relay accepted it at the end of DATA.
    Accepted {
        /// Its final reply.
        reply: Reply,
    },
    /// Rendering or the relay refused it.
    Failed {
        /// The classified failure.
        failure: Failure,
    },
    /// Never attempted: the connection or authentication failed first.
    NotSent {
        /// Why.
        reason: String,
    },
}

/// One sample recipient's test message.
#[derive(Clone, Debug, Serialize)]
pub struct TestMessage {
    /// The CSV line of the sample row.
    pub line: u64,
    /// The sample row's own address (the message went to the test address).
    pub recipient: String,
    /// The subject as sent (prefix included); empty when rendering failed.
    pub subject: String,
    /// The Message-ID as sent; empty when rendering failed.
    pub message_id: String,
    /// What happened.
    pub outcome: TestOutcome,
    /// The relay it went through (or would have): its `[[relay]]` name,
    /// `smtp` for `[smtp]`.
    pub relay: String,
}

/// The result of a test send.
#[derive(Clone, Debug, Serialize)]
pub struct TestSendReport {
    /// Where the messages went.
    pub to: String,
    /// One per sample, in CSV order.
    pub messages: Vec<TestMessage>,
    /// Why the relay could not be used at all (connection, TLS, AUTH), if so.
    pub relay_failure: Option<Failure>,
}

impl TestSendReport {
    /// 0 when every message was accepted, 1 when one was refused (or could
    /// not be rendered), 2 when the relay could not be used at all.
    pub fn exit_code(&self) -> u8 {
        if self.relay_failure.is_some() {
            2
        } else if self
            .messages
            .iter()
            .all(|m| matches!(m.outcome, TestOutcome::Accepted { .. }))
        {
            0
        } else {
            1
        }
    }
}

/// Renders the first `opts.sample` valid rows for `opts.to` and sends them
/// through the relay. `Err` when the test cannot run at all (a bad test
/// address, an unreadable CSV, templates that do not compile, no valid row).
pub async fn test_send(c: &Campaign, opts: &TestSendOptions) -> Result<TestSendReport, Error> {
    let to = opts.to.trim().to_owned();
    edm_recipients::validate(&to).map_err(|reason| Error::TestAddress {
        file: c.file.clone(),
        address: to.clone(),
        reason,
    })?;
    if let Some(message) = crate::send::plaintext_auth_refusal(c, &c.config.smtp.host) {
        return Err(Error::Config {
            file: c.file.clone(),
            message,
        });
    }
    let password = c.password()?;
    let (columns, samples) = samples(c, opts.sample.max(1))?;
    if samples.is_empty() {
        return Err(Error::NoTestSample {
            recipients: c.path(&c.config.campaign.recipients),
        });
    }
    let templates = crate::inputs::compile_templates(c)?;
    let prefix = if opts.prefix { TEST_PREFIX } else { "" };

    let mut messages = Vec::with_capacity(samples.len());
    let mut envelopes = Vec::new();
    for (i, r) in samples.iter().enumerate() {
        let (subject, message_id, outcome) = match templates.render_to(&columns, r, &to, prefix) {
            Ok(rendered) => {
                let Envelope { message_id, .. } = &rendered.envelope;
                let message_id = message_id.clone();
                let mut envelope = rendered.envelope;
                // The index into `messages`: the engine reports by id.
                envelope.id = RecipientId(i as i64);
                envelopes.push(envelope);
                let pending = TestOutcome::NotSent {
                    reason: "not attempted".into(),
                };
                (rendered.subject, message_id, pending)
            }
            Err(failure) => (
                String::new(),
                String::new(),
                TestOutcome::Failed { failure },
            ),
        };
        messages.push(TestMessage {
            line: r.line,
            recipient: r.email.clone(),
            subject,
            message_id,
            outcome,
            relay: c.relay_name().to_string(),
        });
    }

    let relay_failure = if envelopes.is_empty() {
        None
    } else {
        deliver(c, opts, password, envelopes, &mut messages).await?
    };
    Ok(TestSendReport {
        to,
        messages,
        relay_failure,
    })
}

/// The first `n` valid rows, as recipients, and the CSV header.
fn samples(c: &Campaign, n: usize) -> Result<(Vec<String>, Vec<Recipient>), Error> {
    let path = c.path(&c.config.campaign.recipients);
    let ingest = edm_recipients::open(&path, &crate::inputs::read_options(c), None)?;
    let columns = ingest.columns().to_vec();
    let mut out = Vec::with_capacity(n);
    for row in ingest {
        let row = row?;
        if row.verdict != Verdict::Valid {
            continue;
        }
        out.push(crate::inputs::unsent(row));
        if out.len() >= n {
            break;
        }
    }
    Ok((columns, out))
}

/// Sends the envelopes on one connection, filling in each message's outcome.
/// Returns the relay's failure when it could not be used at all.
async fn deliver(
    c: &Campaign,
    opts: &TestSendOptions,
    password: Option<String>,
    envelopes: Vec<Envelope>,
    messages: &mut [TestMessage],
) -> Result<Option<Failure>, Error> {
    let send_opts = SendOptions {
        relay: opts.relay.clone(),
        ..SendOptions::default()
    };
    let mut cfg = delivery_config(c, &send_opts);
    cfg.concurrency = 1;
    cfg.rate = None;
    cfg.domains.clear();
    // A test wants an answer now: the first connection failure ends it
    // instead of opening the breaker and probing for `max_outage`.
    cfg.breaker_threshold = 1;
    cfg.max_outage = Duration::ZERO;
    cfg.quota_pause = Duration::from_secs(1);

    let (jobs_tx, jobs_rx) = mpsc::channel(envelopes.len());
    let (events_tx, mut events_rx) = mpsc::channel(64);
    let transport = crate::send::transport(c, &cfg, smtp_settings(c, &send_opts, password))?;
    let engine = edm_delivery::start_with(transport, cfg, jobs_rx, events_tx);
    for envelope in envelopes {
        // Room for all of them was made above, so this never waits; the
        // engine only drops its receiver once it has ended.
        if jobs_tx.send(envelope).await.is_err() {
            break;
        }
    }
    drop(jobs_tx);
    let mut connection: Option<Failure> = None;
    while let Some(event) = events_rx.recv().await {
        let (id, outcome) = match event {
            DeliveryEvent::Accepted { id, reply, .. } => (id, TestOutcome::Accepted { reply }),
            DeliveryEvent::Rejected { id, failure, .. }
            | DeliveryEvent::Held { id, failure, .. }
            | DeliveryEvent::InDoubt { id, failure, .. } => (id, TestOutcome::Failed { failure }),
            DeliveryEvent::Returned { .. } => continue,
            DeliveryEvent::Notice(edm_model::Notice::ConnectionProblem { failure }) => {
                connection = Some(failure);
                continue;
            }
            DeliveryEvent::Notice(notice) => {
                tracing::info!("{notice}");
                continue;
            }
        };
        if let Some(m) = usize::try_from(id.0).ok().and_then(|i| messages.get_mut(i)) {
            m.outcome = outcome;
        }
    }
    let relay_failure = match engine.join().await {
        EngineEnd::AuthRefused(f)
        | EngineEnd::Outage(f)
        | EngineEnd::Refused(f)
        | EngineEnd::Unreachable { failure: f, .. } => Some(f),
        EngineEnd::Crashed(e) | EngineEnd::MarkFailed(e) => Some(Failure::local(
            edm_model::Stage::Connect,
            edm_model::Category::Protocol,
            format!("internal error: {e}"),
        )),
        EngineEnd::Drained | EngineEnd::Stopped => None,
    };
    let relay_failure = relay_failure.or_else(|| {
        // Messages never attempted with no engine verdict: say why.
        let unsent = messages
            .iter()
            .any(|m| matches!(&m.outcome, TestOutcome::NotSent { .. }) && !m.subject.is_empty());
        if unsent { connection } else { None }
    });
    if let Some(f) = &relay_failure {
        for m in messages.iter_mut() {
            if let TestOutcome::NotSent { reason } = &mut m.outcome {
                *reason = f.to_string();
            }
        }
    }
    Ok(relay_failure)
}
