//! Drawing: one function per panel, laid out here. Nothing in this module
//! changes state, except remembering the page height for PgUp/PgDn.

mod domains;
mod events;
mod failures;
mod footer;
mod header;
mod help;
mod rate;
mod relays;
mod workers;

use edm_model::Progress;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Padding};

use crate::app::{App, View};
use crate::theme::Theme;

/// Terminals at least this wide show the domains panel on the main view.
const WIDE: u16 = 110;
/// Width of the domains panel on wide terminals.
const DOMAINS_PANEL: u16 = 52;

/// Draws the whole screen for `progress`.
pub(crate) fn draw(app: &App, frame: &mut Frame, progress: &Progress) {
    let [title, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    header::title_bar(frame, title, app, progress);
    match app.base_view() {
        View::Main | View::Help => main_view(frame, body, app, progress),
        View::Failures => failures::view(frame, body, app, progress),
        View::Domains => domains::view(frame, body, app, progress),
    }
    footer::render(frame, footer, app, progress);
    if app.view() == View::Help {
        help::overlay(frame, body, app);
    }
}

/// Gauge, counters, rate and failure panels, replies, relays (a row each,
/// once any sent), workers (a row each when several share the campaign), events (and domains when wide).
fn main_view(frame: &mut Frame, area: Rect, app: &App, progress: &Progress) {
    let theme = &app.theme;
    // 80x24 leaves 18 rows below the counters: 8 for the charts, 5 and 5 for
    // replies and events. Taller terminals give the charts most of the growth.
    let rest = area.height.saturating_sub(4);
    let charts = (rest * 4 / 9).max(8);
    let replies = if rest >= 24 { 7 } else { 5 };
    let [gauge, counters, charts, lower] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(charts),
        Constraint::Fill(1),
    ])
    .areas(area);
    header::gauge(frame, gauge, theme, progress);
    header::counters(frame, counters, theme, progress);

    let [rate_area, categories] = Layout::horizontal([Constraint::Fill(1), Constraint::Fill(1)])
        .spacing(1)
        .areas(charts);
    rate::render(frame, rate_area, app, progress);
    failures::categories(frame, categories, theme, progress);

    let (lower, domains_area) = if area.width >= WIDE {
        let [left, right] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(DOMAINS_PANEL)])
                .spacing(1)
                .areas(lower);
        (left, Some(right))
    } else {
        (lower, None)
    };
    let [replies_area, relays_area, workers_area, events_area] = Layout::vertical([
        Constraint::Length(replies),
        Constraint::Length(relays::height(progress)),
        Constraint::Length(workers::height(progress)),
        Constraint::Fill(1),
    ])
    .areas(lower);
    failures::replies(frame, replies_area, theme, progress);
    if relays_area.height > 0 {
        relays::render(frame, relays_area, theme, progress);
    }
    if workers_area.height > 0 {
        workers::render(frame, workers_area, theme, progress);
    }
    events::render(frame, events_area, theme, progress);
    if let Some(d) = domains_area {
        domains::top(frame, d, theme, progress);
    }
}

/// A panel: a top rule carrying the title, no side borders (they cost two
/// columns each at 80x24).
fn panel<'a>(title: impl Into<Line<'a>>, theme: &Theme) -> Block<'a> {
    Block::new()
        .borders(Borders::TOP)
        .border_style(theme.dim)
        .title(title)
        .title_style(theme.heading)
        .padding(Padding::left(1))
}
