//! `vtestd_mesa` where this machine has Mesa's EGL and llvmpipe: the real
//! renderer test (tests/real_renderer.rs) is ignored, with the reason,
//! where it does not.

include!("../vtestd/system_probe.rs");

fn main() {
    println!("cargo::rustc-check-cfg=cfg(vtestd_mesa)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../vtestd/system_probe.rs");
    if has_mesa() {
        println!("cargo::rustc-cfg=vtestd_mesa");
    }
}
