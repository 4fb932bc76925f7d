//! Colours, or their absence: with `NO_COLOR` only modifiers are used.

use ratatui::style::{Color, Modifier, Style};

/// The styles every panel draws with, decided once from [`crate::Options::no_color`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Theme {
    /// The title bar.
    pub title: Style,
    /// The state label in the title bar when all is well.
    pub state_ok: Style,
    /// The state label when the run is paused, throttled, in outage or stopping.
    pub state_warn: Style,
    /// Panel titles.
    pub heading: Style,
    /// Sent counts, the filled part of the gauge.
    pub good: Style,
    /// Failed counts and failure bars.
    pub bad: Style,
    /// Deferred counts, throttled rates.
    pub warn: Style,
    /// Secondary text: labels, timestamps, empty-panel notes.
    pub dim: Style,
    /// The selected row of a scrollable view.
    pub selected: Style,
    /// Prompts that need an answer (confirm stop).
    pub prompt: Style,
    /// Key names in the footer and help.
    pub key: Style,
}

impl Theme {
    /// The theme for `no_color` (see <https://no-color.org>).
    pub(crate) fn new(no_color: bool) -> Theme {
        let bold = Style::new().add_modifier(Modifier::BOLD);
        if no_color {
            return Theme {
                title: Style::new().add_modifier(Modifier::REVERSED),
                state_ok: bold.add_modifier(Modifier::REVERSED),
                state_warn: bold.add_modifier(Modifier::REVERSED),
                heading: bold,
                good: Style::new(),
                bad: bold,
                warn: bold,
                dim: Style::new(),
                selected: Style::new().add_modifier(Modifier::REVERSED),
                prompt: bold.add_modifier(Modifier::REVERSED),
                key: bold,
            };
        }
        Theme {
            title: Style::new().fg(Color::Black).bg(Color::Cyan),
            state_ok: bold.fg(Color::Black).bg(Color::Green),
            state_warn: bold.fg(Color::Black).bg(Color::Yellow),
            heading: bold.fg(Color::Cyan),
            good: Style::new().fg(Color::Green),
            bad: Style::new().fg(Color::Red),
            warn: Style::new().fg(Color::Yellow),
            dim: Style::new().fg(Color::DarkGray),
            selected: Style::new().add_modifier(Modifier::REVERSED),
            prompt: bold.fg(Color::Black).bg(Color::Yellow),
            key: bold.fg(Color::Cyan),
        }
    }
}
