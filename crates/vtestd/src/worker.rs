//! `vtestd worker`: initialise the renderer, take one client, serve it, exit.
//!
//! The control channel is the worker's stdin (see `vtest_broker::WorkerCommand`).

mod backend;
mod startup;
mod venus;

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use tracing::{info, warn};
use vtest_control::{expect_one_fd, BrokerMsg, Channel, ExitReason, Limits, WorkerMsg};
use vtest_renderer::Renderer;
use vtest_session::{Session, SessionError, SessionLimits, WorkerResource};

use self::backend::VirglBackend;
use crate::cli::WorkerArgs;
use crate::sandbox;

/// Typed exit codes, so the broker (and a human) can tell why a worker ended
/// even when its last message did not arrive.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Exit {
    Clean = 0,
    ClientError = 3,
    InitFailed = 4,
    ControlFailed = 5,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// The context id of the start-up check; a client's context is id 1.
const PROBE_CTX_ID: u32 = u32::MAX;

/// Longest reason text sent to the broker (the control channel caps messages).
const MAX_REASON: usize = 512;

fn truncated(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn init_failed(channel: &Channel, what: &str, reason: String) -> ExitCode {
    let reason = truncated(format!("{what}: {reason}"));
    warn!(%reason, "worker initialisation failed");
    let _ = channel.send(
        &WorkerMsg::Finished {
            stats: Default::default(),
            reason: ExitReason::InitFailed { reason },
        },
        &[],
    );
    Exit::InitFailed.into()
}

pub fn run(args: WorkerArgs) -> ExitCode {
    // A worker never outlives its broker: when the broker dies (crash,
    // SIGKILL, the end of a service), the kernel kills this process and,
    // through its own PR_SET_PDEATHSIG, the sandboxed child. A broker that
    // died before this line leaves the control channel at EOF instead.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        warn!(error = %e, "cannot tie the worker to its broker");
    }
    // The broker blocks the signals it reads through its signalfd, and a
    // blocked mask survives exec: SIGTERM must end a worker.
    if let Err(e) = nix::sys::signal::SigSet::all().thread_unblock() {
        warn!(error = %e, "cannot unblock signals");
    }
    if args.check_sandbox {
        return sandbox::check(&args.renderer, args.rlimits());
    }
    let channel = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => Channel::from_fd(fd),
        Err(e) => {
            warn!(error = %e, "no control channel on stdin");
            return Exit::ControlFailed.into();
        }
    };
    if args.wait_for_cgroup {
        match channel.recv::<BrokerMsg>() {
            Ok((BrokerMsg::CgroupJoined, _)) => {}
            Ok((other, _)) => {
                warn!(message = ?other, "expected CgroupJoined");
                return Exit::ControlFailed.into();
            }
            Err(e) => {
                warn!(error = %e, "control channel");
                return Exit::ControlFailed.into();
            }
        }
    }
    let mut phases = startup::Phases::start();
    let rlimits = args.rlimits();
    #[cfg(feature = "test-hooks")]
    let rlimits = test_hooks::rlimits(rlimits);
    let render_server = if args.renderer.venus {
        match venus::start(&args) {
            Ok(fd) => Some(fd),
            Err(e) => return init_failed(&channel, "render server", e.to_string()),
        }
    } else {
        None
    };
    // Kept to notice the render server's end (the renderer owns the other).
    let liveness = match render_server.as_ref().map(OwnedFd::try_clone).transpose() {
        Ok(fd) => fd,
        Err(e) => return init_failed(&channel, "render server", e.to_string()),
    };
    let keep: Vec<RawFd> = render_server
        .iter()
        .chain(liveness.iter())
        .map(AsRawFd::as_raw_fd)
        .collect();
    let profile = match sandbox::confine(&args.renderer, rlimits, &channel, &keep) {
        Ok(profile) => profile,
        Err(e) => return init_failed(&channel, "sandbox", e),
    };
    phases.end("sandbox");
    let mut renderer = match Renderer::with_render_server(&args.renderer.options(), render_server) {
        Ok(r) => r,
        Err(e) => return init_failed(&channel, "renderer", e.to_string()),
    };
    phases.end("renderer");
    let gl = !args.renderer.no_virgl;
    // A context while files may still be opened: what a client's first
    // CONTEXT_CREATE loads lazily (libepoxy's GLES library, Mesa's
    // per-context configuration) is loaded now. It is made as the client's
    // own (its id, the default capset), which then costs the client no
    // second one (about 2 ms of CPU); a client that asks for another
    // capset (Venus) gets its own. Its name, virglrenderer's debug label,
    // is not the client's: the worker logs that with the client's
    // identity. A Vulkan-only worker (--no-virgl) makes none.
    let prepared = gl.then_some(vtest_session::CLIENT_CTX_ID);
    if let Some(ctx) = prepared {
        if let Err(e) = renderer.context_create(ctx, b"vtestd") {
            return init_failed(&channel, "renderer context", e.to_string());
        }
        phases.end("warm-up context");
    }
    let profile = profile.map(|p| sandbox::steady_profile(p, renderer.gl_renderer()));
    if let Some(profile) = profile {
        if let Err(e) = vtest_sandbox::lock_down(profile) {
            return init_failed(&channel, "seccomp steady state", e.to_string());
        }
        phases.end("steady filter");
        // And one under the steady filter, before Ready: a configuration
        // the sandbox cannot serve fails here, at the broker's start-up
        // probe, instead of at every client. Every worker of a listener
        // runs the same code, so once one has passed, the broker asks it
        // no more (it costs each a context, about 2 ms of CPU).
        if gl && args.check_context {
            if let Err(e) = renderer.context_create(PROBE_CTX_ID, b"vtestd-check") {
                return init_failed(&channel, "renderer context", e.to_string());
            }
            renderer.context_destroy(PROBE_CTX_ID);
            phases.end("check context");
        }
    }
    phases.log();
    #[cfg(feature = "test-hooks")]
    test_hooks::never_ready(args.check_context);
    let _ = channel.send(
        &WorkerMsg::Ready {
            pid: std::process::id(),
        },
        &[],
    );
    let (client, limits, stream) = match channel.recv::<BrokerMsg>() {
        Ok((BrokerMsg::Attach { client, limits }, fds)) => match expect_one_fd(fds) {
            Ok(fd) => (client, limits, UnixStream::from(fd)),
            Err(e) => {
                warn!(error = %e, "attach without a client fd");
                return Exit::ControlFailed.into();
            }
        },
        Ok((BrokerMsg::CgroupJoined, _)) => {
            warn!("CgroupJoined after Ready");
            return Exit::ControlFailed.into();
        }
        Err(e) => {
            warn!(error = %e, "control channel");
            return Exit::ControlFailed.into();
        }
    };
    let _ = channel.send(
        &WorkerMsg::Attached {
            client_id: client.client_id,
        },
        &[],
    );
    #[cfg(feature = "test-hooks")]
    test_hooks::forbidden_syscall();
    #[cfg(feature = "test-hooks")]
    test_hooks::control_flood(&channel, client.client_id);
    #[cfg(feature = "test-hooks")]
    test_hooks::forge_log_line(client.client_id);
    let backend = VirglBackend::new(renderer, prepared, liveness);
    let mut session = match Session::new(backend, stream, session_limits(&limits)) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "client socket");
            return Exit::ClientError.into();
        }
    };
    let result = session.run_with_ticks(|stats| {
        #[cfg(feature = "test-hooks")]
        let stats = test_hooks::fake_hang(stats);
        let _ = channel.send(&WorkerMsg::Stats(stats), &[]);
    });
    let stats = session.stats();
    let name = session.client_name();
    let (reason, exit) = match &result {
        Ok(()) => {
            info!(
                client = client.client_id,
                peer_pid = client.pid,
                uid = client.uid,
                name,
                commands = stats.commands,
                "client disconnected"
            );
            (ExitReason::ClientDisconnected, Exit::Clean)
        }
        Err(e) => {
            let text = truncated(e.chain());
            warn!(client = client.client_id, peer_pid = client.pid, uid = client.uid,
                  gid = client.gid, name, reason = %text, "closing client");
            (exit_reason(e, text, &rlimits), Exit::ClientError)
        }
    };
    // Release the client's resources before the renderer goes away.
    let (wall, cpu) = (std::time::Instant::now(), startup::cpu());
    drop(session);
    tracing::debug!(
        wall_ms = wall.elapsed().as_secs_f64() * 1e3,
        cpu_ms = startup::cpu().saturating_sub(cpu).as_secs_f64() * 1e3,
        "renderer torn down"
    );
    let _ = channel.send(&WorkerMsg::Finished { stats, reason }, &[]);
    exit.into()
}

