//! Exercises the real system virglrenderer (EGL surfaceless, Mesa llvmpipe
//! where there is no GPU).
//!
//! `virgl_renderer_init` is process-global and `cargo test` runs the tests of
//! one binary as threads of one process, so everything lives in ONE test
//! function that runs a fixed sequence.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vtest_protocol::{TransferArgs, TransferBox};
use vtest_renderer::{
    blob_mem, BlobArgs, Renderer, RendererError, RendererOptions, ResourceCreateArgs,
};
use vtest_shm::SharedMemory;

const PIPE_BUFFER: u32 = 0;
const PIPE_TEXTURE_2D: u32 = 2;
const VIRGL_FORMAT_B8G8R8A8_UNORM: u32 = 1;
const VIRGL_FORMAT_R8_UNORM: u32 = 64;
const VIRGL_BIND_RENDER_TARGET: u32 = 0x2;
const VIRGL_BIND_SAMPLER_VIEW: u32 = 0x8;
const VIRGL_BIND_VERTEX_BUFFER: u32 = 0x10;

const CTX: u32 = 1;
const TEX: u32 = 1;
const BUF: u32 = 2;
const BLOB: u32 = 3;
const HOST_BLOB: u32 = 4;
const VIRGL_CCMD_PIPE_RESOURCE_CREATE: u32 = 48;
const W: u32 = 16;
const H: u32 = 16;
const TEX_BYTES: usize = (W * H * 4) as usize;

/// Waits until `fd` is readable (or `timeout` passes); true when readable.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(ms)).expect("poll") > 0
}

fn tex_args(handle: u32) -> ResourceCreateArgs {
    ResourceCreateArgs {
        handle,
        target: PIPE_TEXTURE_2D,
        format: VIRGL_FORMAT_B8G8R8A8_UNORM,
        bind: VIRGL_BIND_SAMPLER_VIEW | VIRGL_BIND_RENDER_TARGET,
        width: W,
        height: H,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
        flags: 0,
    }
}

