//! A well-behaved client: one texture with shared memory, and a checked
//! upload/readback round trip through the renderer.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vtest_client::{Box3, Client, ResourceArgs, Transfer2Args};

use super::server::Server;

/// A v2 client holding one 64x64 texture with shared memory.
pub struct Tenant {
    pub client: Client,
    pub shm: File,
    pub handle: u32,
}

impl Tenant {
    pub fn connect(server: &Server, name: &str) -> Tenant {
        Self::connect_path(server.socket_path(), name)
    }

    /// Connects to the socket at `path`.
    pub fn connect_path(path: &std::path::Path, name: &str) -> Tenant {
        let mut client = Client::connect(path).expect("connect");
        assert_eq!(client.handshake(name, 2).expect("handshake"), 2);
        let args = ResourceArgs::texture_2d(64, 64).with_handle(1);
        let (handle, fd) = client
            .resource_create2(&args, 64 * 64 * 4)
            .expect("create2");
        Tenant {
            client,
            shm: File::from(fd.expect("memfd")),
            handle,
        }
    }

    /// Uploads a pattern, clears the memory, reads it back through the renderer.
    pub fn round_trip(&mut self, seed: u8) {
        let pattern: Vec<u8> = (0..64 * 64 * 4)
            .map(|i| (i as u8).wrapping_add(seed))
            .collect();
        self.shm.write_all_at(&pattern, 0).unwrap();
        let t = Transfer2Args {
            handle: self.handle,
            level: 0,
            bx: Box3::rect(64, 64),
            data_size: pattern.len() as u32,
            offset: 0,
        };
        self.client.transfer_put2(&t).unwrap();
        assert!(!self.client.busy_wait(self.handle, true).unwrap());
        self.shm.write_all_at(&vec![0; pattern.len()], 0).unwrap();
        self.client.transfer_get2(&t).unwrap();
        assert!(!self.client.busy_wait(self.handle, true).unwrap());
        let mut back = vec![0; pattern.len()];
        self.shm.read_exact_at(&mut back, 0).unwrap();
        assert!(back == pattern, "data came back changed");
    }
}
