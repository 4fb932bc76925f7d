//! edm-template
