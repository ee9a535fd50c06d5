//! The admin socket: `vtestd status` and `vtestd metrics` ask the broker for
//! its state. Separate from client sockets; root, the broker's own user and
//! the configured admin group only.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::status::Status;

/// The one request there is.
pub const STATUS_REQUEST: &str = "status";

/// Asks a running broker for its status.
pub fn query(socket: &Path) -> std::io::Result<Status> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{STATUS_REQUEST}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}

/// Answers one admin connection (the broker has checked the peer).
pub(crate) fn serve(
    mut stream: UnixStream,
    status: impl FnOnce() -> Status,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, 64)).read_line(&mut line)?;
    if line.trim() != STATUS_REQUEST {
        return Err(std::io::Error::other(format!(
            "unknown admin request {:?}",
            line.trim()
        )));
    }
    let mut text = serde_json::to_string(&status()).map_err(std::io::Error::other)?;
    text.push('\n');
    stream.write_all(text.as_bytes())
}
