//! `vtestd cdi`: a Container Device Interface spec for the configured
//! default listener. A container that asks for `vtestd.dev/gpu=default` gets
//! the socket directory, the socket at Mesa 22.3's fixed path
//! `/tmp/.virgl_test`, and the environment that selects the virgl driver.

use serde_json::json;
use vtest_broker::config::Config;

use crate::cli::CdiArgs;

/// The CDI kind: `podman run --device vtestd.dev/gpu=default`.
pub const KIND: &str = "vtestd.dev/gpu";

pub fn spec(config: &Config) -> Result<serde_json::Value, String> {
    let listener = config.listeners.first().ok_or("no listener configured")?;
    let socket = listener.path.display().to_string();
    let dir = listener
        .path
        .parent()
        .ok_or("the socket path has no directory")?
        .display()
        .to_string();
    if dir == "/tmp" || dir == "/" {
        return Err(format!(
            "the socket {socket} is not in a directory of its own: containers would get \
             the host's {dir}; configure a listener path such as /run/vtestd/vtest.sock"
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
                        "options": ["bind", "rw", "nosuid", "nodev", "noexec"],
                    },
                    {
                        "hostPath": socket,
                        "containerPath": "/tmp/.virgl_test",
                        "options": ["bind", "rw", "nosuid", "nodev", "noexec"],
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

    #[test]
    fn spec_names_the_socket_its_directory_and_the_driver() {
        let mut config = Config::default();
        config.listeners[0].path = "/run/vtestd/vtest.sock".into();
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
}
