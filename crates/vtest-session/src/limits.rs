//! Per-client limits: everything a client can make the worker allocate.

use vtest_protocol::Limits;

/// Caps enforced on one client. Hitting one ends that client only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Per-request caps applied while framing.
    pub protocol: Limits,
    /// Live resources at once.
    pub max_resources: u32,
    /// Shared memory of one resource, in bytes.
    pub max_resource_bytes: u64,
    /// Shared memory of all live resources, in bytes.
    pub max_shm_bytes: u64,
    /// Live syncs at once.
    pub max_syncs: u32,
    /// Pending `SYNC_WAIT`s (each holds an eventfd).
    pub max_waits: u32,
    /// Submits queued on context timelines and not yet retired.
    pub max_pending_fences: u32,
    /// Time without any request before the client is dropped.
    pub idle_timeout: Option<std::time::Duration>,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            protocol: Limits::default(),
            max_resources: 65_536,
            max_resource_bytes: 1 << 30,
            max_shm_bytes: 4 << 30,
            max_syncs: 4096,
            max_waits: 1024,
            max_pending_fences: 65_536,
            idle_timeout: None,
        }
    }
}
