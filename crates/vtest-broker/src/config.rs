//! `/etc/vtestd/vtestd.toml`: listeners, limits profiles and global caps.
//! Unknown keys are errors. No file means the drop-in default: one listener
//! at `/tmp/.virgl_test` with EGL surfaceless.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/vtestd/vtestd.toml";
/// The reference server's socket.
pub const DEFAULT_SOCKET: &str = "/tmp/.virgl_test";
/// File descriptors a worker needs besides its clients' waits: the control
/// channel and client socket, EGL/DRM, llvmpipe, and memfds in flight.
pub const WORKER_FD_RESERVE: u64 = 128;
/// Below this, a worker cannot start the renderer (llvmpipe with its
/// threads' stacks and arenas).
pub const MIN_WORKER_MEMORY_MIB: u64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    /// Named limits profiles; `default` always exists.
    pub limits: BTreeMap<String, LimitsProfile>,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
}

/// Broker-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Concurrent clients over all listeners (waiting ones included).
    pub max_clients: u32,
    /// Concurrent clients of one uid.
    pub max_clients_per_uid: u32,
    /// The admin socket for `vtestd status` and `vtestd metrics`.
    pub admin_socket: PathBuf,
    /// Group (name or number) allowed on the admin socket besides root.
    pub admin_group: Option<String>,
    /// On SIGTERM, how long clients may finish before their workers end.
    pub shutdown_grace_secs: u64,
    /// A worker whose submitted GPU work makes no progress this long is killed.
    pub hang_timeout_secs: u64,
    /// Put each worker in its own cgroup v2 (memory, pids) when the service
    /// has a delegated cgroup.
    pub cgroups: bool,
    /// Memory of one worker, MiB: always its RLIMIT_DATA (heap and private
    /// mappings; a worker over it fails allocations), and its cgroup
    /// `memory.max` when cgroups are delegated.
    pub worker_memory_mib: u64,
    /// RLIMIT_NOFILE of a worker: every pending SYNC_WAIT holds one, so it
    /// must exceed each profile's `max_waits` by `WORKER_FD_RESERVE`.
    pub worker_open_files: u64,
    /// cgroup `pids.max` of a worker (threads count).
    pub worker_pids: u32,
    /// Where the shader caches live: one directory per listener (and per
    /// client uid where a listener says `shader_cache = "uid"`), made by the
    /// broker, mode 0700. Default: systemd's `$CACHE_DIRECTORY`, else
    /// `/var/cache/vtestd` for root, else `$XDG_CACHE_HOME/vtestd` (or
    /// `~/.cache/vtestd`).
    pub shader_cache_dir: PathBuf,
    /// Size bound of each cache directory, MiB: past it, the broker empties
    /// the directory before it starts the next worker of that scope.
    pub shader_cache_max_mib: u64,
    /// The Venus render server program, started (confined) by each worker
    /// of a `vulkan` listener.
    pub render_server: PathBuf,
}

/// Which clients share a Mesa shader cache. A cache entry is machine code
/// that later workers of the same scope execute, so a client can poison
/// only the cache of its own scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShaderCacheScope {
    /// Every client of the listener (one listener per tenant): its pool
    /// workers start with the cache warm.
    #[default]
    Listener,
    /// Every client uid of the listener on its own (no pre-started workers:
    /// the uid is known only once a client connects).
    Uid,
    /// No on-disk cache: every worker compiles every shader.
    Off,
}

/// Per-client limits, enforced by each worker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsProfile {
    pub max_resources: u32,
    pub max_resource_mib: u64,
    pub max_shm_mib: u64,
    pub max_command_mib: u32,
    pub max_syncs: u32,
    pub max_waits: u32,
    /// 0: no limit.
    pub idle_timeout_secs: u64,
}

/// How a listener's workers render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// EGL surfaceless: llvmpipe without a GPU, the GPU where there is one.
    Surfaceless,
    /// A DRM render node through GBM (`render_node`).
    RenderNode,
    /// EGL surfaceless with OpenGL ES.
    Gles,
}

