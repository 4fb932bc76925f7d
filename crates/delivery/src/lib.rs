//! edm-delivery
