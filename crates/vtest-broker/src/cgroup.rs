//! cgroup v2 limits per worker, when the service has a delegated cgroup
//! (systemd `Delegate=yes`): each worker goes into `worker-<pid>` under the
//! broker's cgroup with `memory.max` and `pids.max`.

use std::fs;
use std::path::{Path, PathBuf};

/// The broker's delegated cgroup, prepared for worker children.
pub(crate) struct Cgroups {
    root: PathBuf,
    memory_max: u64,
    pids_max: u32,
}

impl Cgroups {
    /// Sets up delegation, or says why it cannot be used.
    pub(crate) fn detect(memory_max: u64, pids_max: u32) -> Result<Cgroups, String> {
        if !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return Err("no cgroup v2 hierarchy at /sys/fs/cgroup".into());
        }
        let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("not in a cgroup v2 group")?;
        let root = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        for needed in ["memory", "pids"] {
            if !controllers.split_whitespace().any(|c| c == needed) {
                return Err(format!(
                    "{needed} controller not delegated to {}",
                    root.display()
                ));
            }
        }
        // cgroup v2 allows processes only in leaves: move the broker into
        // its own child first, then enable the controllers for children.
        let broker = root.join("broker");
        fs::create_dir_all(&broker).map_err(|e| format!("{}: {e}", broker.display()))?;
        fs::write(broker.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("cannot move the broker into {}: {e}", broker.display()))?;
        fs::write(root.join("cgroup.subtree_control"), "+memory +pids")
            .map_err(|e| format!("cannot enable controllers in {}: {e}", root.display()))?;
        Ok(Cgroups {
            root,
            memory_max,
            pids_max,
        })
    }

    /// Puts worker `pid` in its own limited cgroup.
    pub(crate) fn add(&self, pid: u32) -> std::io::Result<PathBuf> {
        let dir = self.root.join(format!("worker-{pid}"));
        fs::create_dir(&dir)?;
        fs::write(dir.join("memory.max"), self.memory_max.to_string())?;
        fs::write(dir.join("pids.max"), self.pids_max.to_string())?;
        fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        Ok(dir)
    }
}

/// Removes a reaped worker's cgroup.
pub(crate) fn remove(dir: &Path) {
    let _ = fs::remove_dir(dir);
}
