//! vtest-client
