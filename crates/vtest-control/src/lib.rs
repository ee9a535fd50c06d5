//! vtest-control
