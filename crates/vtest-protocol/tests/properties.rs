//! Property tests: arbitrary bytes never panic or over-ask, every request
//! survives an encode/decode round trip, and SUBMIT_CMD2 decodes at both batch
//! header strides.

use proptest::prelude::*;
use vtest_protocol::{
    decode, Decoded, Limits, Request, ResourceCreate, ResourceCreateBlob, SyncWait, Transfer,
    Transfer2, TransferBox, SUBMIT_CMD2_FLAG_RING_IDX, SUBMIT_CMD2_STRIDE_6, SUBMIT_CMD2_STRIDE_8,
};

fn small_limits() -> Limits {
    Limits {
        max_command_bytes: 4096,
        max_transfer_bytes: 4096,
        max_name_bytes: 1024,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_bytes_never_panic_or_over_ask(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
        let limits = small_limits();
        let mut rest = &buf[..];
        loop {
            match decode(rest, &limits) {
                Ok(Decoded::Request(_, n)) => {
                    prop_assert!(n > 0 && n <= rest.len());
                    rest = &rest[n..];
                }
                Ok(Decoded::NeedMore(n)) => {
                    prop_assert!(n > rest.len());
                    prop_assert!(n <= limits.max_frame_bytes());
                    break;
                }
                Err(_) => break,
            }
        }
    }

    #[test]
    fn arbitrary_headers_never_ask_beyond_the_caps(len in any::<u32>(), id in 0u32..40, extra in proptest::collection::vec(any::<u8>(), 0..64)) {
        let limits = small_limits();
        let mut buf = Vec::new();
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&id.to_ne_bytes());
        buf.extend_from_slice(&extra);
        if let Ok(Decoded::NeedMore(n)) = decode(&buf, &limits) {
            prop_assert!(n <= limits.max_frame_bytes());
        }
    }
}

fn resource_create() -> impl Strategy<Value = ResourceCreate> {
    proptest::array::uniform10(any::<u32>()).prop_map(|f| ResourceCreate {
        handle: f[0],
        target: f[1],
        format: f[2],
        bind: f[3],
        width: f[4],
        height: f[5],
        depth: f[6],
        array_size: f[7],
        last_level: f[8],
        nr_samples: f[9],
    })
}

fn tbox() -> impl Strategy<Value = TransferBox> {
    proptest::array::uniform6(any::<u32>()).prop_map(|f| TransferBox {
        x: f[0],
        y: f[1],
        z: f[2],
        w: f[3],
        h: f[4],
        d: f[5],
    })
}

/// Requests whose payloads do not borrow (the borrowed ones are built below).
fn owned_request() -> impl Strategy<Value = Request<'static>> {
    let u = any::<u32>;
    prop_oneof![
        Just(Request::GetCaps),
        Just(Request::GetCaps2),
        Just(Request::PingProtocolVersion),
        resource_create().prop_map(Request::ResourceCreate),
        u().prop_map(|handle| Request::ResourceUnref { handle }),
        (u(), u(), u(), u(), tbox(), 0u32..4096).prop_map(|(h, l, s, ls, bx, d)| {
            Request::TransferGet(Transfer {
                handle: h,
                level: l,
                stride: s,
                layer_stride: ls,
                bx,
                data_size: d,
            })
        }),
        (u(), u()).prop_map(|(handle, flags)| Request::ResourceBusyWait { handle, flags }),
        u().prop_map(|version| Request::ProtocolVersion { version }),
        (resource_create(), u())
            .prop_map(|(args, data_size)| Request::ResourceCreate2 { args, data_size }),
        (u(), u(), tbox(), u(), u()).prop_map(|(handle, level, bx, data_size, offset)| {
            Request::TransferGet2(Transfer2 {
                handle,
                level,
                bx,
                data_size,
                offset,
            })
        }),
        (u(), u(), tbox(), u(), u()).prop_map(|(handle, level, bx, data_size, offset)| {
            Request::TransferPut2(Transfer2 {
                handle,
                level,
                bx,
                data_size,
                offset,
            })
        }),
        u().prop_map(|param| Request::GetParam { param }),
        (u(), u()).prop_map(|(id, version)| Request::GetCapset { id, version }),
        u().prop_map(|capset| Request::ContextInit { capset }),
        (u(), u(), any::<u64>(), any::<u64>()).prop_map(|(blob_type, flags, size, blob_id)| {
            Request::ResourceCreateBlob(ResourceCreateBlob {
                blob_type,
                flags,
                size,
                blob_id,
            })
        }),
        any::<u64>().prop_map(|value| Request::SyncCreate { value }),
        u().prop_map(|id| Request::SyncUnref { id }),
        u().prop_map(|id| Request::SyncRead { id }),
        (u(), any::<u64>()).prop_map(|(id, value)| Request::SyncWrite { id, value }),
    ]
}

