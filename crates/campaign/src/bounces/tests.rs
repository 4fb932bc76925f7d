use super::*;

use edm_bounce::Recipient as Line;
use edm_model::{Reply, Status};
use edm_store::{MemoryStore, NewRow, Outcome, OutcomeKind};

const TOML: &str = r#"
[campaign]
name = "news"
from = "Acme <news@acme.example>"
subject = "Hi"
text = "t.txt"
recipients = "r.csv"

[smtp]
host = "127.0.0.1"
port = 2525

[bounces]
return_path = "Bounces+{token}@Acme.example"
"#;

fn campaign(dir: &Path, toml: &str) -> Campaign {
    std::fs::write(dir.join("campaign.toml"), toml).unwrap();
    Campaign::load(dir).unwrap()
}

/// A store with `n` recipients (`r0@a.example`...), all sent but the last,
/// which failed; Message-IDs `m<i>@acme.example`.
fn store(n: usize) -> (MemoryStore, Vec<RecipientId>) {
    let mut s = MemoryStore::new();
    s.begin_ingest("csv").unwrap();
    let rows: Vec<NewRow> = (0..n)
        .map(|i| NewRow {
            line: i as u64 + 2,
            email: format!("r{i}@a.example"),
            values: vec![format!("r{i}@a.example")],
            status: Status::Pending,
            category: None,
            reason: None,
            duplicate_of: None,
        })
        .collect();
    s.insert_rows(&rows).unwrap();
    s.finish_ingest(Some(&["email".to_string()]), &[]).unwrap();
    let claimed = s.claim_with_budget(n, n, 1_000).unwrap();
    let outs: Vec<Outcome> = claimed
        .iter()
        .enumerate()
        .map(|(i, r)| Outcome {
            id: r.id,
            at: 2_000,
            kind: if i + 1 < n {
                OutcomeKind::Sent {
                    reply: Reply {
                        code: 250,
                        enhanced: None,
                        text: "ok".into(),
                        provider_message_id: Some(format!("0100ses{i}")),
                        relay: None,
                    },
                    message_id: format!("m{i}@acme.example"),
                    relay: "smtp".into(),
                }
            } else {
                OutcomeKind::Failed {
                    relay: String::new(),
                    failure: edm_model::Failure::local(
                        edm_model::Stage::RcptTo,
                        edm_model::Category::MailboxFull,
                        "no",
                    ),
                }
            },
        })
        .collect();
    s.record(&outs).unwrap();
    (s, claimed.iter().map(|r| r.id).collect())
}

fn bounce(delivered_to: &[String], address: &str, status: &str) -> Verdict {
    Verdict {
        verdict: VerdictKind::Bounce,
        recipients: vec![Line {
            address: address.into(),
            status: Some(status.into()),
            hard: status.starts_with('5'),
            diagnostic: Some(format!("smtp; 550 {status} gone")),
        }],
        delivered_to: delivered_to.to_vec(),
        envelope_id: None,
        original_message_id: None,
        feedback_type: None,
    }
}

#[test]
fn tokens_are_short_authenticated_and_survive_lowercasing() {
    let d = tempfile::tempdir().unwrap();
    let c = campaign(d.path(), TOML);
    let (mut s, ids) = store(3);
    let verp = Verp::load_or_create(&c, &mut s).unwrap().unwrap();
    // The secret is created once and kept.
    let secret = s.meta(SECRET_META).unwrap().unwrap();
    let again = Verp::load_or_create(&c, &mut s).unwrap().unwrap();
    assert_eq!(s.meta(SECRET_META).unwrap().unwrap(), secret);
    assert_eq!(verp.token(ids[1]), again.token(ids[1]));
    assert!(!format!("{verp:?}").contains(&secret));

    let token = verp.token(ids[1]);
    assert!(token.len() <= 20, "{token}");
    assert_eq!(verp.verify(&token), Some(ids[1]));
    let address = verp.address(ids[1]);
    assert_eq!(address, format!("Bounces+{token}@Acme.example"));
    assert_eq!(
        verp.read_address(&address.to_ascii_lowercase()),
        Some(Some(ids[1]))
    );
    assert_eq!(
        verp.read_address(&format!("<{address}>")),
        Some(Some(ids[1]))
    );
    assert_eq!(verp.read_address("someone@acme.example"), None);

    // Forgeries: another id with this MAC, a changed MAC, garbage, and a
    // token made with another campaign's secret.
    let (id, mac) = token.split_once('-').unwrap();
    let other = format!("{}-{mac}", id.parse::<i64>().unwrap() + 1);
    assert_eq!(verp.verify(&other), None);
    let mut changed = mac.to_string();
    changed.replace_range(0..1, if mac.starts_with('a') { "b" } else { "a" });
    assert_eq!(verp.verify(&format!("{id}-{changed}")), None);
    assert_eq!(verp.verify("garbage"), None);
    assert_eq!(verp.verify(&format!("{id}-")), None);
    let (mut s2, _) = store(3);
    let stranger = Verp::load_or_create(&c, &mut s2).unwrap().unwrap();
    assert_eq!(verp.verify(&stranger.token(ids[1])), None);
    assert_eq!(
        verp.read_address(&stranger.address(ids[1])),
        Some(None),
        "a VERP address with a token we never issued is a forgery"
    );
}

