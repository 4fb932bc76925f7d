//! One test per failure category.
