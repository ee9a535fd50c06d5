//! A stage for robustness tests: a real `vtestd serve`, a well-behaved client
//! (a [`Tenant`]) connected throughout, a sampler recording the memory the
//! other workers (the attackers') and the broker hold, and the checks that
//! must hold after any attack: the broker is alive, the tenant completes a
//! checked round trip, a fresh client is served, every other worker is gone,
//! no zombies, the broker's fd count is back where it was, and the log
//! names what happened.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::os::unix::fs::FileExt;

use vtest_client::{Box3, Client, Transfer2Args};

use super::procs::{children, eventually, wait_for_children};
use super::procstat::{fd_count, mib, rss_kib, worker_pss_kib, worker_rss_kib, zombie_children};
use super::server::{Server, ServerKind};
use super::tenant::Tenant;

/// Bytes of a [`Tenant`]'s shared memory (a 64x64 BGRA texture).
pub const SHM_BYTES: u32 = 64 * 64 * 4;

/// A [`Tenant`] round trip that reports what went wrong instead of
/// panicking, so that a failure can carry the server's log.
pub trait TryRoundTrip {
    fn try_round_trip(&mut self, seed: u8) -> Result<(), String>;
}

impl TryRoundTrip for Tenant {
    fn try_round_trip(&mut self, seed: u8) -> Result<(), String> {
        let pattern: Vec<u8> = (0..SHM_BYTES as usize)
            .map(|i| {
                (i as u8)
                    .wrapping_mul(7)
                    .wrapping_add(seed ^ (i >> 9) as u8)
            })
            .collect();
        self.shm
            .write_all_at(&pattern, 0)
            .map_err(|e| format!("write shm: {e}"))?;
        let t = Transfer2Args {
            handle: self.handle,
            level: 0,
            bx: Box3::rect(64, 64),
            data_size: SHM_BYTES,
            offset: 0,
        };
        let e = |what: &str, err: vtest_client::Error| format!("{what}: {err}");
        self.client.transfer_put2(&t).map_err(|x| e("put2", x))?;
        if self
            .client
            .busy_wait(self.handle, true)
            .map_err(|x| e("busy_wait", x))?
        {
            return Err("busy after put2 + WAIT".into());
        }
        self.shm
            .write_all_at(&vec![0; pattern.len()], 0)
            .map_err(|e| format!("clear shm: {e}"))?;
        self.client.transfer_get2(&t).map_err(|x| e("get2", x))?;
        if self
            .client
            .busy_wait(self.handle, true)
            .map_err(|x| e("busy_wait", x))?
        {
            return Err("busy after get2 + WAIT".into());
        }
        let mut back = vec![0; pattern.len()];
        self.shm
            .read_exact_at(&mut back, 0)
            .map_err(|e| format!("read shm: {e}"))?;
        if back != pattern {
            let first = back.iter().zip(&pattern).position(|(a, b)| a != b);
            return Err(format!(
                "data came back changed (first difference at {first:?})"
            ));
        }
        Ok(())
    }
}

/// Connects a fresh tenant and completes one checked round trip; returns
/// how long that took (connect to checked data).
pub fn fresh_client_served(server: &Server, name: &str) -> Duration {
    let start = Instant::now();
    let mut t = Tenant::connect(server, name);
    t.round_trip(0xa5);
    start.elapsed()
}

/// Read/write timeout of attacker connections.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Peak memory seen while an attack ran.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    /// Most attacker workers alive at once.
    pub workers: usize,
    /// Peak of the attackers' workers' summed RSS, KiB.
    pub worker_rss: u64,
    /// Peak of the attackers' workers' summed PSS, KiB.
    pub worker_pss: u64,
    /// Peak broker RSS, KiB.
    pub broker_rss: u64,
}

/// One line of the README table.
#[derive(Clone, Debug)]
pub struct Row {
    pub case: String,
    pub saw: String,
    pub logged: String,
    pub fresh: Duration,
    pub mem: Mem,
}

impl Row {
    pub const HEADER: &'static str = "| case | what the attacker saw | what was logged | fresh client served in | memory held during the attack: attacker workers RSS / PSS (count); broker RSS |\n|---|---|---|---|---|";

    pub fn markdown(&self) -> String {
        let m = &self.mem;
        format!(
            "| {} | {} | {} | {} ms | {} / {} MiB ({}); {} MiB |",
            self.case,
            self.saw,
            self.logged,
            self.fresh.as_millis(),
            mib(m.worker_rss),
            mib(m.worker_pss),
            m.workers,
            mib(m.broker_rss)
        )
    }
}