fn round_trip(request: &Request<'_>) -> Result<(), TestCaseError> {
    let mut buf = Vec::new();
    request.encode(&mut buf);
    // A trailing request must not be swallowed.
    let end = buf.len();
    Request::PingProtocolVersion.encode(&mut buf);
    match decode(&buf, &small_limits()) {
        Ok(Decoded::Request(back, n)) => {
            prop_assert_eq!(&back, request);
            prop_assert_eq!(n, end);
        }
        other => prop_assert!(false, "{:?} decoded as {:?}", request, other),
    }
    Ok(())
}

proptest! {
    #[test]
    fn fixed_requests_round_trip(request in owned_request()) {
        round_trip(&request)?;
    }

    #[test]
    fn variable_requests_round_trip(
        name in proptest::collection::vec(any::<u8>(), 0..64),
        words in proptest::collection::vec(any::<u32>(), 0..64),
        data in proptest::collection::vec(any::<u8>(), 0..300),
        points in proptest::collection::vec((any::<u32>(), any::<u64>()), 0..8),
        flags in any::<u32>(),
        timeout in any::<u32>(),
    ) {
        round_trip(&Request::CreateRenderer { name: &name })?;
        let commands: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        round_trip(&Request::SubmitCmd { commands: &commands })?;
        let transfer = Transfer { data_size: data.len() as u32, ..Transfer::default() };
        round_trip(&Request::TransferPut { transfer, data: &data })?;
        let raw: Vec<u8> = points
            .iter()
            .flat_map(|(id, v)| [*id, *v as u32, (*v >> 32) as u32])
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        round_trip(&Request::SyncWait(SyncWait::new(flags, timeout, &raw)))?;
    }
}

/// One SUBMIT_CMD2 batch: flags (RING_IDX or 0), commands, syncs, ring.
type Cmd2Batch = (u32, Vec<u32>, Vec<(u32, u64)>, u32);

fn cmd2_batches() -> impl Strategy<Value = Vec<Cmd2Batch>> {
    let batch = (
        prop_oneof![Just(0), Just(SUBMIT_CMD2_FLAG_RING_IDX)],
        proptest::collection::vec(any::<u32>(), 0..6),
        proptest::collection::vec((any::<u32>(), any::<u64>()), 0..3),
        0u32..64,
    );
    proptest::collection::vec(batch, 1..5)
}