/// One socket clients connect to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    pub name: String,
    pub path: PathBuf,
    /// Socket file mode, octal string (e.g. "0660"); unset: umask decides.
    pub mode: Option<String>,
    /// Socket file owner and group (name or number).
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Peers allowed (SO_PEERCRED); both empty: anyone who can connect.
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    /// Name of a `[limits.NAME]` profile.
    pub limits: String,
    pub backend: Backend,
    pub render_node: Option<PathBuf>,
    /// Workers kept started, initialised and sandboxed, waiting for a
    /// client, at the least: the pool grows with the arrival rate up to
    /// `pool_max`.
    pub pool: u32,
    /// The most workers the pool keeps started when clients arrive fast.
    pub pool_max: u32,
    /// Who shares a shader cache: the listener's clients (the default),
    /// each of its client uids, or nobody (`off`).
    pub shader_cache: ShaderCacheScope,
    /// This listener's cache directory, instead of
    /// `<server.shader_cache_dir>/<name>`.
    pub shader_cache_dir: Option<PathBuf>,
    /// Worker sandbox; `false` is for debugging only.
    pub sandbox: bool,
    /// Sandbox layers this host may lack (e.g. `["user-namespace"]` where
    /// user namespaces are forbidden). Empty, the default: a worker that
    /// cannot apply every layer refuses to serve (fail closed), and the
    /// broker refuses the listener at start.
    pub sandbox_allow_missing: Vec<String>,
    /// Serve Vulkan (Venus) too, through a confined render server per
    /// worker (the reference's `--venus`).
    pub vulkan: bool,
    /// Serve OpenGL (virgl); `false` with `vulkan`: Vulkan only (the
    /// reference's `--no-virgl`).
    pub virgl: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_clients: 256,
            max_clients_per_uid: 64,
            admin_socket: default_admin_socket(),
            admin_group: None,
            shutdown_grace_secs: 10,
            hang_timeout_secs: 60,
            cgroups: true,
            worker_memory_mib: 8192,
            worker_open_files: 1024,
            worker_pids: 256,
            shader_cache_dir: default_shader_cache_dir(),
            shader_cache_max_mib: 512,
            render_server: "/usr/libexec/virgl_render_server".into(),
        }
    }
}

impl Default for LimitsProfile {
    fn default() -> Self {
        LimitsProfile {
            max_resources: 65_536,
            max_resource_mib: 1024,
            max_shm_mib: 4096,
            max_command_mib: 64,
            max_syncs: 4096,
            max_waits: 512,
            idle_timeout_secs: 0,
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: "default".into(),
            path: DEFAULT_SOCKET.into(),
            mode: None,
            owner: None,
            group: None,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            limits: "default".into(),
            backend: Backend::Surfaceless,
            render_node: None,
            pool: 2,
            pool_max: 8,
            shader_cache: ShaderCacheScope::Listener,
            shader_cache_dir: None,
            sandbox: true,
            sandbox_allow_missing: Vec::new(),
            vulkan: false,
            virgl: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            limits: BTreeMap::from([("default".to_string(), LimitsProfile::default())]),
            listeners: vec![ListenerConfig::default()],
        }
    }
}

/// Where the admin socket lives by default: `/run/vtestd/` for root, the
/// user's runtime directory otherwise.
/// A shader cache directory a worker's sandbox can bind: absolute and not
/// under /tmp, where each worker assembles its private root (a directory
/// there is hidden by it).
pub fn check_shader_cache_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_absolute() || dir.starts_with("/tmp") {
        return Err(format!(
            "shader_cache_dir {} must be an absolute path outside /tmp (workers assemble \
             their root in /tmp), e.g. /var/cache/vtestd",
            dir.display()
        ));
    }
    Ok(())
}

impl std::str::FromStr for ShaderCacheScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "listener" => Ok(ShaderCacheScope::Listener),
            "uid" => Ok(ShaderCacheScope::Uid),
            "off" => Ok(ShaderCacheScope::Off),
            _ => Err(format!("{s:?}: one of listener, uid, off")),
        }
    }
}

/// The default root of the shader caches (see `ServerConfig::shader_cache_dir`).
pub fn default_shader_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CACHE_DIRECTORY") {
        // systemd's CacheDirectory=; several are separated by ':'.
        let dir = PathBuf::from(dir);
        if let Some(first) = dir.to_str().and_then(|d| d.split(':').next()) {
            return PathBuf::from(first);
        }
        return dir;
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/cache/vtestd");
    }
    match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(dir), _) if Path::new(&dir).is_absolute() => Path::new(&dir).join("vtestd"),
        (_, Some(home)) => Path::new(&home).join(".cache/vtestd"),
        _ => PathBuf::from("/var/cache/vtestd"),
    }
}

