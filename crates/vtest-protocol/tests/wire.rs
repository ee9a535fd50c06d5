//! Decoding against bytes observed on the wire (`docs/PROTOCOL.md` Appendix A) and
//! the framing quirks real clients depend on.

use vtest_protocol::{
    decode, header, CommandId, Decoded, Limits, ProtocolError, Reply, Request, ResourceCreate,
    SubmitCmd2, HEADER_BYTES, SUBMIT_CMD2_FLAG_RING_IDX, SUBMIT_CMD2_STRIDE_6,
    SUBMIT_CMD2_STRIDE_8,
};

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn one(buf: &[u8]) -> (Request<'_>, usize) {
    match decode(buf, &Limits::default()).expect("decodes") {
        Decoded::Request(r, n) => (r, n),
        Decoded::NeedMore(n) => panic!("needs {n} bytes"),
    }
}

#[test]
fn mesa_handshake_bytes_decode() {
    let mut buf = words(&[8, 8]);
    buf.extend_from_slice(b"glmark2\0");
    buf.extend(words(&[0, 10, 2, 7, 0, 0]));
    let (r, n) = one(&buf);
    assert_eq!(r, Request::CreateRenderer { name: b"glmark2\0" });
    let (r2, n2) = one(&buf[n..]);
    assert_eq!(r2, Request::PingProtocolVersion);
    let (r3, n3) = one(&buf[n + n2..]);
    assert_eq!(
        r3,
        Request::ResourceBusyWait {
            handle: 0,
            flags: 0
        }
    );
    assert_eq!(n + n2 + n3, buf.len());
}

#[test]
fn resource_create2_from_glmark2() {
    let buf = words(&[11, 12, 1, 2, 1, 0x8a, 800, 600, 1, 1, 0, 0, 1_920_000]);
    let (r, n) = one(&buf);
    assert_eq!(n, buf.len());
    let expected = ResourceCreate {
        handle: 1,
        target: 2,
        format: 1,
        bind: 0x8a,
        width: 800,
        height: 600,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
    };
    assert_eq!(
        r,
        Request::ResourceCreate2 {
            args: expected,
            data_size: 1_920_000
        }
    );
}

#[test]
fn transfer_put2_len_overstates_and_is_ignored() {
    // Mesa sends LEN = 10 + ceil(data_size / 4) but no data follows.
    let mut buf = words(&[10 + 1000, 14, 1, 0, 0, 0, 0, 10, 10, 1, 4000, 0]);
    buf.extend(words(&[0, 10]));
    let (r, n) = one(&buf);
    assert!(matches!(r, Request::TransferPut2(t) if t.data_size == 4000));
    assert_eq!(n, HEADER_BYTES + 40);
    assert_eq!(one(&buf[n..]).0, Request::PingProtocolVersion);
}

