//! Key handling without rendering: every rule of `App::handle_key`.

mod common;

use common::*;
use edm_dashboard::{Action, App, Options, View};
use edm_model::{Control, Progress, RunState};
use ratatui::crossterm::event::{KeyCode, KeyEventKind};

fn app() -> App {
    App::new(Options::default())
}

fn read_only() -> App {
    App::new(Options {
        read_only: true,
        no_color: false,
    })
}

fn with_state(state: RunState) -> Progress {
    Progress { state, ..mid_run() }
}

#[test]
fn p_pauses_a_running_run_and_resumes_a_paused_one() {
    let running = with_state(RunState::Running);
    let paused = with_state(RunState::Paused);
    assert_eq!(
        app().handle_key(ch('p'), &running),
        Action::Control(Control::Pause)
    );
    assert_eq!(
        app().handle_key(ch(' '), &running),
        Action::Control(Control::Pause)
    );
    assert_eq!(
        app().handle_key(ch('p'), &paused),
        Action::Control(Control::Resume)
    );
    // Paused by a quota (not by us): p resumes too.
    assert_eq!(
        app().handle_key(ch(' '), &paused),
        Action::Control(Control::Resume)
    );
}

#[test]
fn p_toggles_before_the_snapshot_catches_up() {
    let running = with_state(RunState::Running);
    let mut a = app();
    assert_eq!(
        a.handle_key(ch('p'), &running),
        Action::Control(Control::Pause)
    );
    assert!(a.paused(&running));
    // The engine has not paused yet, the operator changes their mind.
    assert_eq!(
        a.handle_key(ch('p'), &running),
        Action::Control(Control::Resume)
    );
    assert_eq!(
        a.handle_key(ch('p'), &running),
        Action::Control(Control::Pause)
    );
    // The snapshot now says paused: the request is confirmed, state decides.
    let paused = with_state(RunState::Paused);
    assert_eq!(
        a.handle_key(ch('p'), &paused),
        Action::Control(Control::Resume)
    );
    // The engine resumed: next p pauses.
    assert_eq!(
        a.handle_key(ch('p'), &running),
        Action::Control(Control::Pause)
    );
}

#[test]
fn rate_steps_by_ten_percent_from_the_last_request() {
    let p = mid_run(); // target 50/s
    let mut a = app();
    assert_eq!(
        a.handle_key(ch('+'), &p),
        Action::Control(Control::SetRate(Some(55.0)))
    );
    assert_eq!(
        a.handle_key(ch('+'), &p),
        Action::Control(Control::SetRate(Some(60.5)))
    );
    assert_eq!(a.target_rate(&p), Some(60.5));
    let mut b = app();
    assert_eq!(
        b.handle_key(ch('-'), &p),
        Action::Control(Control::SetRate(Some(45.0)))
    );
    assert_eq!(
        b.handle_key(ch('-'), &p),
        Action::Control(Control::SetRate(Some(40.5)))
    );
}

#[test]
fn rate_never_goes_below_one_per_second() {
    let p = Progress {
        target_rate: Some(1.05),
        ..mid_run()
    };
    let mut a = app();
    assert_eq!(
        a.handle_key(ch('-'), &p),
        Action::Control(Control::SetRate(Some(1.0)))
    );
    assert_eq!(a.handle_key(ch('-'), &p), Action::None);
    assert_eq!(
        a.handle_key(ch('+'), &p),
        Action::Control(Control::SetRate(Some(1.1)))
    );
}

#[test]
fn from_unlimited_minus_starts_at_the_recent_rate_and_plus_does_nothing() {
    let mut p = Progress {
        target_rate: None,
        effective_rate: None,
        ..mid_run()
    };
    p.rate_history = std::iter::repeat_n(200.0, 30).collect();
    assert_eq!(app().handle_key(ch('+'), &p), Action::None);
    assert_eq!(
        app().handle_key(ch('-'), &p),
        Action::Control(Control::SetRate(Some(180.0)))
    );
    // Nothing sent yet: the floor.
    p.rate_history.clear();
    assert_eq!(
        app().handle_key(ch('-'), &p),
        Action::Control(Control::SetRate(Some(1.0)))
    );
}

