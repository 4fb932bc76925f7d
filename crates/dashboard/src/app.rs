//! UI state and the key → [`Action`] transition. No rendering, no I/O: every
//! rule here is testable with a [`KeyEvent`] and a [`Progress`].

use std::cell::Cell;

use edm_model::{Control, Progress, RunState};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::theme::Theme;

/// How the dashboard was started. Decided by the caller (the CLI).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Draw without colours, only bold and reversed text. The caller sets it
    /// when `NO_COLOR` is set and non-empty (<https://no-color.org>).
    pub no_color: bool,
    /// Watching a run owned by another process (`edm watch`): keys that
    /// control the run are ignored and `q` leaves at once.
    pub read_only: bool,
}

/// What the screen shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// Everything at a glance.
    #[default]
    Main,
    /// The recent failures and deferrals, one per row, scrollable.
    Failures,
    /// Every recipient domain with its counters, scrollable.
    Domains,
    /// The key reference, drawn over the view it was opened from.
    Help,
}

/// What the caller should do after a key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Nothing beyond redrawing.
    None,
    /// Send this to the engine.
    Control(Control),
    /// Leave the UI: read-only, the run is done, or the operator insists.
    Quit,
}

/// Rate steps are 10% of the current target (RFC-free, just a comfortable step).
const RATE_STEP: f64 = 0.10;
/// The lowest rate `-` sets, in messages per second.
const MIN_RATE: f64 = 1.0;
/// Samples of `rate_history` used as "the current rate" when leaving unlimited.
const RECENT_SECS: usize = 10;
/// Rows a page key moves before the first draw tells the real page height.
const DEFAULT_PAGE: usize = 10;

/// The dashboard's state: which view, scroll positions, prompts and what the
/// operator asked for that the engine has not confirmed yet.
#[derive(Debug)]
pub struct App {
    pub(crate) opts: Options,
    pub(crate) theme: Theme,
    view: View,
    /// The view the help overlay was opened from, and returns to.
    behind_help: View,
    /// Selected row of the failures view (0: the newest failure).
    failures_row: usize,
    /// Selected row of the domains view (0: the busiest domain).
    domains_row: usize,
    /// `q` was pressed: waiting for `y` or `n`.
    confirm_quit: bool,
    /// [`Control::Stop`] (or the confirmed [`Control::StopAll`]) was sent.
    stop_sent: bool,
    /// Pause (`true`) or resume (`false`) sent and not yet seen in a snapshot,
    /// so that two quick presses of `p` toggle twice rather than send the same.
    pause_requested: Option<bool>,
    /// A rate sent and not yet seen as `target_rate` in a snapshot, so that
    /// quick presses of `+` keep stepping from the last requested rate.
    rate_requested: Option<Option<f64>>,
    /// Rows in the last drawn scrollable table, for PgUp/PgDn. Written by `draw`.
    pub(crate) page_rows: Cell<usize>,
}

impl App {
    /// A dashboard on the main view.
    pub fn new(opts: Options) -> App {
        App {
            opts,
            theme: Theme::new(opts.no_color),
            view: View::Main,
            behind_help: View::Main,
            failures_row: 0,
            domains_row: 0,
            confirm_quit: false,
            stop_sent: false,
            pause_requested: None,
            rate_requested: None,
            page_rows: Cell::new(DEFAULT_PAGE),
        }
    }

    /// The options it was made with.
    pub fn options(&self) -> Options {
        self.opts
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view
    }

    /// The view under the help overlay (the current view when help is closed).
    pub fn base_view(&self) -> View {
        if self.view == View::Help {
            self.behind_help
        } else {
            self.view
        }
    }

    /// The selected row of the failures view (0: newest).
    pub fn failures_row(&self) -> usize {
        self.failures_row
    }

    /// The selected row of the domains view (0: busiest).
    pub fn domains_row(&self) -> usize {
        self.domains_row
    }

    /// True while the "stop the campaign?" prompt is shown.
    pub fn confirming_quit(&self) -> bool {
        self.confirm_quit
    }

    /// True once [`Control::Stop`] (or [`Control::StopAll`]) was sent.
    pub fn stop_sent(&self) -> bool {
        self.stop_sent
    }