/// The listener's limits as the session enforces them.
fn session_limits(l: &Limits) -> SessionLimits {
    let defaults = SessionLimits::default();
    SessionLimits {
        protocol: vtest_protocol::Limits {
            max_command_bytes: l.max_command_bytes,
            max_transfer_bytes: l.max_command_bytes,
            ..defaults.protocol
        },
        max_resources: l.max_resources,
        max_resource_bytes: l.max_resource_bytes,
        max_shm_bytes: l.max_shm_bytes,
        max_syncs: l.max_syncs,
        max_waits: l.max_waits,
        idle_timeout: (l.idle_timeout_ms > 0).then(|| Duration::from_millis(l.idle_timeout_ms)),
        ..defaults
    }
}

fn exit_reason(e: &SessionError, reason: String, limits: &vtest_sandbox::Rlimits) -> ExitReason {
    match e {
        SessionError::LimitExceeded { limit, value, max } => ExitReason::LimitExceeded {
            limit: (*limit).to_string(),
            value: *value,
            max: *max,
        },
        SessionError::Io(_) => ExitReason::IoError { reason },
        SessionError::WorkerExhausted { resource, .. } => {
            let limit = match resource {
                WorkerResource::Memory => {
                    format!("worker_memory_mib = {}", limits.data_bytes >> 20)
                }
                WorkerResource::FileDescriptors => {
                    format!("worker_open_files = {}", limits.open_files)
                }
            };
            ExitReason::WorkerExhausted {
                resource: resource.to_string(),
                reason: format!("{reason} ({limit})"),
            }
        }
        SessionError::Renderer { .. } | SessionError::ContextFailed | SessionError::BackendGone => {
            ExitReason::RendererError { reason }
        }
        _ => ExitReason::ProtocolError { reason },
    }
}

