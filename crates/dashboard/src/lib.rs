//! edm-dashboard
