//! `vtestd check-config`, `vtestd status`, `vtestd metrics`.

use std::path::PathBuf;

use vtest_broker::config::Config;

use crate::cli::{AdminArg, ConfigArg, StatusArgs};

pub fn check_config(args: ConfigArg) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load_or_default(args.config.as_deref())?;
    let source = match &args.config {
        Some(p) => p.display().to_string(),
        None if std::path::Path::new(vtest_broker::config::DEFAULT_CONFIG).exists() => {
            vtest_broker::config::DEFAULT_CONFIG.to_string()
        }
        None => "built-in defaults (no configuration file)".to_string(),
    };
    println!("# effective settings from {source}");
    print!("{}", config.to_toml());
    for l in &config.listeners {
        print!("{}", effective_sandbox(l)?);
    }
    Ok(())
}

/// What a worker of listener `l` gets of its sandbox on this host: a real
/// worker process applies it (`vtestd worker --check-sandbox`) and says.
fn effective_sandbox(
    l: &vtest_broker::config::ListenerConfig,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut text = format!("# sandbox of listener {:?} on this host\n", l.name);
    if !l.sandbox {
        text.push_str("#   off (sandbox = false): workers run unconfined\n");
        return Ok(text);
    }
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["worker", "--check-sandbox"]);
    if let Some(node) = &l.render_node {
        cmd.arg("--rendernode").arg(node);
    }
    if !l.sandbox_allow_missing.is_empty() {
        cmd.arg(format!(
            "--sandbox-allow-missing={}",
            l.sandbox_allow_missing.join(",")
        ));
    }
    let out = cmd.stdin(std::process::Stdio::null()).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        text.push_str(&format!("#   {line}\n"));
    }
    Ok(text)
}

fn admin_socket(args: &AdminArg) -> Result<PathBuf, Box<dyn std::error::Error>> {
    if let Some(p) = &args.admin_socket {
        return Ok(p.clone());
    }
    Ok(Config::load_or_default(args.config.config.as_deref())?
        .server
        .admin_socket)
}

fn query(args: &AdminArg) -> Result<vtest_broker::status::Status, Box<dyn std::error::Error>> {
    let socket = admin_socket(args)?;
    vtest_broker::admin::query(&socket)
        .map_err(|e| format!("cannot reach the broker at {}: {e}", socket.display()).into())
}

pub fn status(args: StatusArgs) -> Result<(), Box<dyn std::error::Error>> {
    let status = query(&args.admin)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.text());
    }
    Ok(())
}

pub fn metrics(args: AdminArg) -> Result<(), Box<dyn std::error::Error>> {
    print!("{}", query(&args)?.prometheus());
    Ok(())
}
