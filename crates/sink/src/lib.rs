//! edm-sink
