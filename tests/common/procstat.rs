//! Resource accounting from /proc: memory, fds, zombies.

use std::fs;

/// A `kB` field of `/proc/<pid>/status` (e.g. `VmRSS`), in KiB; 0 if the
/// process is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    kib_field(&text, field)
}

/// Resident set size of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Proportional set size of `pid` (`/proc/<pid>/smaps_rollup`), KiB: shared
/// pages (libraries, llvmpipe code) are split among the processes mapping them.
pub fn pss_kib(pid: u32) -> u64 {
    match fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        Ok(text) => kib_field(&text, "Pss"),
        Err(_) => 0,
    }
}

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Number of open fds of `pid`.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The state letter of `pid` (`R`, `S`, `Z`, ...), if it exists.
pub fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Children of `pid` that are zombies (exited, not reaped).
pub fn zombie_children(pid: u32) -> Vec<u32> {
    super::procs::children(pid)
        .into_iter()
        .filter(|c| state(*c) == Some('Z'))
        .collect()
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// A small fixed-seed PRNG (SplitMix64), so that every failure reproduces
/// from the seed printed with it.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_ne_bytes());
        }
        out.truncate(n);
        out
    }

    /// A u32 biased toward the values that break parsers.
    pub fn interesting_u32(&mut self) -> u32 {
        const VALUES: [u32; 14] = [
            0,
            1,
            2,
            3,
            4,
            0x7f,
            0xff,
            0xffff,
            0x1_0000,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fffe,
            0xffff_ffff,
            64,
        ];
        match self.below(3) {
            0 => *self.pick(&VALUES),
            1 => self.below(256) as u32,
            _ => self.next_u32(),
        }
    }
}

/// The blocked-signal mask of `pid` (`SigBlk` in `/proc/<pid>/status`).
pub fn blocked_signals(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Every descendant of `pid` (children, their children, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = super::procs::children(pid);
    while let Some(p) = todo.pop() {
        todo.extend(super::procs::children(p));
        out.push(p);
    }
    out
}

/// A worker as the broker knows it (its child: the reaper) and the process
/// that serves the client inside its PID namespace.
pub fn worker_tree(reaper: u32) -> Vec<u32> {
    let mut v = vec![reaper];
    v.extend(descendants(reaper));
    v
}

/// The serving process under a worker's reaper (PID 1 of its namespace),
/// waiting up to 10 s for it to exist.
pub fn inner_worker(reaper: u32) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(p) = super::procs::children(reaper).first() {
            return *p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no serving process under worker {reaper}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Summed RSS of a worker's processes (reaper and server), KiB.
pub fn worker_rss_kib(reaper: u32) -> u64 {
    worker_tree(reaper).iter().map(|p| rss_kib(*p)).sum()
}

/// Summed PSS of a worker's processes (reaper and server), KiB.
pub fn worker_pss_kib(reaper: u32) -> u64 {
    worker_tree(reaper).iter().map(|p| pss_kib(*p)).sum()
}
