//! Mesa 25 clients from the Debian 13 root (`scripts/debian13.sh`) against a
//! server on this host: a container with a newer distribution than its
//! host. The client runs inside the root (its own mount and PID namespace,
//! entered with pivot_root), reaches the server's socket through a bind
//! of the server's directory at `/run/vtest` and `VTEST_SOCKET_NAME`
//! (Mesa 25 honours it), and the X server through its abstract socket.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::server::Server;
use super::xvfb::Xvfb;

/// The Debian 13 root, when `scripts/debian13.sh root` has made it. With
/// `VTESTD_REQUIRE_DEBIAN13=1` (the README's test command sets it) a
/// missing root is a failure, not a skip.
pub fn debian13_root() -> Option<PathBuf> {
    if std::env::var("VTESTD_PLATFORM").as_deref() == Ok("debian13") {
        println!("skipped: already on Debian 13 (these tests are the Debian 12 host's)");
        return None;
    }
    let root = super::rootfs::workspace().join("target/debian13/root");
    if root.join(".vtestd-root").exists() {
        return Some(root);
    }
    if std::env::var("VTESTD_REQUIRE_DEBIAN13").as_deref() == Ok("1") {
        panic!(
            "no Debian 13 root at {}: run scripts/debian13.sh root",
            root.display()
        );
    }
    println!("skipped: no Debian 13 root (scripts/debian13.sh root makes one)");
    None
}

/// Single-quotes `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `program args...` as a Mesa 25 virpipe client of `server` inside the
/// Debian 13 root; `dirs` are bound at the same paths inside (outputs).
pub fn debian13_command(
    server: &Server,
    xvfb: &Xvfb,
    dirs: &[&Path],
    program: &str,
    args: &[&str],
) -> Command {
    let script = super::rootfs::workspace().join("scripts/debian13.sh");
    let mut line = quote(program);
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut binds = vec![format!("{}:/run/vtest", server.dir().display())];
    binds.extend(dirs.iter().map(|d| format!("{0}:{0}", d.display())));
    let socket = format!(
        "/run/vtest/{}",
        server.socket_path().file_name().unwrap().to_string_lossy()
    );
    let env = [
        format!("DISPLAY={}", xvfb.display()),
        "GALLIUM_DRIVER=virpipe".into(),
        format!("VTEST_SOCKET_NAME={socket}"),
        "MESA_SHADER_CACHE_DISABLE=true".into(),
        "PIGLIT_NO_FAST_SKIP=1".into(),
    ];
    let mut c = Command::new(script);
    c.arg("enter").arg(line);
    c.env("VTESTD_BIND", binds.join(" "))
        .env("VTESTD_ENV", env.join(" "));
    c
}
