//! Capabilities (all of them, bounding set included) and no_new_privs.

use caps::CapSet;

use crate::SandboxError;

/// Drops every capability from every set. The bounding set goes first: that
/// needs CAP_SETPCAP, which the other sets are about to lose.
pub(crate) fn drop_all() -> Result<(), SandboxError> {
    let err = |e: caps::errors::CapsError| SandboxError::Capabilities(e.to_string());
    for cap in caps::all() {
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
        }
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(err)?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)
}