/// Whether `name` can be a directory name under the cache root.
fn is_path_component(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl ListenerConfig {
    /// The directory of this listener's shader cache (below it, `uid-N`
    /// per client uid where the scope is `uid`); `None` when it is off.
    pub fn shader_cache_base(&self, server: &ServerConfig) -> Option<PathBuf> {
        match self.shader_cache {
            ShaderCacheScope::Off => None,
            _ => Some(
                self.shader_cache_dir
                    .clone()
                    .unwrap_or_else(|| server.shader_cache_dir.join(&self.name)),
            ),
        }
    }

    /// Whether this listener's workers can be started before their client
    /// (and its uid) is known.
    pub fn has_pool(&self) -> bool {
        self.pool > 0 && self.shader_cache != ShaderCacheScope::Uid
    }
}

pub fn default_admin_socket() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/vtestd-admin/admin.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => Path::new(&dir).join("vtestd/admin.sock"),
        None => PathBuf::from(format!("/tmp/vtestd-{}/admin.sock", nix::unistd::geteuid())),
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// `path` if given; else the default file if it exists; else defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Self::load(p),
            None if Path::new(DEFAULT_CONFIG).exists() => Self::load(Path::new(DEFAULT_CONFIG)),
            None => Ok(Config::default()),
        }
    }

    /// Parses and checks a configuration text (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        config.limits.entry("default".into()).or_default();
        config.check().map_err(invalid)?;
        Ok(config)
    }

    /// Whether the settings make sense together (what [`Config::parse`]
    /// checks; again after command-line flags changed them).
    pub fn check(&self) -> Result<(), String> {
        if self.listeners.is_empty() {
            return Err("no [[listener]]".into());
        }
        let mut names = std::collections::BTreeSet::new();
        let mut paths = std::collections::BTreeSet::new();
        for l in &self.listeners {
            if !names.insert(&l.name) {
                return Err(format!("listener name {:?} used twice", l.name));
            }
            if !paths.insert(&l.path) {
                return Err(format!("socket path {} used twice", l.path.display()));
            }
            if !self.limits.contains_key(&l.limits) {
                return Err(format!("listener {:?}: no [limits.{}]", l.name, l.limits));
            }
            if !l.virgl && !l.vulkan {
                return Err(format!(
                    "listener {:?}: virgl = false needs vulkan = true (it would serve nothing)",
                    l.name
                ));
            }
            if l.backend == Backend::RenderNode && l.render_node.is_none() {
                return Err(format!(
                    "listener {:?}: backend render-node needs render_node",
                    l.name
                ));
            }
            if let Some(mode) = &l.mode {
                parse_mode(mode).map_err(|e| format!("listener {:?}: {e}", l.name))?;
            }
            if l.pool > 64 || l.pool_max > 64 || l.pool_max < l.pool {
                return Err(format!(
                    "listener {:?}: pool {} and pool_max {} must satisfy pool <= pool_max <= 64",
                    l.name, l.pool, l.pool_max
                ));
            }
            if let Some(dir) = &l.shader_cache_dir {
                check_shader_cache_dir(dir).map_err(|e| format!("listener {:?}: {e}", l.name))?;
            } else if l.shader_cache != ShaderCacheScope::Off && !is_path_component(&l.name) {
                return Err(format!(
                    "listener {:?}: its shader cache directory is named after it, so the name \
                     must be letters, digits, '-', '_' or '.' (not first), at most 64; or set \
                     its shader_cache_dir, or shader_cache = \"off\"",
                    l.name
                ));
            }
            for layer in &l.sandbox_allow_missing {
                let optional = [
                    "user-namespace",
                    "network-namespace",
                    "ipc-namespace",
                    "mount-namespace",
                    "pid-namespace",
                    "landlock",
                ];
                if !optional.contains(&layer.as_str()) {
                    return Err(format!(
                        "listener {:?}: sandbox_allow_missing: {layer:?} is not a layer that may \
                         be missing (one of {})",
                        l.name,
                        optional.join(", ")
                    ));
                }
            }
        }
        let caching = self
            .listeners
            .iter()
            .any(|l| l.shader_cache != ShaderCacheScope::Off && l.shader_cache_dir.is_none());
        if caching {
            check_shader_cache_dir(&self.server.shader_cache_dir)
                .map_err(|e| format!("[server] {e}"))?;
        }
        if self.server.max_clients == 0 || self.server.max_clients_per_uid == 0 {
            return Err("max_clients and max_clients_per_uid must be at least 1".into());
        }
        self.check_worker_limits()
    }

    /// The process limits of a worker must hold what its profiles allow.
    fn check_worker_limits(&self) -> Result<(), String> {
        let s = &self.server;
        if s.worker_memory_mib < MIN_WORKER_MEMORY_MIB {
            return Err(format!(
                "worker_memory_mib {} < {MIN_WORKER_MEMORY_MIB}: the renderer cannot start",
                s.worker_memory_mib
            ));
        }
        if !(WORKER_FD_RESERVE..=1 << 20).contains(&s.worker_open_files) {
            return Err(format!(
                "worker_open_files {} is outside {WORKER_FD_RESERVE}..={}",
                s.worker_open_files,
                1 << 20
            ));
        }
        for (name, p) in &self.limits {
            let needed = u64::from(p.max_waits) + WORKER_FD_RESERVE;
            if needed > s.worker_open_files {
                return Err(format!(
                    "[limits.{name}] max_waits {} needs worker_open_files >= {needed} \
                     (each pending wait holds an fd; {WORKER_FD_RESERVE} are the worker's own), \
                     but it is {}",
                    p.max_waits, s.worker_open_files
                ));
            }
        }
        Ok(())
    }

    /// The effective settings as TOML (for `vtestd check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// An octal mode string such as "0660".
