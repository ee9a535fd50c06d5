//! Process-level hardening for vtestd workers. With the renderer crate, the
//! only place allowed `unsafe` (signal dispositions, and later seccomp,
//! Landlock and namespaces).

pub mod rlimits;
pub mod signals;
