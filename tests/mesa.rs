//! End-to-end tests (mesa).

mod common;
