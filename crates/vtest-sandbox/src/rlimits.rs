//! Resource limits of a worker.

use nix::sys::resource::{setrlimit, Resource};

/// No core dumps: a crashing worker holds a client's data, and dumping it
/// would also delay its end.
pub fn no_core_dumps() -> nix::Result<()> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
}
