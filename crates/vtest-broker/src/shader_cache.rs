//! The shader caches: one directory per scope (a listener, or one client uid
//! of a listener), made and bounded by the broker, handed to each worker of
//! the scope as Mesa's single-file cache (opened while the worker
//! initialises, bound writable into its sandbox and nothing else).

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{info, warn};

/// Mesa's variables that point its disk caches at a directory.
pub(crate) const SHADER_CACHE_VARS: &[&str] = &[
    "MESA_SHADER_CACHE_DIR",
    "MESA_GLSL_CACHE_DIR",
    "MESA_SHADER_CACHE_MAX_SIZE",
    "MESA_DISK_CACHE_SINGLE_FILE",
    "MESA_DISK_CACHE_MULTI_FILE",
    "MESA_DISK_CACHE_DATABASE",
];

/// How deep below a scope directory the size count looks (Mesa keeps its
/// files one or two levels down).
const MAX_DEPTH: usize = 4;

/// The cache of one listener's workers.
#[derive(Debug, Clone)]
pub struct ShaderCache {
    /// The listener's directory.
    pub base: PathBuf,
    /// One subdirectory `uid-N` per client uid.
    pub per_uid: bool,
    /// Past this many bytes, the scope's directory is emptied before its
    /// next worker starts.
    pub max_bytes: u64,
    /// Whether a failure to prepare it was logged already (once per
    /// listener configuration, not once per worker).
    pub warned: Arc<AtomicBool>,
}

impl PartialEq for ShaderCache {
    fn eq(&self, other: &Self) -> bool {
        (&self.base, self.per_uid, self.max_bytes) == (&other.base, other.per_uid, other.max_bytes)
    }
}

impl Eq for ShaderCache {}

impl ShaderCache {
    pub fn new(base: PathBuf, per_uid: bool, max_bytes: u64) -> ShaderCache {
        ShaderCache {
            base,
            per_uid,
            max_bytes,
            warned: Arc::default(),
        }
    }

