//! The rate panel: the accepted rate as a sparkline, with the current,
//! average, target and effective rates as numbers.

use edm_model::Progress;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Sparkline};

use super::panel;
use crate::app::App;
use crate::format;

/// Samples averaged for the "avg" figure (the same window as the ETA).
const AVG_SECS: usize = 10;
/// Sparkline values are tenths of a message per second (it takes integers).
const SCALE: f64 = 10.0;

pub(super) fn render(frame: &mut Frame, area: Rect, app: &App, p: &Progress) {
    let theme = &app.theme;
    let block = panel(" Rate ", theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);

    let now = p.rate_history.back().copied().unwrap_or(0.0);
    let target = app.target_rate(p);
    let throttled = (matches!((p.effective_rate, target), (Some(e), Some(t)) if e + 1e-9 < t)
        || matches!((p.effective_rate, target), (Some(_), None)))
        // With several workers each runs at its share of the target: only
        // the fold's state says whether that share is throttled.
        && (p.workers.is_empty() || p.state == edm_model::RunState::Throttled);
    let effective_style = if throttled { theme.warn } else { Style::new() };
    let lines = vec![
        Line::from(vec![
            Span::styled("now ", theme.dim),
            Span::raw(format::rate(now)),
            Span::styled("  avg ", theme.dim),
            Span::raw(format::rate(p.recent_rate(AVG_SECS))),
        ]),
        Line::from(vec![
            Span::styled("target ", theme.dim),
            Span::raw(format::opt_rate(target)),
            Span::styled("  effective ", theme.dim),
            Span::styled(
                format::opt_rate(p.effective_rate.or(target)),
                effective_style,
            ),
            Span::styled(if throttled { " ▼" } else { "" }, effective_style),
        ]),
    ];
    let [numbers, chart] =
        Layout::vertical([Constraint::Length(2), Constraint::Fill(1)]).areas(inner);
    frame.render_widget(Paragraph::new(lines), numbers);

    if p.rate_history.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("no samples yet", theme.dim)),
            chart,
        );
        return;
    }
    // The newest samples that fit, newest at the right edge.
    let width = chart.width as usize;
    let skip = p.rate_history.len().saturating_sub(width);
    let data: Vec<u64> = p
        .rate_history
        .iter()
        .skip(skip)
        .map(|r| (r.max(0.0) * SCALE).round() as u64)
        .collect();
    // Scale to the target when there is one, so a full-height bar means "at target".
    let peak = data.iter().copied().max().unwrap_or(0);
    let ceiling = target
        .or(p.effective_rate)
        .map_or(0, |t| (t * SCALE).round() as u64);
    let sparkline = Sparkline::default()
        .data(data)
        .max(peak.max(ceiling).max(1))
        .style(theme.good);
    frame.render_widget(sparkline, chart);
}
