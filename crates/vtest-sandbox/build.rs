//! Compiles the seccomp policies in `policies/seccomp/` into BPF at build time,
//! so that a broken policy breaks the build.
//!
//! Policy files: `common.json` plus one file per profile (`llvmpipe.json`,
//! `gpu.json`), each `{"init": [rules], "steady": [rules]}` where a rule is a
//! seccompiler JSON rule (`syscall`, optional `args`, optional `comment`).
//! Each (profile, phase) filter is common + profile rules, default action
//! `trap`. Every syscall allowed in steady state must also be allowed at init
//! (the filters stack).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

use seccompiler::TargetArch;
use serde_json::{json, Value};

fn read(path: &Path) -> Value {
    println!("cargo:rerun-if-changed={}", path.display());
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rules<'a>(file: &'a Value, phase: &str, path: &Path) -> &'a Vec<Value> {
    file[phase]
        .as_array()
        .unwrap_or_else(|| panic!("{}: missing \"{phase}\" list", path.display()))
}

fn names_of(rules: &[&Value]) -> BTreeSet<String> {
    rules
        .iter()
        .map(|r| {
            r["syscall"]
                .as_str()
                .expect("rule without syscall")
                .to_string()
        })
        .collect()
}

fn names(rules: &[Value]) -> BTreeSet<String> {
    names_of(&rules.iter().collect::<Vec<_>>())
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = manifest.join("../../policies/seccomp");
    let arch_name = env::var("CARGO_CFG_TARGET_ARCH").unwrap();
    let arch = TargetArch::try_from(arch_name.as_str())
        .unwrap_or_else(|_| panic!("no seccomp support for {arch_name}"));
    let common_path = dir.join("common.json");
    let common = read(&common_path);
    let families = families(&read(&dir.join("families.json")));
    let mut out = String::new();
    for profile in ["llvmpipe", "gpu"] {
        let path = dir.join(format!("{profile}.json"));
        let extra = read(&path);
        let mut init_names = BTreeSet::new();
        for phase in ["init", "steady"] {
            let mut list = rules(&common, phase, &common_path).clone();
            list.extend(rules(&extra, phase, &path).iter().cloned());
            expand_families(&mut list, &families, arch, profile);
            let allowed = names(&list);
            if phase == "init" {
                init_names = allowed.clone();
            } else if let Some(missing) = allowed.difference(&init_names).next() {
                panic!("{profile}: {missing} is allowed in steady state but not at init");
            }
            let filter = json!({
                "worker": {
                    "mismatch_action": "trap",
                    "match_action": "allow",
                    "filter": list,
                }
            });
            let compiled = seccompiler::compile_from_json(filter.to_string().as_bytes(), arch)
                .unwrap_or_else(|e| panic!("{profile}/{phase} policy: {e}"));
            let konst = format!("{}_{}", profile.to_uppercase(), phase.to_uppercase());
            emit_program(&mut out, &konst, &compiled["worker"]);
            write!(out, "const {konst}_NAMES: &[&str] = &[").unwrap();
            for n in &allowed {
                write!(out, "{n:?},").unwrap();
            }
            writeln!(out, "];").unwrap();
        }
    }
    // The render server's box: one filter for its whole life (installed
    // before it is exec'd; it cannot tighten itself), no common part.
    {
        let path = dir.join("render-server.json");
        let file = read(&path);
        let mut list = rules(&file, "rules", &path).clone();
        expand_families(&mut list, &families, arch, "render-server");
        let allowed = names(&list);
        let filter = json!({
            "render_server": {
                "mismatch_action": "kill_process",
                "match_action": "allow",
                "filter": list,
            }
        });
        let compiled = seccompiler::compile_from_json(filter.to_string().as_bytes(), arch)
            .unwrap_or_else(|e| panic!("render-server policy: {e}"));
        emit_program(&mut out, "RENDER_SERVER", &compiled["render_server"]);
        write!(out, "const RENDER_SERVER_NAMES: &[&str] = &[").unwrap();
        for n in &allowed {
            write!(out, "{n:?},").unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    for (file, konst) in [
        ("no-clone3.json", "NO_CLONE3"),
        ("no-open.json", "NO_OPEN"),
        ("no-wx.json", "NO_WX"),
        ("no-wx-llvmpipe.json", "NO_WX_LLVMPIPE"),
        ("no-tgkill.json", "NO_TGKILL"),
        ("reaper.json", "REAPER"),
    ] {
        let filter = read(&dir.join(file));
        let wrapped = json!({ "f": without_comment(&filter) });
        let compiled = seccompiler::compile_from_json(wrapped.to_string().as_bytes(), arch)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        emit_program(&mut out, konst, &compiled["f"]);
    }
    let dest = PathBuf::from(env::var("OUT_DIR").unwrap()).join("policies.rs");
    fs::write(dest, out).unwrap();
}

/// `families.json`: lists of system calls that do one operation.
fn families(file: &Value) -> Vec<Vec<String>> {
    file["families"]
        .as_array()
        .expect("families.json: missing \"families\" list")
        .iter()
        .map(|f| {
            f.as_array()
                .expect("families.json: a family is a list")
                .iter()
                .map(|n| n.as_str().expect("families.json: a name").to_string())
                .collect()
        })
        .collect()
}

/// Adds every member of a family (that the target architecture has) wherever
/// a rule allows one member without argument filters. A family member named
/// with argument filters is refused: members place their arguments
/// differently (`open`'s path is `openat`'s second argument).
fn expand_families(
    list: &mut Vec<Value>,
    families: &[Vec<String>],
    arch: TargetArch,
    profile: &str,
) {
    let (filtered, unfiltered): (Vec<&Value>, Vec<&Value>) =
        list.iter().partition(|r| r.get("args").is_some());
    let (filtered, unfiltered) = (names_of(&filtered), names_of(&unfiltered));
    let all = names(list);
    for family in families {
        if let Some(f) = family.iter().find(|n| filtered.contains(*n)) {
            panic!("{profile}: {f} has argument filters but is in the family {family:?}");
        }
        if !family.iter().any(|n| unfiltered.contains(n)) {
            continue;
        }
        for member in family {
            if !all.contains(member) && on_arch(member, arch) {
                list.push(json!({ "syscall": member, "comment": "same operation as its family" }));
            }
        }
    }
}

/// A filter file's own top-level comment is ours, not seccompiler's.
fn without_comment(filter: &Value) -> Value {
    let mut f = filter.clone();
    if let Some(map) = f.as_object_mut() {
        map.remove("comment");
    }
    f
}

/// `const NAME: &[u8]` holding the program's instructions in native layout.
fn emit_program(out: &mut String, name: &str, program: &[seccompiler::sock_filter]) {
    write!(out, "const {name}: &[u8] = &[").unwrap();
    for insn in program {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
        for b in bytes {
            write!(out, "{b},").unwrap();
        }
    }
    writeln!(out, "];").unwrap();
}

/// Whether seccompiler knows system call `name` on `arch` (the target's,
/// never the host's): policies are in its spelling, which a system call
/// table crate need not share (the `syscalls` crate calls aarch64's
/// `newfstatat` `fstatat`), so it is asked directly.
fn on_arch(name: &str, arch: TargetArch) -> bool {
    let probe = json!({
        "probe": {
            "mismatch_action": "trap",
            "match_action": "allow",
            "filter": [{ "syscall": name }],
        }
    });
    seccompiler::compile_from_json(probe.to_string().as_bytes(), arch).is_ok()
}
