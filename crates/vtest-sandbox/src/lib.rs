//! Confinement of vtestd workers, applied by every worker before it touches
//! client data. Layers, each tested on its own:
//!
//! 1. fork+exec with a clean environment and only the needed fds (the
//!    broker), and [`confine`] closes any other the worker inherited
//!    ([`fds::close_unexpected_fds`]);
//! 2. namespaces: user, network (empty), IPC, mount (pivot_root into a
//!    read-only tmpfs root with read-only binds of what rendering needs),
//!    PID (the worker forks once and serves as PID 1 of its own namespace);
//! 3. rlimits: no core dumps, bounded fds and data;
//! 4. Landlock: read-only where rendering reads, read-write only on render
//!    nodes, no TCP, no signals or abstract sockets outside the sandbox;
//! 5. all capabilities dropped (bounding set too), no_new_privs;
//! 6. seccomp allowlists from `policies/seccomp/`, an init phase before the
//!    renderer starts and a tighter steady phase after (TSYNC); a trapped
//!    call is reported in the caller's record ([`ViolationReport`]).
//!
//! Order matters: Landlock and capabilities apply to the calling thread only
//! and Mesa starts threads during EGL initialisation, so [`confine`] runs
//! before the renderer and [`lock_down`] after it. With the renderer crate,
//! the only crate allowed `unsafe`.

mod error;
pub mod fds;
mod landlock;
mod namespaces;
mod pid;
mod privileges;
pub mod rlimits;
pub mod seccomp;
pub mod signals;
pub mod violation;

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

pub use error::SandboxError;
pub use namespaces::RootFs;
pub use pid::cpu_before_fork;
pub use rlimits::Rlimits;
pub use seccomp::{Phase, Profile};
pub use violation::ViolationReport;

/// A confinement layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    UserNamespace,
    NetworkNamespace,
    IpcNamespace,
    MountNamespace,
    PidNamespace,
    Rlimits,
    Landlock,
    Capabilities,
    Seccomp,
}

impl Layer {
    /// Every layer, in the order they apply.
    pub const ALL: [Layer; 9] = [
        Layer::Rlimits,
        Layer::UserNamespace,
        Layer::NetworkNamespace,
        Layer::IpcNamespace,
        Layer::MountNamespace,
        Layer::PidNamespace,
        Layer::Landlock,
        Layer::Capabilities,
        Layer::Seccomp,
    ];

    /// The layer's name in configuration (`sandbox_allow_missing`).
    pub fn name(self) -> &'static str {
        match self {
            Layer::UserNamespace => "user-namespace",
            Layer::NetworkNamespace => "network-namespace",
            Layer::IpcNamespace => "ipc-namespace",
            Layer::MountNamespace => "mount-namespace",
            Layer::PidNamespace => "pid-namespace",
            Layer::Rlimits => "rlimits",
            Layer::Landlock => "landlock",
            Layer::Capabilities => "capabilities",
            Layer::Seccomp => "seccomp",
        }
    }

    /// The layer named `name` (as [`Layer::name`] spells it).
    pub fn from_name(name: &str) -> Option<Layer> {
        Layer::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// What happened to a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Applied with less than the full set (e.g. an older Landlock ABI).
    Partial(String),
    /// The host does not allow it; the worker runs without this layer.
    Unavailable(String),
}

/// Everything a worker's sandbox needs to know.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub root: RootFs,
    pub rlimits: Rlimits,
    pub profile: Profile,
    /// What the SIGSYS handler sends, and where.
    pub report: Option<ViolationReport>,
    /// Descriptors the worker holds beyond stdin, stdout, stderr and the
    /// report's. [`confine`] closes every other one first.
    pub keep_fds: Vec<RawFd>,
}

/// Render nodes present on this host.
pub fn render_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("renderD"))
        })
        .collect();
    nodes.sort();
    nodes
}

