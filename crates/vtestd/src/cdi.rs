//! `vtestd cdi`: a Container Device Interface spec for the configured
//! default listener. A container that asks for `vtestd.dev/gpu=default` gets
//! the socket directory, the socket at Mesa 22.3's fixed path
//! `/tmp/.virgl_test`, and the environment that selects the virgl driver.
//!
//! Both mounts are read-only: connecting needs write permission on the
//! socket inode, not a writable mount, and a writable one would let root in
//! a container unlink the socket and bind its own server in its place. The
//! directory must hold client sockets only: a spec is refused when the admin
//! socket is in it.

use serde_json::json;
use vtest_broker::config::Config;

use crate::cli::CdiArgs;

/// The CDI kind: `podman run --device vtestd.dev/gpu=default`.
pub const KIND: &str = "vtestd.dev/gpu";

/// Options of every mount given to containers.
const MOUNT_OPTIONS: [&str; 5] = ["bind", "ro", "nosuid", "nodev", "noexec"];

pub fn spec(config: &Config) -> Result<serde_json::Value, String> {
    let listener = config.listeners.first().ok_or("no listener configured")?;
    let socket = listener.path.display().to_string();
    let parent = listener
        .path
        .parent()
        .ok_or("the socket path has no directory")?;
    let dir = parent.display().to_string();
    if dir == "/tmp" || dir == "/" {
        return Err(format!(
            "the socket {socket} is not in a directory of its own: containers would get \
             the host's {dir}; configure a listener path such as /run/vtestd/vtest.sock"
        ));
    }
    let admin = &config.server.admin_socket;
    if admin.starts_with(parent) {
        return Err(format!(
            "the admin socket {} is in {dir}, the directory containers would get; \
             configure admin_socket outside it, such as /run/vtestd-admin/admin.sock",
            admin.display()
        ));
    }
    Ok(json!({
        "cdiVersion": "0.6.0",
        "kind": KIND,
        "devices": [{
            "name": "default",
            "containerEdits": {
                "env": [
                    "GALLIUM_DRIVER=virpipe",
                    format!("VTEST_SOCKET_NAME={socket}"),
                ],
                "mounts": [
                    {
                        "hostPath": dir,
                        "containerPath": dir,
                        "options": MOUNT_OPTIONS,
                    },
                    {
                        "hostPath": socket,
                        "containerPath": "/tmp/.virgl_test",
                        "options": MOUNT_OPTIONS,
                    },
                ],
            },
        }],
    }))
}

pub fn run(args: CdiArgs) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load_or_default(args.config.config.as_deref())?;
    let mut text = serde_json::to_string_pretty(&spec(&config)?)?;
    text.push('\n');
    match &args.output {
        Some(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text)?;
        }
        None => print!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packaged layout: the client socket and the admin socket in
    /// directories of their own.
    fn packaged() -> Config {
        let mut config = Config::default();
        config.listeners[0].path = "/run/vtestd/vtest.sock".into();
        config.server.admin_socket = "/run/vtestd-admin/admin.sock".into();
        config
    }

    #[test]
    fn spec_names_the_socket_its_directory_and_the_driver() {
        let config = packaged();
        let spec = spec(&config).unwrap();
        assert_eq!(spec["kind"], KIND);
        let edits = &spec["devices"][0]["containerEdits"];
        assert_eq!(edits["env"][0], "GALLIUM_DRIVER=virpipe");
        assert_eq!(edits["mounts"][0]["hostPath"], "/run/vtestd");
        assert_eq!(edits["mounts"][1]["containerPath"], "/tmp/.virgl_test");
        assert_eq!(edits["mounts"][1]["hostPath"], "/run/vtestd/vtest.sock");
        assert!(
            super::spec(&Config::default()).is_err(),
            "/tmp is never exported"
        );
    }

    #[test]
    fn every_mount_is_read_only() {
        let spec = spec(&packaged()).unwrap();
        let mounts = spec["devices"][0]["containerEdits"]["mounts"]
            .as_array()
            .unwrap();
        assert_eq!(mounts.len(), 2);
        for m in mounts {
            let options: Vec<&str> = m["options"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.as_str().unwrap())
                .collect();
            assert!(options.contains(&"ro"), "{m}");
            assert!(options.contains(&"bind"), "{m}");
        }
        let text = serde_json::to_string(&spec).unwrap();
        assert!(!text.contains("\"rw\""), "a writable mount: {text}");
    }

    #[test]
    fn a_directory_holding_the_admin_socket_is_never_exported() {
        for admin in ["/run/vtestd/admin.sock", "/run/vtestd/sub/admin.sock"] {
            let mut config = packaged();
            config.server.admin_socket = admin.into();
            let e = spec(&config).unwrap_err();
            assert!(e.contains("/run/vtestd-admin/admin.sock"), "{e}");
        }
        let mut config = packaged();
        config.server.admin_socket = "/run/vtestd-other/admin.sock".into();
        assert!(spec(&config).is_ok(), "a sibling directory is not inside");
    }
}