fn full_box() -> TransferBox {
    TransferBox {
        x: 0,
        y: 0,
        z: 0,
        w: W,
        h: H,
        d: 1,
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..TEX_BYTES)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn capsets(r: &Renderer) {
    let (v1_ver, v1_size) = Renderer::capset_info(1);
    let (v2_ver, v2_size) = Renderer::capset_info(2);
    eprintln!("capset 1: ver {v1_ver} size {v1_size}; capset 2: ver {v2_ver} size {v2_size}");
    assert!(v1_size > 0 && v2_size > 0);
    assert!(v2_size >= v1_size);
    let caps1 = r.fill_caps(1, v1_ver);
    let caps2 = r.fill_caps(2, v2_ver);
    assert_eq!(caps1.len(), v1_size as usize);
    assert_eq!(caps2.len(), v2_size as usize);
    // The first u32 of union virgl_caps is max_version; it is filled in.
    let max_version = u32::from_le_bytes(caps2[0..4].try_into().unwrap());
    assert!(max_version >= 1, "caps2 max_version = {max_version}");
    assert!(r.fill_caps(0xdead, 0).is_empty());
}

fn texture_round_trips(r: &mut Renderer) {
    let shm = SharedMemory::new("tex", TEX_BYTES).unwrap();
    let p1 = pattern(1);
    shm.write_at(0, &p1).unwrap();
    r.resource_create(CTX, &tex_args(TEX), Some(shm)).unwrap();
    assert!(r.has_resource(TEX));
    assert!(matches!(
        r.resource_create(CTX, &tex_args(TEX), None),
        Err(RendererError::ResourceExists(TEX))
    ));

    // Backing path: write from the shm, clear it, read back into it.
    let t = TransferArgs {
        handle: TEX,
        level: 0,
        stride: 0,
        layer_stride: 0,
        bx: full_box(),
        offset: 0,
    };
    r.transfer_write(CTX, &t, None).unwrap();
    // The only way to reach the shm now is the fd; map it as a client would.
    let fd = r.resource_backing(TEX).unwrap().fd().unwrap();
    nix::sys::uio::pwrite(fd, &vec![0u8; TEX_BYTES], 0).unwrap();
    assert!(r
        .resource_backing(TEX)
        .unwrap()
        .to_vec()
        .iter()
        .all(|&b| b == 0));
    r.transfer_read(CTX, &t, None).unwrap();
    assert_eq!(r.resource_backing(TEX).unwrap().to_vec(), p1);

    // Explicit-buffer path.
    let p2 = pattern(99);
    r.transfer_write(CTX, &t, Some(&p2)).unwrap();
    let mut back = vec![0u8; TEX_BYTES];
    r.transfer_read(CTX, &t, Some(&mut back)).unwrap();
    assert_eq!(back, p2);

    // A sub-box through the explicit path: rows 2..4, columns 4..8, packed
    // with a 16-byte stride (stride 0 would mean the texture's row pitch).
    let sub = TransferArgs {
        stride: 4 * 4,
        bx: TransferBox {
            x: 4,
            y: 2,
            z: 0,
            w: 4,
            h: 2,
            d: 1,
        },
        ..t
    };
    let mut part = vec![0u8; 4 * 2 * 4];
    r.transfer_read(CTX, &sub, Some(&mut part)).unwrap();
    for row in 0..2usize {
        let src = ((2 + row) * W as usize + 4) * 4;
        assert_eq!(&part[row * 16..row * 16 + 16], &p2[src..src + 16]);
    }

    // A buffer too small for the box is rejected by virglrenderer.
    let mut small = vec![0u8; 16];
    let e = r.transfer_read(CTX, &t, Some(&mut small)).unwrap_err();
    eprintln!("transfer into a too small buffer: {e:?}");
    assert!(matches!(e, RendererError::Transfer(_)));
    // An offset past the data is rejected before C.
    let far = TransferArgs {
        offset: TEX_BYTES as u64 + 1,
        ..t
    };
    assert!(matches!(
        r.transfer_read(CTX, &far, None),
        Err(RendererError::InvalidArgument(_))
    ));
    // A box that wraps u32 is rejected before C.
    let wrap = TransferArgs {
        bx: TransferBox {
            x: u32::MAX,
            ..full_box()
        },
        ..t
    };
    assert!(matches!(
        r.transfer_write(CTX, &wrap, Some(&p2)),
        Err(RendererError::InvalidArgument(_))
    ));
    // A stride whose 32-bit products wrap in virglrenderer 0.10.4's bounds
    // check is rejected before C.
    let wide = TransferArgs {
        stride: 0x1000_0000,
        ..t
    };
    let mut buf = vec![0u8; TEX_BYTES];
    assert!(matches!(
        r.transfer_read(CTX, &wide, Some(&mut buf)),
        Err(RendererError::InvalidArgument(_))
    ));
    // A box outside the texture is rejected by virglrenderer.
    let outside = TransferArgs {
        bx: TransferBox { x: W, ..full_box() },
        ..t
    };
    let e = r.transfer_write(CTX, &outside, Some(&p2)).unwrap_err();
    eprintln!("transfer outside the texture: {e:?}");
}

fn buffer_resource(r: &mut Renderer) {
    let args = ResourceCreateArgs {
        handle: BUF,
        target: PIPE_BUFFER,
        format: VIRGL_FORMAT_R8_UNORM,
        bind: VIRGL_BIND_VERTEX_BUFFER,
        width: 8,
        height: 1,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
        flags: 0,
    };
    r.resource_create(CTX, &args, None).unwrap();
    let t = TransferArgs {
        handle: BUF,
        bx: TransferBox {
            x: 0,
            y: 0,
            z: 0,
            w: 8,
            h: 1,
            d: 1,
        },
        ..TransferArgs::default()
    };
    r.transfer_write(CTX, &t, Some(&[1, 2, 3, 4, 5, 6, 7, 8]))
        .unwrap();
    let mut back = [0u8; 8];
    r.transfer_read(CTX, &t, Some(&mut back)).unwrap();
    assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
    // Without backing, a NULL-iov transfer fails in C rather than crashing.
    let e = r.transfer_read(CTX, &t, None).unwrap_err();
    eprintln!("NULL-iov transfer without backing: {e:?}");
}

fn ctx0_fence(r: &mut Renderer) {
    assert_eq!(r.last_completed_fence(), 0);
    r.create_fence(1).unwrap();
    let start = Instant::now();
    while r.last_completed_fence() < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ctx0 fence 1 never retired"
        );
        let fd = r.poll_fd().expect("THREAD_SYNC gives a poll fd");
        wait_readable(fd, Duration::from_secs(5));
        r.poll();
    }
    assert_eq!(r.last_completed_fence(), 1);
}

