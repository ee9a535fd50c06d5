//! Writes the hand-made seeds of the fuzz corpora:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml -p vtestd-fuzz-seedgen -- fuzz/corpus
//! ```
//!
//! - `protocol_decode/` and `session/`: client streams built with
//!   `vtest_protocol::Request::encode`, mostly the version 3 commands that
//!   Mesa 22.3 never sends (it stops at version 2), plus the v0 data path and
//!   a few streams that must be refused;
//! - `control_decode/`: one packet per control message variant.
//!
//! Every well-formed stream is checked to decode completely before it is
//! written. Files are named `hand-*`; the captured Mesa traffic next to them
//! comes from `fuzz/tools/capture.py`.

use std::fs;
use std::path::Path;

use vtest_control::codec::encode;
use vtest_control::{BrokerMsg, ClientInfo, ExitReason, Limits, SessionStats, WorkerMsg};
use vtest_protocol::{
    decode, header, CommandId, Decoded, Request, ResourceCreate, ResourceCreateBlob, SyncWait,
    Transfer, Transfer2, TransferBox, BUSY_WAIT_FLAG_WAIT, SUBMIT_CMD2_FLAG_RING_IDX,
    SYNC_WAIT_FLAG_ANY,
};

/// A client stream under construction.
#[derive(Default, Clone)]
struct Stream(Vec<u8>);

impl Stream {
    fn req(mut self, r: Request<'_>) -> Self {
        r.encode(&mut self.0);
        self
    }

    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    fn raw(mut self, command: CommandId, len: u32, payload: &[u32]) -> Self {
        self.0.extend_from_slice(&header(command, len));
        for v in payload {
            self.0.extend_from_slice(&v.to_ne_bytes());
        }
        self
    }

    /// `SUBMIT_CMD2` has no public constructor: built from dwords, and
    /// checked by decoding it.
    fn submit_cmd2(self, payload: &[u32]) -> Self {
        self.raw(CommandId::SubmitCmd2, payload.len() as u32, payload)
    }

    /// Asserts that every request decodes with the default limits.
    fn checked(self) -> Self {
        let limits = vtest_protocol::Limits::default();
        let mut rest = &self.0[..];
        while !rest.is_empty() {
            match decode(rest, &limits) {
                Ok(Decoded::Request(_, used)) => rest = &rest[used..],
                other => panic!("seed does not decode: {other:?}"),
            }
        }
        self
    }
}

fn name(s: &[u8]) -> Request<'_> {
    Request::CreateRenderer { name: s }
}

fn resource(handle: u32, width: u32, height: u32) -> ResourceCreate {
    ResourceCreate {
        handle,
        target: 2,    // PIPE_TEXTURE_2D
        format: 1,    // B8G8R8A8_UNORM
        bind: 1 << 1, // RENDER_TARGET
        width,
        height,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
    }
}

fn bx(w: u32, h: u32) -> TransferBox {
    TransferBox {
        x: 0,
        y: 0,
        z: 0,
        w,
        h,
        d: 1,
    }
}

/// Handshake as Mesa does it, then version 3.
fn v3_handshake() -> Stream {
    Stream::default()
        .req(name(b"fuzz-v3\0"))
        .req(Request::PingProtocolVersion)
        .req(Request::ResourceBusyWait {
            handle: 0,
            flags: 0,
        })
        .req(Request::ProtocolVersion { version: 3 })
        .req(Request::GetCaps2)
        .req(Request::GetCaps)
        .req(Request::GetParam { param: 1 })
        .req(Request::GetParam { param: 2 })
        .req(Request::GetCapset { id: 1, version: 1 })
        .req(Request::GetCapset { id: 2, version: 2 })
        .req(Request::GetCapset { id: 4, version: 0 })
        .req(Request::ContextInit { capset: 2 })
}

