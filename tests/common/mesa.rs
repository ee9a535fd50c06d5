//! Running real Mesa clients (`GALLIUM_DRIVER=virpipe`) against a server.
//!
//! Mesa 22.3 ignores `VTEST_SOCKET_NAME` and always connects to
//! `/tmp/.virgl_test`, so every client runs through
//! [`Server::client_command`]: a private mount namespace with the server's
//! directory bind-mounted over /tmp. X still works there because Xlib connects
//! to the abstract socket `@/tmp/.X11-unix/X<n>` (see [`super::xvfb`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::server::Server;
use super::xvfb::Xvfb;

/// A fresh directory for client outputs. It must be outside /tmp so that it is
/// the same path inside the clients' mount namespace (where /tmp is the
/// server's directory): cargo's target directory, unless the checkout itself
/// lives under /tmp.
pub fn work_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = outputs_root().join(format!("mesa-{tag}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create work dir");
    dir
}

/// Where [`work_dir`] makes its directories: `CARGO_TARGET_TMPDIR`, or
/// `/var/tmp/vtestd-tests` when that is hidden by a client's private /tmp.
pub fn outputs_root() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let resolved = fs::canonicalize(&target).unwrap_or_else(|_| target.clone());
    if hidden_by_private_tmp(&resolved) {
        PathBuf::from("/var/tmp/vtestd-tests")
    } else {
        target
    }
}

/// Whether `path` is /tmp or below it (then a client's private /tmp hides it).
pub fn hidden_by_private_tmp(path: &Path) -> bool {
    path.starts_with("/tmp")
}

/// `program args...` as a Mesa virpipe client of `server`, on `xvfb`'s display.
pub fn mesa_command(server: &Server, xvfb: &Xvfb, program: &str, args: &[&str]) -> Command {
    let mut c = server.client_command(program, args);
    c.env("DISPLAY", xvfb.display())
        .env("GALLIUM_DRIVER", "virpipe")
        // Identical work on every run, and nothing written to $HOME/.cache.
        .env("MESA_SHADER_CACHE_DISABLE", "true")
        // piglit: no wflinfo here, so don't let it guess what to skip.
        .env("PIGLIT_NO_FAST_SKIP", "1")
        .env_remove("LIBGL_ALWAYS_SOFTWARE")
        .env_remove("LIBGL_ALWAYS_INDIRECT")
        .env_remove("VTEST_SOCKET_NAME");
    c
}

/// What a finished (or killed) client did.
pub struct ClientOutput {
    /// The command line, for messages.
    pub cmdline: String,
    /// Exit status; `None` if it could not be waited for.
    pub status: Option<ExitStatus>,
    /// Whether it was killed for running past its time limit.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ClientOutput {
    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.map(|s| s.success()).unwrap_or(false)
    }

    /// A multi-line description: command, status, stdout/stderr tails.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "command: {}", self.cmdline);
        let _ = writeln!(
            s,
            "status: {}{} after {:.1} s",
            self.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into()),
            if self.timed_out {
                " (killed: timed out)"
            } else {
                ""
            },
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "--- client stdout (tail) ---\n{}",
            tail(&self.stdout, 6000)
        );
        let _ = writeln!(
            s,
            "--- client stderr (tail) ---\n{}",
            tail(&self.stderr, 6000)
        );
        s
    }
}

