//! The admin socket: `vtestd status` and `vtestd metrics` ask the broker for
//! its state. Separate from client sockets, in a directory never given to
//! containers; root, the broker's own user and the configured admin group
//! only ([`access`]); served by the event loop without blocking it
//! ([`conn`]).

mod access;
mod conn;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

pub(crate) use access::{Access, Peer};
pub(crate) use conn::Connections;

use crate::status::Status;

/// The one request there is.
pub const STATUS_REQUEST: &str = "status";

/// Asks a running broker for its status.
pub fn query(socket: &Path) -> std::io::Result<Status> {
    // Closed before the request (EPIPE), unread (reset) or empty: the broker
    // refused the peer, or had as many admin connections as it keeps.
    let refused = |e: std::io::Error| match e.kind() {
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof => {
            std::io::Error::other(
                "the broker closed the connection without an answer \
                 (refused: see its log; or too busy)",
            )
        }
        _ => e,
    };
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream
        .write_all(format!("{STATUS_REQUEST}\n").as_bytes())
        .map_err(refused)?;
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
        Ok(0) => Err(refused(ErrorKind::UnexpectedEof.into())),
        Ok(_) => serde_json::from_str(&reply).map_err(std::io::Error::other),
        Err(e) => Err(refused(e)),
    }
}