/// The SUBMIT_CMD2 payload (no header) a client writes: headers `stride`
/// dwords apart, then the data, either every batch's commands and then every
/// batch's syncs (Mesa's venus) or each batch's commands and syncs in turn.
fn cmd2_payload(stride: u32, mesa_layout: bool, batches: &[Cmd2Batch]) -> Vec<u32> {
    let headers = 1 + stride as usize * batches.len();
    let total_cmds: usize = batches.iter().map(|b| b.1.len()).sum();
    let mut cmds = Vec::new();
    let mut syncs = Vec::new();
    let mut payload = vec![batches.len() as u32];
    for (flags, cmd, points, ring) in batches {
        let (cmd_at, sync_at) = if mesa_layout {
            (headers + cmds.len(), headers + total_cmds + syncs.len())
        } else {
            let at = headers + cmds.len() + syncs.len();
            (at, at + cmd.len())
        };
        let mut h = vec![
            *flags,
            cmd_at as u32,
            cmd.len() as u32,
            sync_at as u32,
            points.len() as u32,
            *ring,
        ];
        h.resize(stride as usize, 0);
        payload.extend(h);
        let triples = points
            .iter()
            .flat_map(|&(id, v)| [id, v as u32, (v >> 32) as u32]);
        if mesa_layout {
            cmds.extend_from_slice(cmd);
            syncs.extend(triples);
        } else {
            // Interleaved: keep everything in `cmds`, in order.
            cmds.extend_from_slice(cmd);
            cmds.extend(triples);
        }
    }
    payload.extend(cmds);
    payload.extend(syncs);
    payload
}

fn framed(payload: &[u32]) -> Vec<u8> {
    let mut buf = Vec::new();
    for w in [payload.len() as u32, 24].iter().chain(payload) {
        buf.extend_from_slice(&w.to_ne_bytes());
    }
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Regression for Mesa 25.0's 6-dword batch headers: both strides, both
    /// data layouts, decode to exactly the batches that were written.
    #[test]
    fn submit_cmd2_decodes_at_either_stride(
        batches in cmd2_batches(),
        six in any::<bool>(),
        mesa_layout in any::<bool>(),
    ) {
        let stride = if six { SUBMIT_CMD2_STRIDE_6 } else { SUBMIT_CMD2_STRIDE_8 };
        let buf = framed(&cmd2_payload(stride, mesa_layout, &batches));
        let s = match decode(&buf, &Limits::default()) {
            Ok(Decoded::Request(Request::SubmitCmd2(s), n)) if n == buf.len() => s,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(s.stride(), stride);
        prop_assert_eq!(s.batches().len(), batches.len());
        for (b, (flags, cmd, points, ring)) in s.batches().iter().zip(&batches) {
            prop_assert_eq!(b.flags, *flags);
            prop_assert_eq!(b.ring_idx, *ring);
            let want: Vec<u8> = cmd.iter().flat_map(|w| w.to_ne_bytes()).collect();
            prop_assert_eq!(s.commands(b), &want[..]);
            let got: Vec<(u32, u64)> = s.syncs(b).map(|p| (p.id, p.value)).collect();
            prop_assert_eq!(&got, points);
        }
    }

    /// A corrupted dword anywhere never panics, and whatever is accepted
    /// still lies inside the payload, after the headers of its stride.
    #[test]
    fn corrupted_submit_cmd2_never_escapes_its_payload(
        batches in cmd2_batches(),
        six in any::<bool>(),
        at in any::<prop::sample::Index>(),
        value in prop_oneof![any::<u32>(), 0u32..64, Just(u32::MAX), Just(u32::MAX - 1)],
    ) {
        let stride = if six { SUBMIT_CMD2_STRIDE_6 } else { SUBMIT_CMD2_STRIDE_8 };
        let mut payload = cmd2_payload(stride, true, &batches);
        let i = at.index(payload.len());
        payload[i] = value;
        let buf = framed(&payload);
        if let Ok(Decoded::Request(Request::SubmitCmd2(s), _)) = decode(&buf, &Limits::default()) {
            let headers_end = 1 + s.stride() as usize * s.batches().len();
            prop_assert!(headers_end <= payload.len());
            for b in s.batches() {
                // Both would panic on a range outside the payload.
                let cmds = s.commands(b);
                let syncs = s.syncs(b).count();
                if !cmds.is_empty() {
                    prop_assert!(b.cmd_offset as usize >= headers_end);
                }
                if syncs > 0 {
                    prop_assert!(b.sync_offset as usize >= headers_end);
                }
            }
        }
    }
}
