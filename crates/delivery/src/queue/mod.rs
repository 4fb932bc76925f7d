//! Scheduling policy: rate limits (global, per domain, adaptive), the retry
//! schedule and the circuit breaker. Pure state where possible, so it can be
//! tested without a network.

pub mod adaptive;
pub mod breaker;
pub mod rate;
pub mod retry;
