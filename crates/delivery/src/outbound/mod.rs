//! The SMTP side: sessions driven step by step, and the one classifier.

pub mod classify;
pub mod pool;
pub mod resend;
pub mod ses;
pub mod session;
pub mod smtp;
