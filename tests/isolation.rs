//! End-to-end tests (isolation).

mod common;
