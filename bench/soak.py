#!/usr/bin/env python3
"""Soak: many clients through one vtestd broker, watching for leaks.

1. warm-up clients, then the baseline: the broker's RSS (/proc/<pid>/status
   VmRSS) and fd count (/proc/<pid>/fd);
2. --sequential clients one after another (default 10,000);
3. --concurrent clients at once (default 64), each looping for --duration
   seconds: connect, handshake, --round-trips resource round trips with
   checked data, hang up;
4. the end: every worker gone, no zombies, the broker's RSS and fds against
   the baseline, and every client accounted for in the broker's log (one
   `client accepted` and one `worker finished` per client, no worker killed).

Each client speaks the vtest protocol itself (no Mesa): CREATE_RENDERER +
PING + BUSY_WAIT probe + PROTOCOL_VERSION(2), RESOURCE_CREATE2 of a 64x64
texture with 16 KiB of shared memory (the memfd arrives by SCM_RIGHTS), then
per round trip: a pattern written to the memfd, TRANSFER_PUT2, BUSY_WAIT,
memory cleared, TRANSFER_GET2, BUSY_WAIT, pattern checked.

    cargo build --release -p vtestd
    python3 bench/soak.py                       # about 15 minutes
    python3 bench/soak.py --sequential 500 --duration 30   # quick look

Exit status 1 if a client failed or something leaked. See bench/README.md.
"""

import argparse
import json
import mmap
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CREATE_RENDERER = 8
PING_PROTOCOL_VERSION = 10
RESOURCE_BUSY_WAIT = 7
PROTOCOL_VERSION = 11
RESOURCE_CREATE2 = 12
TRANSFER_GET2 = 13
TRANSFER_PUT2 = 14

SIDE = 64
SHM = SIDE * SIDE * 4
PIPE_TEXTURE_2D = 2
B8G8R8A8_UNORM = 1
BIND = 0x8A  # DISPLAY_TARGET | SAMPLER_VIEW | RENDER_TARGET


def log(msg):
    print(msg, flush=True)


def msg(cmd, *words, length=None):
    if length is None:
        length = len(words)
    return struct.pack(f"<{2 + len(words)}I", length, cmd, *words)


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def expect(sock, cmd, length):
    hdr = struct.unpack("<2I", read_exact(sock, 8))
    if hdr != (length, cmd):
        raise RuntimeError(f"expected reply [{length}, {cmd}], got {list(hdr)}")
    return struct.unpack(f"<{length}I", read_exact(sock, 4 * length))


