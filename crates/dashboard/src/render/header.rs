//! The title bar, the progress gauge and the counters.

use edm_model::{Progress, RunState, Status};
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use crate::app::App;
use crate::format;
use crate::theme::Theme;

/// Campaign, state, elapsed time and ETA on one reversed line.
pub(super) fn title_bar(frame: &mut Frame, area: Rect, app: &App, p: &Progress) {
    let theme = &app.theme;
    let state_style = match p.state {
        RunState::Starting | RunState::Running | RunState::WaitingForRetries | RunState::Done => {
            theme.state_ok
        }
        RunState::Paused | RunState::Throttled | RunState::Outage | RunState::Stopping => {
            theme.state_warn
        }
    };
    let mut state = p.state.label().to_uppercase();
    match app.pause_pending() {
        Some(true) if p.state != RunState::Paused => state.push_str(" (pausing)"),
        Some(false) if p.state == RunState::Paused => state.push_str(" (resuming)"),
        _ => {}
    }
    let eta = match (p.state, p.eta_secs()) {
        (RunState::Done, _) => "-".to_string(),
        (_, Some(s)) => format::hms(s),
        (_, None) => "--:--:--".to_string(),
    };
    let elapsed = format::hms((p.elapsed_ms() / 1000) as u64);
    let tail = format!("  elapsed {elapsed}  ETA {eta} ");
    let right = if app.opts.read_only {
        " read-only  ? help "
    } else {
        " ? help "
    };

    // The campaign name gets what the rest leaves; it is the one part that can be long.
    let fixed = 6 + state.len() + 2 + tail.len() + right.len();
    let name_width = (area.width as usize).saturating_sub(fixed).max(8);
    let left = Line::from(vec![
        Span::styled(" edm ", theme.title),
        Span::styled(format::truncate(&p.campaign, name_width), theme.title),
        Span::styled(" ", theme.title),
        Span::styled(format!(" {state} "), state_style),
        Span::styled(tail, theme.title),
    ]);
    frame.buffer_mut().set_style(area, theme.title);
    let left_width = left.width() as u16;
    frame.render_widget(Paragraph::new(left), area);
    if left_width + right.len() as u16 <= area.width {
        frame.render_widget(
            Paragraph::new(Span::styled(right, theme.title)).alignment(Alignment::Right),
            area,
        );
    }
}

/// `  24.7% ██████░░░░░░ 1,234 / 5,000 final`: a text gauge, visible without colour.
pub(super) fn gauge(frame: &mut Frame, area: Rect, theme: &Theme, p: &Progress) {
    let (done, total) = (p.done(), p.total());
    let pct = format::percent(done, total);
    let prefix = format!(" {pct:5.1}% ");
    let suffix = format!(" {} / {} final ", format::count(done), format::count(total));
    let bar_width = (area.width as usize).saturating_sub(prefix.len() + suffix.len());
    let filled = if total == 0 {
        0
    } else {
        ((done as f64 / total as f64) * bar_width as f64).round() as usize
    }
    .min(bar_width);
    let line = Line::from(vec![
        Span::styled(prefix, Style::new().patch(theme.heading)),
        Span::styled("█".repeat(filled), theme.good),
        Span::styled("░".repeat(bar_width - filled), theme.dim),
        Span::raw(suffix),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

/// Three rows of four counters.
pub(super) fn counters(frame: &mut Frame, area: Rect, theme: &Theme, p: &Progress) {
    let in_doubt = p.count(Status::InDoubt);
    let cells: [[(&str, u64, Style); 4]; 3] = [
        [
            ("sent", p.count(Status::Sent), theme.good),
            ("failed", p.count(Status::Failed), theme.bad),
            ("deferred", p.count(Status::Deferred), theme.warn),
            ("in flight", p.in_flight, Style::new()),
        ],
        [
            ("pending", p.count(Status::Pending), Style::new()),
            (
                "in doubt",
                in_doubt,
                if in_doubt > 0 {
                    theme.bad
                } else {
                    Style::new()
                },
            ),
            ("retries", p.retries, Style::new()),
            ("total", p.total(), Style::new()),
        ],
        [
            ("invalid", p.count(Status::Invalid), Style::new()),
            ("skipped", p.count(Status::Skipped), Style::new()),
            ("suppressed", p.count(Status::Suppressed), Style::new()),
            ("", 0, Style::new()),
        ],
    ];
    // Bounces and complaints read back after `sent` (docs/bounces.md): the
    // free cell, shown once there are any, as `bounces BOUNCED/COMPLAINED`.
    let late = (!p.late.is_empty()).then(|| {
        let style = if p.late.complained > 0 || p.late.bounced > 0 {
            theme.bad
        } else {
            theme.warn
        };
        (
            "bounces",
            format!(
                "{}/{}",
                format::count(p.late.bounced),
                format::count(p.late.complained)
            ),
            style,
        )
    });
    let rows = Layout::vertical([Constraint::Length(1); 3]).split(area);
    for (r, (row, cells)) in rows.iter().zip(cells).enumerate() {
        let cols = Layout::horizontal([Constraint::Fill(1); 4])
            .spacing(2)
            .split(*row);
        for (c, (col, (label, value, style))) in cols.iter().zip(cells).enumerate() {
            let (label, value, style) = match (&late, r, c) {
                (Some((l, v, s)), 2, 3) => (*l, v.clone(), *s),
                _ => (label, format::count(value), style),
            };
            if label.is_empty() {
                continue;
            }
            let gap = (col.width as usize).saturating_sub(1 + label.len() + value.len());
            let line = Line::from(vec![
                Span::styled(format!(" {label}"), theme.dim),
                Span::raw(" ".repeat(gap)),
                Span::styled(value, style),
            ]);
            frame.render_widget(Paragraph::new(line), *col);
        }
    }
}
