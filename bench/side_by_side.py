#!/usr/bin/env python3
"""Side-by-side benchmark: vtestd vs. the reference virgl_test_server.

Both servers run at the same time, each on a socket in its own private
directory, and the workloads alternate between them so that machine noise
hits both alike:

* glmark2 (--off-screen) scenes, one glmark2 process per scene and server,
  alternating server by server and scene by scene, for several rounds;
* connection set-up latency: sequential raw clients, alternating, each doing
  connect -> CREATE_RENDERER("bench") -> PING_PROTOCOL_VERSION -> read the
  8-byte [0,10] reply -> close.

Mesa 22.3 always connects to /tmp/.virgl_test, so every Mesa client runs in a
private mount namespace with the server's directory bind-mounted over /tmp
(`unshare -m`, needs root). X clients still reach Xvfb through the abstract
socket @/tmp/.X11-unix/X<n>.

Ratios are vtestd / reference: > 1 means vtestd is faster for FPS and slower
for latency.  See bench/README.md.
"""

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Scenes that run well (tens to hundreds of FPS) through virgl on llvmpipe.
DEFAULT_SCENES = ["build", "texture", "shading", "bump", "effect2d", "pulsar", "desktop", "buffer"]

CREATE_RENDERER = 8
PING_PROTOCOL_VERSION = 10


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def tail(text, n=3000):
    return text if len(text) <= n else "..." + text[-n:]


class Xvfb:
    """Xvfb -noreset on a free display (picked by Xvfb itself via -displayfd)."""

    def __init__(self):
        r, w = os.pipe()
        self.logf = tempfile.NamedTemporaryFile(prefix="bench-xvfb-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(w), "-noreset", "-nolisten", "tcp",
             "-screen", "0", "1024x768x24"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.logf,
            pass_fds=(w,), start_new_session=True)
        os.close(w)
        data = b""
        deadline = time.monotonic() + 20
        os.set_blocking(r, False)
        while not data.endswith(b"\n"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                os.close(r)
                self.stop()
                raise RuntimeError("Xvfb did not start: " + self.log_text())
            try:
                chunk = os.read(r, 64)
                if not chunk:
                    time.sleep(0.02)
                data += chunk
            except BlockingIOError:
                time.sleep(0.02)
        os.close(r)
        self.number = int(data.strip())
        self.display = ":%d" % self.number

    def log_text(self):
        try:
            with open(self.logf.name, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.logf.name)
        except OSError:
            pass


class Server:
    """A vtest server listening on <private dir>/.virgl_test."""

    def __init__(self, label, argv, env=None):
        self.label = label
        self.argv = list(argv)
        self.env = env
        self.dir = tempfile.mkdtemp(prefix="bench-%s-" % label)
        self.socket = os.path.join(self.dir, ".virgl_test")
        self.log_path = os.path.join(self.dir, "server.log")
        self.restarts = 0
        self.proc = None
        self.logf = None
        try:
            self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise

    def start(self):
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass
        cmd = self.argv + ["--socket-path=" + self.socket]
        if self.logf:
            self.logf.close()
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, start_new_session=True, env=self.env)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError("%s server exited (%s) at start: %s\n%s" % (
                    self.label, self.proc.returncode, shlex.join(cmd), tail(self.log_text())))
            if time.monotonic() > deadline:
                raise RuntimeError("%s server socket never appeared: %s\n%s" % (
                    self.label, shlex.join(cmd), tail(self.log_text())))
            time.sleep(0.02)
        # The socket exists after bind(); give listen() a moment.
        time.sleep(0.05)

    def ensure_alive(self):
        """Restarts the server if it died; returns False if it had died."""
        if self.proc.poll() is None:
            return True
        log("!! %s server died (status %s); restarting. Log tail:\n%s" % (
            self.label, self.proc.returncode, tail(self.log_text(), 1500)))
        self.restarts += 1
        self.start()
        return False

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            # Only the server process itself (by pid), as the tests do.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.logf:
            self.logf.close()
            self.logf = None

    def cleanup(self, keep_logs_dir=None):
        if keep_logs_dir:
            os.makedirs(keep_logs_dir, exist_ok=True)
            shutil.copy(self.log_path, os.path.join(keep_logs_dir, "%s.log" % self.label))
        shutil.rmtree(self.dir, ignore_errors=True)


