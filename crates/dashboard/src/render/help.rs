//! The help overlay (`?`).

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Padding, Paragraph};

use crate::app::App;

/// Who a key is for: anyone, or only an operator who owns the run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum For {
    Anyone,
    Owner,
}

const KEYS: [(&str, &str, For); 10] = [
    ("p, space", "pause / resume sending", For::Owner),
    ("+ / -", "rate up / down 10% (min 1/s)", For::Owner),
    ("f", "recent failures", For::Anyone),
    ("d", "recipient domains", For::Anyone),
    ("↑ ↓ PgUp PgDn", "scroll failures or domains", For::Anyone),
    ("Home End", "first / last row", For::Anyone),
    ("Esc", "back to the main view", For::Anyone),
    ("?", "this help", For::Anyone),
    ("q", "stop the campaign (asks y/n)", For::Owner),
    ("Ctrl-C", "stop now; again: leave", For::Owner),
];

pub(super) fn overlay(frame: &mut Frame, area: Rect, app: &App) {
    let theme = &app.theme;
    let read_only = app.options().read_only;
    let mut lines: Vec<Line> = Vec::new();
    if read_only {
        lines.push(Line::styled(
            "read-only (edm watch): controls are disabled",
            theme.warn,
        ));
        lines.push(Line::raw(""));
    }
    let key = |k: &str| Span::styled(format!("{k:>13}  "), theme.key);
    for (k, what, who) in KEYS {
        if read_only && who == For::Owner {
            if k == "q" {
                lines.push(Line::from(vec![
                    key("q, Ctrl-C"),
                    Span::raw("leave; the run goes on"),
                ]));
            } else if k != "Ctrl-C" {
                lines.push(Line::from(vec![
                    key(k),
                    Span::styled(format!("{what} (off)"), theme.dim),
                ]));
            }
            continue;
        }
        lines.push(Line::from(vec![key(k), Span::raw(what)]));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled("any key closes this help", theme.dim));

    let height = (lines.len() as u16 + 2).min(area.height);
    let popup = area.centered(
        Constraint::Length(56.min(area.width)),
        Constraint::Length(height),
    );
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .title(" Help ")
        .title_style(theme.heading)
        .padding(Padding::horizontal(1));
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    frame.render_widget(Paragraph::new(lines), inner);
}
