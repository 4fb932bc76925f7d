//! Failures: the per-category bars and top replies on the main view, and the
//! scrollable failures view (`f`).

use edm_model::{Category, Progress, Retry, Status};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState, Wrap};

use super::panel;
use crate::app::App;
use crate::format;
use crate::theme::Theme;

/// Columns of the longest category name (`recipient_unknown`, `message_too_large`).
const NAME: usize = 17;

/// One bar per category, largest first, with count and share.
pub(super) fn categories(frame: &mut Frame, area: Rect, theme: &Theme, p: &Progress) {
    let total: u64 = p.by_category.values().sum();
    let block = panel(
        format!(" Failures by category ({}) ", format::count(total)),
        theme,
    );
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if total == 0 {
        frame.render_widget(
            Paragraph::new(Span::styled("no failures", theme.dim)),
            inner,
        );
        return;
    }
    let mut rows: Vec<(Category, u64)> = p
        .by_category
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| (*c, *n))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));

    let height = inner.height as usize;
    let shown = if rows.len() > height {
        height.saturating_sub(1)
    } else {
        rows.len()
    };
    let count_width = rows
        .iter()
        .map(|(_, n)| format::count(*n).len())
        .max()
        .unwrap_or(1);
    // name, bar, count, " 100%"
    let bar_width = (inner.width as usize).saturating_sub(NAME + 1 + 1 + count_width + 5);
    let largest = rows[0].1;
    let mut lines: Vec<Line> = rows[..shown]
        .iter()
        .map(|(category, n)| {
            // Transient categories are retried: warn rather than alarm.
            let style = match category.retry() {
                Retry::Yes => theme.warn,
                Retry::No | Retry::ByCode => theme.bad,
            };
            let filled = ((*n as f64 / largest as f64) * bar_width as f64).ceil() as usize;
            Line::from(vec![
                Span::raw(format::pad(category.as_str(), NAME)),
                Span::raw(" "),
                Span::styled(
                    format::pad(&"█".repeat(filled.min(bar_width)), bar_width),
                    style,
                ),
                Span::raw(format!(" {:>count_width$}", format::count(*n))),
                Span::styled(format!(" {:>3.0}%", format::percent(*n, total)), theme.dim),
            ])
        })
        .collect();
    if shown < rows.len() {
        let rest: u64 = rows[shown..].iter().map(|(_, n)| n).sum();
        lines.push(Line::styled(
            format!("+{} more ({})", rows.len() - shown, format::count(rest)),
            theme.dim,
        ));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

/// The most frequent distinct replies, one line each.
pub(super) fn replies(frame: &mut Frame, area: Rect, theme: &Theme, p: &Progress) {
    let block = panel(" Top replies ", theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if p.top_replies.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("no replies yet", theme.dim)),
            inner,
        );
        return;
    }
    let count_width = p
        .top_replies
        .iter()
        .map(|r| format::count(r.3).len())
        .max()
        .unwrap_or(1);
    let text_width = (inner.width as usize).saturating_sub(count_width + 2);
    let lines: Vec<Line> = p
        .top_replies
        .iter()
        .take(inner.height as usize)
        .map(|(code, enhanced, text, n)| {
            let reply = [
                code.map(|c| c.to_string()),
                enhanced.clone(),
                Some(format::one_line(text)),
            ]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
            let style = match code {
                Some(c) if *c >= 500 => theme.bad,
                Some(c) if *c >= 400 => theme.warn,
                _ => Style::new(),
            };
            Line::from(vec![
                Span::styled(format!("{:>count_width$}", format::count(*n)), style),
                Span::raw("  "),
                Span::raw(format::truncate(&reply, text_width)),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

/// The failures view: recent failures newest first, with the selected row's
/// whole reply below the table.
pub(super) fn view(frame: &mut Frame, area: Rect, app: &App, p: &Progress) {
    let theme = &app.theme;
    let title = format!(
        " Recent failures ({}) — ↑↓ PgUp PgDn Home End, Esc back ",
        format::count(p.recent_failures.len() as u64)
    );
    let [table_area, detail_area] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(4)]).areas(area);
    let block = panel(title, theme);
    let inner = block.inner(table_area);
    frame.render_widget(block, table_area);
    // Header row excluded: what a page key moves.
    app.page_rows
        .set((inner.height as usize).saturating_sub(1).max(1));

    if p.recent_failures.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("no failures", theme.dim)),
            inner,
        );
        return;
    }
    const ADDRESS: usize = 26;
    const STATUS: usize = 8;
    const TRIES: usize = 5;
    let reply_width = (inner.width as usize).saturating_sub(ADDRESS + STATUS + NAME + TRIES + 4);
    let rows: Vec<Row> = p
        .recent_failures
        .iter()
        .rev()
        .map(|f| {
            let status_style = if f.status == Status::Failed {
                theme.bad
            } else {
                theme.warn
            };
            Row::new(vec![
                Cell::from(format::truncate(&f.email, ADDRESS)),
                Cell::from(Span::styled(f.status.as_str(), status_style)),
                Cell::from(f.category.as_str()),
                Cell::from(format!("{:>4}", f.attempts)),
                Cell::from(format::truncate(&format::one_line(&f.reply), reply_width)),
            ])
        })
        .collect();
    let header = Row::new(["address", "status", "category", "tries", "reply"]).style(theme.heading);
    let table = Table::new(
        rows,
        [
            Constraint::Length(ADDRESS as u16),
            Constraint::Length(STATUS as u16),
            Constraint::Length(NAME as u16),
            Constraint::Length(TRIES as u16),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .row_highlight_style(theme.selected);
    let selected = app.failures_row().min(p.recent_failures.len() - 1);
    let mut state = TableState::default().with_selected(Some(selected));
    frame.render_stateful_widget(table, inner, &mut state);

    // The index is in range: `selected` is clamped to the length above.
    let row = &p.recent_failures[p.recent_failures.len() - 1 - selected];
    let since = ((row.at - p.started_at).max(0) / 1000) as u64;
    let detail = panel(
        format!(
            " {} at {} ",
            format::truncate(&row.email, 40),
            format::hms(since)
        ),
        theme,
    );
    let detail_inner = detail.inner(detail_area);
    frame.render_widget(detail, detail_area);
    frame.render_widget(
        Paragraph::new(format::one_line(&row.reply)).wrap(Wrap { trim: true }),
        detail_inner,
    );
}