/// Builds with the `test-hooks` feature only (`cargo test --features
/// vtestd/test-hooks`): lets the end-to-end tests make a real worker
/// misbehave (`VTESTD_TEST_FORBIDDEN_SYSCALL=socket` and the others below).
/// Other builds, and so every package, have no such code.
#[cfg(feature = "test-hooks")]
mod test_hooks {
    /// `VTESTD_TEST_WORKER_OPEN_FILES=N`: a lower fd limit than the
    /// configuration allows, to exhaust a worker's fds on purpose.
    pub fn rlimits(mut limits: vtest_sandbox::Rlimits) -> vtest_sandbox::Rlimits {
        if let Some(n) = std::env::var("VTESTD_TEST_WORKER_OPEN_FILES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            limits.open_files = n;
        }
        limits
    }

    /// `VTESTD_TEST_FAKE_HANG=1`: report a fence that never completes, to
    /// exercise the broker's hang watchdog.
    pub fn fake_hang(mut stats: vtest_control::SessionStats) -> vtest_control::SessionStats {
        if std::env::var_os("VTESTD_TEST_FAKE_HANG").is_some() {
            stats.fences_submitted = stats.fences_completed + 1;
        }
        stats
    }

    /// `VTESTD_TEST_CONTROL_FLOOD=ID`: the worker of client ID behaves as
    /// a compromised one flooding the broker with messages, until the
    /// broker kills it.
    pub fn control_flood(channel: &vtest_control::Channel, client_id: u64) {
        let flood = std::env::var("VTESTD_TEST_CONTROL_FLOOD")
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        if flood == Some(client_id) {
            let stats = vtest_control::SessionStats::default();
            while channel
                .send(&vtest_control::WorkerMsg::Stats(stats.clone()), &[])
                .is_ok()
            {}
        }
    }

    /// `VTESTD_TEST_FORGE_LOG=ID`: the worker of client ID writes what a
    /// compromised one would to make the broker's log lie: a line break,
    /// a fake broker line with a timestamp, and a terminal escape.
    pub fn forge_log_line(client_id: u64) {
        use std::io::Write;
        let forge = std::env::var("VTESTD_TEST_FORGE_LOG")
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        if forge == Some(client_id) {
            let _ = std::io::stderr().write_all(
                b"\n2001-01-01T00:00:00.000000Z  INFO stopped\x1b[2J\n\
                  2001-01-01T00:00:00.000000Z  WARN client ended: forged",
            );
        }
    }

    /// `VTESTD_TEST_NEVER_READY=1`: workers after the listener's check
    /// (the start-up probe still starts) never report Ready, so that
    /// clients stay attached to starting workers, or queued for one.
    pub fn never_ready(check_context: bool) {
        if !check_context && std::env::var_os("VTESTD_TEST_NEVER_READY").is_some() {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }

    pub fn forbidden_syscall() {
        if std::env::var("VTESTD_TEST_FORBIDDEN_SYSCALL").as_deref() == Ok("socket") {
            use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
            let _ = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::empty(),
                None,
            );
        }
    }
}
