//! The broker's listeners, each under a [`ListenerId`] that stays valid for
//! the broker's life (a reload can remove or reorder listeners: a position
//! taken before it would name another), and the worker command each one's
//! configuration makes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use crate::config::{Backend, LimitsProfile, ListenerConfig, ServerConfig, ShaderCacheScope};
use crate::listener::Listener;
use crate::shader_cache::ShaderCache;
use crate::WorkerCommand;

use super::accept_pause::AcceptPause;
use super::demand::Demand;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ListenerId(u64);

pub(super) struct ListenerState {
    pub(super) config: ListenerConfig,
    /// `None` once the broker stopped accepting on it.
    pub(super) socket: Option<Listener>,
    pub(super) command: WorkerCommand,
    pub(super) limits: vtest_control::Limits,
    /// No pool worker starts before this (one failed to start).
    pub(super) backoff_until: Option<Instant>,
    pub(super) accept: AcceptPause,
    /// Arrivals and start-up times, which size the pool.
    pub(super) demand: Demand,
    /// The worker arguments (`command.args`) of which one worker passed the
    /// check context (see `vtestd worker --check-context`): until then
    /// every worker of the listener makes the check.
    pub(super) checked: Option<Vec<OsString>>,
}

impl ListenerState {
    /// Whether a worker started now makes the check context: until one
    /// with the current arguments has passed it.
    pub(super) fn needs_check(&self) -> bool {
        self.checked.as_ref() != Some(&self.command.args)
    }
}

impl ListenerState {
    /// Workers its pool keeps started at `now` (0 without a pool).
    pub(super) fn pool_target(&self, now: Instant) -> u32 {
        if self.config.has_pool() {
            self.demand
                .target(now, self.config.pool, self.config.pool_max)
        } else {
            0
        }
    }
}

/// The listeners in the order they were added.
#[derive(Default)]
pub(super) struct Listeners {
    by_id: BTreeMap<ListenerId, ListenerState>,
    next_id: u64,
}

impl Listeners {
    pub(super) fn add(&mut self, state: ListenerState) -> ListenerId {
        self.next_id += 1;
        let id = ListenerId(self.next_id);
        self.by_id.insert(id, state);
        id
    }

    pub(super) fn get(&self, id: ListenerId) -> Option<&ListenerState> {
        self.by_id.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: ListenerId) -> Option<&mut ListenerState> {
        self.by_id.get_mut(&id)
    }

    /// The listener called `name`.
    pub(super) fn named(&self, name: &str) -> Option<ListenerId> {
        self.iter()
            .find(|(_, l)| l.config.name == name)
            .map(|(id, _)| id)
    }

