//! vtest-renderer
