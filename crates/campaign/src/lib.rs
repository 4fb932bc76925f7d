//! edm-campaign