def mesa_env(xvfb):
    env = dict(os.environ)
    for k in ("LIBGL_ALWAYS_SOFTWARE", "LIBGL_ALWAYS_INDIRECT", "VTEST_SOCKET_NAME"):
        env.pop(k, None)
    env.update(DISPLAY=xvfb.display, GALLIUM_DRIVER="virpipe", MESA_SHADER_CACHE_DISABLE="true")
    return env


def mesa_argv(server, argv):
    """argv run in a private mount namespace where server.dir is /tmp."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /tmp && exec "$@"', server.dir] + list(argv)


def run_client(argv, env, limit):
    """Runs argv in its own process group; kills the group after `limit` s."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    return proc.returncode, timed_out, out.decode(errors="replace"), err.decode(errors="replace")


FPS_RE = re.compile(r"^\[(?P<scene>[^\]]+)\]\s*(?P<opts>.*?):\s*FPS:\s*(?P<fps>[0-9.]+)\s+FrameTime:\s*(?P<ft>[0-9.]+)", re.M)
SCORE_RE = re.compile(r"glmark2 Score:\s*([0-9]+)")
RENDERER_RE = re.compile(r"GL_RENDERER:\s*(.*)")


def glmark2_scene(server, xvfb, scene, duration):
    bench = scene if "duration=" in scene else "%s:duration=%s" % (scene, duration)
    argv = mesa_argv(server, ["glmark2", "--off-screen", "-b", bench])
    rc, timed_out, out, err = run_client(argv, mesa_env(xvfb), limit=float(duration) + 120)
    m = FPS_RE.search(out)
    renderer = RENDERER_RE.search(out)
    renderer = renderer.group(1).strip() if renderer else ""
    problem = None
    if timed_out:
        problem = "timed out"
    elif rc != 0:
        problem = "exit status %s" % rc
    elif not m:
        problem = "no FPS line"
    elif "virgl" not in renderer:
        problem = "GL_RENDERER is %r, not virgl" % renderer
    if problem:
        return None, renderer, "%s on %s: %s\n--- stdout ---\n%s\n--- stderr ---\n%s\n--- server log ---\n%s" % (
            scene, server.label, problem, tail(out, 1500), tail(err, 1500), tail(server.log_text(), 1500))
    return float(m.group("fps")), renderer, None


def bench_glmark2(servers, xvfb, scenes, duration, rounds):
    """Returns {label: {scene: [fps per round]}}, errors."""
    fps = {s.label: {sc: [] for sc in scenes} for s in servers}
    errors = []
    renderer = {}
    total = rounds * len(scenes) * len(servers)
    n = 0
    for r in range(rounds):
        for i, scene in enumerate(scenes):
            order = servers if (r + i) % 2 == 0 else list(reversed(servers))
            for server in order:
                n += 1
                server.ensure_alive()
                value, rend, error = glmark2_scene(server, xvfb, scene, duration)
                if rend:
                    renderer[server.label] = rend
                if error:
                    errors.append(error)
                    log("[%d/%d] round %d %-10s %-9s FAILED: %s" % (n, total, r + 1, scene, server.label, error.splitlines()[0]))
                else:
                    fps[server.label][scene].append(value)
                    log("[%d/%d] round %d %-10s %-9s %8.1f FPS" % (n, total, r + 1, scene, server.label, value))
    return fps, renderer, errors


