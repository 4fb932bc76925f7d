//! The recent-events log, newest at the bottom.

use edm_model::Progress;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::panel;
use crate::format;
use crate::theme::Theme;

pub(super) fn render(frame: &mut Frame, area: Rect, theme: &Theme, p: &Progress) {
    let block = panel(" Events ", theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if p.events.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("no events yet", theme.dim)),
            inner,
        );
        return;
    }
    let rows = inner.height as usize;
    let skip = p.events.len().saturating_sub(rows);
    // Times are since the run started: the same clock as "elapsed", no time zones.
    let text_width = (inner.width as usize).saturating_sub(9);
    let lines: Vec<Line> = p
        .events
        .iter()
        .skip(skip)
        .map(|e| {
            let since = ((e.at - p.started_at).max(0) / 1000) as u64;
            Line::from(vec![
                Span::styled(format::hms(since), theme.dim),
                Span::raw(" "),
                Span::raw(format::truncate(&format::one_line(&e.text), text_width)),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}