/// The last `max` bytes of `s` (on a char boundary).
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs `cmd` to completion in its own process group, with stdout and stderr
/// captured in files under `dir`; after `limit` the whole group is SIGKILLed.
pub fn run_client(mut cmd: Command, dir: &Path, name: &str, limit: Duration) -> ClientOutput {
    let cmdline = format!("{cmd:?}");
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(
            fs::File::create(&out_path).expect("create stdout file"),
        ))
        .stderr(Stdio::from(
            fs::File::create(&err_path).expect("create stderr file"),
        ))
        .process_group(0);
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("spawn {cmdline}: {e}"),
    };
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        if start.elapsed() > limit {
            timed_out = true;
            // The group id is the child's pid; the child is not reaped yet, so
            // the group is still ours.
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            break child.wait().ok();
        }
        sleep(Duration::from_millis(20));
    };
    ClientOutput {
        cmdline,
        status,
        timed_out,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// The message for a failed end-to-end check: what went wrong, the client's
/// output, the server's log and Xvfb's log.
pub fn failure(what: &str, out: &ClientOutput, server: &Server, xvfb: &Xvfb) -> String {
    format!(
        "{what}\nserver: {:?} (pid {}), display {}\n{}--- server log (tail) ---\n{}\n--- Xvfb log ---\n{}",
        server.kind,
        server.pid(),
        xvfb.display(),
        out.describe(),
        tail(&server.log_text(), 8000),
        tail(&xvfb.log_text(), 2000),
    )
}

/// Parses glmark2's `glmark2 Score: <n>` line.
pub fn glmark2_score(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("glmark2 Score:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Parses glmark2's `GL_RENDERER:` line.
pub fn glmark2_renderer(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("GL_RENDERER:"))
        .map(|v| v.trim().to_string())
}

/// Outcome of a piglit run: test name → result (`pass`, `fail`, `skip`, ...).
#[derive(Debug, Default)]
pub struct PiglitResults {
    pub tests: BTreeMap<String, String>,
}

impl PiglitResults {
    /// How many tests ended with `result`.
    pub fn count(&self, result: &str) -> usize {
        self.tests.values().filter(|r| *r == result).count()
    }

    /// Tests that neither passed nor were skipped (fail, crash, timeout,
    /// incomplete, warn, dmesg-*).
    pub fn failures(&self) -> usize {
        self.tests
            .values()
            .filter(|r| !matches!(r.as_str(), "pass" | "skip" | "notrun"))
            .count()
    }

    /// Names of the tests with `result`.
    pub fn with_result(&self, result: &str) -> Vec<&str> {
        self.tests
            .iter()
            .filter(|(_, r)| *r == result)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// `pass 27, fail 0, skip 3, ... (total 30)`.
    pub fn summary(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in self.tests.values() {
            *counts.entry(r.as_str()).or_default() += 1;
        }
        for k in ["pass", "fail", "crash", "skip"] {
            counts.entry(k).or_default();
        }
        let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!("{} (total {})", parts.join(", "), self.tests.len())
    }
}

/// Parses `piglit summary console <results>`: one `name: result` line per test,
/// then a `summary:` block.
pub fn parse_piglit_console(text: &str) -> PiglitResults {
    let mut res = PiglitResults::default();
    for line in text.lines() {
        if line.trim() == "summary:" {
            break;
        }
        if let Some((name, result)) = line.rsplit_once(": ") {
            let result = result.trim();
            if !name.is_empty() && !result.is_empty() && !result.contains(' ') {
                res.tests
                    .insert(name.trim().to_string(), result.to_string());
            }
        }
    }
    res
}

/// The piglit profile the end-to-end test runs (30 tests, a few seconds).
pub const PIGLIT_PROFILE: &str = "sanity";

/// Runs piglit's `profile` against `server` (tests are run 2 at a time, each
/// limited to 60 s; the whole run to `limit`) and reads back the results.
/// On failure returns the message to panic with.
pub fn run_piglit(
    server: &Server,
    xvfb: &Xvfb,
    profile: &str,
    limit: Duration,
) -> Result<PiglitResults, String> {
    run_piglit_as(server, xvfb, profile, limit, Guest::Host)
}

/// Where a Mesa client comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guest {
    /// This host's Mesa (22.3 on Debian 12), in a private mount namespace.
    Host,
    /// Mesa 25 from the Debian 13 root ([`super::guest`]).
    Debian13,
}

/// `program args...` from `guest` against `server`; `dir` holds outputs.
pub fn guest_command(
    guest: Guest,
    server: &Server,
    xvfb: &Xvfb,
    dir: &Path,
    program: &str,
    args: &[&str],
) -> Command {
    match guest {
        Guest::Host => mesa_command(server, xvfb, program, args),
        Guest::Debian13 => super::guest::debian13_command(server, xvfb, &[dir], program, args),
    }
}

/// [`run_piglit`] with the client from `guest`.
pub fn run_piglit_as(
    server: &Server,
    xvfb: &Xvfb,
    profile: &str,
    limit: Duration,
    guest: Guest,
) -> Result<PiglitResults, String> {
    let dir = work_dir("piglit");
    let results = dir.join("results");
    let results_s = results.to_str().expect("utf-8 path").to_string();
    let cmd = guest_command(
        guest,
        server,
        xvfb,
        &dir,
        "piglit",
        &[
            "run",
            "-p",
            "glx",
            "-j",
            "2",
            "--timeout",
            "60",
            "-l",
            "verbose",
            profile,
            &results_s,
        ],
    );
    let out = run_client(cmd, &dir, "piglit-run", limit);
    if !out.success() {
        return Err(failure("`piglit run` failed", &out, server, xvfb));
    }
    // The piglit that wrote the results reads them.
    let mut summary = match guest {
        Guest::Host => {
            let mut c = Command::new("piglit");
            c.args(["summary", "console"]).arg(&results);
            c
        }
        Guest::Debian13 => {
            let args = ["summary", "console", results_s.as_str()];
            guest_command(guest, server, xvfb, &dir, "piglit", &args)
        }
    };
    let summary = summary
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("piglit summary console: {e}"))?;
    let text = String::from_utf8_lossy(&summary.stdout).into_owned();
    let parsed = parse_piglit_console(&text);
    if !summary.status.success() || parsed.tests.is_empty() {
        return Err(format!(
            "could not read piglit results in {} ({}):\n{}\n{}\n{}",
            results.display(),
            summary.status,
            text,
            String::from_utf8_lossy(&summary.stderr),
            failure("(the piglit run)", &out, server, xvfb)
        ));
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(parsed)
}
