//! The dashboard in a real terminal (tmux).