def ping_once(path, name=b"bench\0", timeout=10.0):
    """connect -> CREATE_RENDERER -> PING -> [0,10]; returns seconds."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        t0 = time.perf_counter()
        s.connect(path)
        s.sendall(struct.pack("<II", len(name), CREATE_RENDERER) + name
                  + struct.pack("<II", 0, PING_PROTOCOL_VERSION))
        buf = b""
        while len(buf) < 8:
            chunk = s.recv(8 - len(buf))
            if not chunk:
                raise RuntimeError("connection closed after %d reply bytes" % len(buf))
            buf += chunk
        t1 = time.perf_counter()
    finally:
        s.close()
    if struct.unpack("<II", buf) != (0, PING_PROTOCOL_VERSION):
        raise RuntimeError("unexpected ping reply %r" % buf)
    return t1 - t0


def percentile(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(0, min(len(v) - 1, math.ceil(p / 100.0 * len(v)) - 1))
    return v[k]


def bench_latency(servers, clients, warmup, gap):
    lat = {s.label: [] for s in servers}
    errors = []
    for i in range(warmup + clients):
        order = servers if i % 2 == 0 else list(reversed(servers))
        for server in order:
            server.ensure_alive()
            try:
                t = ping_once(server.socket)
                if i >= warmup:
                    lat[server.label].append(t)
            except Exception as e:  # noqa: BLE001 - report and go on
                errors.append("latency client %d on %s: %s" % (i, server.label, e))
            if gap:
                time.sleep(gap)
        if (i + 1) % 50 == 0:
            log("latency: %d/%d clients per server" % (i + 1, warmup + clients))
    return lat, errors


def tree_pids(root):
    """`root` and all its descendants."""
    parent = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def tree_pss_kib(root):
    """Proportional set size of a process tree (KiB)."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def active_client(path):
    """A client that created a context and a resource and finished its work."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    name = b"bench\0"
    create = struct.pack("<12I", 10, 2, 1, 2, 1, 0x8a, 64, 64, 1, 1, 0, 0)
    s.sendall(struct.pack("<II", len(name), CREATE_RENDERER) + name
              + struct.pack("<II", 0, PING_PROTOCOL_VERSION)
              + create + struct.pack("<II", 0, 6)          # RESOURCE_CREATE, empty SUBMIT_CMD
              + struct.pack("<4I", 2, 7, 0, 1))            # BUSY_WAIT(0, WAIT)
    want = 8 + 12
    buf = b""
    while len(buf) < want:
        chunk = s.recv(want - len(buf))
        if not chunk:
            raise RuntimeError("active client: connection closed")
        buf += chunk
    return s


def bench_memory(servers, silent, active, settle):
    """PSS of each server's process tree: idle, with `silent` connections that
    never send, and with `active` clients holding a context and a resource."""
    results = {}
    for server in servers:
        server.ensure_alive()
        r = {}
        time.sleep(settle)
        base = tree_pss_kib(server.proc.pid)
        r["idle_kib"] = base
        conns = []
        for _ in range(silent):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(server.socket)
            conns.append(c)
        time.sleep(settle)
        r["silent_kib"] = tree_pss_kib(server.proc.pid) - base
        r["fresh_client_s"] = ping_once(server.socket)
        for c in conns:
            c.close()
        time.sleep(settle)
        clients = [active_client(server.socket) for _ in range(active)]
        time.sleep(settle)
        r["active_total_kib"] = tree_pss_kib(server.proc.pid)
        r["active_per_client_kib"] = r["active_total_kib"] / max(active, 1)
        for c in clients:
            c.close()
        time.sleep(settle)
        results[server.label] = r
        log("memory: %s done" % server.label)
    return results


def ratio(a, b):
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)):
        return None
    return a / b


def cv(xs):
    """Coefficient of variation in percent (None for fewer than 2 values)."""
    if len(xs) < 2 or statistics.mean(xs) == 0:
        return None
    return 100.0 * statistics.stdev(xs) / statistics.mean(xs)


def fmt(x, spec="%.1f"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else spec % x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vtestd", default=os.path.join(REPO, "target/release/vtestd"),
                    help="vtestd binary (run as `VTESTD serve --socket-path=...`); default %(default)s")
    ap.add_argument("--vtestd-cmd", help="full command for the 'vtestd' side instead "
                    "(shell-split; --socket-path=... is appended), e.g. "
                    "'virgl_test_server --use-egl-surfaceless' to check the bench itself")
    ap.add_argument("--reference-cmd", default="virgl_test_server --use-egl-surfaceless",
                    help="reference command (--socket-path=... is appended); default %(default)r")
    ap.add_argument("--scenes", default=",".join(DEFAULT_SCENES),
                    help="comma-separated glmark2 -b scene specs; default %(default)s")
    ap.add_argument("--duration", type=float, default=5, help="seconds per glmark2 scene (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="glmark2 rounds over all scenes (default %(default)s)")
    ap.add_argument("--latency-clients", type=int, default=200,
                    help="measured sequential clients per server (default %(default)s)")
    ap.add_argument("--latency-warmup", type=int, default=5,
                    help="unmeasured clients per server first (default %(default)s)")
    ap.add_argument("--latency-gap-ms", type=float, default=10,
                    help="pause after each latency client, so that one server's teardown "
                    "overlaps the other's set-up less (default %(default)s)")
    ap.add_argument("--shader-cache", choices=["off", "on"], default="off",
                    help="Mesa's on-disk shader cache for BOTH servers (default off, vtestd's "
                    "default). off: the reference runs with MESA_SHADER_CACHE_DISABLE=true. "
                    "on: vtestd gets --shader-cache-dir and the reference MESA_SHADER_CACHE_DIR, "
                    "each a fresh directory, so both start cold")
    ap.add_argument("--skip-glmark2", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--silent-connections", type=int, default=32,
                    help="connections that never send, for the memory figure (default %(default)s)")
    ap.add_argument("--active-clients", type=int, default=64,
                    help="clients holding a context and a resource (default %(default)s)")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    ap.add_argument("--keep-logs", metavar="DIR", help="copy both server logs into DIR")
    args = ap.parse_args()

    if os.geteuid() != 0:
        log("note: `unshare -m` + `mount --bind` need root (or CAP_SYS_ADMIN)")
    if args.vtestd_cmd:
        vtestd_argv = shlex.split(args.vtestd_cmd)
    else:
        if not os.access(args.vtestd, os.X_OK):
            ap.error("%s is not an executable; build it (cargo build --release -p vtestd) "
                     "or pass --vtestd / --vtestd-cmd" % args.vtestd)
        vtestd_argv = [args.vtestd, "serve"]
    reference_argv = shlex.split(args.reference_cmd)
    reference_env = dict(os.environ)
    cache_dirs = []
    if args.shader_cache == "on":
        # Outside /tmp: each vtestd worker assembles its private root there.
        base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target")
        os.makedirs(base, exist_ok=True)
        cache_dirs = [tempfile.mkdtemp(prefix="bench-cache-", dir=base) for _ in range(2)]
        if not args.vtestd_cmd:
            vtestd_argv.append("--shader-cache-dir=" + cache_dirs[0])
        reference_env.pop("MESA_SHADER_CACHE_DISABLE", None)
        reference_env["MESA_SHADER_CACHE_DIR"] = cache_dirs[1]
    else:
        reference_env["MESA_SHADER_CACHE_DISABLE"] = "true"
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]

    xvfb = None
    servers = []
    results = {
        "vtestd_cmd": shlex.join(vtestd_argv),
        "reference_cmd": shlex.join(reference_argv),
        "shader_cache": args.shader_cache,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    errors = []
    try:
        xvfb = Xvfb()
        servers.append(Server("vtestd", vtestd_argv))
        servers.append(Server("reference", reference_argv, env=reference_env))
        log("Xvfb %s; vtestd: %s; reference: %s" % (
            xvfb.display, results["vtestd_cmd"], results["reference_cmd"]))

        if not args.skip_glmark2:
            fps, renderer, errs = bench_glmark2(servers, xvfb, scenes, args.duration, args.rounds)
            errors += errs
            results["glmark2"] = {"duration": args.duration, "rounds": args.rounds,
                                  "scenes": scenes, "fps": fps, "renderer": renderer}
        if not args.skip_latency:
            lat, errs = bench_latency(servers, args.latency_clients, args.latency_warmup,
                                      args.latency_gap_ms / 1000.0)
            errors += errs
            results["latency"] = {"clients": args.latency_clients, "seconds": lat}
        if not args.skip_memory:
            results["memory"] = {
                "silent": args.silent_connections,
                "active": args.active_clients,
                "servers": bench_memory(servers, args.silent_connections,
                                        args.active_clients, settle=2.0),
            }
        results["server_restarts"] = {s.label: s.restarts for s in servers}
        results["loadavg_end"] = os.getloadavg()
    finally:
        for s in servers:
            s.stop()
            s.cleanup(args.keep_logs)
        if xvfb:
            xvfb.stop()
        for d in cache_dirs:
            shutil.rmtree(d, ignore_errors=True)

    report(results, errors)
    if args.json:
        results["errors"] = errors
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        log("JSON written to %s" % args.json)
    return 1 if errors else 0


def report(results, errors):
    out = []
    out.append("vtestd:    %s" % results["vtestd_cmd"])
    out.append("reference: %s" % results["reference_cmd"])
    out.append("Mesa shader cache: %s for both servers" % results["shader_cache"])
    if "glmark2" in results:
        g = results["glmark2"]
        out.append("")
        out.append("glmark2 --off-screen, %gs per scene, %d round(s); FPS = mean over rounds" % (
            g["duration"], g["rounds"]))
        for label, rend in sorted(g["renderer"].items()):
            out.append("  %s GL_RENDERER: %s" % (label, rend))
        out.append("  %-24s %9s %6s %9s %6s %8s" % ("scene", "vtestd", "+-%", "reference", "+-%", "ratio"))
        means = {"vtestd": [], "reference": []}
        ratios = []
        summary = {}
        for scene in g["scenes"]:
            v = g["fps"]["vtestd"][scene]
            r = g["fps"]["reference"][scene]
            mv = statistics.mean(v) if v else None
            mr = statistics.mean(r) if r else None
            rt = ratio(mv, mr)
            summary[scene] = {"vtestd": mv, "reference": mr, "ratio": rt,
                              "vtestd_cv": cv(v), "reference_cv": cv(r)}
            if mv is not None and mr is not None:
                means["vtestd"].append(mv)
                means["reference"].append(mr)
                ratios.append(rt)
            out.append("  %-24s %9s %6s %9s %6s %8s" % (
                scene[:24], fmt(mv), fmt(cv(v), "%.0f"), fmt(mr), fmt(cv(r), "%.0f"), fmt(rt, "%.3f")))
        # glmark2's own score is the mean FPS over the scenes it ran.
        sv = statistics.mean(means["vtestd"]) if means["vtestd"] else None
        sr = statistics.mean(means["reference"]) if means["reference"] else None
        out.append("  %-24s %9s %6s %9s %6s %8s" % ("score (mean FPS)", fmt(sv, "%.0f"), "", fmt(sr, "%.0f"), "",
                                                  fmt(ratio(sv, sr), "%.3f")))
        gm = math.exp(statistics.mean(math.log(x) for x in ratios)) if ratios else None
        out.append("  %-24s %9s %6s %9s %6s %8s" % ("geometric mean of ratios", "", "", "", "", fmt(gm, "%.3f")))
        out.append("  (+-%: coefficient of variation over rounds; runs alternate between the servers)")
        g["summary"] = {"scenes": summary, "score": {"vtestd": sv, "reference": sr, "ratio": ratio(sv, sr)},
                        "geomean_ratio": gm}
    if "memory" in results:
        m = results["memory"]
        v, r = m["servers"].get("vtestd"), m["servers"].get("reference")
        if v and r:
            mib = lambda k: k / 1024.0
            out.append("")
            out.append("memory (PSS of the server's process tree), MiB")
            out.append("  %-40s %10s %10s %8s" % ("", "vtestd", "reference", "ratio"))
            out.append("  %-40s %10.1f %10.1f %8s" % ("idle", mib(v["idle_kib"]), mib(r["idle_kib"]),
                       fmt(ratio(v["idle_kib"], r["idle_kib"]), "%.3f")))
            out.append("  %-40s %10.1f %10.1f %8s" % (
                "added by %d silent connections" % m["silent"], mib(v["silent_kib"]),
                mib(r["silent_kib"]), fmt(ratio(v["silent_kib"], r["silent_kib"]), "%.3f")))
            out.append("  %-40s %10.1f %10.1f %8s" % (
                "fresh client meanwhile (ms, connect->reply)", v["fresh_client_s"] * 1000,
                r["fresh_client_s"] * 1000, fmt(ratio(v["fresh_client_s"], r["fresh_client_s"]), "%.3f")))
            out.append("  %-40s %10.1f %10.1f %8s" % (
                "per active client, %d clients" % m["active"], mib(v["active_per_client_kib"]),
                mib(r["active_per_client_kib"]),
                fmt(ratio(v["active_per_client_kib"], r["active_per_client_kib"]), "%.3f")))
    if "latency" in results:
        lat = results["latency"]
        out.append("")
        out.append("connection set-up latency (connect -> CREATE_RENDERER + PING -> [0,10] reply), "
                   "%d sequential clients per server, ms" % lat["clients"])
        out.append("  %-12s %9s %9s %9s %9s %9s" % ("", "p50", "p99", "mean", "min", "max"))
        stats = {}
        for label in ("vtestd", "reference"):
            xs = [x * 1000 for x in lat["seconds"][label]]
            st = {"n": len(xs), "p50": percentile(xs, 50), "p99": percentile(xs, 99),
                  "mean": statistics.mean(xs) if xs else None,
                  "min": min(xs) if xs else None, "max": max(xs) if xs else None}
            stats[label] = st
            out.append("  %-12s %9s %9s %9s %9s %9s" % (label, fmt(st["p50"], "%.2f"), fmt(st["p99"], "%.2f"),
                                                       fmt(st["mean"], "%.2f"), fmt(st["min"], "%.2f"),
                                                       fmt(st["max"], "%.2f")))
        rt = {k: ratio(stats["vtestd"][k], stats["reference"][k]) for k in ("p50", "p99", "mean")}
        stats["ratio"] = rt
        out.append("  %-12s %9s %9s %9s" % ("ratio", fmt(rt["p50"], "%.3f"), fmt(rt["p99"], "%.3f"),
                                          fmt(rt["mean"], "%.3f")))
        lat["summary"] = stats
    out.append("")
    la0 = results.get("loadavg_start")
    la1 = results.get("loadavg_end")
    out.append("load average at start %s, at end %s (%s CPUs)%s" % (
        fmt(la0[0] if la0 else None, "%.2f"), fmt(la1[0] if la1 else None, "%.2f"), results.get("cpus"),
        "  -- the machine was busy: ratios are noisy" if la0 and la0[0] > 0.5 else ""))
    restarts = results.get("server_restarts", {})
    if any(restarts.values()):
        out.append("")
        out.append("server restarts (a server died mid-run): %s" % restarts)
    if errors:
        out.append("")
        out.append("%d error(s):" % len(errors))
        for e in errors[:20]:
            out.append("  " + e.replace("\n", "\n    "))
    print("\n".join(out), flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        log("error: %s" % e)
        sys.exit(2)