#[test]
fn transfer_put_reads_exactly_data_size_bytes() {
    // A 3-byte put with LEN = 12, then a ping that must still parse.
    let mut buf = words(&[12, 5, 7, 0, 0, 0, 0, 0, 0, 3, 1, 1, 3]);
    buf.extend_from_slice(&[0xaa, 0xbb, 0xcc]);
    buf.extend(words(&[0, 10]));
    let (r, n) = one(&buf);
    match r {
        Request::TransferPut { transfer, data } => {
            assert_eq!(transfer.handle, 7);
            assert_eq!(data, &[0xaa, 0xbb, 0xcc]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(n, HEADER_BYTES + 44 + 3);
    assert_eq!(one(&buf[n..]).0, Request::PingProtocolVersion);
}

#[test]
fn partial_input_asks_for_more() {
    let limits = Limits::default();
    assert_eq!(decode(&[], &limits), Ok(Decoded::NeedMore(8)));
    let buf = words(&[11, 12, 1, 2]);
    assert_eq!(decode(&buf, &limits), Ok(Decoded::NeedMore(8 + 44)));
    // TRANSFER_PUT: first the fixed part, then the data it announces.
    let buf = words(&[0, 5, 1]);
    assert_eq!(decode(&buf, &limits), Ok(Decoded::NeedMore(8 + 44)));
    let buf = words(&[0, 5, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 100]);
    assert_eq!(decode(&buf, &limits), Ok(Decoded::NeedMore(8 + 44 + 100)));
}

#[test]
fn unknown_and_v4_ids_are_rejected() {
    let limits = Limits::default();
    assert_eq!(
        decode(&words(&[0, 0]), &limits),
        Err(ProtocolError::UnknownCommand(0))
    );
    assert_eq!(
        decode(&words(&[0, 99]), &limits),
        Err(ProtocolError::UnknownCommand(99))
    );
    assert_eq!(
        decode(&words(&[1, 25, 0]), &limits),
        Err(ProtocolError::Unsupported(CommandId::DrmSyncCreate))
    );
}

#[test]
fn huge_lengths_are_rejected_before_buffering() {
    let limits = Limits::default();
    assert!(matches!(
        decode(&words(&[u32::MAX, 6]), &limits),
        Err(ProtocolError::CommandTooLarge { .. })
    ));
    assert!(matches!(
        decode(&words(&[(1 << 20) + 1, 8]), &limits),
        Err(ProtocolError::NameTooLong { .. })
    ));
    let put = words(&[0, 5, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, u32::MAX]);
    assert!(matches!(
        decode(&put, &limits),
        Err(ProtocolError::TransferTooLarge { .. })
    ));
    let get = words(&[0, 4, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, u32::MAX]);
    assert!(matches!(
        decode(&get, &limits),
        Err(ProtocolError::TransferTooLarge { .. })
    ));
}

#[test]
fn sync_wait_needs_2_plus_3n_dwords() {
    let limits = Limits::default();
    for len in [0u32, 1, 3, 4, 6] {
        let mut buf = words(&[len, 23]);
        buf.extend(vec![0; len as usize * 4]);
        assert!(
            matches!(
                decode(&buf, &limits),
                Err(ProtocolError::MalformedPayload { .. })
            ),
            "LEN {len}"
        );
    }
    let buf = words(&[5, 23, 1, 100, 3, 7, 0]);
    match one(&buf).0 {
        Request::SyncWait(w) => {
            assert_eq!((w.flags, w.timeout_ms, w.len()), (1, 100, 1));
            let p = w.points().next().unwrap();
            assert_eq!((p.id, p.value), (3, 7));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn submit_cmd2_bounds_are_checked_without_wrapping() {
    let limits = Limits::default();
    // batch_count 0 is a no-op.
    match one(&words(&[1, 24, 0])).0 {
        Request::SubmitCmd2(s) => assert!(s.batches().is_empty()),
        other => panic!("{other:?}"),
    }
    // One batch: commands at dword 9 (1 dword), one sync at dword 10.
    let ok = words(&[13, 24, 1, 1, 9, 1, 10, 1, 0, 0, 0, 0xabcd, 4, 9, 0]);
    match one(&ok).0 {
        Request::SubmitCmd2(s) => {
            let b = s.batches()[0];
            assert_eq!(s.commands(&b), &0xabcd_u32.to_ne_bytes());
            let p: Vec<_> = s.syncs(&b).collect();
            assert_eq!((p[0].id, p[0].value), (4, 9));
            assert!(b.uses_ring());
        }
        other => panic!("{other:?}"),
    }
    // cmd_offset + cmd_size wraps in u32 arithmetic (9 + 0xffffffff = 8):
    // must be rejected.
    let wrap = words(&[9, 24, 1, 0, 9, u32::MAX, 0, 0, 0, 0, 0]);
    assert!(matches!(
        decode(&wrap, &limits),
        Err(ProtocolError::BatchOutOfBounds { .. })
    ));
    let wrap_sync = words(&[9, 24, 1, 0, 0, 0, 0x5555_5556, 0x5555_5555, 0, 0, 0]);
    assert!(matches!(
        decode(&wrap_sync, &limits),
        Err(ProtocolError::BatchOutOfBounds { .. })
    ));
    // Two batch headers announced, one present.
    let short = words(&[9, 24, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(
        decode(&short, &limits),
        Err(ProtocolError::MalformedPayload { .. })
    ));
    // Ring index past the timeline count.
    let ring = words(&[9, 24, 1, 1, 0, 0, 0, 0, 64, 0, 0]);
    assert!(matches!(
        decode(&ring, &limits),
        Err(ProtocolError::BatchOutOfBounds { .. })
    ));
}

/// One batch for [`mesa_submit_cmd2`]: command dwords and (sync id, value) pairs.
type TestBatch<'a> = (&'a [u32], &'a [(u32, u64)]);

/// A framed SUBMIT_CMD2 as Mesa's venus client lays it out (`vtest_vcmd_submit_cmd2`):
/// the headers `stride` dwords apart (flags 0 … ring_idx, zeros after), then every
/// batch's commands, then every batch's syncs.
fn mesa_submit_cmd2(stride: u32, batches: &[TestBatch]) -> Vec<u8> {
    let n = batches.len() as u32;
    let mut cmd_at = 1 + stride * n;
    let total_cmds: u32 = batches.iter().map(|b| b.0.len() as u32).sum();
    let mut sync_at = cmd_at + total_cmds;
    let mut payload = vec![n];
    let mut cmds = Vec::new();
    let mut syncs = Vec::new();
    for (cmd, points) in batches {
        let mut h = vec![
            SUBMIT_CMD2_FLAG_RING_IDX,
            cmd_at,
            cmd.len() as u32,
            sync_at,
            points.len() as u32,
            0,
        ];
        h.resize(stride as usize, 0);
        payload.extend(h);
        cmds.extend_from_slice(cmd);
        for &(id, value) in *points {
            syncs.extend([id, value as u32, (value >> 32) as u32]);
        }
        cmd_at += cmd.len() as u32;
        sync_at += 3 * points.len() as u32;
    }
    payload.extend(cmds);
    payload.extend(syncs);
    let mut framed = words(&[payload.len() as u32, 24]);
    framed.extend(words(&payload));
    framed
}

fn submit_cmd2(buf: &[u8]) -> Result<SubmitCmd2<'_>, ProtocolError> {
    match decode(buf, &Limits::default())? {
        Decoded::Request(Request::SubmitCmd2(s), n) => {
            assert_eq!(n, buf.len(), "the whole message");
            Ok(s)
        }
        other => panic!("{other:?}"),
    }
}

/// Each batch's command bytes and (sync id, value) pairs.
type Contents = Vec<(Vec<u8>, Vec<(u32, u64)>)>;

/// Every batch's commands and syncs, as decoded.
fn contents(s: &SubmitCmd2<'_>) -> Contents {
    s.batches()
        .iter()
        .map(|b| {
            let points = s.syncs(b).map(|p| (p.id, p.value)).collect();
            (s.commands(b).to_vec(), points)
        })
        .collect()
}

fn expected(batches: &[TestBatch]) -> Contents {
    batches
        .iter()
        .map(|(cmd, points)| (words(cmd), points.to_vec()))
        .collect()
}

#[test]
fn submit_cmd2_batch_stride_is_inferred_from_the_first_cmd_offset() {
    let two: [TestBatch; 2] = [
        (&[0x0002_0000, 7, 8], &[(4, 9)]),
        (&[0x0000_0000], &[(5, 1 << 33), (6, 2)]),
    ];
    // Mesa 25.0 (6-dword headers) and 25.2 / the reference's reading (8).
    for stride in [SUBMIT_CMD2_STRIDE_6, SUBMIT_CMD2_STRIDE_8] {
        let buf = mesa_submit_cmd2(stride, &two);
        let s = submit_cmd2(&buf).unwrap_or_else(|e| panic!("stride {stride}: {e}"));
        assert_eq!(s.stride(), stride);
        assert_eq!(s.batches().len(), 2);
        assert!(s.batches().iter().all(|b| b.uses_ring()));
        assert_eq!(contents(&s), expected(&two), "stride {stride}");
    }
    // Mesa writes cmd_offset even for an empty first command range.
    let empty_first: [TestBatch; 3] = [(&[], &[(1, 1)]), (&[0], &[]), (&[], &[(2, 3)])];
    for stride in [SUBMIT_CMD2_STRIDE_6, SUBMIT_CMD2_STRIDE_8] {
        let buf = mesa_submit_cmd2(stride, &empty_first);
        let s = submit_cmd2(&buf).unwrap();
        assert_eq!(s.stride(), stride);
        assert_eq!(contents(&s), expected(&empty_first));
    }
    // One batch: either stride works, even when LEN only fits 6-dword headers.
    let one = mesa_submit_cmd2(SUBMIT_CMD2_STRIDE_6, &[(&[], &[])]);
    assert_eq!(one.len(), 8 + 7 * 4);
    assert_eq!(submit_cmd2(&one).unwrap().stride(), SUBMIT_CMD2_STRIDE_6);
}

#[test]
fn submit_cmd2_without_a_first_cmd_offset_uses_the_syncs_then_8() {
    // Two batches, the first without commands and with cmd_offset 0: its
    // syncs right after 6-dword headers (dword 13) decide.
    let by_syncs = |sync_at: u32, stride: u32| {
        let mut p = vec![2, 0, 0, 0, sync_at, 1, 0];
        p.resize(1 + stride as usize, 0);
        p.extend([0, sync_at + 3, 1, sync_at + 4, 1, 0]);
        p.resize(1 + 2 * stride as usize, 0);
        p.extend([1, 5, 0, 0x0000_0000, 2, 6, 0]);
        let mut framed = words(&[p.len() as u32, 24]);
        framed.extend(words(&p));
        framed
    };
    let six = by_syncs(13, SUBMIT_CMD2_STRIDE_6);
    let s = submit_cmd2(&six).unwrap();
    assert_eq!(s.stride(), SUBMIT_CMD2_STRIDE_6);
    assert_eq!(
        contents(&s),
        [(vec![], vec![(1, 5)]), (words(&[0]), vec![(2, 6)])]
    );
    let eight = by_syncs(17, SUBMIT_CMD2_STRIDE_8);
    assert_eq!(submit_cmd2(&eight).unwrap().stride(), SUBMIT_CMD2_STRIDE_8);
    // Nothing to go by (an empty first batch, offsets 0): the reference's 8.
    let mut p = vec![2, 0, 0, 0, 0, 0, 0, 0, 0];
    p.extend([0, 17, 1, 18, 1, 0, 0, 0, 0xabcd, 3, 4, 0]);
    let mut framed = words(&[p.len() as u32, 24]);
    framed.extend(words(&p));
    let s = submit_cmd2(&framed).unwrap();
    assert_eq!(s.stride(), SUBMIT_CMD2_STRIDE_8);
    assert_eq!(
        contents(&s),
        [(vec![], vec![]), (words(&[0xabcd]), vec![(3, 4)])]
    );
}

#[test]
fn submit_cmd2_inconsistent_with_its_stride_is_refused() {
    let two: [TestBatch; 2] = [(&[0, 0], &[(4, 9)]), (&[0], &[(5, 1)])];
    // Dword `k` of the payload (after the 2-dword header).
    let at = |buf: &[u8], k: usize| {
        let i = (2 + k) * 4;
        u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap())
    };
    let set = |buf: &mut Vec<u8>, k: usize, v: u32| {
        let i = (2 + k) * 4;
        buf[i..i + 4].copy_from_slice(&v.to_ne_bytes());
    };
    // First batch's commands after neither layout's headers (1 + 7·2).
    let mut b = mesa_submit_cmd2(SUBMIT_CMD2_STRIDE_8, &two);
    assert_eq!(at(&b, 2), 17);
    set(&mut b, 2, 15);
    assert!(matches!(
        submit_cmd2(&b),
        Err(ProtocolError::BatchStrideUnknown {
            batch_count: 2,
            cmd_offset: 15,
            ..
        })
    ));
    // Stride 6 from the first batch, but the second batch's commands start
    // inside the headers (as if it were written at stride 8, or forged).
    let mut b = mesa_submit_cmd2(SUBMIT_CMD2_STRIDE_6, &two);
    let batch1 = 1 + 6;
    assert_eq!(at(&b, batch1 + 1), 15);
    set(&mut b, batch1 + 1, 10);
    assert!(matches!(
        submit_cmd2(&b),
        Err(ProtocolError::BatchOverlapsHeaders {
            batch: 1,
            what: "command stream",
            stride: 6,
            ..
        })
    ));
    // ... or its syncs do.
    let mut b = mesa_submit_cmd2(SUBMIT_CMD2_STRIDE_6, &two);
    set(&mut b, batch1 + 3, 1);
    assert!(matches!(
        submit_cmd2(&b),
        Err(ProtocolError::BatchOverlapsHeaders {
            batch: 1,
            what: "sync list",
            ..
        })
    ));
    // A later range past LEN, in 64-bit arithmetic.
    let mut b = mesa_submit_cmd2(SUBMIT_CMD2_STRIDE_6, &two);
    set(&mut b, batch1 + 2, u32::MAX);
    assert!(matches!(
        submit_cmd2(&b),
        Err(ProtocolError::BatchOutOfBounds { batch: 1, .. })
    ));
    // Two 6-dword headers announced (commands at 1 + 6·2), one present.
    let short = words(&[7, 24, 2, 0, 13, 0, 0, 0, 0]);
    assert!(matches!(
        submit_cmd2(&short),
        Err(ProtocolError::MalformedPayload { .. })
    ));
    // A huge count is refused before anything is allocated for it.
    let mut b = mesa_submit_cmd2(SUBMIT_CMD2_STRIDE_6, &two);
    set(&mut b, 0, u32::MAX);
    assert!(submit_cmd2(&b).is_err());
    let huge = words(&[7, 24, u32::MAX, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(
        submit_cmd2(&huge),
        Err(ProtocolError::MalformedPayload { .. })
    ));
}

#[test]
fn replies_have_the_reference_framing() {
    let caps = vec![0u8; 1376];
    let mut out = Vec::new();
    Reply::Caps {
        set: 2,
        caps: &caps,
    }
    .encode(&mut out);
    assert_eq!(&out[..8], &words(&[1377, 2])[..]);
    assert_eq!(out.len(), 8 + 1376);

    let cases: Vec<(Reply, Vec<u32>)> = vec![
        (Reply::Ping, vec![0, 10]),
        (Reply::BusyWait { busy: false }, vec![1, 7, 0]),
        (Reply::ProtocolVersion { version: 2 }, vec![1, 11, 2]),
        (
            Reply::Id {
                command: CommandId::ResourceCreate2,
                id: 1,
            },
            vec![1, 12, 1],
        ),
        (
            Reply::Param {
                valid: true,
                value: 64,
            },
            vec![2, 15, 1, 64],
        ),
        (Reply::Capset(None), vec![1, 16, 0]),
        (Reply::Capset(Some(&[1, 0, 0, 0])), vec![2, 16, 1, 1]),
        (Reply::SyncValue(5 | (1 << 32)), vec![2, 21, 5, 1]),
        (Reply::SyncWait, vec![0, 23]),
    ];
    for (reply, expected) in cases {
        let mut out = Vec::new();
        reply.encode(&mut out);
        assert_eq!(out, words(&expected), "{reply:?}");
    }
    let mut out = Vec::new();
    Reply::TransferData(&[1, 2, 3]).encode(&mut out);
    assert_eq!(out, [1, 2, 3]);
    assert_eq!(header(CommandId::GetCaps2, 0), &words(&[0, 9])[..]);
}