    pub(super) fn ids(&self) -> Vec<ListenerId> {
        self.by_id.keys().copied().collect()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (ListenerId, &ListenerState)> {
        self.by_id.iter().map(|(id, l)| (*id, l))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &ListenerState> {
        self.by_id.values()
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut ListenerState> {
        self.by_id.values_mut()
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&ListenerState) -> bool) {
        self.by_id.retain(|_, l| keep(l));
    }

    /// Whether any listener still accepts.
    pub(super) fn accepting(&self) -> bool {
        self.values().any(|l| l.socket.is_some())
    }

    /// Stops accepting on every listener (the sockets close).
    pub(super) fn close_all(&mut self) {
        for l in self.values_mut() {
            l.socket = None;
        }
    }

    /// The idle limit of listener `name`'s clients before their first byte
    /// (0: none, or no such listener).
    pub(super) fn idle_timeout_ms(&self, name: &str) -> u64 {
        self.values()
            .find(|l| l.config.name == name)
            .map_or(0, |l| l.limits.idle_timeout_ms)
    }
}

/// How listener `l`'s workers are started: `vtestd worker` with its
/// backend, sandbox and the process limits.
pub(super) fn worker_command(
    program: &Path,
    server: &ServerConfig,
    l: &ListenerConfig,
    profile: &LimitsProfile,
) -> WorkerCommand {
    let mut args: Vec<OsString> = vec![
        "worker".into(),
        format!("--max-open-files={}", server.worker_open_files).into(),
        format!("--max-data-mib={}", server.worker_memory_mib).into(),
    ];
    match l.backend {
        Backend::Surfaceless => args.push("--use-egl-surfaceless".into()),
        Backend::Gles => {
            args.push("--use-egl-surfaceless".into());
            args.push("--use-gles".into());
        }
        Backend::RenderNode => {}
    }
    if let Some(node) = &l.render_node {
        args.push("--rendernode".into());
        args.push(node.clone().into_os_string());
    }
    if l.vulkan {
        args.push("--venus".into());
        let mut flag = OsString::from("--render-server=");
        flag.push(&server.render_server);
        args.push(flag);
    }
    if !l.virgl {
        args.push("--no-virgl".into());
    }
    if !l.sandbox {
        args.push("--sandbox=off".into());
    }
    if !l.sandbox_allow_missing.is_empty() {
        let missing = l.sandbox_allow_missing.join(",");
        args.push(format!("--sandbox-allow-missing={missing}").into());
    }
    // RLIMIT_FSIZE bounds each memfd: the largest resource, plus 1 MiB.
    let file_mib = profile.max_resource_mib.saturating_add(1);
    args.push(format!("--max-file-mib={file_mib}").into());
    WorkerCommand {
        program: program.to_owned(),
        args,
        shader_cache: l.shader_cache_base(server).map(|base| {
            let per_uid = l.shader_cache == ShaderCacheScope::Uid;
            ShaderCache::new(base, per_uid, server.shader_cache_max_mib << 20)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn args_of(config: &str) -> Vec<String> {
        let config = Config::parse(config, Path::new("test.toml")).unwrap();
        let l = &config.listeners[0];
        let cmd = worker_command(
            Path::new("/usr/bin/vtestd"),
            &config.server,
            l,
            &config.limits[&l.limits],
        );
        assert_eq!(cmd.program, Path::new("/usr/bin/vtestd"));
        cmd.args
            .iter()
            .map(|a| a.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_vulkan_listener_starts_venus_workers() {
        let args = args_of(
            "[server]\nrender_server = \"/opt/rs\"\n\
             [[listener]]\nname = \"vk\"\nvulkan = true\nvirgl = false\n",
        );
        let tail: Vec<&str> = args[4..args.len() - 1].iter().map(String::as_str).collect();
        assert_eq!(tail, ["--venus", "--render-server=/opt/rs", "--no-virgl"]);
        let plain = args_of("[[listener]]\nname = \"gl\"\n");
        assert!(!plain
            .iter()
            .any(|a| a.contains("venus") || a.contains("virgl")));
        let nothing = Config::parse(
            "[[listener]]\nname = \"x\"\nvirgl = false\n",
            Path::new("test.toml"),
        );
        assert!(nothing.unwrap_err().to_string().contains("serve nothing"));
    }

    #[test]
    fn worker_arguments_follow_the_listener() {
        let args = args_of(
            "[server]\nworker_open_files = 1024\nworker_memory_mib = 256\n\
             [limits.default]\nmax_resource_mib = 64\n\
             [[listener]]\nname = \"default\"\nbackend = \"gles\"\n",
        );
        assert_eq!(
            args,
            [
                "worker",
                "--max-open-files=1024",
                "--max-data-mib=256",
                "--use-egl-surfaceless",
                "--use-gles",
                "--max-file-mib=65",
            ]
        );
        let args = args_of(
            "[[listener]]\nname = \"gpu\"\nbackend = \"render-node\"\n\
             render_node = \"/dev/dri/renderD129\"\nsandbox = false\n\
             sandbox_allow_missing = [\"landlock\", \"user-namespace\"]\n",
        );
        let tail: Vec<&str> = args[3..args.len() - 1].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "--rendernode",
                "/dev/dri/renderD129",
                "--sandbox=off",
                "--sandbox-allow-missing=landlock,user-namespace",
            ]
        );
    }
}