struct Sampler {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    mem: Arc<Mutex<Mem>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    fn start(broker: u32, tenant_worker: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let mem = Arc::new(Mutex::new(Mem::default()));
        let (s, p, m) = (stop.clone(), paused.clone(), mem.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if !p.load(Ordering::SeqCst) {
                    let others: Vec<u32> = children(broker)
                        .into_iter()
                        .filter(|w| *w != tenant_worker)
                        .collect();
                    let rss: u64 = others.iter().map(|w| worker_rss_kib(*w)).sum();
                    let pss: u64 = others.iter().map(|w| worker_pss_kib(*w)).sum();
                    let b = rss_kib(broker);
                    let mut mem = m.lock().unwrap();
                    mem.workers = mem.workers.max(others.len());
                    mem.worker_rss = mem.worker_rss.max(rss);
                    mem.worker_pss = mem.worker_pss.max(pss);
                    mem.broker_rss = mem.broker_rss.max(b);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        Sampler {
            stop,
            paused,
            mem,
            thread: Some(thread),
        }
    }

    fn finish(&mut self) -> Mem {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.mem.lock().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What a case reports back to [`Arena::finish`].
#[derive(Default)]
pub struct Outcome {
    /// What the attacker saw, in a few words.
    pub saw: String,
    /// Substrings the log must contain, each at least this many times.
    pub logged: Vec<(String, usize)>,
}

impl Outcome {
    pub fn new(saw: impl Into<String>) -> Outcome {
        Outcome {
            saw: saw.into(),
            logged: Vec::new(),
        }
    }

    /// The log must contain `needle`.
    pub fn log(mut self, needle: impl Into<String>) -> Outcome {
        self.logged.push((needle.into(), 1));
        self
    }

    /// The log must contain `needle` at least `n` times.
    pub fn log_n(mut self, needle: impl Into<String>, n: usize) -> Outcome {
        self.logged.push((needle.into(), n));
        self
    }
}

/// A server with a tenant, under attack.
///
/// Fields drop in order: the tenant hangs up before the server stops, so its
/// worker ends on its own instead of being killed after the shutdown grace.
pub struct Arena {
    pub tenant: Tenant,
    sampler: Sampler,
    pub broker: u32,
    pub tenant_worker: u32,
    log_mark: usize,
    broker_fds: usize,
    fresh: Option<Duration>,
    round: u8,
    pub server: Server,
}

impl Arena {
    pub fn new() -> Arena {
        Self::with_server(Server::start(ServerKind::Vtestd))
    }

    pub fn with_server(server: Server) -> Arena {
        let broker = server.pid();
        let mut tenant = Tenant::connect(&server, "tenant");
        let w = wait_for_children(broker, 1);
        assert_eq!(w.len(), 1, "one worker for the tenant");
        tenant.round_trip(1);
        let broker_fds = fd_count(broker);
        let log_mark = server.log_text().len();
        Arena {
            sampler: Sampler::start(broker, w[0]),
            server,
            broker,
            tenant,
            tenant_worker: w[0],
            log_mark,
            broker_fds,
            fresh: None,
            round: 2,
        }
    }

    /// A raw connection (no handshake) with [`IO_TIMEOUT`].
    pub fn raw(&self) -> Client {
        let c = Client::connect(self.server.socket_path()).expect("connect");
        c.set_timeout(Some(IO_TIMEOUT)).unwrap();
        c
    }

    /// A connection after the handshake at `version`.
    pub fn hs(&self, name: &str, version: u32) -> Client {
        let mut c = self.raw();
        let v = c.handshake(name, version).expect("attacker handshake");
        assert_eq!(v, version);
        c
    }

    /// Workers other than the tenant's.
    pub fn attackers(&self) -> Vec<u32> {
        children(self.broker)
            .into_iter()
            .filter(|w| *w != self.tenant_worker)
            .collect()
    }

    /// Waits until `n` attacker workers exist; returns them.
    pub fn wait_attackers(&self, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let a = self.attackers();
            if a.len() >= n || Instant::now() > deadline {
                return a;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The tenant proves it is still served (a checked round trip).
    pub fn tenant_round_trip(&mut self) {
        self.round = self.round.wrapping_add(1);
        let r = self.round;
        if let Err(e) = self.tenant.try_round_trip(r) {
            panic!(
                "the well-behaved client was affected: {e}\n--- log ---\n{}",
                self.log()
            );
        }
    }

    /// Times a fresh client (connect to checked round trip) now, during the
    /// attack; [`Arena::finish`] reports this instead of measuring afterwards.
    pub fn fresh_during(&mut self) -> Duration {
        self.sampler.paused.store(true, Ordering::SeqCst);
        let before = self.attackers();
        let t = fresh_client_served(&self.server, "fresh-during");
        // Not an attacker: wait for the fresh client's worker to exit.
        eventually(10, || self.attackers().iter().all(|w| before.contains(w)));
        self.sampler.paused.store(false, Ordering::SeqCst);
        self.fresh = Some(t);
        t
    }

    /// The server's log since the arena was set up.
    pub fn log(&self) -> String {
        let text = self.server.log_text();
        text.get(self.log_mark..).unwrap_or_default().to_string()
    }

    /// How each client other than the tenant ended, as the broker logged it
    /// (`client ended: ...`, `worker finished: ...`, `worker killed by ...`,
    /// `seccomp violation: ...`), counted.
    pub fn endings(&self) -> BTreeMap<String, usize> {
        let log = self.log();
        // The fresh clients the checks connect are not part of the attack.
        let ours: Vec<String> = log
            .lines()
            .filter(|l| l.contains("name=\"fresh") || l.contains("name=\"tenant"))
            .filter_map(|l| field(l, "client"))
            .collect();
        let mut out = BTreeMap::new();
        for line in log.lines() {
            if field(line, "client").is_some_and(|c| ours.contains(&c)) {
                continue;
            }
            for key in [
                "client ended: ",
                "worker finished: ",
                "worker killed by ",
                "seccomp violation: ",
                "worker exited without",
                "client refused: ",
            ] {
                // The message follows the timestamp and the level; a key
                // inside a (quoted) field value does not count.
                let msg = line
                    .split_once(' ')
                    .map(|(_, r)| r.trim_start())
                    .and_then(|r| r.split_once(' '))
                    .map(|(_, r)| r.trim_start())
                    .unwrap_or("");
                if msg.starts_with(key) {
                    let rest = msg;
                    let end = first_field(rest);
                    let text = rest[..end]
                        .replace("client ended: ", "")
                        .replace("worker finished: ", "");
                    *out.entry(text).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// How the broker logged the end of worker `w` (`client ended: ...` or
    /// `worker finished: ...`), once it has.
    pub fn ending_of(&self, w: u32) -> Option<String> {
        let tag = format!(" worker={w} ");
        self.log()
            .lines()
            .filter(|l| l.contains(&tag))
            .find_map(|l| {
                let i = l
                    .find("client ended: ")
                    .or_else(|| l.find("worker finished: "))?;
                let msg = &l[i..];
                Some(msg[..first_field(msg)].to_string())
            })
    }

    /// Ends the attack and checks that everything else carried on.
    pub fn finish(mut self, case: &str, outcome: Outcome) -> Row {
        let mem = self.sampler.finish();
        assert!(
            self.server.is_alive(),
            "{case}: the broker died; log:\n{}",
            self.log()
        );
        self.tenant_round_trip();
        let fresh = match self.fresh {
            Some(t) => t,
            None => fresh_client_served(&self.server, "fresh"),
        };
        let tw = self.tenant_worker;
        let broker = self.broker;
        assert!(
            eventually(10, || children(broker) == vec![tw]),
            "{case}: workers left behind: {:?} (tenant's is {tw}); log:\n{}",
            children(broker),
            self.log()
        );
        assert!(
            zombie_children(broker).is_empty(),
            "{case}: zombies {:?}",
            zombie_children(broker)
        );
        let fds = self.broker_fds;
        assert!(
            eventually(5, || fd_count(broker) == fds),
            "{case}: the broker holds {} fds, {fds} before the attack",
            fd_count(broker)
        );
        let log = self.log();
        for (needle, n) in &outcome.logged {
            let found = log.matches(needle.as_str()).count();
            assert!(
                found >= *n,
                "{case}: the log names {needle:?} {found} times, expected at least {n}; log:\n{log}"
            );
        }
        // The tenant is still the same client on the same worker.
        self.tenant_round_trip();
        assert_eq!(children(broker), vec![tw]);
        let logged = summarize(&self.endings());
        let row = Row {
            case: case.to_string(),
            saw: outcome.saw,
            logged,
            fresh,
            mem,
        };
        println!("{}", row.markdown());
        row
    }
}

impl Default for Arena {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the fields (` key=value`) of a log message start.
fn first_field(msg: &str) -> usize {
    let b = msg.as_bytes();
    let mut i = 0;
    while let Some(off) = msg[i..].find(' ') {
        let start = i + off + 1;
        let key = b[start..]
            .iter()
            .take_while(|c| c.is_ascii_lowercase() || **c == b'_')
            .count();
        if key > 0 && b.get(start + key) == Some(&b'=') {
            return start - 1;
        }
        i = start;
    }
    msg.len()
}

/// The value of ` key=value` in a log line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let i = line.find(&pat)? + pat.len();
    Some(line[i..].split_whitespace().next()?.to_string())
}

/// `2 × reason A; reason B` (longest first lines cut to keep the table readable).
pub fn summarize(endings: &BTreeMap<String, usize>) -> String {
    if endings.is_empty() {
        return "nothing".into();
    }
    let mut parts: Vec<(usize, &String)> = endings.iter().map(|(k, v)| (*v, k)).collect();
    parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let others: usize = parts.iter().skip(3).map(|(n, _)| n).sum();
    let distinct = parts.len().saturating_sub(3);
    let mut shown: Vec<String> = parts
        .iter()
        .take(3)
        .map(|(n, text)| {
            let mut t = text.replace('|', "\\|");
            if t.len() > 110 {
                let mut end = 107;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t.truncate(end);
                t.push('…');
            }
            if *n > 1 {
                format!("{n} × `{t}`")
            } else {
                format!("`{t}`")
            }
        })
        .collect();
    if distinct > 0 {
        shown.push(format!("{others} more ({distinct} distinct reasons)"));
    }
    shown.join("; ")
}