/// Per-context fences on a virgl (vrend) context: which fd fires, and what
/// retires them.
fn context_fences(r: &mut Renderer) {
    let global = r.poll_fd().map(|f| std::os::fd::AsRawFd::as_raw_fd(&f));
    let ctx_fd = r
        .context_poll_fd(CTX)
        .map(|f| std::os::fd::AsRawFd::as_raw_fd(&f));
    eprintln!("global poll fd {global:?}, context {CTX} poll fd {ctx_fd:?}");

    assert!(ctx_fd.is_some(), "a virgl context has a fencing fd");
    // vrend (virgl) contexts have a single timeline: ring 0 only.
    let e = r.context_create_fence(CTX, 1, 5);
    eprintln!("context fence on ring 1: {e:?}");
    assert!(matches!(e, Err(RendererError::Fence(_))));
    assert!(r.context_create_fence(99, 0, 5).is_err());

    r.context_create_fence(CTX, 0, 7).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut rounds = 0;
    while got.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "context fence never retired"
        );
        rounds += 1;
        if let Some(fd) = r.context_poll_fd(CTX) {
            let ready = wait_readable(fd, Duration::from_secs(5));
            eprintln!("context poll fd readable: {ready}");
        }
        r.context_poll(CTX);
        got = r.take_context_fences();
    }
    eprintln!("context fences after {rounds} context_poll round(s): {got:?}");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ctx_id, CTX);
    assert_eq!(got[0].ring_idx, 0);
    assert_eq!(got[0].fence_id, 7);

    // Does virgl_renderer_poll() also retire context fences?
    r.context_create_fence(CTX, 0, 8).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && start.elapsed() < Duration::from_secs(3) {
        if let Some(fd) = r.poll_fd() {
            wait_readable(fd, Duration::from_millis(500));
        }
        r.poll();
        got = r.take_context_fences();
    }
    eprintln!("context fences through virgl_renderer_poll: {got:?}");
    // Whatever path retired it, a final context_poll must not lose it.
    if got.is_empty() {
        r.context_poll(CTX);
        got = r.take_context_fences();
    }
    assert_eq!(got.last().map(|f| f.fence_id), Some(8));
}

fn submits(r: &mut Renderer) {
    r.submit_cmd(CTX, &[]).unwrap();
    let e = r.submit_cmd(CTX, &[0xdead_beef]).unwrap_err();
    eprintln!("garbage submit: {e:?}");
    assert!(matches!(e, RendererError::Submit(_)));
    // A well-formed but unknown-object command also must not crash.
    let _ = r.submit_cmd(CTX, &[0x0001_0000 | 12, 0xffff]);
    assert!(matches!(
        r.submit_cmd(42, &[]),
        Err(RendererError::UnknownContext(42))
    ));
    // The context still works after a rejected stream.
    r.submit_cmd(CTX, &[]).unwrap();
}

