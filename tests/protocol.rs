//! End-to-end tests (protocol).

mod common;
