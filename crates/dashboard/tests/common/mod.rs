//! Synthetic `Progress` snapshots with fixed times, so screens are stable.
#![allow(dead_code)] // each test binary uses a different subset

use edm_model::{
    Category, DomainCounts, EventLine, FailureRow, Progress, RelayState, RelayTally, RunState,
    Status,
};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// 2023-11-14T22:13:20Z: any fixed instant will do.
pub const START: i64 = 1_700_000_000_000;
/// 12 minutes 34 seconds into the run.
pub const NOW: i64 = START + 754_000;

pub fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

pub fn ch(c: char) -> KeyEvent {
    key(KeyCode::Char(c))
}

pub fn ctrl_c() -> KeyEvent {
    KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
}

fn counts(pairs: &[(Status, u64)]) -> std::collections::BTreeMap<Status, u64> {
    let mut map: std::collections::BTreeMap<Status, u64> =
        Status::ALL.into_iter().map(|s| (s, 0)).collect();
    for (s, n) in pairs {
        map.insert(*s, *n);
    }
    map
}

fn event(secs: i64, text: &str) -> EventLine {
    EventLine {
        at: START + secs * 1000,
        text: text.to_string(),
    }
}

/// Nothing sent yet: the recipients are still being read.
pub fn fresh() -> Progress {
    Progress {
        campaign: "spring-sale-2025".into(),
        state: RunState::Starting,
        started_at: START,
        now: START + 2_000,
        counts: counts(&[(Status::Pending, 5_000)]),
        target_rate: Some(50.0),
        effective_rate: Some(50.0),
        events: [event(
            0,
            "campaign spring-sale-2025: 5,000 recipients, 12 invalid, 8 duplicates",
        )]
        .into(),
        ..Progress::default()
    }
}

const DOMAINS: [&str; 14] = [
    "gmail.com",
    "qq.com",
    "163.com",
    "outlook.com",
    "yahoo.com",
    "hotmail.com",
    "icloud.com",
    "126.com",
    "example.org",
    "gmx.de",
    "web.de",
    "proton.me",
    "fastmail.com",
    "a-very-long-subdomain.mail.corporate-example.co.uk",
];

/// Failures of several categories, with the replies that go with them.
const FAILURES: [(Status, Category, &str); 6] = [
    (
        Status::Failed,
        Category::RecipientUnknown,
        "550 5.1.1 <{}>: Recipient address rejected: User unknown in virtual mailbox table",
    ),
    (
        Status::Deferred,
        Category::Greylisted,
        "451 4.7.1 Greylisted, please try again in 300 seconds",
    ),
    (
        Status::Failed,
        Category::Policy,
        "554 5.7.1 Message rejected as spam by Content Filtering; see https://postmaster.example/spam",
    ),
    (
        Status::Deferred,
        Category::MailboxFull,
        "452 4.2.2 Mailbox full",
    ),
    (
        Status::Deferred,
        Category::Throttled,
        "454 4.7.0 Throttling failure: Maximum sending rate exceeded.",
    ),
    (
        Status::Failed,
        Category::OtherPermanent,
        "554 {\"code\":\"InvalidRecipient\",\"message\":\"收件人地址不存在\"}",
    ),
];

/// Sending at the target rate, with failures across categories.
pub fn mid_run() -> Progress {
    let mut p = Progress {
        campaign: "spring-sale-2025".into(),
        state: RunState::Running,
        started_at: START,
        now: NOW,
        counts: counts(&[
            (Status::Pending, 3_050),
            (Status::Sending, 8),
            (Status::Sent, 1_834),
            (Status::Deferred, 23),
            (Status::Failed, 57),
            (Status::Invalid, 12),
            (Status::Skipped, 9),
            (Status::Suppressed, 7),
        ]),
        in_flight: 8,
        by_category: [
            (Category::RecipientUnknown, 41),
            (Category::Greylisted, 15),
            (Category::Policy, 10),
            (Category::MailboxFull, 6),
            (Category::Throttled, 2),
            (Category::OtherPermanent, 6),
        ]
        .into(),
        top_replies: vec![
            (Some(550), Some("5.1.1".into()), "Recipient address rejected: User unknown in virtual mailbox table".into(), 41),
            (Some(451), Some("4.7.1".into()), "Greylisted, please try again in 300 seconds".into(), 15),
            (Some(554), Some("5.7.1".into()), "Message rejected as spam by Content Filtering;\r\nsee https://postmaster.example/spam".into(), 10),
            (Some(554), None, "{\"code\":\"InvalidRecipient\",\"message\":\"收件人地址不存在\"}".into(), 6),
            (Some(452), Some("4.2.2".into()), "Mailbox full".into(), 6),
            (Some(454), Some("4.7.0".into()), "Throttling failure: Maximum sending rate exceeded.".into(), 2),
        ],
        target_rate: Some(50.0),
        effective_rate: Some(50.0),
        retries: 23,
        ..Progress::default()
    };
    for (i, name) in DOMAINS.iter().enumerate() {
        let i = i as u64;
        p.domains.insert(
            name.to_string(),
            DomainCounts {
                sent: 600 / (i + 1),
                failed: (13 * i) % 9,
                deferred: (7 * i) % 5,
            },
        );
    }
    // A ramp up, a steady run with a small dip, newest last.
    for s in 0..90u32 {
        let r = match s {
            0..10 => 5.0 * f64::from(s),
            40..46 => 38.0 + f64::from(s - 40),
            _ => 48.0 + f64::from(s % 3),
        };
        p.rate_history.push_back(r);
    }
    p.events = [
        event(
            0,
            "campaign spring-sale-2025: 5,000 recipients, 12 invalid, 8 duplicates",
        ),
        event(
            1,
            "connected to smtp.relay.example:587 (STARTTLS, AUTH PLAIN)",
        ),
        event(
            95,
            "connection: disconnected at data: 421 4.4.2 connection dropped",
        ),
        event(301, "rate 50.0/s -> 40.0/s (454 4.7.0 Throttling failure)"),
        event(420, "rate 40.0/s -> 50.0/s (quiet for 120s)"),
        event(700, "retrying 15 greylisted recipients"),
    ]
    .into();
    for i in 0..30u32 {
        let (status, category, reply) = FAILURES[i as usize % FAILURES.len()];
        let email = format!("user{i:03}@{}", DOMAINS[i as usize % DOMAINS.len()]);
        p.recent_failures.push_back(FailureRow {
            reply: reply.replace("{}", &email),
            email,
            status,
            category,
            attempts: 1 + i % 3,
            at: START + 20_000 * i64::from(i),
        });
    }
    p
}