#[test]
fn q_asks_and_y_stops() {
    let p = mid_run();
    let mut a = app();
    assert_eq!(a.handle_key(ch('q'), &p), Action::None);
    assert!(a.confirming_quit());
    // Other keys do not answer the question.
    assert_eq!(a.handle_key(ch('p'), &p), Action::None);
    assert!(a.confirming_quit());
    // The confirmed stop is the campaign's (every worker); Ctrl-C is this one's.
    assert_eq!(a.handle_key(ch('y'), &p), Action::Control(Control::StopAll));
    assert!(!a.confirming_quit());
    assert!(a.stop_sent());
    // Stopping: controls are ignored, q does not ask again.
    assert_eq!(a.handle_key(ch('p'), &p), Action::None);
    assert_eq!(a.handle_key(ch('+'), &p), Action::None);
    assert_eq!(a.handle_key(ch('q'), &p), Action::None);
    assert!(!a.confirming_quit());
    assert!(!a.finished(&p));
    assert!(a.finished(&with_state(RunState::Done)));
}

#[test]
fn a_run_that_ends_while_asking_leaves_on_any_key() {
    let mut a = app();
    assert_eq!(a.handle_key(ch('q'), &mid_run()), Action::None);
    assert!(a.confirming_quit());
    // Regression: q on the finished run used to be swallowed by the question.
    assert_eq!(
        a.handle_key(ch('q'), &with_state(RunState::Done)),
        Action::Quit
    );
    assert!(!a.confirming_quit());
}

#[test]
fn n_and_esc_cancel_the_question() {
    let p = mid_run();
    for cancel in [ch('n'), key(KeyCode::Esc)] {
        let mut a = app();
        a.handle_key(ch('q'), &p);
        assert_eq!(a.handle_key(cancel, &p), Action::None);
        assert!(!a.confirming_quit());
        assert!(!a.stop_sent());
    }
}

#[test]
fn ctrl_c_is_a_confirmed_stop_and_a_second_one_leaves() {
    let p = mid_run();
    let mut a = app();
    assert_eq!(a.handle_key(ctrl_c(), &p), Action::Control(Control::Stop));
    assert!(a.stop_sent());
    assert_eq!(a.handle_key(ctrl_c(), &p), Action::Quit);
    // Also while the question is open.
    let mut b = app();
    b.handle_key(ch('q'), &p);
    assert_eq!(b.handle_key(ctrl_c(), &p), Action::Control(Control::Stop));
}

#[test]
fn read_only_ignores_controls_and_q_quits() {
    let p = mid_run();
    let mut a = read_only();
    for k in [ch('p'), ch(' '), ch('+'), ch('-')] {
        assert_eq!(a.handle_key(k, &p), Action::None);
    }
    assert_eq!(a.handle_key(ch('q'), &p), Action::Quit);
    assert_eq!(read_only().handle_key(ctrl_c(), &p), Action::Quit);
    // Views still work.
    assert_eq!(a.handle_key(ch('f'), &p), Action::None);
    assert_eq!(a.view(), View::Failures);
}

#[test]
fn views_switch_and_esc_goes_back() {
    let p = mid_run();
    let mut a = app();
    a.handle_key(ch('f'), &p);
    assert_eq!(a.view(), View::Failures);
    a.handle_key(ch('d'), &p);
    assert_eq!(a.view(), View::Domains);
    a.handle_key(key(KeyCode::Esc), &p);
    assert_eq!(a.view(), View::Main);
    // Esc on the main view does nothing (and never stops anything).
    assert_eq!(a.handle_key(key(KeyCode::Esc), &p), Action::None);
    assert_eq!(a.view(), View::Main);
}

