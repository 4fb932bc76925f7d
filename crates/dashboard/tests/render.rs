//! Snapshot tests of whole screens drawn into `TestBackend`.
//!
//! Generate or update with `INSTA_UPDATE=always cargo test -p edm-dashboard`
//! and review the `.snap` files in `tests/snapshots/`.

mod common;

use common::*;
use edm_dashboard::{App, Options};
use edm_model::Progress;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::{Color, Modifier};

fn screen(app: &App, p: &Progress, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| app.draw(f, p)).unwrap();
    terminal
}

fn app() -> App {
    App::new(Options::default())
}

macro_rules! screens {
    ($($name:ident => $progress:expr;)*) => {$(
        #[test]
        fn $name() {
            let p = $progress;
            insta::assert_snapshot!(concat!(stringify!($name), "_80x24"), screen(&app(), &p, 80, 24).backend());
            insta::assert_snapshot!(concat!(stringify!($name), "_120x40"), screen(&app(), &p, 120, 40).backend());
        }
    )*};
}

screens! {
    main_fresh => fresh();
    main_mid_run => mid_run();
    main_throttled => throttled();
    main_paused => paused();
    main_done => done();
    main_one_relay => one_relay();
    main_relay_pool => relay_pool();
    main_three_workers => three_workers();
}

/// Issue 14 point 4: a row per worker (alive, rate, share, in flight,
/// sent, failed, heartbeat), live ones first; none with one worker.
#[test]
fn a_row_per_worker() {
    let screen_text = |p: &Progress, w, h| format!("{}", screen(&app(), p, w, h).backend());
    assert!(!screen_text(&one_relay(), 80, 24).contains("Workers"));
    // 80x24 has room for the busiest one under the count of all.
    let small = screen_text(&three_workers(), 80, 24);
    assert!(small.contains("Workers (3)"), "{small}");
    assert!(small.lines().any(|l| l.contains("mail-1")), "{small}");
    let text = screen_text(&three_workers(), 120, 40);
    assert!(text.contains("Workers (3)"), "{text}");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| ["mail-1", "mail-2", "late"].iter().any(|w| l.contains(w)))
        .collect();
    assert_eq!(rows.len(), 3, "{text}");
    // Live first, busiest first: mail-1, late, then the dead one.
    assert!(rows[0].contains("mail-1"), "{rows:?}");
    for part in ["alive", "16.7/s", "33%", "1,210", "30", "3s ago"] {
        assert!(rows[0].contains(part), "{part:?} missing in {:?}", rows[0]);
    }
    assert!(rows[1].contains("late"), "{rows:?}");
    assert!(
        rows[2].contains("mail-2") && rows[2].contains("dead") && rows[2].contains("41s ago"),
        "{rows:?}"
    );
}

/// Issue 12 point 4: a row per relay, with its state, rate, counts and top
/// reply; none without relays (a run that has sent nothing yet).
#[test]
fn a_row_per_relay() {
    let screen_text = |p: &Progress, w, h| format!("{}", screen(&app(), p, w, h).backend());
    assert!(!screen_text(&mid_run(), 80, 24).contains("Relays"));
    let one = screen_text(&one_relay(), 80, 24);
    assert!(one.contains("Relays"), "{one}");
    let row = one
        .lines()
        .find(|l| l.contains("smtp.acme.exa"))
        .expect("the relay's row");
    for part in ["sending", "49.5/s", "1,834", "57", "41x 550 5.1.1"] {
        assert!(row.contains(part), "{part:?} missing in {row:?}");
    }
    let pool = screen_text(&relay_pool(), 120, 40);
    let rows: Vec<&str> = pool
        .lines()
        .filter(|l| {
            ["ses-eu-west-1", "smtp.acme.exa", "backup-relay"]
                .iter()
                .any(|r| l.contains(r))
        })
        .collect();
    assert_eq!(rows.len(), 3, "{pool}");
    // Busiest first: the SES member, then the SMTP relay, then the refusing one.
    assert!(
        rows[0].contains("ses-eu-west-1") && rows[0].contains("48x"),
        "{rows:?}"
    );
    assert!(
        rows[2].contains("backup-relay") && rows[2].contains("refusing"),
        "{rows:?}"
    );
}

