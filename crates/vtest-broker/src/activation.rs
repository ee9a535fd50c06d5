//! Sockets passed by socket activation (`LISTEN_FDS`), with the names
//! systemd gives them (`FileDescriptorName=`, in `LISTEN_FDNAMES`).
//!
//! `listenfd` checks each fd and hands it over as a socket, so no `unsafe`
//! is needed here; it knows no names, which are read beside it.

use std::env;
use std::os::fd::OwnedFd;

use listenfd::ListenFd;
use nix::libc;
use tracing::warn;

/// More than any unit passes; a larger `LISTEN_FDS` is not systemd's.
const MAX_FDS: usize = 64;

/// Takes the unix stream sockets systemd passed to this process, with their
/// names, and removes the variables so that no child inherits them. Empty
/// unless `LISTEN_PID` is this process.
pub(crate) fn listen_fds() -> Vec<(OwnedFd, Option<String>)> {
    let ours = env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let names: Vec<String> = env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    // systemd's fds start at 3; listenfd would start at systemfd's
    // LISTEN_FDS_FIRST_FD, which is not systemd's.
    env::remove_var("LISTEN_FDS_FIRST_FD");
    let mut fds = if ours && (1..=MAX_FDS).contains(&count) {
        ListenFd::from_env()
    } else {
        ListenFd::empty()
    };
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        env::remove_var(var);
    }
    (0..fds.len())
        .filter_map(|i| match fds.take_unix_listener(i) {
            Ok(socket) => {
                let name = names.get(i).filter(|n| !n.is_empty()).cloned();
                socket.map(|s| (OwnedFd::from(s), name))
            }
            Err(e) => {
                warn!(error = %e, "ignoring a passed fd that is not a listening unix socket");
                close_other_socket(&mut fds, i);
                None
            }
        })
        .collect()
}

/// listenfd leaves an fd it refused where it was, inheritable by every
/// worker: one of the other socket kinds it can check is taken and closed.
fn close_other_socket(fds: &mut ListenFd, i: usize) {
    let _ = fds.take_unix_datagram(i);
    let _ = fds.take_custom::<OwnedFd>(i, libc::AF_UNIX, libc::SOCK_SEQPACKET, "seqpacket");
    let _ = fds.take_tcp_listener(i);
    let _ = fds.take_udp_socket(i);
}
