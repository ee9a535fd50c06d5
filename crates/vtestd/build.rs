//! What this machine offers the system test suites (tests/*.rs), as cfgs the
//! tests are ignored by, with their reason, where it lacks something:
//!
//! - `vtestd_root`: the build runs as root (mount namespaces for the clients'
//!   private /tmp, chroots and Debian roots, peers of other uids);
//! - `vtestd_mesa`: Mesa's EGL and its llvmpipe driver, which every real worker
//!   renders with;
//! - `vtestd_clients`: the Mesa clients and X server the end-to-end suites run
//!   (glxinfo, glmark2, piglit, Xvfb) and the reference `virgl_test_server`;
//! - `vtestd_packaging_tools`: cargo-deb, cargo-generate-rpm, the linters and
//!   debootstrap (tests/packaging.rs).
//!
//! `cargo test` as a normal user on a machine without Mesa then runs every
//! unit and null-backend test and lists the system suites as ignored with the
//! reason; `./scripts/test.sh` (root, everything installed) runs them all.

use std::path::Path;

const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
];

fn main() {
    for cfg in [
        "vtestd_root",
        "vtestd_mesa",
        "vtestd_clients",
        "vtestd_packaging_tools",
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=PATH");

    let mut missing = Vec::new();
    if effective_uid() == Some(0) {
        println!("cargo::rustc-cfg=vtestd_root");
    } else {
        missing.push("root");
    }

    let egl = find_lib("libEGL_mesa.so.0");
    let dri = LIB_DIRS
        .iter()
        .map(|d| Path::new(d).join("dri/swrast_dri.so"))
        .find(|p| p.exists())
        .or_else(find_gallium);
    match (egl, dri) {
        (Some(_), Some(_)) => println!("cargo::rustc-cfg=vtestd_mesa"),
        _ => missing.push("Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)"),
    }

    let programs = ["glxinfo", "glmark2", "piglit", "Xvfb", "virgl_test_server"];
    let absent: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find_program(p).is_none())
        .collect();
    if absent.is_empty() {
        println!("cargo::rustc-cfg=vtestd_clients");
    } else {
        missing.push("the Mesa clients (mesa-utils, glmark2-x11, piglit, xvfb, virgl-server)");
        for p in absent {
            println!("cargo::rerun-if-changed=/usr/bin/{p}");
        }
    }

    let tools = [
        "cargo-deb",
        "cargo-generate-rpm",
        "lintian",
        "rpmlint",
        "dpkg-deb",
        "debootstrap",
    ];
    if tools.iter().all(|t| find_program(t).is_some()) {
        println!("cargo::rustc-cfg=vtestd_packaging_tools");
    } else {
        missing.push("the package builders and linters (packaging/install-tools.sh)");
    }

    if !missing.is_empty() {
        println!(
            "cargo::warning=system test suites ignored: this machine lacks {}; \
             ./scripts/test.sh installs and runs everything (as root)",
            missing.join(", ")
        );
    }
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective ...`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn find_lib(name: &str) -> Option<std::path::PathBuf> {
    for dir in LIB_DIRS {
        let path = Path::new(dir).join(name);
        println!("cargo::rerun-if-changed={}", path.display());
        if path.exists() {
            return Some(path);
        }
    }
    None
}

/// Mesa 25 builds its drivers into one `libgallium-<version>.so`.
fn find_gallium() -> Option<std::path::PathBuf> {
    LIB_DIRS.iter().find_map(|dir| {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            (name.starts_with("libgallium-") && name.ends_with(".so")).then(|| e.path())
        })
    })
}

fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.exists())
}
