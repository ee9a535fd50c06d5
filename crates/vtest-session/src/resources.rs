//! The client's resource table: which handles it owns and their shared memory.

use std::collections::HashMap;

/// Live resources of one client.
#[derive(Default)]
pub(crate) struct Resources {
    shm_len: HashMap<u32, u64>,
    shm_bytes: u64,
    next_id: u32,
    pub(crate) created: u64,
}

impl Resources {
    pub(crate) fn contains(&self, handle: u32) -> bool {
        self.shm_len.contains_key(&handle)
    }

    pub(crate) fn len(&self) -> usize {
        self.shm_len.len()
    }

    /// Bytes of shared memory held by live resources.
    pub(crate) fn shm_bytes(&self) -> u64 {
        self.shm_bytes
    }

    /// Size of the resource's shared memory (0 when it has none).
    pub(crate) fn shm_len(&self, handle: u32) -> Option<u64> {
        self.shm_len.get(&handle).copied()
    }

    /// A server-chosen handle not in use. Ids are not reused while the
    /// counter has room, so a late reference to a freed id finds nothing.
    pub(crate) fn allocate_id(&mut self) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0 && !self.contains(self.next_id) {
                return self.next_id;
            }
        }
    }

    pub(crate) fn insert(&mut self, handle: u32, shm_len: u64) {
        self.shm_len.insert(handle, shm_len);
        self.shm_bytes += shm_len;
        self.created += 1;
    }

    /// Forgets `handle`; false if it was not live.
    pub(crate) fn remove(&mut self, handle: u32) -> bool {
        match self.shm_len.remove(&handle) {
            Some(len) => {
                self.shm_bytes -= len;
                true
            }
            None => false,
        }
    }

    /// Every live handle (for teardown).
    pub(crate) fn handles(&self) -> Vec<u32> {
        self.shm_len.keys().copied().collect()
    }
}
