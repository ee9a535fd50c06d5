//! Vtest syncs: per-client 64-bit timeline counters, the waits on them, and the
//! submits queued on context timelines (rings) that signal them.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use vtest_protocol::{SyncPoint, MAX_TIMELINE_COUNT};

/// A pending `SYNC_WAIT`: the client holds a copy of `fd`.
struct Wait {
    fd: EventFd,
    points: Vec<SyncPoint>,
    any: bool,
    deadline: Option<Instant>,
}

/// A `SUBMIT_CMD2` batch waiting for its ring fence.
struct PendingSubmit {
    fence_id: u64,
    points: Vec<SyncPoint>,
}

pub(crate) struct Syncs {
    values: HashMap<u32, u64>,
    next_id: u32,
    waits: Vec<Wait>,
    rings: Vec<VecDeque<PendingSubmit>>,
    pending_submits: usize,
}

impl Default for Syncs {
    fn default() -> Self {
        Syncs {
            values: HashMap::new(),
            next_id: 0,
            waits: Vec::new(),
            rings: (0..MAX_TIMELINE_COUNT).map(|_| VecDeque::new()).collect(),
            pending_submits: 0,
        }
    }
}

impl Syncs {
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn waits(&self) -> usize {
        self.waits.len()
    }

    pub(crate) fn pending_submits(&self) -> usize {
        self.pending_submits
    }

    pub(crate) fn create(&mut self, value: u64) -> u32 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0 && !self.values.contains_key(&self.next_id) {
                break;
            }
        }
        self.values.insert(self.next_id, value);
        self.next_id
    }

    pub(crate) fn unref(&mut self, id: u32) {
        self.values.remove(&id);
    }

    pub(crate) fn read(&self, id: u32) -> Option<u64> {
        self.values.get(&id).copied()
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.values.contains_key(&id)
    }

    /// Sets a value (even a lower one, as the reference does); false if unknown.
    pub(crate) fn write(&mut self, id: u32, value: u64) -> bool {
        let Some(slot) = self.values.get_mut(&id) else {
            return false;
        };
        let raised = value > *slot;
        *slot = value;
        if raised {
            self.check_waits(Instant::now());
        }
        true
    }

    fn reached(&self, p: &SyncPoint) -> bool {
        // An unref'd sync can never be reached again.
        self.values.get(&p.id).is_some_and(|v| *v >= p.value)
    }

    /// Registers a wait and returns the eventfd for the client (already
    /// signalled if the wait is satisfied). A zero timeout polls: nothing is kept.
    pub(crate) fn wait(
        &mut self,
        points: Vec<SyncPoint>,
        any: bool,
        timeout_ms: u32,
    ) -> std::io::Result<OwnedFd> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let deadline = (timeout_ms <= i32::MAX as u32)
            .then(|| Instant::now() + Duration::from_millis(u64::from(timeout_ms)));
        let wait = Wait {
            fd,
            points,
            any,
            deadline,
        };
        if self.satisfied(&wait) {
            wait.fd.write(1)?;
            return Ok(wait.fd.into());
        }
        if timeout_ms == 0 {
            return Ok(wait.fd.into());
        }
        let client_copy = wait.fd.as_fd().try_clone_to_owned()?;
        self.waits.push(wait);
        Ok(client_copy)
    }

    fn satisfied(&self, w: &Wait) -> bool {
        if w.any {
            w.points.is_empty() || w.points.iter().any(|p| self.reached(p))
        } else {
            w.points.iter().all(|p| self.reached(p))
        }
    }

    /// Signals satisfied waits and drops them and the expired ones.
    pub(crate) fn check_waits(&mut self, now: Instant) {
        let waits = std::mem::take(&mut self.waits);
        for w in waits {
            if self.satisfied(&w) {
                // A full eventfd counter cannot happen: we write once.
                let _ = w.fd.write(1);
            } else if w.deadline.is_none_or(|d| d > now) {
                self.waits.push(w);
            }
        }
    }

    /// When the next wait expires.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.waits.iter().filter_map(|w| w.deadline).min()
    }

    /// Queues a submit whose points are signalled when `fence_id` retires on `ring`.
    pub(crate) fn queue_submit(&mut self, ring: u32, fence_id: u64, points: Vec<SyncPoint>) {
        self.rings[ring as usize].push_back(PendingSubmit { fence_id, points });
        self.pending_submits += 1;
    }

    /// A ring fence retired: signal it and every earlier submit on that ring
    /// (fences are mergeable, so intermediate ones may be skipped).
    pub(crate) fn retire(&mut self, ring: u32, fence_id: u64) {
        let Some(queue) = self.rings.get_mut(ring as usize) else {
            return;
        };
        let mut signalled = Vec::new();
        while queue.front().is_some_and(|s| s.fence_id <= fence_id) {
            if let Some(s) = queue.pop_front() {
                signalled.extend(s.points);
                self.pending_submits -= 1;
            }
        }
        self.signal(&signalled);
    }

    /// Sets each point's sync to its value (unknown ids were checked earlier
    /// and may have been unref'd since: skipped).
    pub(crate) fn signal(&mut self, points: &[SyncPoint]) {
        let mut raised = false;
        for p in points {
            if let Some(slot) = self.values.get_mut(&p.id) {
                raised |= p.value > *slot;
                *slot = p.value;
            }
        }
        if raised {
            self.check_waits(Instant::now());
        }
    }
}