    /// Whether the run is paused as far as the operator knows: the last
    /// pause or resume requested, or else the snapshot's state.
    pub fn paused(&self, progress: &Progress) -> bool {
        self.pause_requested
            .unwrap_or(progress.state == RunState::Paused)
    }

    /// The target rate as far as the operator knows (`None`: unlimited).
    pub fn target_rate(&self, progress: &Progress) -> Option<f64> {
        self.rate_requested.unwrap_or(progress.target_rate)
    }

    /// True when the caller should leave without waiting for a key: the
    /// operator asked to stop and the engine says it is done.
    pub fn finished(&self, progress: &Progress) -> bool {
        self.stop_sent && progress.state == RunState::Done
    }

    /// A pause or rate request still waiting to show up in a snapshot.
    pub(crate) fn pause_pending(&self) -> Option<bool> {
        self.pause_requested
    }

    /// Draws the screen for `progress` into `frame`.
    pub fn draw(&self, frame: &mut ratatui::Frame, progress: &Progress) {
        crate::render::draw(self, frame, progress);
    }

    /// Takes in a new snapshot: forgets pause and rate requests that it now
    /// reflects, so that a run paused and resumed by the engine itself (a
    /// quota) is not mistaken for one still waiting on the operator's request.
    /// [`run`](crate::run) calls it every frame; [`App::handle_key`] too.
    pub fn observe(&mut self, progress: &Progress) {
        if let Some(want) = self.pause_requested
            && want == (progress.state == RunState::Paused)
        {
            self.pause_requested = None;
        }
        if let Some(want) = self.rate_requested
            && same_rate(want, progress.target_rate)
        {
            self.rate_requested = None;
        }
    }

    /// Applies one key to the state. Pure: the caller sends the control.
    pub fn handle_key(&mut self, key: KeyEvent, progress: &Progress) -> Action {
        // Terminals that report releases (Windows, kitty protocol) would act twice.
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        self.observe(progress);
        let ctrl_c =
            key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        if ctrl_c {
            return self.interrupt();
        }
        if self.confirm_quit {
            // The run finished while the question was open: nothing is left
            // to stop, so any key leaves (instead of a prompt that ignores q).
            if progress.state == RunState::Done {
                self.confirm_quit = false;
                return Action::Quit;
            }
            return self.answer_confirm(key.code);
        }
        if self.view == View::Help {
            // Any key closes help; it is never acted on twice.
            self.view = self.behind_help;
            return Action::None;
        }
        if let Some(done) = self.navigate(key.code, progress) {
            return done;
        }
        if progress.state == RunState::Done {
            // "done — press any key": navigation above still works so the
            // final failures can be read, anything else leaves.
            return Action::Quit;
        }
        match key.code {
            KeyCode::Char('q') => self.ask_quit(),
            KeyCode::Char('p') | KeyCode::Char(' ') => self.toggle_pause(progress),
            KeyCode::Char('+') | KeyCode::Char('=') => self.step_rate(progress, Step::Up),
            KeyCode::Char('-') | KeyCode::Char('_') => self.step_rate(progress, Step::Down),
            _ => Action::None,
        }
    }

    /// Ctrl-C: a confirmed stop; a second one leaves the UI at once (the
    /// engine still finishes its in-flight transactions).
    fn interrupt(&mut self) -> Action {
        self.confirm_quit = false;
        if self.opts.read_only || self.stop_sent {
            return Action::Quit;
        }
        self.stop_sent = true;
        Action::Control(Control::Stop)
    }

    fn answer_confirm(&mut self, code: KeyCode) -> Action {
        match code {
            // The operator's confirmed stop: every worker of a campaign
            // several share stops (Ctrl-C, like a signal, stops this one).
            KeyCode::Char('y') | KeyCode::Char('Y') => {
                self.confirm_quit = false;
                self.stop_sent = true;
                Action::Control(Control::StopAll)
            }
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc => {
                self.confirm_quit = false;
                Action::None
            }
            _ => Action::None,
        }
    }

    fn ask_quit(&mut self) -> Action {
        if self.opts.read_only {
            return Action::Quit;
        }
        if !self.stop_sent {
            self.confirm_quit = true;
        }
        Action::None
    }

