//! Helpers shared by the end-to-end tests: start a server (vtestd or the reference
//! `virgl_test_server`) on a private socket, and run real clients against it.
#![allow(dead_code)]

pub mod activation;
pub mod arena;
pub mod guest;
pub mod mesa;
pub mod procs;
pub mod procstat;
pub mod rootfs;
pub mod server;
pub mod tenant;
pub mod xvfb;