pub fn parse_mode(mode: &str) -> Result<u32, String> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("mode {mode:?} is not an octal permission"))
}

impl LimitsProfile {
    /// The wire form sent to workers.
    pub fn to_wire(&self) -> vtest_control::Limits {
        const MIB: u64 = 1 << 20;
        vtest_control::Limits {
            max_resources: self.max_resources,
            max_resource_bytes: self.max_resource_mib.saturating_mul(MIB),
            max_shm_bytes: self.max_shm_mib.saturating_mul(MIB),
            max_command_bytes: u32::try_from(u64::from(self.max_command_mib) * MIB)
                .unwrap_or(u32::MAX),
            max_syncs: self.max_syncs,
            max_waits: self.max_waits,
            idle_timeout_ms: self.idle_timeout_secs.saturating_mul(1000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_is_the_drop_in_default() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listeners[0].path, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn a_full_file_parses() {
        let c = parse(
            r#"
            [server]
            max_clients = 8
            max_clients_per_uid = 2
            admin_socket = "/run/vtestd/admin.sock"
            admin_group = "vtestd-admin"

            [limits.small]
            max_resources = 100
            idle_timeout_secs = 30

            [[listener]]
            name = "containers"
            path = "/run/vtestd/ct/.virgl_test"
            mode = "0660"
            group = "vtestd-clients"
            allowed_uids = [1000, 1001]
            limits = "small"
            backend = "render-node"
            render_node = "/dev/dri/renderD128"
            pool = 2
            "#,
        )
        .unwrap();
        assert_eq!(c.server.max_clients, 8);
        assert_eq!(c.limits["small"].max_resources, 100);
        assert_eq!(
            c.limits["small"].max_syncs,
            LimitsProfile::default().max_syncs
        );
        assert!(c.limits.contains_key("default"));
        let l = &c.listeners[0];
        assert_eq!(l.backend, Backend::RenderNode);
        assert_eq!(parse_mode(l.mode.as_deref().unwrap()), Ok(0o660));
        assert_eq!(c.limits["small"].to_wire().idle_timeout_ms, 30_000);
        // What check-config prints reads back the same.
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn mistakes_are_errors() {
        for bad in [
            "unknown = 1",
            "[server]\nmax_clinets = 3",
            "[[listener]]\nname = \"a\"\nlimits = \"missing\"",
            "[[listener]]\nbackend = \"render-node\"",
            "[[listener]]\nmode = \"rw\"",
            "[[listener]]\nname = \"a\"\n[[listener]]\nname = \"a\"\npath = \"/x\"",
            "[[listener]]\npath = \"/x\"\n[[listener]]\nname = \"b\"\npath = \"/x\"",
            "[server]\nmax_clients = 0",
            "[server]\nworker_memory_mib = 16",
            "[server]\nworker_open_files = 8",
            "[limits.default]\nmax_waits = 4096",
            "[server]\nworker_open_files = 600\n[limits.big]\nmax_waits = 512",
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn more_waits_fit_with_more_open_files() {
        let c = parse("[server]\nworker_open_files = 5000\n[limits.default]\nmax_waits = 4096")
            .unwrap();
        assert_eq!(c.limits["default"].max_waits, 4096);
        let e = parse("[limits.default]\nmax_waits = 4096")
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker_open_files >= 4224"), "{e}");
    }
}
