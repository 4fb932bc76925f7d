//! The SMTP side: sessions driven step by step, and the one classifier.

pub mod classify;
mod http;
pub mod pool;
pub mod resend;
pub mod ses;
pub mod session;
pub mod smtp;
