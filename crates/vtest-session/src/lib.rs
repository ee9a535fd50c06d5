//! vtest-session
