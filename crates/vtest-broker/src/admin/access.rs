//! Who may ask the admin socket: root, the broker's own user, and members of
//! `admin_group` by their primary or a supplementary group.
//!
//! The socket's mode (0660, the admin group) already keeps others from
//! connecting; this check holds when the mode does not (a socket file made
//! wider by hand, a peer with `CAP_DAC_OVERRIDE` outside uid 0).
//!
//! `SO_PEERCRED` carries the peer's uid, gid and pid only. The kernel has its
//! supplementary groups too (`SO_PEERGROUPS`, Linux 4.13), but neither nix
//! nor rustix wraps that option and this crate has no unsafe code, so they are
//! read from the peer's `/proc/PID/status` at accept time, and believed only
//! while that process still has the effective uid `SO_PEERCRED` reported (a
//! pid reused by another user's process is refused). A peer whose process
//! the broker cannot see (another pid namespace, or `ProtectProc=invisible`
//! under the packaged unit, which hides other users' processes) is admitted
//! by its primary group only: `sg vtestd-admin -c 'vtestd status'`.

use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::procfs::ProcessIds;

/// The other end of an admin connection, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) pid: i32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl Peer {
    pub(crate) fn of(stream: &UnixStream) -> nix::Result<Peer> {
        let c = getsockopt(stream, PeerCredentials)?;
        Ok(Peer {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        })
    }
}

/// Why a peer was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    OurUser,
    PrimaryGroup,
    Root,
    SupplementaryGroup,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error(
        "not in the admin group by its primary group, and /proc does not show its \
         supplementary groups (another pid namespace, or hidden)"
    )]
    GroupsNotVisible,
    #[error("no admin group is configured, and it is neither root nor the broker's user")]
    NoAdminGroup,
    #[error("not a member of the admin group")]
    NotAMember,
    #[error("the process at its pid now has uid {now}: not the peer that connected")]
    PeerChanged { now: u32 },
}

/// The admin socket's rule: who besides root may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    /// The broker's effective uid.
    pub(crate) ours: u32,
    /// `admin_group`, resolved (`None`: not set, or unknown).
    pub(crate) admin_gid: Option<u32>,
}

impl Access {
    /// Checks `peer`; `ids` reads a pid's current ids (`/proc` in the broker),
    /// asked only when the uid and the primary group do not decide.
    pub(crate) fn check(
        &self,
        peer: &Peer,
        ids: impl FnOnce(i32) -> Option<ProcessIds>,
    ) -> Result<Admitted, Refused> {
        if peer.uid == 0 {
            return Ok(Admitted::Root);
        }
        if peer.uid == self.ours {
            return Ok(Admitted::OurUser);
        }
        let gid = self.admin_gid.ok_or(Refused::NoAdminGroup)?;
        if peer.gid == gid {
            return Ok(Admitted::PrimaryGroup);
        }
        let now = ids(peer.pid).ok_or(Refused::GroupsNotVisible)?;
        if now.euid != peer.uid {
            return Err(Refused::PeerChanged { now: now.euid });
        }
        if now.groups.contains(&gid) {
            Ok(Admitted::SupplementaryGroup)
        } else {
            Err(Refused::NotAMember)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCESS: Access = Access {
        ours: 900,
        admin_gid: Some(950),
    };

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            pid: 4242,
            uid,
            gid,
        }
    }

    fn groups(euid: u32, groups: &[u32]) -> impl FnOnce(i32) -> Option<ProcessIds> {
        let ids = ProcessIds {
            euid,
            groups: groups.to_vec(),
        };
        move |pid| (pid == 4242).then_some(ids)
    }

    fn unseen(_: i32) -> Option<ProcessIds> {
        None
    }

    #[test]
    fn root_our_user_and_members_by_either_group_are_admitted() {
        assert_eq!(ACCESS.check(&peer(0, 0), unseen), Ok(Admitted::Root));
        assert_eq!(ACCESS.check(&peer(900, 1), unseen), Ok(Admitted::OurUser));
        assert_eq!(
            ACCESS.check(&peer(1000, 950), unseen),
            Ok(Admitted::PrimaryGroup)
        );
        assert_eq!(
            ACCESS.check(&peer(1000, 1000), groups(1000, &[27, 950])),
            Ok(Admitted::SupplementaryGroup)
        );
    }

    #[test]
    fn everyone_else_is_refused() {
        assert_eq!(
            ACCESS.check(&peer(1000, 1000), groups(1000, &[27])),
            Err(Refused::NotAMember)
        );
        assert_eq!(
            ACCESS.check(&peer(1000, 1000), unseen),
            Err(Refused::GroupsNotVisible)
        );
        // The pid now belongs to someone else, who is a member.
        assert_eq!(
            ACCESS.check(&peer(1000, 1000), groups(1001, &[950])),
            Err(Refused::PeerChanged { now: 1001 })
        );
        let no_group = Access {
            admin_gid: None,
            ..ACCESS
        };
        assert_eq!(
            no_group.check(&peer(1000, 950), groups(1000, &[950])),
            Err(Refused::NoAdminGroup)
        );
    }
}
