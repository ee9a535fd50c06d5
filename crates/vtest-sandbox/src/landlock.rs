//! Landlock: read-only where rendering reads (executing only the files the
//! box names), read-write only on the render
//! node (and the opt-in shader cache), nothing else; no TCP; no abstract
//! unix sockets or signals outside the sandbox (ABI 6 scoping). Best effort
//! below the kernel's ABI; what was enforced is reported.

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};

use crate::{Layer, Outcome, RootFs, SandboxError};

/// The newest ABI this code knows how to use.
const TARGET: ABI = ABI::V6;

pub(crate) fn restrict(
    root: &RootFs,
    report: &mut Vec<(Layer, Outcome)>,
) -> Result<(), SandboxError> {
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    // Reading is not executing: only `root.executables` may be exec'd.
    let read = AccessFs::from_read(TARGET) & !AccessFs::Execute;
    let exec = AccessFs::from_read(TARGET);
    // Device nodes: read, write and (ABI 5) device ioctls.
    let device = read | AccessFs::WriteFile | AccessFs::IoctlDev;
    let writable = AccessFs::from_all(TARGET) & !AccessFs::Execute;
    let mut read_only = root.read_only_dirs.clone();
    read_only.extend(root.read_only_files.iter().cloned());
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET))
        .map_err(err)?
        .handle_access(AccessNet::from_all(TARGET))
        .map_err(err)?
        .scope(Scope::from_all(TARGET))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(existing(&read_only), read))
        .map_err(err)?
        .add_rules(path_beneath_rules(existing(&root.executables), exec))
        .map_err(err)?
        .add_rules(path_beneath_rules(existing(&root.devices), device))
        .map_err(err)?
        .add_rules(path_beneath_rules(existing(&root.writable_dirs), writable))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    let outcome = match status.ruleset {
        RulesetStatus::FullyEnforced => Outcome::Applied,
        RulesetStatus::PartiallyEnforced => {
            Outcome::Partial("kernel lacks some Landlock rights (older ABI)".into())
        }
        RulesetStatus::NotEnforced => Outcome::Unavailable("Landlock not supported".into()),
    };
    report.push((Layer::Landlock, outcome));
    Ok(())
}

fn existing(paths: &[std::path::PathBuf]) -> Vec<&std::path::PathBuf> {
    paths.iter().filter(|p| p.exists()).collect()
}
