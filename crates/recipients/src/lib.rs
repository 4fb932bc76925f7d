//! edm-recipients