/// The provider throttles: the effective rate is half the target.
pub fn throttled() -> Progress {
    let mut p = mid_run();
    p.state = RunState::Throttled;
    p.effective_rate = Some(25.0);
    for _ in 0..20 {
        p.rate_history.push_back(25.0);
    }
    p.by_category.insert(Category::Throttled, 48);
    p.top_replies.insert(
        0,
        (
            Some(454),
            Some("4.7.0".into()),
            "Throttling failure: Maximum sending rate exceeded.".into(),
            48,
        ),
    );
    p.top_replies.pop();
    p.push_event(
        NOW - 30_000,
        "rate 50.0/s -> 35.0/s (454 4.7.0 Throttling failure)".into(),
        50,
    );
    p.push_event(
        NOW - 10_000,
        "rate 35.0/s -> 25.0/s (454 4.7.0 Throttling failure)".into(),
        50,
    );
    p
}

/// Paused by the operator: nothing accepted for the last seconds.
pub fn paused() -> Progress {
    let mut p = mid_run();
    p.state = RunState::Paused;
    p.in_flight = 0;
    p.counts.insert(Status::Sending, 0);
    p.counts.insert(Status::Pending, 3_058);
    for _ in 0..15 {
        p.rate_history.push_back(0.0);
    }
    p.push_event(NOW - 15_000, "paused: operator".into(), 50);
    p
}

/// Every recipient final.
pub fn done() -> Progress {
    let mut p = mid_run();
    p.state = RunState::Done;
    p.now = START + 6_001_000;
    p.in_flight = 0;
    p.counts = counts(&[
        (Status::Sent, 4_890),
        (Status::Failed, 82),
        (Status::Invalid, 12),
        (Status::Skipped, 9),
        (Status::Suppressed, 7),
    ]);
    p.push_event(START + 6_000_000, "done: 4,890 sent, 82 failed".into(), 50);
    p
}

/// Mid-run through one relay: the relays panel has one row.
pub fn one_relay() -> Progress {
    let mut p = mid_run();
    p.relays.insert(
        "smtp.acme.example".into(),
        RelayTally {
            sent: 1_834,
            failed: 57,
            deferred: 23,
            in_flight: 8,
            state: RelayState::Sending,
            rate: 49.5,
            last_reply: Some("250 2.0.0 Ok: queued as 4F2A1".into()),
            top_reply: Some(("550 5.1.1 User unknown".into(), 41)),
        },
    );
    p
}

/// A pool of three relays: one throttled, one refusing every message.
pub fn relay_pool() -> Progress {
    let mut p = one_relay();
    p.relays.insert(
        "ses-eu-west-1".into(),
        RelayTally {
            sent: 2_210,
            failed: 3,
            deferred: 48,
            in_flight: 12,
            state: RelayState::Throttled,
            rate: 14.0,
            last_reply: Some("454 Throttling failure".into()),
            top_reply: Some((
                "454 4.7.0 Throttling failure: Maximum sending rate exceeded.".into(),
                48,
            )),
        },
    );
    p.relays.insert(
        "backup-relay".into(),
        RelayTally {
            failed: 0,
            state: RelayState::Refusing,
            top_reply: Some(("553 5.7.1 Sender address rejected".into(), 10)),
            ..RelayTally::default()
        },
    );
    p
}

/// Three workers share the campaign (PostgreSQL): one live and busy, one
/// live that joined late, one dead (its lease expired).
pub fn three_workers() -> Progress {
    let mut p = one_relay();
    let w = |name: &str, alive, state: &str, sent, in_flight, ago| edm_model::WorkerRow {
        name: name.into(),
        alive,
        state: state.into(),
        rate: alive.then_some(16.7),
        share: alive.then_some(1.0 / 3.0),
        in_flight,
        sent,
        failed: sent / 40,
        heartbeat_at: NOW - ago,
        ..Default::default()
    };
    p.workers = vec![
        w("mail-1", true, "running", 1_210, 4, 3_000),
        w("mail-2", false, "running", 402, 0, 41_000),
        w("late", true, "running", 222, 3, 8_000),
    ];
    p
}
