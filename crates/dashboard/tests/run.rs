//! The event loop driven by a scripted `events` closure on `TestBackend`.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use common::*;
use edm_dashboard::{App, Options, run};
use edm_model::{Control, Progress, RunState};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{Event, KeyEvent};

/// A fake engine: applies controls to its snapshot like the real one would,
/// and finishes a few frames after a stop.
struct Engine {
    progress: RefCell<Progress>,
    controls: RefCell<Vec<Control>>,
    frames_until_done: Cell<Option<u32>>,
}

impl Engine {
    fn new(p: Progress) -> Rc<Engine> {
        Rc::new(Engine {
            progress: RefCell::new(p),
            controls: RefCell::new(Vec::new()),
            frames_until_done: Cell::new(None),
        })
    }

    fn snapshot(&self) -> Progress {
        if let Some(n) = self.frames_until_done.get() {
            if n == 0 {
                self.progress.borrow_mut().state = RunState::Done;
            } else {
                self.frames_until_done.set(Some(n - 1));
            }
        }
        self.progress.borrow().clone()
    }

    fn control(&self, c: Control) {
        self.controls.borrow_mut().push(c);
        let mut p = self.progress.borrow_mut();
        match c {
            Control::Pause => p.state = RunState::Paused,
            Control::Resume => p.state = RunState::Running,
            Control::SetRate(r) => p.target_rate = r,
            Control::Stop | Control::StopAll => {
                p.state = RunState::Stopping;
                self.frames_until_done.set(Some(3));
            }
            // Set by a worker's heartbeat, never by a key.
            Control::SetShare(_) => {}
        }
    }
}

/// Yields the scripted events, then nothing; panics if the loop never ends.
fn script(events: Vec<Event>) -> impl FnMut(std::time::Duration) -> io::Result<Option<Event>> {
    let mut events: VecDeque<Event> = events.into();
    let mut polls = 0;
    move |_timeout| {
        polls += 1;
        assert!(polls < 1_000, "run did not return");
        Ok(events.pop_front())
    }
}

fn keys(keys: &[KeyEvent]) -> Vec<Event> {
    keys.iter().copied().map(Event::Key).collect()
}

#[test]
fn pause_resume_rate_then_confirmed_stop_returns_once_done() {
    let engine = Engine::new(mid_run());
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut app = App::new(Options::default());
    let (e1, e2) = (Rc::clone(&engine), Rc::clone(&engine));
    run(
        &mut terminal,
        &mut app,
        move || e1.snapshot(),
        script(keys(&[ch('p'), ch('p'), ch('+'), ch('q'), ch('y')])),
        move |c| e2.control(c),
    )
    .unwrap();
    assert_eq!(
        *engine.controls.borrow(),
        [
            Control::Pause,
            Control::Resume,
            Control::SetRate(Some(55.0)),
            Control::StopAll
        ]
    );
    assert_eq!(engine.progress.borrow().state, RunState::Done);
    // The last frame drawn is the finished run.
    assert!(format!("{}", terminal.backend()).contains("DONE"));
}

#[test]
fn a_run_that_finishes_waits_for_a_key() {
    let engine = Engine::new(done());
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut app = App::new(Options::default());
    let e1 = Rc::clone(&engine);
    let frames = Rc::new(Cell::new(0));
    let counted = Rc::clone(&frames);
    // Three idle frames, then a key.
    let mut events = script(keys(&[ch('x')]));
    let mut idle = 3;
    run(
        &mut terminal,
        &mut app,
        move || {
            counted.set(counted.get() + 1);
            e1.snapshot()
        },
        move |t| {
            if idle > 0 {
                idle -= 1;
                return Ok(None);
            }
            events(t)
        },
        |c| panic!("no control expected, got {c:?}"),
    )
    .unwrap();
    assert!(format!("{}", terminal.backend()).contains("press any key"));
    assert!(engine.controls.borrow().is_empty());
    // Done alone does not leave: it kept drawing until the key.
    assert_eq!(frames.get(), 4);
}

#[test]
fn read_only_q_quits_without_controls() {
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut app = App::new(Options {
        read_only: true,
        no_color: false,
    });
    run(
        &mut terminal,
        &mut app,
        mid_run,
        script(keys(&[ch('p'), ch('+'), ch('q')])),
        |c| panic!("read-only sent {c:?}"),
    )
    .unwrap();
}

#[test]
fn resize_redraws() {
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut app = App::new(Options {
        read_only: true,
        no_color: false,
    });
    let snapshots = Rc::new(Cell::new(0));
    let counted = Rc::clone(&snapshots);
    let resize = Event::Resize(120, 40);
    run(
        &mut terminal,
        &mut app,
        move || {
            counted.set(counted.get() + 1);
            mid_run()
        },
        script(vec![resize.clone(), resize, Event::Key(ch('q'))]),
        |_| {},
    )
    .unwrap();
    // One frame at start, one after each resize; q leaves without another.
    assert_eq!(snapshots.get(), 3);
}

/// Issue 9 point 6: SIGTERM or SIGHUP stop the run from outside the
/// dashboard; once it is done there is nobody to press a key, so it leaves.
#[test]
fn a_stop_from_outside_leaves_once_the_run_is_done() {
    let engine = Engine::new(mid_run());
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    let mut app = App::new(Options::default());
    let e1 = Rc::clone(&engine);
    let frames = Rc::new(Cell::new(0u32));
    let counted = Rc::clone(&frames);
    run(
        &mut terminal,
        &mut app,
        move || {
            counted.set(counted.get() + 1);
            // The signal handler's stop reaches the engine, not the app.
            if counted.get() == 2 {
                e1.control(Control::Stop);
            }
            e1.snapshot()
        },
        script(Vec::new()),
        |c| panic!("no control expected, got {c:?}"),
    )
    .unwrap();
    assert_eq!(engine.progress.borrow().state, RunState::Done);
    assert!(
        frames.get() < 10,
        "left as soon as done: {} frames",
        frames.get()
    );
}
