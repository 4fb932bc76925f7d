//! The help overlay (`?`).

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};

use crate::app::App;

/// Keys and what they do; `true` marks keys that control the run.
const KEYS: [(&str, &str, bool); 10] = [
    ("p, space", "pause / resume sending", true),
    ("+ / -", "rate up / down by 10% (min 1/s)", true),
    ("f", "recent failures", false),
    ("d", "recipient domains", false),
    ("↑ ↓ PgUp PgDn", "scroll failures or domains", false),
    ("Home End", "first / last row", false),
    ("Esc", "back to the main view", false),
    ("?", "this help", false),
    ("q", "stop the campaign (asks y/n)", true),
    ("Ctrl-C", "stop at once; twice: leave", true),
];

pub(super) fn overlay(frame: &mut Frame, area: Rect, app: &App) {
    let theme = &app.theme;
    let read_only = app.options().read_only;
    let mut lines: Vec<Line> = Vec::new();
    if read_only {
        lines.push(Line::styled(
            "read-only (edm watch): controls are disabled,",
            theme.warn,
        ));
        lines.push(Line::styled(
            "q leaves without stopping the run.",
            theme.warn,
        ));
        lines.push(Line::raw(""));
    }
    for (key, what, controls) in KEYS.iter() {
        let what = if read_only && *controls {
            Span::styled(format!("{what} (disabled)"), theme.dim)
        } else {
            Span::raw(*what)
        };
        lines.push(Line::from(vec![
            Span::styled(format!("{key:>14}  "), theme.key),
            what,
        ]));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled("any key closes this help", theme.dim));

    let height = (lines.len() as u16 + 2).min(area.height);
    let popup = area.centered(
        Constraint::Length(60.min(area.width)),
        Constraint::Length(height),
    );
    frame.render_widget(Clear, popup);
    let block = Block::bordered().title(" Help ").title_style(theme.heading);
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    frame.render_widget(Paragraph::new(lines), inner);
}
