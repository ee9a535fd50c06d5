// What the machine has, for the build scripts that turn the system test
// suites off where it lacks it (included by crates/vtestd/build.rs and
// crates/vtest-renderer/build.rs).

use std::path::Path;

const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
];

/// Mesa's EGL and a software (llvmpipe) driver: what every real worker
/// renders with.
#[allow(dead_code)]
fn has_mesa() -> bool {
    let egl = find_lib("libEGL_mesa.so.0");
    let dri = LIB_DIRS
        .iter()
        .map(|d| Path::new(d).join("dri/swrast_dri.so"))
        .find(|p| p.exists())
        .or_else(find_gallium);
    egl.is_some() && dri.is_some()
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective ...`).
#[allow(dead_code)]
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

#[allow(dead_code)]
fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.exists())
}

/// Vulkan through Venus: virglrenderer 1.x (0.10's Venus speaks a wire
/// format Mesa 23+ refuses) with its render server, Mesa's Venus ICD and a
/// host Vulkan driver (lavapipe), and vulkaninfo.
#[allow(dead_code)]
fn has_venus() -> bool {
    let files = [
        "/usr/libexec/virgl_render_server",
        "/usr/share/vulkan/icd.d/virtio_icd.json",
        "/usr/share/vulkan/icd.d/lvp_icd.json",
    ];
    for f in files {
        println!("cargo::rerun-if-changed={f}");
    }
    let version = std::process::Command::new("pkg-config")
        .args(["--modversion", "virglrenderer"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.trim().split('.').next()?.parse::<u32>().ok());
    files.iter().all(|f| Path::new(f).exists())
        && version.is_some_and(|major| major >= 1)
        && find_program("vulkaninfo").is_some()
}