    /// View switching and scrolling: `Some` when the key was one of them.
    fn navigate(&mut self, code: KeyCode, progress: &Progress) -> Option<Action> {
        let page = self.page_rows.get().max(1);
        match code {
            KeyCode::Char('?') => {
                self.behind_help = self.view;
                self.view = View::Help;
            }
            KeyCode::Char('f') => self.view = View::Failures,
            KeyCode::Char('d') => self.view = View::Domains,
            KeyCode::Esc if self.view != View::Main => self.view = View::Main,
            KeyCode::Up | KeyCode::Char('k') => {
                self.scroll(progress, |r, _| r.saturating_sub(1))?
            }
            KeyCode::Down | KeyCode::Char('j') => self.scroll(progress, |r, _| r + 1)?,
            KeyCode::PageUp => self.scroll(progress, |r, _| r.saturating_sub(page))?,
            KeyCode::PageDown => self.scroll(progress, |r, _| r + page)?,
            KeyCode::Home | KeyCode::Char('g') => self.scroll(progress, |_, _| 0)?,
            KeyCode::End | KeyCode::Char('G') => {
                self.scroll(progress, |_, len| len.saturating_sub(1))?
            }
            _ => return None,
        }
        Some(Action::None)
    }

    /// Moves the selection of the current scrollable view, clamped to its rows.
    /// `None` on the main view, where scrolling keys mean nothing.
    fn scroll(&mut self, progress: &Progress, to: impl Fn(usize, usize) -> usize) -> Option<()> {
        let (row, len) = match self.view {
            View::Failures => (&mut self.failures_row, progress.recent_failures.len()),
            View::Domains => (&mut self.domains_row, progress.domains.len()),
            View::Main | View::Help => return None,
        };
        *row = to(*row, len).min(len.saturating_sub(1));
        Some(())
    }

    fn toggle_pause(&mut self, progress: &Progress) -> Action {
        if self.opts.read_only || self.stop_sent {
            return Action::None;
        }
        let pause = !self.paused(progress);
        self.pause_requested = Some(pause);
        Action::Control(if pause {
            Control::Pause
        } else {
            Control::Resume
        })
    }

    fn step_rate(&mut self, progress: &Progress, step: Step) -> Action {
        if self.opts.read_only || self.stop_sent {
            return Action::None;
        }
        let current = self.target_rate(progress);
        let Some(next) = next_rate(current, progress.recent_rate(RECENT_SECS), step) else {
            return Action::None;
        };
        self.rate_requested = Some(Some(next));
        Action::Control(Control::SetRate(Some(next)))
    }
}

/// Which way `+` or `-` moves the rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Up,
    Down,
}

/// The rate after one step from `current`, or `None` when it would not change.
///
/// From unlimited, `+` has nowhere to go and `-` starts from the rate
/// actually achieved recently (`recent`).
fn next_rate(current: Option<f64>, recent: f64, step: Step) -> Option<f64> {
    let next = match (current, step) {
        (None, Step::Up) => return None,
        (None, Step::Down) => recent * (1.0 - RATE_STEP),
        (Some(r), Step::Up) => r * (1.0 + RATE_STEP),
        (Some(r), Step::Down) => r * (1.0 - RATE_STEP),
    };
    // One decimal is all the title bar shows; it also keeps 50 * 1.1 = 55.
    let next = ((next * 10.0).round() / 10.0).max(MIN_RATE);
    match current {
        Some(r) if same_rate(Some(r), Some(next)) => None,
        // A step up from a fraction below the minimum still has to go up.
        Some(r) if step == Step::Up && next <= r => None,
        _ => Some(next),
    }
}

fn same_rate(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() < 1e-6,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_steps() {
        assert_eq!(next_rate(Some(50.0), 0.0, Step::Up), Some(55.0));
        assert_eq!(next_rate(Some(50.0), 0.0, Step::Down), Some(45.0));
        assert_eq!(next_rate(Some(1.0), 0.0, Step::Down), None);
        assert_eq!(next_rate(Some(1.05), 0.0, Step::Down), Some(1.0));
        assert_eq!(next_rate(Some(1.0), 0.0, Step::Up), Some(1.1));
        assert_eq!(next_rate(None, 200.0, Step::Down), Some(180.0));
        assert_eq!(next_rate(None, 0.0, Step::Down), Some(1.0));
        assert_eq!(next_rate(None, 200.0, Step::Up), None);
    }
}
