//! The bottom line: key hints, or the question or state that needs attention.

use edm_model::{Progress, RunState};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::app::{App, View};

pub(super) fn render(frame: &mut Frame, area: Rect, app: &App, p: &Progress) {
    let theme = &app.theme;
    let line = if app.confirming_quit() {
        Line::from(vec![
            Span::styled(
                " Stop the campaign? In-flight messages finish first. ",
                theme.prompt,
            ),
            Span::raw(" "),
            Span::styled("y", theme.key),
            Span::raw(" stop  "),
            Span::styled("n", theme.key),
            Span::raw(" cancel"),
        ])
    } else if p.state == RunState::Done {
        let mut spans = vec![Span::styled(" done — press any key to exit ", theme.prompt)];
        if app.base_view() == View::Main {
            spans.push(Span::raw("  "));
            spans.push(Span::styled("f", theme.key));
            spans.push(Span::raw(" failures  "));
            spans.push(Span::styled("d", theme.key));
            spans.push(Span::raw(" domains"));
        }
        Line::from(spans)
    } else if app.stop_sent() {
        Line::from(vec![
            Span::styled(
                " stopping: finishing in-flight transactions… ",
                theme.prompt,
            ),
            Span::raw(" "),
            Span::styled("Ctrl-C", theme.key),
            Span::raw(" leave now"),
        ])
    } else {
        hints(app, p)
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn hints(app: &App, p: &Progress) -> Line<'static> {
    let theme = &app.theme;
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if app.options().read_only {
        pairs.push(("", "read-only"));
    } else {
        pairs.push(("p", if app.paused(p) { "resume" } else { "pause" }));
        pairs.push(("+/-", "rate"));
    }
    match app.base_view() {
        View::Main | View::Help => {
            pairs.push(("f", "failures"));
            pairs.push(("d", "domains"));
        }
        View::Failures | View::Domains => {
            pairs.push(("↑↓", "scroll"));
            pairs.push(("Esc", "back"));
        }
    }
    pairs.push(("?", "help"));
    pairs.push(("q", "quit"));
    let mut spans = vec![Span::raw(" ")];
    for (key, what) in pairs {
        if !key.is_empty() {
            spans.push(Span::styled(key, theme.key));
            spans.push(Span::raw(" "));
        }
        spans.push(Span::styled(what, theme.dim));
        spans.push(Span::raw("  "));
    }
    Line::from(spans)
}
