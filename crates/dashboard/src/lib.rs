//! The edm terminal dashboard: renders a campaign's [`Progress`] with ratatui
//! and turns keys into [`Control`] messages.
//!
//! It never calls delivery or the store: the caller hands it snapshots and
//! forwards the controls it emits. Everything is generic over the ratatui
//! backend, so tests drive it with `TestBackend`.
//!
//! # Layout
//! - [`App`], [`Options`], [`View`], [`Action`] (`app.rs`): UI state and the
//!   pure key → action transition ([`App::handle_key`]).
//! - `render/`: one file per panel; [`App::draw`] lays them out. One screen
//!   readable at 80x24 that grows with the terminal (the domains panel joins
//!   the main view from 110 columns).
//! - [`run`], [`run_in_terminal`] (`run.rs`): the frame loop, and the
//!   crossterm set-up that restores the terminal on every exit path.
//!
//! # Example
//! ```no_run
//! use edm_dashboard::{Options, run_in_terminal};
//! use edm_model::Progress;
//!
//! let opts = Options { no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()), read_only: false };
//! run_in_terminal(opts, Progress::default, |control| println!("{control:?}"))?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! [`Progress`]: edm_model::Progress
//! [`Control`]: edm_model::Control
#![deny(missing_docs)]

mod app;
mod format;
mod render;
mod run;
mod theme;

pub use app::{Action, App, Options, View};
pub use run::{FRAME, restore_terminal, run, run_in_terminal};