fn blobs(r: &mut Renderer) {
    let args = BlobArgs {
        res_handle: BLOB,
        ctx_id: CTX,
        blob_mem: blob_mem::GUEST,
        blob_flags: 1 | 2,
        blob_id: 0,
        size: 4096,
    };
    let small = SharedMemory::new("blob-small", 1024).unwrap();
    assert!(matches!(
        r.resource_create_blob(&args, Some(small)),
        Err(RendererError::InvalidArgument(_))
    ));
    let shm = SharedMemory::new("blob", 4096).unwrap();
    r.resource_create_blob(&args, Some(shm)).unwrap();
    let e = r.resource_export_blob(BLOB);
    eprintln!("export of a GUEST blob: {:?}", e.as_ref().map(|(t, _)| *t));
    assert!(e.is_err(), "a guest-only blob has no host fd to export");
    r.resource_unref(BLOB);

    // HOST3D: the host object comes from VIRGL_CCMD_PIPE_RESOURCE_CREATE
    // (command 48, 11 dwords) with a blob id.
    let blob_id = 70u32;
    let mut cmd = [0u32; 12];
    cmd[0] = VIRGL_CCMD_PIPE_RESOURCE_CREATE | (11 << 16);
    cmd[1] = PIPE_BUFFER;
    cmd[2] = VIRGL_FORMAT_R8_UNORM;
    cmd[3] = VIRGL_BIND_VERTEX_BUFFER;
    cmd[4] = 4096; // width
    cmd[5] = 1; // height
    cmd[6] = 1; // depth
    cmd[7] = 1; // array_size
    cmd[11] = blob_id;
    r.submit_cmd(CTX, &cmd).unwrap();
    let host = BlobArgs {
        res_handle: HOST_BLOB,
        ctx_id: CTX,
        blob_mem: blob_mem::HOST3D,
        blob_flags: 1,
        blob_id: blob_id.into(),
        size: 4096,
    };
    r.resource_create_blob(&host, None).unwrap();
    // With Mesa llvmpipe (surfaceless, no GBM) virglrenderer cannot export
    // it ("Missing buffer storage and interop extensions" / EINVAL); on a
    // real GPU it gives a dma-buf. Either way nothing may crash.
    match r.resource_export_blob(HOST_BLOB) {
        Ok((kind, _fd)) => eprintln!("HOST3D blob exported as {kind:?}"),
        Err(e) => eprintln!("HOST3D blob export: {e:?}"),
    }
    // An unknown blob id is rejected.
    let missing = BlobArgs {
        res_handle: HOST_BLOB + 1,
        blob_id: 9999,
        ..host
    };
    let e = r.resource_create_blob(&missing, None);
    eprintln!("HOST3D blob with an unknown blob id: {e:?}");
    assert!(matches!(e, Err(RendererError::ResourceCreate { .. })));
    r.resource_unref(HOST_BLOB);
    assert!(matches!(
        r.resource_export_blob(BLOB),
        Err(RendererError::UnknownResource(BLOB))
    ));
}

#[test]
#[cfg_attr(
    not(vtestd_mesa),
    ignore = "needs Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"
)]
fn real_virglrenderer_sequence() {
    let opts = RendererOptions {
        surfaceless: true,
        gles: false,
        render_node: None,
        ..RendererOptions::default()
    };
    let mut r = Renderer::new(&opts).expect("virgl_renderer_init (EGL surfaceless)");
    assert!(matches!(
        Renderer::new(&opts),
        Err(RendererError::AlreadyInitialized)
    ));

    capsets(&r);

    r.context_create(CTX, b"test").unwrap();
    assert!(matches!(
        r.context_create(CTX, b"again"),
        Err(RendererError::ContextExists(CTX))
    ));
    let e = r.context_create_with_capset(7, 0x55, b"bad capset");
    eprintln!("context with unknown capset: {e:?}");
    assert!(e.is_err());
    assert!(matches!(
        r.context_create_with_capset(8, 0x100, b""),
        Err(RendererError::InvalidArgument(_))
    ));
    // A second context with the explicit VIRGL2 capset.
    r.context_create_with_capset(2, 2, b"").unwrap();

    texture_round_trips(&mut r);
    buffer_resource(&mut r);
    ctx0_fence(&mut r);
    context_fences(&mut r);
    submits(&mut r);
    blobs(&mut r);

    r.resource_unref(TEX);
    assert!(!r.has_resource(TEX));
    r.resource_unref(TEX); // unknown: no-op
    let t = TransferArgs {
        handle: TEX,
        bx: full_box(),
        ..TransferArgs::default()
    };
    let mut buf = vec![0u8; TEX_BYTES];
    assert!(matches!(
        r.transfer_read(CTX, &t, Some(&mut buf)),
        Err(RendererError::UnknownResource(TEX))
    ));
    r.context_destroy(2);
    // BUF and CTX are left for Drop to clean up.
    drop(r);

    // After cleanup the process may initialise again.
    let r2 = Renderer::new(&opts).expect("re-init after cleanup");
    drop(r2);

    // A render node that does not exist is reported, not silently ignored.
    let bad = RendererOptions {
        render_node: Some("/nonexistent/renderD999".into()),
        ..opts
    };
    assert!(matches!(
        Renderer::new(&bad),
        Err(RendererError::RenderNode { .. })
    ));
    // ...and the failure released the instance: GLES works too.
    let gles = RendererOptions { gles: true, ..opts };
    let mut r3 = Renderer::new(&gles).expect("init with GLES after a failed init");
    r3.context_create(CTX, b"gles").unwrap();
    texture_round_trips(&mut r3);
    drop(r3);
}