#[test]
fn without_a_send_no_secret_is_created_and_no_token_matches() {
    let d = tempfile::tempdir().unwrap();
    let c = campaign(d.path(), TOML);
    let (s, _) = store(2);
    assert!(Verp::load(&c, &s).unwrap().is_none());
}

#[test]
fn bounces_and_complaints_apply_once_to_the_right_recipient() {
    let d = tempfile::tempdir().unwrap();
    let c = campaign(d.path(), TOML);
    let (mut s, ids) = store(6);
    let verp = Verp::load_or_create(&c, &mut s).unwrap().unwrap();
    let list = SharedSuppression::at(d.path().join("suppression.csv"));
    let mut intake = Intake::new(&c, &mut s, Some(list.clone())).unwrap();
    let to = |i: usize| vec![verp.address(ids[i]).to_ascii_lowercase()];

    // A hard bounce by token: bounced and suppressed.
    let a = intake
        .apply_verdict(&bounce(&to(0), "r0@a.example", "5.1.1"), "k0")
        .unwrap();
    assert!(
        matches!(&a, Applied::Changed { id, change: LateApplied::Bounced, suppressed: Some(r), .. }
            if *id == ids[0] && r.starts_with("bounced 5.1.1")),
        "{a:?}"
    );
    assert_eq!(a.disposition(), edm_bounce::mailbox::Disposition::Processed);
    // The same message again changes nothing.
    let again = intake
        .apply_verdict(&bounce(&to(0), "r0@a.example", "5.1.1"), "k0")
        .unwrap();
    assert!(matches!(again, Applied::AlreadyApplied { .. }), "{again:?}");

    // A forged token naming r1: ignored, listed, nothing changed; the
    // Message-ID in it is not trusted either.
    let mut forged = bounce(
        &["bounces+2-aaaaaaaaaaaaa@acme.example".to_string()],
        "r1@a.example",
        "5.1.1",
    );
    forged.original_message_id = Some("m1@acme.example".into());
    let f = intake.apply_verdict(&forged, "k1").unwrap();
    assert!(matches!(f, Applied::Unmatched { .. }), "{f:?}");
    assert_eq!(f.disposition(), edm_bounce::mailbox::Disposition::Leave);

    // The address alone is not enough with a return path.
    let bare = intake
        .apply_verdict(&bounce(&[], "r1@a.example", "5.1.1"), "k2")
        .unwrap();
    assert!(matches!(bare, Applied::Unmatched { .. }), "{bare:?}");

    // A complaint tied by the returned Message-ID (a relay that rewrote the
    // return path): complained and suppressed.
    let complaint = Verdict {
        verdict: VerdictKind::Complaint,
        recipients: vec![Line {
            address: "r2@a.example".into(),
            status: None,
            hard: false,
            diagnostic: None,
        }],
        delivered_to: vec!["abuse-reports@acme.example".into()],
        envelope_id: None,
        original_message_id: Some("<m2@acme.example>".into()),
        feedback_type: Some("abuse".into()),
    };
    let cpl = intake.apply_verdict(&complaint, "k3").unwrap();
    assert!(
        matches!(&cpl, Applied::Changed { id, change: LateApplied::Complained, suppressed: Some(_), .. } if *id == ids[2]),
        "{cpl:?}"
    );

    // A policy refusal (5.7.1) by ENVID (xtext): bounced, not suppressed.
    let mut policy = bounce(&[], "r3@a.example", "5.7.1");
    policy.envelope_id = Some("m3+40acme.example".into());
    let p = intake.apply_verdict(&policy, "k4").unwrap();
    assert!(
        matches!(&p, Applied::Changed { id, change: LateApplied::Bounced, suppressed: None, .. } if *id == ids[3]),
        "{p:?}"
    );

    // Delays: counted, the third is a hard bounce, none suppresses.
    for (n, key) in ["d1", "d2", "d3"].iter().enumerate() {
        let r = intake
            .apply_verdict(&bounce(&to(4), "r4@a.example", "4.2.2"), key)
            .unwrap();
        let want = if n < 2 {
            LateApplied::SoftBounce(n as u32 + 1)
        } else {
            LateApplied::Bounced
        };
        assert!(
            matches!(&r, Applied::Changed { change, suppressed: None, .. } if *change == want),
            "{r:?}"
        );
    }
    // A 4.x.x never counts as hard, even if a parser said so.
    let mut odd = bounce(&to(1), "r1@a.example", "4.4.7");
    odd.recipients[0].hard = true;
    let r = intake.apply_verdict(&odd, "k5").unwrap();
    assert!(
        matches!(
            &r,
            Applied::Changed {
                change: LateApplied::SoftBounce(1),
                ..
            }
        ),
        "{r:?}"
    );
    // A recipient never sent: recorded, nothing changed.
    let r = intake
        .apply_verdict(&bounce(&to(5), "r5@a.example", "5.1.1"), "k6")
        .unwrap();
    assert!(matches!(r, Applied::Ignored { .. }), "{r:?}");
    // Auto-replies and delivery reports are not bounces.
    let mut auto = bounce(&to(1), "r1@a.example", "5.1.1");
    auto.verdict = VerdictKind::AutoReply;
    let r = intake.apply_verdict(&auto, "k7").unwrap();
    assert_eq!(r, Applied::NotBounce(VerdictKind::AutoReply));
    drop(intake);

    assert_eq!(
        s.late_counts().unwrap(),
        edm_store::LateCounts {
            bounced: 3,
            complained: 1,
            soft_bounced: 1
        }
    );
    let listed: Vec<String> = list
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.email)
        .collect();
    assert_eq!(listed, vec!["r0@a.example", "r2@a.example"]);
    assert_eq!(s.unmatched().unwrap().len(), 2);
    // Statuses and the quota count are what they were.
    assert_eq!(s.summary().unwrap().count(Status::Sent), 5);
}

