//! vtest-protocol
