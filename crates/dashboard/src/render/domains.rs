//! Recipient domains: a panel on wide terminals and the domains view (`d`).

use edm_model::{DomainCounts, Progress};
use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

use super::panel;
use crate::app::App;
use crate::format;
use crate::theme::Theme;

/// Busiest first (by attempts seen), then by name so the order is stable.
fn ranked(p: &Progress) -> Vec<(&String, &DomainCounts)> {
    let mut rows: Vec<_> = p.domains.iter().collect();
    rows.sort_by(|a, b| {
        let load = |c: &DomainCounts| c.sent + c.failed + c.deferred;
        load(b.1).cmp(&load(a.1)).then(a.0.cmp(b.0))
    });
    rows
}

fn table<'a>(rows: &[(&String, &DomainCounts)], width: u16, theme: &Theme) -> Table<'a> {
    const NUM: u16 = 8;
    const SHARE: u16 = 6;
    let name_width = width.saturating_sub(3 * NUM + SHARE + 4).max(8) as usize;
    let body: Vec<Row> = rows
        .iter()
        .map(|(name, c)| {
            let tried = c.sent + c.failed;
            Row::new(vec![
                Cell::from(format::truncate(name, name_width)),
                Cell::from(format!("{:>8}", format::count(c.sent))),
                Cell::from(Span::styled(
                    format!("{:>8}", format::count(c.failed)),
                    theme.bad,
                )),
                Cell::from(Span::styled(
                    format!("{:>8}", format::count(c.deferred)),
                    theme.warn,
                )),
                Cell::from(format!("{:>5.1}%", format::percent(c.failed, tried))),
            ])
        })
        .collect();
    let header = Row::new(vec![
        Cell::from("domain"),
        Cell::from("    sent"),
        Cell::from("  failed"),
        Cell::from("deferred"),
        Cell::from(" fail%"),
    ])
    .style(theme.heading);
    Table::new(
        body,
        [
            Constraint::Fill(1),
            Constraint::Length(NUM),
            Constraint::Length(NUM),
            Constraint::Length(NUM),
            Constraint::Length(SHARE),
        ],
    )
    .header(header)
}

/// The busiest domains, as many as fit (wide terminals only).
pub(super) fn top(frame: &mut Frame, area: Rect, theme: &Theme, p: &Progress) {
    let block = panel(" Top domains ", theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if p.domains.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("no domains yet", theme.dim)),
            inner,
        );
        return;
    }
    let rows = ranked(p);
    let shown = rows.len().min((inner.height as usize).saturating_sub(1));
    frame.render_widget(table(&rows[..shown], inner.width, theme), inner);
}

/// The domains view: every domain, scrollable.
pub(super) fn view(frame: &mut Frame, area: Rect, app: &App, p: &Progress) {
    let theme = &app.theme;
    let title = format!(
        " Domains ({}) — ↑↓ PgUp PgDn Home End, Esc back ",
        format::count(p.domains.len() as u64)
    );
    let block = panel(title, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    app.page_rows
        .set((inner.height as usize).saturating_sub(1).max(1));
    if p.domains.is_empty() {
        frame.render_widget(
            Paragraph::new(Span::styled("no domains yet", theme.dim)),
            inner,
        );
        return;
    }
    let rows = ranked(p);
    let selected = app.domains_row().min(rows.len() - 1);
    let mut state = TableState::default().with_selected(Some(selected));
    frame.render_stateful_widget(
        table(&rows, inner.width, theme).row_highlight_style(theme.selected),
        inner,
        &mut state,
    );
}