#[test]
fn without_a_return_path_the_address_ties_a_bounce() {
    let d = tempfile::tempdir().unwrap();
    let toml = TOML.replace("return_path = \"Bounces+{token}@Acme.example\"", "");
    let c = campaign(d.path(), &toml);
    let (mut s, ids) = store(2);
    let mut intake = Intake::new(&c, &mut s, None).unwrap();
    let r = intake
        .apply_verdict(&bounce(&[], "R0@a.example", "5.1.1"), "k")
        .unwrap();
    assert!(
        matches!(&r, Applied::Changed { id, suppressed: None, .. } if *id == ids[0]),
        "{r:?}"
    );
}

#[test]
fn a_message_is_known_by_its_message_id_or_its_bytes() {
    assert_eq!(
        message_key(b"From: a\r\nMessage-ID:\r\n <x@y>\r\n\r\nbody"),
        "mid:x@y"
    );
    assert_eq!(message_key(b"message-id: <q@r>\n\nbody"), "mid:q@r");
    let k = message_key(b"From: a\r\n\r\nbody");
    assert!(k.starts_with("sha256:"), "{k}");
    assert_ne!(k, message_key(b"From: a\r\n\r\nbody2"));
    assert_eq!(xtext_decode("m3+40acme.example"), "m3@acme.example");
    assert_eq!(xtext_decode("a+2Bb+zz"), "a+b+zz");
}

#[test]
fn hard_bounces_suppress_only_when_the_mailbox_is_gone() {
    let b = LateApplied::Bounced;
    assert!(suppression_reason(&b, Some("5.1.1"), None).is_some());
    assert!(suppression_reason(&b, Some("5.1.10"), None).is_some());
    assert!(suppression_reason(&b, Some("5.2.1"), None).is_some());
    assert!(suppression_reason(&b, Some("5.2.2"), None).is_none());
    assert!(suppression_reason(&b, Some("5.7.1"), None).is_none());
    assert!(suppression_reason(&b, None, None).is_none());
    assert!(suppression_reason(&LateApplied::SoftBounce(1), Some("5.1.1"), None).is_none());
    assert!(suppression_reason(&LateApplied::Complained, None, None).is_some());
}

#[test]
fn a_complaint_through_amazon_ses_is_tied_by_its_message_id() {
    // SES replaced the Message-ID with `<MessageId@region.amazonses.com>`;
    // the MessageId is what the SES transport kept.
    let d = tempfile::tempdir().unwrap();
    let c = campaign(d.path(), TOML);
    let (mut s, ids) = store(3);
    let mut intake = Intake::new(&c, &mut s, None).unwrap();
    let mut v = bounce(&["feedback@acme.example".into()], "r1@a.example", "");
    v.verdict = VerdictKind::Complaint;
    v.original_message_id = Some("<0100ses1@eu-west-1.amazonses.com>".into());
    let r = intake.apply_verdict(&v, "k").unwrap();
    assert!(
        matches!(&r, Applied::Changed { id, change: LateApplied::Complained, .. } if *id == ids[1]),
        "{r:?}"
    );
    v.original_message_id = Some("<0100ses9@eu-west-1.amazonses.com>".into());
    let r = intake.apply_verdict(&v, "k2").unwrap();
    assert!(matches!(r, Applied::Unmatched { .. }), "{r:?}");
}
