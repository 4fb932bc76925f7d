//! One row per relay (issue 12): state, rate, sent, failed and its most
//! frequent refusal (the tally's deferrals and in-flight count are for
//! `edm watch --json` and wider views; the top reply needs the columns). With one relay it is one row; a
//! pool shows each member.

use edm_model::{Progress, RelayState, RelayTally};
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Style;
use ratatui::text::Span;
use ratatui::widgets::{Cell, Row, Table};

use super::panel;
use crate::format;
use crate::theme::Theme;

/// Rows the panel shows at most on the main view (a busier pool scrolls
/// nowhere: the busiest first).
pub(super) const MAX_ROWS: usize = 4;

/// Height of the panel for `p`: nothing without relays, else the rule, the
/// header and a row each (at most [`MAX_ROWS`]).
pub(super) fn height(p: &Progress) -> u16 {
    match p.relays.len() {
        0 => 0,
        n => 2 + n.min(MAX_ROWS) as u16,
    }
}

fn state_style(theme: &Theme, s: RelayState) -> Style {
    match s {
        RelayState::Idle | RelayState::Sending => theme.good,
        RelayState::Throttled => theme.warn,
        RelayState::Outage | RelayState::Refusing | RelayState::Down => theme.bad,
    }
}

/// Busiest first, then by name so the order is stable.
fn ranked(p: &Progress) -> Vec<(&String, &RelayTally)> {
    let mut rows: Vec<_> = p.relays.iter().collect();
    rows.sort_by(|a, b| {
        let load = |r: &RelayTally| r.sent + r.failed + r.deferred + r.in_flight;
        load(b.1).cmp(&load(a.1)).then(a.0.cmp(b.0))
    });
    rows
}

pub(super) fn render(frame: &mut Frame, area: Rect, theme: &Theme, p: &Progress) {
    let block = panel(" Relays ", theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    const NAME: u16 = 14;
    const STATE: u16 = 9;
    const RATE: u16 = 8;
    const NUM: u16 = 7;
    let fixed = NAME + STATE + RATE + 2 * NUM + 5;
    let reply_width = inner.width.saturating_sub(fixed) as usize;
    let body: Vec<Row> = ranked(p)
        .into_iter()
        .take(MAX_ROWS)
        .map(|(name, r)| {
            let reply = r
                .top_reply
                .as_ref()
                .map(|(text, n)| format!("{}x {}", format::count(*n), format::one_line(text)))
                .unwrap_or_default();
            Row::new(vec![
                Cell::from(format::truncate(name, NAME as usize)),
                Cell::from(Span::styled(r.state.label(), state_style(theme, r.state))),
                Cell::from(format!("{:>8}", format::rate(r.rate))),
                Cell::from(format!("{:>7}", format::count(r.sent))),
                Cell::from(Span::styled(
                    format!("{:>7}", format::count(r.failed)),
                    theme.bad,
                )),
                Cell::from(Span::styled(
                    format::truncate(&reply, reply_width),
                    theme.dim,
                )),
            ])
        })
        .collect();
    let header = Row::new(vec![
        Cell::from("relay"),
        Cell::from("state"),
        Cell::from("    rate"),
        Cell::from("   sent"),
        Cell::from(" failed"),
        Cell::from("top reply"),
    ])
    .style(theme.heading);
    let table = Table::new(
        body,
        [
            Constraint::Length(NAME),
            Constraint::Length(STATE),
            Constraint::Length(RATE),
            Constraint::Length(NUM),
            Constraint::Length(NUM),
            Constraint::Fill(1),
        ],
    )
    .header(header);
    frame.render_widget(table, inner);
}
