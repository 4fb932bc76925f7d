//! The event loop ([`run`]) and its terminal set-up ([`run_in_terminal`]).

use std::error::Error;
use std::io;
use std::panic;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edm_model::{Control, Progress};
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::crossterm::{cursor, execute, terminal};

use crate::app::{Action, App, Options};

/// Time between two frames when nothing happens: 10 frames per second.
pub const FRAME: Duration = Duration::from_millis(100);

/// Runs the dashboard until the operator leaves, or the run is done after
/// the operator asked it to stop.
///
/// Each frame takes a fresh `snapshot()` (a cheap clone of the latest
/// [`Progress`]), draws it, then waits up to one [`FRAME`] for input with
/// `events`. A key redraws at once; a resize redraws on the next frame.
/// Controls go out through `control` in the order the keys came. Drawing only
/// reads snapshots, so a slow terminal never slows sending.
///
/// Returns when a key yields [`Action::Quit`] (read-only `q`, any key once the
/// run is done, a second Ctrl-C), or as soon as the snapshot says
/// [`RunState::Done`](edm_model::RunState::Done) after a stop was sent.
///
/// Backend errors become [`io::Error`]s (crossterm's already are), hence the
/// bound on `B::Error`; `TestBackend` and `CrosstermBackend` both meet it.
pub fn run<B>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    mut snapshot: impl FnMut() -> Progress,
    mut events: impl FnMut(Duration) -> io::Result<Option<Event>>,
    mut control: impl FnMut(Control),
) -> io::Result<()>
where
    B: Backend,
    B::Error: Send + Sync + 'static,
{
    // A stop asked from outside the dashboard (SIGTERM, SIGHUP) shows up as
    // `Stopping`: once the run is done there is nobody to press a key for.
    let mut stopped_elsewhere = false;
    loop {
        let progress = snapshot();
        stopped_elsewhere |= progress.state == edm_model::RunState::Stopping;
        terminal
            .draw(|frame| app.draw(frame, &progress))
            .map_err(to_io)?;
        let done_after_stop = stopped_elsewhere
            && !app.options().read_only
            && progress.state == edm_model::RunState::Done;
        if app.finished(&progress) || done_after_stop {
            return Ok(());
        }
        let deadline = Instant::now() + FRAME;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events(left)? {
                Some(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                    match app.handle_key(key, &progress) {
                        Action::None => {}
                        Action::Control(c) => control(c),
                        Action::Quit => return Ok(()),
                    }
                    // Show the effect of the key now rather than next frame.
                    break;
                }
                Some(Event::Resize(..)) => break,
                Some(_) => {}
                None => break,
            }
            if left.is_zero() {
                break;
            }
        }
    }
}

/// Keeps a backend's error kind when it is an [`io::Error`] (crossterm's is).
fn to_io<E: Error + Send + Sync + 'static>(e: E) -> io::Error {
    let boxed: Box<dyn Error + Send + Sync> = Box::new(e);
    match boxed.downcast::<io::Error>() {
        Ok(io) => *io,
        Err(other) => io::Error::other(other),
    }
}

/// Runs [`run`] on the real terminal (stdout): raw mode and the alternate
/// screen for the duration, restored on every exit path, panics included.
pub fn run_in_terminal(
    opts: Options,
    snapshot: impl FnMut() -> Progress,
    control: impl FnMut(Control),
) -> io::Result<()> {
    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    let mut app = App::new(opts);
    run(&mut terminal, &mut app, snapshot, poll_crossterm, control)
}

/// Waits up to `timeout` for one crossterm event.
fn poll_crossterm(timeout: Duration) -> io::Result<Option<Event>> {
    if event::poll(timeout)? {
        event::read().map(Some)
    } else {
        Ok(None)
    }
}

/// Raw mode, alternate screen and a panic hook that undoes them, for as long
/// as it lives. Dropping it (return, `?`, unwinding) restores the terminal
/// and the previous panic hook.
struct TerminalGuard {
    previous_hook: Arc<PanicHook>,
}

type PanicHook = Box<dyn Fn(&panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

impl TerminalGuard {
    fn enter() -> io::Result<TerminalGuard> {
        let previous_hook: Arc<PanicHook> = Arc::new(panic::take_hook());
        let chained = Arc::clone(&previous_hook);
        // Restore first, so the panic message lands on the normal screen.
        panic::set_hook(Box::new(move |info| {
            restore();
            chained(info);
        }));
        let guard = TerminalGuard { previous_hook };
        terminal::enable_raw_mode()?;
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
        // During a panic our hook has already run; swapping hooks then would panic.
        if !std::thread::panicking() {
            drop(panic::take_hook());
            let previous = Arc::clone(&self.previous_hook);
            panic::set_hook(Box::new(move |info| previous(info)));
        }
    }
}

/// Leaves raw mode and the alternate screen, for a caller about to exit the
/// process at once (a second signal) while [`run_in_terminal`] runs on
/// another thread, whose guard would never be dropped.
pub fn restore_terminal() {
    restore();
}

/// Leaves raw mode and the alternate screen. Safe to call twice; errors are
/// ignored because there is nothing better to do with them on the way out.
fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}