class Client:
    """A v2 vtest client holding one 64x64 texture with shared memory."""

    def __init__(self, path, name):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(path)
        name_b = name.encode() + b"\0"
        hello = msg(CREATE_RENDERER, length=len(name_b)) + name_b
        hello += msg(PING_PROTOCOL_VERSION) + msg(RESOURCE_BUSY_WAIT, 0, 0)
        hello += msg(PROTOCOL_VERSION, 2)
        self.sock.sendall(hello)
        expect(self.sock, PING_PROTOCOL_VERSION, 0)
        expect(self.sock, RESOURCE_BUSY_WAIT, 1)
        (version,) = expect(self.sock, PROTOCOL_VERSION, 1)
        if version != 2:
            raise RuntimeError(f"negotiated version {version}")
        self.sock.sendall(msg(RESOURCE_CREATE2, 1, PIPE_TEXTURE_2D, B8G8R8A8_UNORM, BIND,
                              SIDE, SIDE, 1, 1, 0, 0, SHM))
        _, fds, _, _ = socket.recv_fds(self.sock, 1, 1)
        if len(fds) != 1:
            raise RuntimeError(f"expected one memfd, got {fds}")
        self.shm = mmap.mmap(fds[0], SHM)
        os.close(fds[0])

    def busy_wait(self):
        self.sock.sendall(msg(RESOURCE_BUSY_WAIT, 1, 1))
        (busy,) = expect(self.sock, RESOURCE_BUSY_WAIT, 1)
        if busy:
            raise RuntimeError("busy after BUSY_WAIT(WAIT)")

    def round_trip(self, seed):
        pattern = PATTERNS.get(seed)
        if pattern is None:
            pattern = PATTERNS.setdefault(seed, bytes((i * 7 + seed + (i >> 9)) & 0xFF for i in range(SHM)))
        self.shm[:] = pattern
        box = (1, 0, 0, 0, 0, SIDE, SIDE, 1, SHM, 0)
        self.sock.sendall(msg(TRANSFER_PUT2, *box, length=10 + SHM // 4))
        self.busy_wait()
        self.shm[:] = bytes(SHM)
        self.sock.sendall(msg(TRANSFER_GET2, *box))
        self.busy_wait()
        if self.shm[:] != pattern:
            raise RuntimeError("data came back changed")

    def close(self):
        self.shm.close()
        self.sock.close()


PATTERNS = {}


def proc_status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def descendants(pid):
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        todo += children(p)
        out.append(p)
    return out


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Broker:
    def __init__(self, binary, extra, config):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="vtestd-soak-")
        self.socket = os.path.join(self.dir, ".virgl_test")
        self.admin = os.path.join(self.dir, "admin.sock")
        self.log_path = os.path.join(self.dir, "server.log")
        self.logf = open(self.log_path, "w")
        config_path = os.path.join(self.dir, "vtestd.toml")
        with open(config_path, "w") as f:
            f.write(config)
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        self.proc = subprocess.Popen(
            [binary, "serve", f"--socket-path={self.socket}", f"--admin-socket={self.admin}",
             f"--config={config_path}"] + extra,
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf, env=env)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("vtestd did not start:\n" + self.log_text())
            time.sleep(0.02)
        self.pid = self.proc.pid

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def status(self):
        out = subprocess.run([self.binary, "status", "--json", "--admin-socket", self.admin],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError("vtestd status: " + out.stderr)
        return json.loads(out.stdout)

    def sample(self):
        kids = children(self.pid)
        return {
            "rss": proc_status_kib(self.pid, "VmRSS"),
            "fds": fd_count(self.pid),
            "workers": len(kids),
            "zombies": sum(1 for k in kids if state(k) == "Z"),
        }

    def idle(self):
        """No client served or waiting, the pool full, and no other child."""
        st = self.status()
        pools = sum(l["pool_target"] for l in st["listeners"])
        ready = sum(l["pool_ready"] for l in st["listeners"])
        waiting = sum(l["waiting"] for l in st["listeners"])
        return (not st["clients"] and waiting == 0 and ready == pools
                and len(children(self.pid)) == pools, pools, st)

    def stop(self, keep_log):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()
        if keep_log:
            shutil.copy(self.log_path, keep_log)
        shutil.rmtree(self.dir, ignore_errors=True)


def settle(broker, seconds=60):
    """Waits until only the pool's workers are left; returns (sample, settled)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        idle, _, _ = broker.idle()
        if idle:
            return broker.sample(), True
        time.sleep(0.2)
    return broker.sample(), False


def fmt(s):
    return (f"broker RSS {s['rss'] / 1024:.1f} MiB, {s['fds']} fds, {s['workers']} workers "
            f"(pool included), {s['zombies']} zombies")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vtestd", default=os.path.join(REPO, "target/release/vtestd"))
    ap.add_argument("--server-arg", action="append", default=[], help="extra argument for `vtestd serve`")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--sequential", type=int, default=10_000)
    ap.add_argument("--concurrent", type=int, default=64)
    ap.add_argument("--duration", type=float, default=300, help="seconds of the concurrent phase")
    ap.add_argument("--round-trips", type=int, default=5, help="per concurrent connection")
    ap.add_argument("--report-every", type=float, default=30, help="seconds between progress lines")
    ap.add_argument("--keep-log", help="copy the broker's log there")
    ap.add_argument("--config", default="[server]\nmax_clients_per_uid = 256\n",
                    help="vtestd.toml contents (default: the per-uid cap raised to 256, since every "
                         "soak client has the same uid and reconnects before its last worker is reaped)")
    args = ap.parse_args()

    broker = Broker(args.vtestd, args.server_arg, args.config)
    errors = []
    clients = 0
    samples = []
    try:
        for i in range(args.warmup):
            c = Client(broker.socket, f"warmup-{i}")
            c.round_trip(i & 0xFF)
            c.close()
            clients += 1
        base, ok = settle(broker)
        _, pool, _ = broker.idle()
        log(f"baseline after {args.warmup} clients: {fmt(base)}; pool of {pool}" + ("" if ok else " (NOT SETTLED)"))

        t0 = time.monotonic()
        last = t0
        for i in range(args.sequential):
            try:
                c = Client(broker.socket, f"seq-{i}")
                c.round_trip(i & 0xFF)
                c.close()
            except Exception as e:  # noqa: BLE001 - every failure is reported
                errors.append(f"sequential {i}: {e!r}")
            clients += 1
            now = time.monotonic()
            if now - last >= args.report_every or i + 1 == args.sequential:
                last = now
                s = broker.sample()
                samples.append(("sequential", i + 1, now - t0, s))
                log(f"[{now - t0:7.1f} s] {i + 1:6d} sequential clients "
                    f"({(i + 1) / (now - t0):.1f}/s): {fmt(s)}")
        seq_secs = time.monotonic() - t0
        after_seq, _ = settle(broker)
        log(f"after {args.sequential} sequential clients in {seq_secs:.0f} s: {fmt(after_seq)}")

        stop = threading.Event()
        lock = threading.Lock()
        counts = {"connections": 0, "round_trips": 0}

        def worker(k):
            n = 0
            while not stop.is_set():
                try:
                    c = Client(broker.socket, f"conc-{k}-{n}")
                    for r in range(args.round_trips):
                        c.round_trip((k + n + r) & 0xFF)
                    c.close()
                    with lock:
                        counts["connections"] += 1
                        counts["round_trips"] += args.round_trips
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(f"concurrent {k}/{n}: {e!r}")
                n += 1

        threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(args.concurrent)]
        t1 = time.monotonic()
        for t in threads:
            t.start()
        peak = {"rss": 0, "fds": 0, "workers": 0, "worker_pss": 0}
        last = t1
        while time.monotonic() - t1 < args.duration:
            time.sleep(1)
            s = broker.sample()
            peak["rss"] = max(peak["rss"], s["rss"])
            peak["fds"] = max(peak["fds"], s["fds"])
            peak["workers"] = max(peak["workers"], s["workers"])
            if time.monotonic() - last >= args.report_every:
                last = time.monotonic()
                # Workers: the broker's children (reapers) and the serving
                # processes under them; the pool included.
                pss = sum(pss_kib(k) for k in descendants(broker.pid))
                peak["worker_pss"] = max(peak["worker_pss"], pss)
                with lock:
                    done = dict(counts)
                samples.append(("concurrent", done["connections"], last - t1, s))
                log(f"[{last - t1:7.1f} s] {args.concurrent} concurrent: {done['connections']} connections, "
                    f"{done['round_trips']} round trips; {fmt(s)}; workers PSS {pss / 1024:.0f} MiB")
        stop.set()
        for t in threads:
            t.join(timeout=120)
        clients += counts["connections"] + sum(1 for e in errors if e.startswith("concurrent"))
        end, settled = settle(broker)
        conc_secs = time.monotonic() - t1
        log(f"{args.concurrent} concurrent clients for {conc_secs:.0f} s: {counts['connections']} connections, "
            f"{counts['round_trips']} round trips; peak broker RSS {peak['rss'] / 1024:.1f} MiB, "
            f"{peak['fds']} fds, {peak['workers']} workers, workers PSS {peak['worker_pss'] / 1024:.0f} MiB")
        log(f"end: {fmt(end)}")
        text = broker.log_text()
        accepted = text.count("client accepted")
        finished = text.count("worker finished: client disconnected")
        ended_lines = re.findall(r"client ended: .*", text)
        ended = len(ended_lines)
        killed = sum(1 for line in ended_lines if "killed" in line)
        reasons = {}
        for line in ended_lines:
            reason = re.sub(r" (worker|client|peer_pid)=.*", "", line[len("client ended: "):])
            reasons[reason] = reasons.get(reason, 0) + 1
        log(f"log: {accepted} clients accepted, {finished} workers finished cleanly, "
            f"{ended} ended otherwise ({killed} of them killed); {clients} clients made, {len(errors)} client errors")
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            log(f"  {n} x {reason}")
        leaks = []
        if not settled or end["workers"] != pool or end["zombies"]:
            leaks.append(f"{end['workers']} workers (pool of {pool}) / {end['zombies']} zombies left")
        if end["fds"] > base["fds"]:
            leaks.append(f"broker fds {base['fds']} -> {end['fds']}")
        if end["rss"] > base["rss"] + 2048:
            leaks.append(f"broker RSS {base['rss']} -> {end['rss']} KiB")
        if accepted != finished + ended:
            leaks.append(f"{accepted} accepted but {finished + ended} ended in the log")
        if accepted != clients:
            leaks.append(f"{clients} clients made but {accepted} accepted")
        log(f"broker RSS {base['rss'] / 1024:.1f} -> {end['rss'] / 1024:.1f} MiB, "
            f"fds {base['fds']} -> {end['fds']}")
        for e in errors[:20]:
            log(f"error: {e}")
        if leaks:
            log("LEAKS: " + "; ".join(leaks))
        if errors or leaks or killed:
            return 1
        log("OK: every client served, every worker gone and accounted for, nothing leaked")
        return 0
    finally:
        broker.stop(args.keep_log)


if __name__ == "__main__":
    sys.exit(main())