    /// [`Self::prepare`], or `None` with a warning (the first time): the
    /// worker then runs without a cache.
    pub fn prepare_or_warn(&self, uid: u32) -> Option<PathBuf> {
        match self.prepare(uid) {
            Ok(dir) => Some(dir),
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    warn!(dir = %self.dir_for(uid).display(), error = %e,
                          "shader cache unusable: workers run without one");
                }
                None
            }
        }
    }

    /// The directory of the scope a client of `uid` belongs to.
    pub fn dir_for(&self, uid: u32) -> PathBuf {
        if self.per_uid {
            self.base.join(format!("uid-{uid}"))
        } else {
            self.base.clone()
        }
    }

    /// Makes the scope directory of `uid` ready for a worker: created (mode
    /// 0700) where missing, refused unless it is a real directory of the
    /// broker's user that nobody else can enter, and emptied when it holds
    /// more than `max_bytes`.
    pub fn prepare(&self, uid: u32) -> io::Result<PathBuf> {
        let dir = self.dir_for(uid);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let meta = std::fs::symlink_metadata(&dir)?;
        if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(io::Error::other(format!(
                "shader cache {}: not a directory of this user",
                dir.display()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let used = bytes_in(&dir, MAX_DEPTH);
        if used > self.max_bytes {
            info!(dir = %dir.display(), bytes = used, max = self.max_bytes,
                  "shader cache over its size: emptied");
            empty(&dir)?;
        }
        Ok(dir)
    }
}

/// What to set (`Some`) and remove (`None`) in a worker's environment, in
/// order, whatever the broker's own environment says (a cache directory
/// there would be shared by every client and bound writable into each
/// worker's sandbox): the cache in `dir`, or none.
pub(crate) fn worker_env(
    dir: Option<&Path>,
    max_bytes: u64,
) -> Vec<(&'static str, Option<OsString>)> {
    let mut env: Vec<(&'static str, Option<OsString>)> =
        SHADER_CACHE_VARS.iter().map(|var| (*var, None)).collect();
    match dir {
        Some(dir) => {
            env.push(("MESA_SHADER_CACHE_DISABLE", None));
            env.push(("MESA_SHADER_CACHE_DIR", Some(dir.into())));
            // One file, opened while the worker initialises (files cannot
            // be opened once it serves): Mesa 22.3 and 25 both have this mode.
            env.push(("MESA_DISK_CACHE_SINGLE_FILE", Some("1".into())));
            let mib = (max_bytes >> 20).max(1);
            env.push(("MESA_SHADER_CACHE_MAX_SIZE", Some(format!("{mib}M").into())));
        }
        None => env.push(("MESA_SHADER_CACHE_DISABLE", Some("true".into()))),
    }
    env
}

/// Bytes in the regular files below `dir`, `depth` levels down at most
/// (symlinks are not followed).
fn bytes_in(dir: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_file() => m.len(),
            Ok(m) if m.is_dir() && depth > 0 => bytes_in(&e.path(), depth - 1),
            _ => 0,
        })
        .sum()
}

/// Removes everything in `dir`, keeping `dir`. Workers that have the files
/// open keep writing to the unlinked ones; the next worker starts a new cache.
fn empty(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vtestd-shader-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_scope_is_the_listener_or_one_uid_of_it() {
        let listener = ShaderCache::new("/var/cache/vtestd/default".into(), false, 1 << 20);
        assert_eq!(listener.dir_for(1000), listener.dir_for(1001));
        let uid = ShaderCache {
            per_uid: true,
            ..listener
        };
        assert_eq!(
            uid.dir_for(1000),
            Path::new("/var/cache/vtestd/default/uid-1000")
        );
        assert_ne!(uid.dir_for(1000), uid.dir_for(1001));
    }

    #[test]
    fn prepare_makes_a_private_directory_and_bounds_its_size() {
        let base = scratch("bound");
        let cache = ShaderCache::new(base.clone(), true, 1000);
        let dir = cache.prepare(7).unwrap();
        assert_eq!(dir, base.join("uid-7"));
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // Under the bound: kept.
        std::fs::create_dir(dir.join("mesa_shader_cache_sf")).unwrap();
        let file = dir.join("mesa_shader_cache_sf/foz.db");
        std::fs::write(&file, vec![0u8; 600]).unwrap();
        cache.prepare(7).unwrap();
        assert!(file.exists());
        // Over it: emptied, the directory kept.
        std::fs::write(dir.join("other"), vec![0u8; 600]).unwrap();
        cache.prepare(7).unwrap();
        assert!(!file.exists());
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        // Opened up by someone: closed again.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        cache.prepare(7).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_symlink_is_not_a_cache_directory() {
        let base = scratch("symlink");
        std::fs::create_dir_all(&base).unwrap();
        std::os::unix::fs::symlink("/", base.join("uid-3")).unwrap();
        let cache = ShaderCache::new(base.clone(), true, 1 << 30);
        assert!(cache.prepare(3).is_err());
        assert!(cache.prepare_or_warn(3).is_none());
        assert!(cache.warned.load(Ordering::Relaxed));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn workers_get_the_single_file_cache_or_none() {
        let off = worker_env(None, 0);
        assert!(SHADER_CACHE_VARS.iter().all(|v| off.contains(&(*v, None))));
        assert_eq!(
            off.last(),
            Some(&("MESA_SHADER_CACHE_DISABLE", Some("true".into())))
        );
        let on = worker_env(Some(Path::new("/var/cache/vtestd/default")), 512 << 20);
        let set: Vec<_> = on.iter().filter(|(_, v)| v.is_some()).collect();
        assert_eq!(
            set,
            [
                &(
                    "MESA_SHADER_CACHE_DIR",
                    Some("/var/cache/vtestd/default".into())
                ),
                &("MESA_DISK_CACHE_SINGLE_FILE", Some("1".into())),
                &("MESA_SHADER_CACHE_MAX_SIZE", Some("512M".into())),
            ]
        );
        assert!(on.contains(&("MESA_SHADER_CACHE_DISABLE", None)));
        // Removed before set: the broker's own MESA_SHADER_CACHE_DIR never wins.
        let removed = on
            .iter()
            .position(|e| e == &("MESA_SHADER_CACHE_DIR", None));
        let set = on
            .iter()
            .position(|(k, v)| *k == "MESA_SHADER_CACHE_DIR" && v.is_some());
        assert!(removed < set);
    }
}
