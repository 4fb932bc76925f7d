//! Crash safety: SIGKILL at random moments.
