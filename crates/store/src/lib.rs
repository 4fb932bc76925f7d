//! edm-store
