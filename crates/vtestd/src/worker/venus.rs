//! A Venus worker's render server: started before the worker's own sandbox
//! (`vtestd render-server`, which confines itself and execs
//! virglrenderer's render server), connected by a `SOCK_SEQPACKET` pair
//! whose worker end virglrenderer receives through `get_server_fd`.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tracing::debug;

use crate::cli::WorkerArgs;

/// Starts the render server; returns the worker's end of its connection.
///
/// The render server's stderr is the worker's (the broker relays it); it
/// ends with the worker (`PR_SET_PDEATHSIG` in `vtestd render-server`).
/// The worker does not wait for it: its PID-namespace reaper, which is its
/// parent, outlives it or takes it down.
pub fn start(args: &WorkerArgs) -> std::io::Result<OwnedFd> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let child = Command::new(std::env::current_exe()?)
        .args(crate::render_server::arguments(args))
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()?;
    debug!(pid = child.id(), "render server started");
    Ok(ours)
}
