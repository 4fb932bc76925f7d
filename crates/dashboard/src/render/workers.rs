//! One row per worker when several `edm send` processes share a campaign
//! (PostgreSQL, docs/scaling.md, issue 14 point 4): alive or not, its rate
//! limit and share, transactions in flight, sent, failed and how long ago
//! its last heartbeat was. Nothing with one worker (SQLite: no rows).

use edm_model::{Progress, WorkerRow};
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row, Table};

use super::panel;
use crate::format;
use crate::theme::Theme;

/// Rows the panel shows at most on the main view: live workers first.
pub(super) const MAX_ROWS: usize = 4;

/// Height of the panel for `p`: nothing without workers, else the rule,
/// the header and a row each (at most [`MAX_ROWS`]).
pub(super) fn height(p: &Progress) -> u16 {
    match p.workers.len() {
        0 => 0,
        n => 2 + n.min(MAX_ROWS) as u16,
    }
}

/// What a worker's state cell says: `dead` is a running row whose lease
/// expired before anyone recovered it too.
fn state_of(w: &WorkerRow) -> (&str, bool) {
    match (w.alive, w.state.as_str()) {
        (true, _) => ("alive", true),
        (false, "running") => ("dead", false),
        (false, s) => (s, s == "done"),
    }
}

fn state_style(theme: &Theme, w: &WorkerRow) -> Style {
    match state_of(w) {
        (_, true) if w.alive => theme.good,
        (_, true) => theme.dim,
        (_, false) => theme.bad,
    }
}

/// Live first, then the busiest, then by name so the order is stable.
fn ranked(p: &Progress) -> Vec<&WorkerRow> {
    let mut rows: Vec<&WorkerRow> = p.workers.iter().collect();
    rows.sort_by(|a, b| {
        b.alive
            .cmp(&a.alive)
            .then((b.sent + b.failed).cmp(&(a.sent + a.failed)))
            .then(a.name.cmp(&b.name))
    });
    rows
}

pub(super) fn render(frame: &mut Frame, area: Rect, theme: &Theme, p: &Progress) {
    let block = panel(format!(" Workers ({}) ", p.workers.len()), theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    // 58 columns before the heartbeat: the left column of a 120-wide
    // screen (beside the domains) keeps about ten for it.
    const NAME: u16 = 12;
    const STATE: u16 = 5;
    const RATE: u16 = 8;
    const SHARE: u16 = 5;
    const NUM: u16 = 7;
    let body: Vec<Row> = ranked(p)
        .into_iter()
        .take(MAX_ROWS)
        .map(|w| {
            let beat = if w.heartbeat_at > 0 {
                let ago = u64::try_from((p.now - w.heartbeat_at).max(0) / 1000).unwrap_or(0);
                format!("{}s ago", format::count(ago))
            } else {
                String::new()
            };
            let share = w
                .share
                .map(|s| format!("{:>4.0}%", s * 100.0))
                .unwrap_or_default();
            let rate = w.rate.map(format::rate).unwrap_or_else(|| "-".into());
            Row::new(vec![
                Cell::from(format::truncate(&w.name, NAME as usize)),
                Cell::from(Span::styled(
                    state_of(w).0.to_string(),
                    state_style(theme, w),
                )),
                Cell::from(format!("{rate:>8}")),
                Cell::from(share),
                Cell::from(format!("{:>7}", format::count(w.in_flight))),
                Cell::from(format!("{:>7}", format::count(w.sent))),
                Cell::from(Span::styled(
                    format!("{:>7}", format::count(w.failed)),
                    theme.bad,
                )),
                Cell::from(Span::styled(beat, theme.dim)),
            ])
        })
        .collect();
    let header = Row::new(vec![
        Cell::from("worker"),
        Cell::from("state"),
        Cell::from("    rate"),
        Cell::from("share"),
        Cell::from(" flight"),
        Cell::from("   sent"),
        Cell::from(" failed"),
        Cell::from("beat"),
    ])
    .style(theme.heading);
    let table = Table::new(
        body,
        [
            Constraint::Length(NAME),
            Constraint::Length(STATE),
            Constraint::Length(RATE),
            Constraint::Length(SHARE),
            Constraint::Length(NUM),
            Constraint::Length(NUM),
            Constraint::Length(NUM),
            Constraint::Fill(1),
        ],
    )
    .header(header);
    frame.render_widget(table, inner);
}
