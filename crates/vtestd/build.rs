//! What this machine offers the system test suites (tests/*.rs), as cfgs the
//! tests are ignored by, with their reason, where it lacks something:
//!
//! - `vtestd_root`: the build runs as root (mount namespaces for the clients'
//!   private /tmp, chroots and Debian roots, peers of other uids);
//! - `vtestd_mesa`: Mesa's EGL and its llvmpipe driver, which every real worker
//!   renders with;
//! - `vtestd_clients`: the Mesa clients and X server the end-to-end suites run
//!   (glxinfo, glmark2, piglit, Xvfb) and the reference `virgl_test_server`;
//! - `vtestd_venus`: Vulkan through Venus (tests/venus.rs): virglrenderer
//!   1.x with its render server, Mesa's Venus ICD and lavapipe, vulkaninfo;
//! - `vtestd_packaging_tools`: cargo-deb, cargo-generate-rpm, the linters and
//!   debootstrap (tests/packaging.rs).
//!
//! `cargo test` as a normal user on a machine without Mesa then runs every
//! unit and null-backend test and lists the system suites as ignored with the
//! reason; `./scripts/test.sh` (root, everything installed) runs them all.

include!("system_probe.rs");

fn main() {
    for cfg in [
        "vtestd_root",
        "vtestd_mesa",
        "vtestd_clients",
        "vtestd_packaging_tools",
        "vtestd_venus",
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=system_probe.rs");
    println!("cargo::rerun-if-env-changed=PATH");

    let mut missing = Vec::new();
    if effective_uid() == Some(0) {
        println!("cargo::rustc-cfg=vtestd_root");
    } else {
        missing.push("root");
    }

    if has_mesa() {
        println!("cargo::rustc-cfg=vtestd_mesa");
    } else {
        missing.push("Mesa's EGL and llvmpipe (libegl-mesa0, libgl1-mesa-dri)");
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

    // Not a warning where absent: Debian 12's virglrenderer 0.10 cannot
    // serve Mesa's Venus at all (tests/venus.rs says so when ignored).
    if has_venus() {
        println!("cargo::rustc-cfg=vtestd_venus");
    }

    if !missing.is_empty() {
        println!(
            "cargo::warning=system test suites ignored: this machine lacks {}; \
             ./scripts/test.sh installs and runs everything (as root)",
            missing.join(", ")
        );
    }
}