#[test]
fn help_opens_over_a_view_and_any_key_closes_it() {
    let p = mid_run();
    let mut a = app();
    a.handle_key(ch('f'), &p);
    a.handle_key(ch('?'), &p);
    assert_eq!(a.view(), View::Help);
    assert_eq!(a.base_view(), View::Failures);
    // The key that closes help is not acted on.
    assert_eq!(a.handle_key(ch('p'), &p), Action::None);
    assert_eq!(a.view(), View::Failures);
}

#[test]
fn scrolling_is_clamped() {
    let p = mid_run(); // 30 failures, 14 domains
    let mut a = app();
    // Scrolling keys mean nothing on the main view.
    a.handle_key(key(KeyCode::Down), &p);
    assert_eq!(a.failures_row(), 0);

    a.handle_key(ch('f'), &p);
    a.handle_key(key(KeyCode::Up), &p);
    assert_eq!(a.failures_row(), 0);
    a.handle_key(key(KeyCode::Down), &p);
    a.handle_key(key(KeyCode::Down), &p);
    assert_eq!(a.failures_row(), 2);
    a.handle_key(key(KeyCode::PageDown), &p); // default page: 10 rows
    assert_eq!(a.failures_row(), 12);
    for _ in 0..5 {
        a.handle_key(key(KeyCode::PageDown), &p);
    }
    assert_eq!(a.failures_row(), 29);
    a.handle_key(key(KeyCode::Down), &p);
    assert_eq!(a.failures_row(), 29);
    a.handle_key(key(KeyCode::PageUp), &p);
    assert_eq!(a.failures_row(), 19);
    a.handle_key(key(KeyCode::Home), &p);
    assert_eq!(a.failures_row(), 0);
    a.handle_key(key(KeyCode::End), &p);
    assert_eq!(a.failures_row(), 29);

    a.handle_key(ch('d'), &p);
    a.handle_key(key(KeyCode::End), &p);
    assert_eq!(a.domains_row(), 13);
    // The failures position is kept while on another view.
    assert_eq!(a.failures_row(), 29);

    // Nothing to scroll.
    let empty = fresh();
    let mut b = app();
    b.handle_key(ch('f'), &empty);
    b.handle_key(key(KeyCode::End), &empty);
    b.handle_key(key(KeyCode::Down), &empty);
    assert_eq!(b.failures_row(), 0);
}

#[test]
fn page_keys_move_by_the_drawn_page() {
    use ratatui::{Terminal, backend::TestBackend};
    let p = mid_run();
    let mut a = app();
    a.handle_key(ch('f'), &p);
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|f| a.draw(f, &p)).unwrap();
    a.handle_key(key(KeyCode::PageDown), &p);
    // 24 rows: title, footer, panel rule, header and a 4-row detail pane leave 16.
    assert_eq!(a.failures_row(), 16);
}

#[test]
fn once_done_views_still_work_and_any_other_key_quits() {
    let p = done();
    let mut a = app();
    assert_eq!(a.handle_key(ch('f'), &p), Action::None);
    assert_eq!(a.handle_key(key(KeyCode::Down), &p), Action::None);
    assert_eq!(a.handle_key(key(KeyCode::Esc), &p), Action::None);
    assert_eq!(a.view(), View::Main);
    assert_eq!(a.handle_key(ch('x'), &p), Action::Quit);
    assert_eq!(app().handle_key(ch('q'), &p), Action::Quit);
    assert_eq!(app().handle_key(ch('p'), &p), Action::Quit);
}

#[test]
fn key_releases_are_ignored() {
    let p = mid_run();
    let mut release = ch('p');
    release.kind = KeyEventKind::Release;
    assert_eq!(app().handle_key(release, &p), Action::None);
}

#[test]
fn a_pause_request_is_forgotten_once_seen() {
    let running = with_state(RunState::Running);
    let paused = with_state(RunState::Paused);
    let mut a = app();
    a.handle_key(ch('p'), &running);
    // The engine paused, then resumed by itself (a quota window reopened).
    a.observe(&paused);
    a.observe(&running);
    assert!(!a.paused(&running));
    assert_eq!(
        a.handle_key(ch('p'), &running),
        Action::Control(Control::Pause)
    );
}
