//! Clients that spoke while no worker was free and as many workers were
//! already starting as there are cores: they wait here, in order, for a
//! worker to become ready or for a core to start theirs. Starting more at
//! once would not serve the last of a burst sooner (starts are CPU-bound),
//! only every client later and with every start's memory at once.

use std::collections::VecDeque;

use super::waiting::Waiting;

#[derive(Default)]
pub(super) struct StartQueue {
    clients: VecDeque<Waiting>,
}

impl StartQueue {
    pub(super) fn push(&mut self, w: Waiting) {
        self.clients.push_back(w);
    }

    /// Takes out, oldest first, the clients `servable` says can be served
    /// now (it is asked again after each one is taken, so it can count what
    /// serving the last one used up).
    pub(super) fn take_servable(
        &mut self,
        mut servable: impl FnMut(&Waiting) -> bool,
    ) -> Vec<Waiting> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.clients.len());
        while let Some(w) = self.clients.pop_front() {
            if servable(&w) {
                taken.push(w);
            } else {
                kept.push_back(w);
            }
        }
        self.clients = kept;
        taken
    }

    pub(super) fn len(&self) -> u32 {
        self.clients.len() as u32
    }

    pub(super) fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Waiting> {
        self.clients.iter()
    }

    /// Queued clients of `uid`.
    pub(super) fn of_uid(&self, uid: u32) -> u32 {
        self.iter().filter(|w| w.client.uid == uid).count() as u32
    }

    /// Queued clients of listener `name`.
    pub(super) fn of_listener(&self, name: &str) -> u32 {
        self.iter().filter(|w| w.client.listener == name).count() as u32
    }

    /// Closes them all; how many there were.
    pub(super) fn clear(&mut self) -> u32 {
        let n = self.len();
        self.clients.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    use vtest_control::ClientInfo;

    use super::*;

    fn client(id: u64, listener: &str) -> Waiting {
        let (stream, _) = UnixStream::pair().unwrap();
        Waiting {
            stream,
            client: ClientInfo {
                client_id: id,
                pid: 1,
                uid: 1000 + id as u32 % 2,
                gid: 0,
                listener: listener.into(),
            },
            since: Instant::now(),
        }
    }

    #[test]
    fn clients_are_taken_oldest_first_while_there_is_room() {
        let mut q = StartQueue::default();
        for id in 1..=4 {
            q.push(client(id, "default"));
        }
        let mut room = 2;
        let taken = q.take_servable(|_| {
            let ok = room > 0;
            room -= u32::from(ok);
            ok
        });
        let ids: Vec<u64> = taken.iter().map(|w| w.client.client_id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(q.len(), 2);
        assert_eq!(q.iter().next().map(|w| w.client.client_id), Some(3));
    }

    #[test]
    fn a_client_that_cannot_be_served_does_not_hold_up_another_listeners() {
        let mut q = StartQueue::default();
        q.push(client(1, "gpu"));
        q.push(client(2, "default"));
        q.push(client(3, "gpu"));
        let taken = q.take_servable(|w| w.client.listener == "default");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].client.client_id, 2);
        let left: Vec<u64> = q.iter().map(|w| w.client.client_id).collect();
        assert_eq!(left, [1, 3], "order kept");
        assert_eq!(q.of_listener("gpu"), 2);
        assert_eq!(q.of_uid(1001), 2);
        assert_eq!(q.clear(), 2);
        assert!(q.is_empty());
    }
}