#[test]
fn paused_says_paused() {
    let t = screen(&app(), &paused(), 80, 24);
    assert!(format!("{}", t.backend()).contains("PAUSED"));
}

#[test]
fn failures_view() {
    let p = mid_run();
    let mut a = app();
    a.handle_key(ch('f'), &p);
    insta::assert_snapshot!("failures_80x24", screen(&a, &p, 80, 24).backend());
    // Scrolled past the first page: the selection stays visible.
    for _ in 0..20 {
        a.handle_key(key(ratatui::crossterm::event::KeyCode::Down), &p);
    }
    insta::assert_snapshot!("failures_scrolled_80x24", screen(&a, &p, 80, 24).backend());
}

#[test]
fn domains_view() {
    let p = mid_run();
    let mut a = app();
    a.handle_key(ch('d'), &p);
    insta::assert_snapshot!("domains_80x24", screen(&a, &p, 80, 24).backend());
}

#[test]
fn help_overlay() {
    let p = mid_run();
    let mut a = app();
    a.handle_key(ch('?'), &p);
    insta::assert_snapshot!("help_80x24", screen(&a, &p, 80, 24).backend());

    let mut ro = App::new(Options {
        read_only: true,
        ..Options::default()
    });
    ro.handle_key(ch('?'), &p);
    insta::assert_snapshot!("help_read_only_80x24", screen(&ro, &p, 80, 24).backend());
}

#[test]
fn confirm_and_stopping_prompts() {
    let p = mid_run();
    let mut a = app();
    a.handle_key(ch('q'), &p);
    insta::assert_snapshot!("confirm_quit_80x24", screen(&a, &p, 80, 24).backend());
    a.handle_key(ch('y'), &p);
    let mut stopping = p.clone();
    stopping.state = edm_model::RunState::Stopping;
    let t = screen(&a, &stopping, 80, 24);
    let text = format!("{}", t.backend());
    assert!(text.contains("STOPPING"), "{text}");
    assert!(text.contains("stopping: finishing in-flight"), "{text}");
}

#[test]
fn no_color_uses_only_modifiers() {
    let a = App::new(Options {
        no_color: true,
        read_only: false,
    });
    for p in [mid_run(), throttled(), paused(), done()] {
        let t = screen(&a, &p, 120, 40);
        let buffer = t.backend().buffer();
        assert!(
            buffer
                .content()
                .iter()
                .all(|c| c.fg == Color::Reset && c.bg == Color::Reset),
            "a colour was drawn with NO_COLOR"
        );
        // The title bar still stands out.
        assert!(buffer[(0, 0)].modifier.contains(Modifier::REVERSED));
    }
    // And with colour, some colour is drawn.
    let t = screen(&app(), &mid_run(), 80, 24);
    assert!(
        t.backend()
            .buffer()
            .content()
            .iter()
            .any(|c| c.fg != Color::Reset)
    );
}

#[test]
fn tiny_terminals_do_not_panic() {
    for (w, h) in [(1, 1), (20, 5), (40, 10), (79, 23), (300, 100)] {
        for p in [fresh(), mid_run(), done()] {
            let mut a = app();
            screen(&a, &p, w, h);
            for c in ['f', 'd', '?'] {
                a.handle_key(ch(c), &p);
                screen(&a, &p, w, h);
            }
        }
    }
}

/// Issue 13 point 4: bounces and complaints read back after `sent` take the
/// counters' free cell, once there are any.
#[test]
fn bounces_and_complaints_show_once_there_are_any() {
    let screen_text = |p: &Progress| format!("{}", screen(&app(), p, 80, 24).backend());
    let none = screen_text(&mid_run());
    assert!(!none.contains("bounces"), "{none}");
    let mut p = mid_run();
    p.late = edm_model::LateTally {
        bounced: 1_204,
        complained: 3,
        soft_bounced: 9,
    };
    let some = screen_text(&p);
    let row = some
        .lines()
        .find(|l| l.contains("suppressed"))
        .expect("the third counters row");
    assert!(row.contains("bounces"), "{row:?}");
    assert!(row.contains("1,204/3"), "{row:?}");
}
