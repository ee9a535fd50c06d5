//! A retired per-context fence: what the renderer reports and the session
//! signals syncs by.

/// A per-context fence that retired (virglrenderer's `write_context_fence`
/// callback). The session queues fences as MERGEABLE, so virglrenderer may
/// skip intermediate ids: a fence retires every earlier fence on the same
/// `(ctx_id, ring_idx)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContextFence {
    /// Context id.
    pub ctx_id: u32,
    /// Ring (timeline) index, as in the `SUBMIT_CMD2` batch.
    pub ring_idx: u32,
    /// Fence id, as the session chose it.
    pub fence_id: u64,
}
