//! vtest-broker