impl SandboxConfig {
    /// The production sandbox of a worker: `render_node` if one was chosen
    /// (else every render node, which EGL surfaceless may pick), the opt-in
    /// shader cache directory, and the profile that matches the devices.
    pub fn for_worker(
        render_node: Option<PathBuf>,
        shader_cache: Option<PathBuf>,
        report: Option<ViolationReport>,
    ) -> SandboxConfig {
        let devices = match render_node {
            Some(node) => vec![node],
            None => render_nodes(),
        };
        let profile = if devices.is_empty() {
            Profile::Llvmpipe
        } else {
            Profile::Gpu
        };
        let mut read_only_dirs: Vec<PathBuf> = ["/usr", "/sys/devices/system/cpu"]
            .iter()
            .map(PathBuf::from)
            .collect();
        if profile == Profile::Gpu {
            // libdrm finds the device's PCI identity through sysfs.
            read_only_dirs.extend(
                [
                    "/sys/dev/char",
                    "/sys/class/drm",
                    "/sys/devices/pci0000:00",
                    "/sys/bus/pci",
                ]
                .iter()
                .map(PathBuf::from),
            );
        }
        let read_only_files = ["/etc/ld.so.cache", "/etc/drirc", "/dev/urandom"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let mut all_devices: Vec<PathBuf> = ["/dev/null", "/dev/zero"]
            .iter()
            .map(PathBuf::from)
            .collect();
        all_devices.extend(devices);
        SandboxConfig {
            root: RootFs {
                read_only_dirs,
                read_only_files,
                devices: all_devices,
                writable_dirs: shader_cache.into_iter().collect(),
                hidden_dirs: vec![PathBuf::from(DRIRC_DIR)],
                executables: Vec::new(),
            },
            rlimits: Rlimits::default(),
            profile,
            report,
            keep_fds: Vec::new(),
        }
    }
}

/// Mesa's application workarounds (driconf). A GL worker's entries would
/// match by executable name, which is always `vtestd`, so the worker's
/// box shows the directory empty and Mesa skips parsing its 50 KB of XML
/// twice per start (about 2.8 ms of CPU); `/etc/drirc`, the
/// administrator's, stays visible.
pub const DRIRC_DIR: &str = "/usr/share/drirc.d";

/// The dynamic loaders a render server may be started through.
const LOADERS: &[&str] = &[
    "/usr/lib64/ld-linux-x86-64.so.2",
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/usr/lib/ld-linux-aarch64.so.1",
    "/usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
];

impl SandboxConfig {
    /// The box of a Venus render server: what a worker sees (libraries,
    /// render nodes, the listener's shader cache) plus the Vulkan ICD
    /// manifests under `/usr/share/vulkan` and `/dev/udmabuf`, with the
    /// render-server seccomp profile; executing is allowed for `program`
    /// (which must lie under `/usr`) and the dynamic loader only.
    pub fn for_render_server(
        render_node: Option<PathBuf>,
        shader_cache: Option<PathBuf>,
        program: PathBuf,
    ) -> SandboxConfig {
        let mut config = SandboxConfig::for_worker(render_node, shader_cache, None);
        config.profile = Profile::RenderServer;
        // Vulkan drivers match drirc by the guest's application and engine
        // names, which Venus passes through: keep Mesa's list.
        config.root.hidden_dirs.clear();
        if Path::new("/dev/udmabuf").exists() {
            config.root.devices.push("/dev/udmabuf".into());
        }
        config.root.executables = LOADERS
            .iter()
            .map(PathBuf::from)
            .chain(std::iter::once(program))
            .collect();
        config
    }
}

/// Applies every layer that must come before the renderer starts, and the
/// init-phase seccomp filter. Layers the host forbids are reported as
/// [`Outcome::Unavailable`]; errors are for layers that should have worked.
pub fn confine(config: &SandboxConfig) -> Result<Vec<(Layer, Outcome)>, SandboxError> {
    let mut report = Vec::new();
    let keep: Vec<RawFd> = config
        .report
        .iter()
        .map(ViolationReport::fd)
        .chain(config.keep_fds.iter().copied())
        .collect();
    fds::close_unexpected_fds(&keep)?;
    signals::die_on_fault_signals().map_err(SandboxError::SignalHandler)?;
    rlimits::apply(&config.rlimits)?;
    report.push((Layer::Rlimits, Outcome::Applied));
    namespaces::enter(&config.root, config.profile, &mut report)?;
    landlock::restrict(&config.root, &mut report)?;
    privileges::drop_all()?;
    report.push((Layer::Capabilities, Outcome::Applied));
    violation::install_reporter(config.report.as_ref())?;
    seccomp::install(config.profile, Phase::Init)?;
    report.push((Layer::Seccomp, Outcome::Applied));
    Ok(report)
}

/// After the renderer started: the steady-state filter, on every thread.
pub fn lock_down(profile: Profile) -> Result<(), SandboxError> {
    seccomp::install(profile, Phase::Steady)
}