fn sync_points(points: &[(u32, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, value) in points {
        out.extend_from_slice(&id.to_ne_bytes());
        out.extend_from_slice(&(*value as u32).to_ne_bytes());
        out.extend_from_slice(&((*value >> 32) as u32).to_ne_bytes());
    }
    out
}

fn client_streams() -> Vec<(&'static str, Stream)> {
    let data: Vec<u8> = (0..64u8).collect();
    let w2 = sync_points(&[(1, 7), (2, 5)]);
    let w1 = sync_points(&[(1, 9)]);
    let put2 = Transfer2 {
        handle: 2,
        level: 0,
        bx: bx(16, 4),
        data_size: 256,
        offset: 0,
    };
    let resources = v3_handshake()
        .req(Request::ResourceCreate(resource(0, 16, 16)))
        .req(Request::ResourceCreate2 {
            args: resource(0, 16, 16),
            data_size: 4096,
        })
        .req(Request::TransferPut2(put2))
        .req(Request::TransferGet2(Transfer2 {
            offset: 1024,
            ..put2
        }))
        .req(Request::ResourceBusyWait {
            handle: 2,
            flags: BUSY_WAIT_FLAG_WAIT,
        })
        .req(Request::ResourceCreateBlob(ResourceCreateBlob {
            blob_type: 1, // guest memory
            flags: 1,     // mappable
            size: 4096,
            blob_id: 0,
        }))
        .req(Request::ResourceUnref { handle: 1 })
        .req(Request::ResourceUnref { handle: 99 })
        // Last: the null backend has no host blobs and ends the session.
        .req(Request::ResourceCreateBlob(ResourceCreateBlob {
            blob_type: 2, // host 3d
            flags: 1,
            size: 4096,
            blob_id: 1,
        }))
        .checked();
    let syncs = v3_handshake()
        .req(Request::SyncCreate { value: 0 })
        .req(Request::SyncCreate { value: 5 })
        .req(Request::SyncRead { id: 1 })
        .req(Request::SyncWrite { id: 1, value: 7 })
        .req(Request::SyncWait(SyncWait::new(0, 0, &w2)))
        .req(Request::SyncWait(SyncWait::new(
            SYNC_WAIT_FLAG_ANY,
            10,
            &w1,
        )))
        // Two batches: the first signals sync 1 through ring 0, the second
        // has a command stream and signals sync 2 at once.
        .submit_cmd2(&[
            2,                         // batches
            SUBMIT_CMD2_FLAG_RING_IDX, // flags
            17,                        // cmd_offset (dwords)
            2,                         // cmd_size
            19,                        // sync_offset
            1,                         // sync_count
            0,                         // ring_idx
            0,
            0,
            0,
            17,
            2,
            22,
            1,
            0,
            0,
            0,
            0x0001_0000, // command stream: a NOP-ish header
            0,
            1, // sync 1 := 9
            9,
            0,
            2, // sync 2 := 6
            6,
            0,
        ])
        .req(Request::SyncRead { id: 1 })
        .req(Request::SyncUnref { id: 2 })
        .req(Request::SyncUnref { id: 42 })
        .checked();
    let v0 = Stream::default()
        .req(name(b"fuzz-v0\0"))
        .req(Request::GetCaps)
        .req(Request::ResourceCreate(resource(5, 4, 4)))
        .req(Request::TransferPut {
            transfer: Transfer {
                handle: 5,
                level: 0,
                stride: 16,
                layer_stride: 64,
                bx: bx(4, 4),
                data_size: data.len() as u32,
            },
            data: &data,
        })
        .req(Request::TransferGet(Transfer {
            handle: 5,
            level: 0,
            stride: 16,
            layer_stride: 64,
            bx: bx(4, 4),
            data_size: 64,
        }))
        .req(Request::SubmitCmd {
            commands: &[0, 0, 0, 0, 1, 0, 0, 0],
        })
        .req(Request::ResourceBusyWait {
            handle: 5,
            flags: BUSY_WAIT_FLAG_WAIT,
        })
        .req(Request::ResourceUnref { handle: 5 })
        .checked();
    let v2 = Stream::default()
        .req(name(b"fuzz-v2\0"))
        .req(Request::PingProtocolVersion)
        .req(Request::ProtocolVersion { version: 2 })
        .req(Request::ResourceCreate2 {
            args: resource(7, 64, 64),
            data_size: 16384,
        })
        // Mesa overstates TRANSFER_PUT2's LEN: the header says 10 + 64.
        .req(Request::TransferPut2(Transfer2 {
            handle: 7,
            level: 0,
            bx: bx(64, 1),
            data_size: 256,
            offset: 512,
        }))
        .req(Request::ResourceCreate2 {
            args: resource(8, 4, 4),
            data_size: 0,
        })
        .req(Request::ResourceUnref { handle: 7 })
        .checked();

    let bad_submit2 = v3_handshake().submit_cmd2(&[1, 0, 0, 100, 0, 0, 0, 0, 0]);
    let bad_ring = v3_handshake()
        .req(Request::SyncCreate { value: 0 })
        .submit_cmd2(&[1, SUBMIT_CMD2_FLAG_RING_IDX, 0, 0, 9, 1, 5, 0, 0, 1, 3, 0]);
    let null_bad = Stream::default()
        .req(name(b"fuzz\0"))
        .req(Request::SubmitCmd {
            commands: &vtest_session_bad_dword(),
        });
    let long_name = Stream::default().req(name(&[b'n'; 300]));
    let no_renderer = Stream::default().req(Request::GetCaps);
    let v4 = Stream::default()
        .req(name(b"fuzz\0"))
        .raw(CommandId::DrmSyncCreate, 1, &[0]);
    let unknown = Stream::default()
        .req(name(b"fuzz\0"))
        .req(Request::GetCaps)
        .bytes(&[0, 0, 0, 0, 99, 0, 0, 0]);
    let huge_put = Stream::default().req(name(b"fuzz\0")).raw(
        CommandId::TransferPut,
        11,
        &[1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0x7fff_ffff],
    );
    let wait_many = v3_handshake()
        .req(Request::SyncCreate { value: 0 })
        .req(Request::SyncWait(SyncWait::new(0, u32::MAX, &w1)))
        .req(Request::SyncWait(SyncWait::new(SYNC_WAIT_FLAG_ANY, 0, &w1)))
        .req(Request::SyncWrite { id: 1, value: 9 })
        .checked();

    vec![
        ("hand-v3-handshake", v3_handshake().checked()),
        ("hand-v3-resources", resources),
        ("hand-v3-syncs", syncs),
        ("hand-v3-sync-waits", wait_many),
        ("hand-v0-transfers", v0),
        ("hand-v2-shm", v2),
        ("hand-bad-submit-cmd2-bounds", bad_submit2),
        ("hand-bad-submit-cmd2-ring", bad_ring),
        ("hand-bad-renderer-command", null_bad),
        ("hand-bad-long-name", long_name),
        ("hand-bad-no-renderer", no_renderer),
        ("hand-bad-v4-command", v4),
        ("hand-bad-unknown-command", unknown),
        ("hand-bad-huge-transfer-put", huge_put),
    ]
}

/// The command dword the null backend rejects (`vtest_session::NULL_BAD_COMMAND`).
fn vtest_session_bad_dword() -> [u8; 8] {
    let mut b = [0u8; 8];
    b[4..].copy_from_slice(&0xdead_beefu32.to_ne_bytes());
    b
}

fn control_packets() -> Vec<(&'static str, Vec<u8>)> {
    let stats = SessionStats {
        commands: 618,
        bytes_in: 1 << 20,
        bytes_out: 4096,
        resources_created: 156,
        live_resources: 3,
        shm_bytes: 1 << 16,
        fences_submitted: 40,
        fences_completed: 39,
        fds_sent: 150,
    };
    let worker = [
        ("hand-worker-ready", WorkerMsg::Ready { pid: 4242 }),
        ("hand-worker-attached", WorkerMsg::Attached { client_id: 7 }),
        ("hand-worker-stats", WorkerMsg::Stats(stats.clone())),
        (
            "hand-worker-finished-limit",
            WorkerMsg::Finished {
                stats: stats.clone(),
                reason: ExitReason::LimitExceeded {
                    limit: "max_resources".into(),
                    value: 65_537,
                    max: 65_536,
                },
            },
        ),
        (
            "hand-worker-finished-protocol",
            WorkerMsg::Finished {
                stats,
                reason: ExitReason::ProtocolError {
                    reason: "unknown command id 99".into(),
                },
            },
        ),
        (
            "hand-worker-seccomp",
            WorkerMsg::SeccompViolation { syscall: 59 },
        ),
    ];
    let broker = [
        (
            "hand-broker-attach",
            BrokerMsg::Attach {
                client: ClientInfo {
                    client_id: 1,
                    pid: 1234,
                    uid: 1000,
                    gid: 1000,
                    listener: "/tmp/.virgl_test".into(),
                },
                limits: Limits {
                    max_resources: 65_536,
                    max_resource_bytes: 1 << 30,
                    max_shm_bytes: 4 << 30,
                    max_command_bytes: 64 << 20,
                    max_syncs: 4096,
                    max_waits: 1024,
                    idle_timeout_ms: 0,
                },
            },
        ),
    ];
    let mut out: Vec<(&'static str, Vec<u8>)> = worker
        .into_iter()
        .map(|(n, m)| (n, encode(&m).expect("encode")))
        .collect();
    out.extend(
        broker
            .into_iter()
            .map(|(n, m)| (n, encode(&m).expect("encode"))),
    );
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("create corpus dir");
    let path = dir.join(format!("{name}.bin"));
    fs::write(&path, bytes).expect("write seed");
    println!("{:6} {}", bytes.len(), path.display());
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let root = Path::new(&root);
    for (name, stream) in client_streams() {
        write(&root.join("protocol_decode"), name, &stream.0);
        write(&root.join("session"), name, &stream.0);
    }
    for (name, packet) in control_packets() {
        write(&root.join("control_decode"), name, &packet);
    }
}
