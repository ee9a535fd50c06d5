#!/usr/bin/env python3
"""Side-by-side benchmark: vtestd vs. the reference virgl_test_server.

Both servers run at the same time, each on a socket in its own private
directory, and the workloads alternate between them so that machine noise
hits both alike:

* glmark2 (--off-screen) scenes, one glmark2 process per scene and server,
  alternating server by server and scene by scene, for several rounds;
* piglit (--piglit): texelFetch fs sampler2DMS 4 1x130-501x130 and a fixed
  slice of shader_runner tests (bench/piglit-slice.txt), wall time and
  pass/fail counts per server;
* connection set-up latency: sequential raw clients, alternating, each doing
  connect -> CREATE_RENDERER("bench") -> PING_PROTOCOL_VERSION -> read the
  8-byte [0,10] reply -> close; the servers' CPU time per client over them;
* a burst: N raw clients connect at once, time from the first connect to
  the last reply;
* memory (PSS) of each server's process tree.

Mesa 22.3 always connects to /tmp/.virgl_test, so every Mesa client runs in a
private mount namespace with the server's directory bind-mounted over /tmp
(`unshare -m`, needs root). X clients still reach Xvfb through the abstract
socket @/tmp/.X11-unix/X<n>.

Ratios are vtestd / reference: > 1 means vtestd is faster for FPS and slower
for times (latency, wall time, CPU).  See bench/README.md.
"""

import argparse
import ctypes
import datetime
import glob
import json
import math
import os
import platform
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
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")

# Scenes that run well (tens to hundreds of FPS) through virgl on llvmpipe.
DEFAULT_SCENES = ["build", "texture", "shading", "bump", "effect2d", "pulsar", "desktop", "buffer",
                  "jellyfish"]
# A scene whose FPS ratio is below this is flagged.
SLOW_SCENE = 0.95

CREATE_RENDERER = 8
PING_PROTOCOL_VERSION = 10

PIGLIT_DIRS = ["/usr/lib/x86_64-linux-gnu/piglit", "/usr/lib/piglit", "/usr/local/lib/piglit",
               "/usr/local/lib/x86_64-linux-gnu/piglit"]
PIGLIT_SLICE = os.path.join(BENCH, "piglit-slice.txt")
# piglit's spec@arb_texture_multisample@texelfetch fs sampler2dms 4 1x130-501x130
# (tests/opengl.xml.gz: ['texelFetch', 'fs', 'sampler2DMS', '4', '1x130-501x130'];
# piglit adds -auto and, for concurrent tests, -fbo).
PIGLIT_TEXELFETCH = ("texelfetch fs sampler2dms 4 1x130-501x130",
                     ["texelFetch", "fs", "sampler2DMS", "4", "1x130-501x130"])
PIGLIT_SLICE_DIRS = ["spec/glsl-1.10", "spec/glsl-1.20"]

# Mesa variables that decide where (and whether) a server caches shaders.
CACHE_VARS = ("MESA_SHADER_CACHE_DISABLE", "MESA_SHADER_CACHE_DIR", "MESA_GLSL_CACHE_DISABLE",
              "MESA_GLSL_CACHE_DIR", "MESA_DISK_CACHE_SINGLE_FILE", "MESA_DISK_CACHE_MULTI_FILE",
              "MESA_SHADER_CACHE_MAX_SIZE", "XDG_CACHE_HOME")

CACHE_MODES = {
    "default": "each server as a user starts it, its cache warm across the run's clients: the "
               "reference with Mesa's cache in a HOME (XDG_CACHE_HOME) kept for the whole run, "
               "vtestd with its own defaults and CACHE_DIRECTORY (its default cache root) kept "
               "for the whole run",
    "on": "both caches on, warm across the run's clients: the reference as in `default`, vtestd "
          "with --shader-cache-dir=<a directory kept for the whole run>",
    "cold": "both caches on and emptied before every client (the reference's HOME, vtestd's "
            "cache directories; vtestd also restarted before every glmark2 or piglit client, "
            "so that no pre-started worker holds a warm cache)",
    "off": "MESA_SHADER_CACHE_DISABLE=true for both servers, and vtestd --shader-cache=off "
           "where it has that option",
}


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


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
PERF_NOTE = []


def perf_task_clock(pid):
    """A task-clock counter (ns) on `pid` with inherit=1: it counts the
    process, its threads and every descendant created from now on, live or
    exited, reaped or not (perf_event_open(2); root or perf_event_paranoid
    <= 1). Returns the fd, or None."""
    if platform.machine() != "x86_64":
        PERF_NOTE.append("perf_event_open only wired up for x86_64 here")
        return None
    attr = bytearray(64)                      # PERF_ATTR_SIZE_VER0
    struct.pack_into("<IIQ", attr, 0, 1, 64, 1)   # PERF_TYPE_SOFTWARE, size, PERF_COUNT_SW_TASK_CLOCK
    struct.pack_into("<Q", attr, 40, 1 << 1)      # flags: inherit
    buf = ctypes.create_string_buffer(bytes(attr), 64)
    fd = _libc.syscall(298, buf, pid, -1, -1, 8)  # __NR_perf_event_open, PERF_FLAG_FD_CLOEXEC
    if fd < 0:
        e = ctypes.get_errno()
        PERF_NOTE.append("perf_event_open failed: %s" % os.strerror(e))
        return None
    return fd


def proc_state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class Server:
    """A vtest server listening on <private dir>/.virgl_test.

    `wipe_dirs`: directories whose contents are removed before every client
    (cache mode `cold`)."""

    def __init__(self, label, argv, env=None, wipe_dirs=()):
        self.label = label
        self.argv = list(argv)
        self.env = env
        self.wipe_dirs = list(wipe_dirs)
        self.dir = tempfile.mkdtemp(prefix="bench-%s-" % label)
        self.socket = os.path.join(self.dir, ".virgl_test")
        self.log_path = os.path.join(self.dir, "server.log")
        self.restarts = 0
        self.proc = None
        self.logf = None
        self.idle_procs = 1
        self.perf_fd = None
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
        self.close_perf()
        # The shell stops itself so that the task-clock counter is attached
        # before the server exists (then it execs the server: same pid).
        self.proc = subprocess.Popen(["sh", "-c", 'kill -STOP $$; exec "$@"', "sh"] + cmd,
                                     stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, start_new_session=True, env=self.env)
        deadline = time.monotonic() + 10
        while proc_state(self.proc.pid) not in ("T", "t") and self.proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)
        self.perf_fd = perf_task_clock(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGCONT)
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
        self.idle_procs = self.settle_count()

    def settle_count(self, stable=1.0, limit=20.0):
        """Process count of the server's tree once it stopped changing (a
        pool being filled) for `stable` seconds."""
        deadline = time.monotonic() + limit
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            n = len(tree_pids(self.proc.pid))
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= stable:
                break
            time.sleep(0.05)
        return last

    def wait_idle(self, limit=30.0, quiet=0.5):
        """Waits until the server is idle: its process tree back to its size
        at start (the last client's worker reaped, the pool refilled), or, for
        a pool that grew with demand, the same size for `quiet` seconds while
        the tree used less than 5 % of a CPU. False on time-out."""
        deadline = time.monotonic() + limit
        ref = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            n = len(tree_pids(self.proc.pid))
            if n <= self.idle_procs:
                return True
            now = time.monotonic()
            cpu = self.cpu_s()
            if cpu is None:
                cpu = tree_cpu_s(self.proc.pid)
            if ref is None or ref[0] != n:
                ref = (n, now, cpu)
            elif now - ref[1] >= quiet:
                if cpu - ref[2] < 0.05 * (now - ref[1]):
                    return True
                ref = (n, now, cpu)
            time.sleep(0.01 if now + limit - deadline < 0.3 else 0.05)
        log("note: %s not back to its idle %d processes after %.0f s (%d now)" % (
            self.label, self.idle_procs, limit, len(tree_pids(self.proc.pid))))
        return False

    def close_perf(self):
        if self.perf_fd is not None:
            os.close(self.perf_fd)
            self.perf_fd = None

    def cpu_s(self):
        """Task-clock seconds of the server and everything it started
        (None without perf_event_open)."""
        if self.perf_fd is None:
            return None
        return struct.unpack("<Q", os.read(self.perf_fd, 8))[0] / 1e9

    def before_client(self, mesa=False):
        """Restarts a dead server. In cache mode `cold`, once the previous
        client's worker has gone, deletes the files in its cache directories
        (the directories stay: vtestd's broker made them and binds them into
        its workers); before a Mesa client (`mesa`) a server with a pool is
        restarted too, because its pre-started workers opened the cache
        before the files went."""
        self.ensure_alive()
        if self.wipe_dirs:
            self.wait_idle(10.0)
            restart = mesa and self.idle_procs > 1
            if restart:
                self.stop()
            for d in self.wipe_dirs:
                delete_files(d)
            if restart:
                self.start()

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
        self.close_perf()

    def cleanup(self, keep_logs_dir=None):
        if keep_logs_dir:
            os.makedirs(keep_logs_dir, exist_ok=True)
            shutil.copy(self.log_path, os.path.join(keep_logs_dir, "%s.log" % self.label))
        shutil.rmtree(self.dir, ignore_errors=True)


def delete_files(d):
    """Deletes every file below d; the directories stay."""
    for root, _dirs, names in os.walk(d):
        for n in names:
            try:
                os.unlink(os.path.join(root, n))
            except OSError:
                pass


def dir_usage(d):
    """(files, bytes) under d."""
    files = size = 0
    for root, _dirs, names in os.walk(d):
        for n in names:
            try:
                size += os.lstat(os.path.join(root, n)).st_size
                files += 1
            except OSError:
                pass
    return files, size


def mesa_env(xvfb):
    env = dict(os.environ)
    for k in ("LIBGL_ALWAYS_SOFTWARE", "LIBGL_ALWAYS_INDIRECT", "VTEST_SOCKET_NAME"):
        env.pop(k, None)
    # The guest side's cache is not what this measures: always off.
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


def alternate(servers, k):
    return servers if k % 2 == 0 else list(reversed(servers))


# ---------------------------------------------------------------- glmark2

FPS_RE = re.compile(r"^\[(?P<scene>[^\]]+)\]\s*(?P<opts>.*?):\s*FPS:\s*(?P<fps>[0-9.]+)\s+FrameTime:\s*(?P<ft>[0-9.]+)", re.M)
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
    """Returns {label: {scene: [fps per round]}}, renderer, errors."""
    fps = {s.label: {sc: [] for sc in scenes} for s in servers}
    errors = []
    renderer = {}
    total = rounds * len(scenes) * len(servers)
    n = 0
    for r in range(rounds):
        for i, scene in enumerate(scenes):
            for server in alternate(servers, r + i):
                n += 1
                server.before_client(mesa=True)
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


# ---------------------------------------------------------------- piglit

PIGLIT_RESULT_RE = re.compile(r"^PIGLIT: (\{.*\})\s*$", re.M)


def find_piglit(explicit=None):
    for d in ([explicit] if explicit else PIGLIT_DIRS):
        if d and os.path.exists(os.path.join(d, "bin", "shader_runner")):
            return d
    return None


def piglit_env(xvfb):
    env = mesa_env(xvfb)
    env["PIGLIT_NO_FAST_SKIP"] = "1"
    env.pop("PIGLIT_PLATFORM", None)
    return env


def piglit_shader_test(piglit, rel):
    return [os.path.join(piglit, "bin", "shader_runner"), os.path.join(piglit, "tests", rel),
            "-auto", "-fbo"]


def piglit_run(server, xvfb, argv, limit):
    """Runs one piglit test through `server`: (result, seconds, detail)."""
    server.before_client(mesa=True)
    t0 = time.perf_counter()
    rc, timed_out, out, err = run_client(mesa_argv(server, argv), piglit_env(xvfb), limit)
    wall = time.perf_counter() - t0
    result = None
    for m in PIGLIT_RESULT_RE.finditer(out):
        try:
            result = json.loads(m.group(1)).get("result", result)
        except ValueError:
            pass
    if timed_out:
        result = "timeout"
    elif result is None:
        result = "crash" if rc != 0 else "no result"
    elif result == "pass" and rc != 0:
        result = "crash"
    detail = None
    if result not in ("pass", "skip"):
        detail = "%s on %s: %s (exit status %s)\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
            shlex.join(argv), server.label, result, rc, tail(out, 800), tail(err, 800))
    return result, wall, detail


def read_slice(path):
    with open(path) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]


def bench_piglit(servers, xvfb, piglit, tests, rounds, limit):
    """tests: [(name, argv)]. Returns {label: {name: [(result, s) per round]}}, errors."""
    runs = {s.label: {name: [] for name, _ in tests} for s in servers}
    errors = []
    total = rounds * len(tests) * len(servers)
    n = 0
    for r in range(rounds):
        for i, (name, argv) in enumerate(tests):
            for server in alternate(servers, r + i):
                n += 1
                result, wall, detail = piglit_run(server, xvfb, argv, limit)
                runs[server.label][name].append((result, wall))
                if detail and result != "fail":
                    errors.append("piglit " + detail)
                if i == 0 or result != "pass" or n % 50 == 0:
                    log("[%d/%d] piglit round %d %-9s %-6s %6.2fs %s" % (
                        n, total, r + 1, server.label, result, wall, name))
    return runs, errors


def make_piglit_slice(args, xvfb, piglit):
    """Writes bench/piglit-slice.txt: `n` shader_runner tests spread evenly
    over the sorted spec/glsl-1.10 + spec/glsl-1.20 *.shader_test files, each
    passing through the reference (a file that does not pass is replaced by
    the next one in order)."""
    tests_dir = os.path.join(piglit, "tests")
    candidates = sorted(os.path.relpath(p, tests_dir)
                        for d in PIGLIT_SLICE_DIRS
                        for p in glob.glob(os.path.join(tests_dir, d, "**", "*.shader_test"),
                                           recursive=True))
    n = args.piglit_make_slice
    if len(candidates) < n:
        raise RuntimeError("only %d candidate shader tests under %s" % (len(candidates), tests_dir))
    env = reference_base_env("off")
    server = Server("reference", shlex.split(args.reference_cmd), env=env)
    chosen, rejected = [], {}
    try:
        stride = len(candidates) / float(n)
        pos = 0
        for i in range(n):
            pos = max(pos, int(i * stride))
            while pos < len(candidates):
                rel = candidates[pos]
                pos += 1
                result, wall, _ = piglit_run(server, xvfb, piglit_shader_test(piglit, rel), 120)
                if result == "pass":
                    chosen.append(rel)
                    break
                rejected[rel] = result
            log("slice: %d/%d (%d rejected)" % (len(chosen), n, len(rejected)))
    finally:
        server.stop()
        server.cleanup()
    if len(chosen) < n:
        raise RuntimeError("only %d of %d candidates passed" % (len(chosen), n))
    with open(args.piglit_slice_file, "w") as f:
        f.write("# piglit shader_runner tests for `bench/side_by_side.py --piglit` (paths under\n"
                "# piglit's tests/ directory). %d of the %d sorted %s *.shader_test files,\n"
                "# spread evenly (every %.2fth); a file that did not pass through the reference\n"
                "# was replaced by the next one. Written by:\n#   %s\n# with %s.\n" % (
                    n, len(candidates), " + ".join(PIGLIT_SLICE_DIRS), stride,
                    command_line(), package_version("piglit") or "piglit (version unknown)"))
        if rejected:
            f.write("# Skipped (not passing through the reference): %s\n" % ", ".join(
                "%s (%s)" % (os.path.basename(k), v) for k, v in sorted(rejected.items())))
        for rel in chosen:
            f.write(rel + "\n")
    log("wrote %s (%d tests, %d rejected)" % (args.piglit_slice_file, len(chosen), len(rejected)))


# ---------------------------------------------------------------- raw clients

def ping_once(path, name=b"bench\0", timeout=10.0):
    """connect -> CREATE_RENDERER -> PING -> [0,10]; returns seconds."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        t0 = time.perf_counter()
        s.connect(path)
        s.sendall(struct.pack("<II", len(name), CREATE_RENDERER) + name
                  + struct.pack("<II", 0, PING_PROTOCOL_VERSION))
        read_ping_reply(s)
        t1 = time.perf_counter()
    finally:
        s.close()
    return t1 - t0


def read_ping_reply(s):
    """Reads the 8-byte PING_PROTOCOL_VERSION reply from socket s."""
    buf = b""
    while len(buf) < 8:
        chunk = s.recv(8 - len(buf))
        if not chunk:
            raise RuntimeError("connection closed after %d reply bytes" % len(buf))
        buf += chunk
    if struct.unpack("<II", buf) != (0, PING_PROTOCOL_VERSION):
        raise RuntimeError("unexpected ping reply %r" % buf)


def percentile(values, p):
    """Nearest-rank percentile."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(0, min(len(v) - 1, math.ceil(p / 100.0 * len(v)) - 1))
    return v[k]


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root):
    """CPU seconds (user + system) of a process tree, reaped processes
    included: for every live process of the tree utime + stime + cutime +
    cstime (the last two hold its waited-for children, theirs included)."""
    ticks = 0
    for pid in tree_pids(root):
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # fields[0] is field 3 (state): utime..cstime are fields 14..17.
            ticks += sum(int(x) for x in fields[11:15])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / float(CLK_TCK)


def bench_latency(servers, clients, warmup, gap):
    """Sequential clients, alternating; the servers' CPU time over the
    measured ones. Returns {label: [s]}, {label: cpu info}, wall s, errors."""
    lat = {s.label: [] for s in servers}
    errors = []
    cpu0 = {}
    t_start = None
    for i in range(warmup + clients):
        if i == warmup:
            for server in servers:
                server.wait_idle()
                cpu0[server.label] = (server.cpu_s(), tree_cpu_s(server.proc.pid), server.restarts)
            t_start = time.monotonic()
        for server in alternate(servers, i):
            server.before_client()
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
    wall = time.monotonic() - t_start if t_start else None
    cpu = {}
    for server in servers:
        idle = server.wait_idle()
        perf1, proc1 = server.cpu_s(), tree_cpu_s(server.proc.pid)
        if server.label in cpu0 and server.restarts == cpu0[server.label][2]:
            perf0, proc0, _ = cpu0[server.label]
            cpu[server.label] = {
                # perf task-clock of the whole tree when available, else /proc
                "cpu_s": perf1 - perf0 if perf1 is not None and perf0 is not None else proc1 - proc0,
                "method": "perf task-clock" if perf1 is not None and perf0 is not None else "/proc",
                "proc_cpu_s": proc1 - proc0, "clients": clients, "settled": idle}
    return lat, cpu, wall, errors


def burst_once(path, n, timeout=120.0):
    """n threads connect at once, each CREATE_RENDERER + PING and waits for
    the reply. Returns (seconds from the first connect to the last reply,
    per-client seconds, errors)."""
    go = threading.Event()
    ready = threading.Semaphore(0)
    starts, ends, errs = [None] * n, [None] * n, []

    def client(k):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A blocking connect waits while the listen backlog is full (a
        # non-blocking one fails with EAGAIN); SO_SNDTIMEO bounds the wait.
        tv = struct.pack("ll", int(timeout), 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        name = b"bench\0"
        msg = (struct.pack("<II", len(name), CREATE_RENDERER) + name
               + struct.pack("<II", 0, PING_PROTOCOL_VERSION))
        ready.release()
        go.wait()
        try:
            starts[k] = time.perf_counter()
            s.connect(path)
            s.sendall(msg)
            read_ping_reply(s)
            ends[k] = time.perf_counter()
        except Exception as e:  # noqa: BLE001
            errs.append("burst client %d: %s" % (k, e))
        finally:
            s.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for _ in threads:
        ready.acquire()
    go.set()
    for t in threads:
        t.join(timeout + 10)
    done = [(a, b) for a, b in zip(starts, ends) if a is not None and b is not None]
    first = min((a for a in starts if a is not None), default=None)
    if not done or errs:
        return None, [b - a for a, b in done], errs
    return max(b for _, b in done) - first, [b - a for a, b in done], errs


def bench_burst(servers, n, rounds):
    times = {s.label: [] for s in servers}
    per_client = {s.label: [] for s in servers}
    errors = []
    for r in range(rounds):
        for server in alternate(servers, r):
            for s in servers:          # both idle: the other's teardown is not in this one's burst
                s.wait_idle(60.0)
            server.before_client()
            t, each, errs = burst_once(server.socket, n)
            if errs:
                errors.append("burst round %d on %s: %d of %d clients failed: %s" % (
                    r + 1, server.label, len(errs), n, "; ".join(errs[:3])))
            if t is not None:
                times[server.label].append(t)
            per_client[server.label].extend(each)
            log("burst round %d %-9s %s" % (r + 1, server.label,
                                            "%.3f s" % t if t is not None else "FAILED"))
    for s in servers:
        s.wait_idle(60.0)
    return times, per_client, errors


# ---------------------------------------------------------------- memory

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
    results, errors = {}, []
    for server in servers:
        try:
            results[server.label] = memory_one(server, silent, active, settle)
        except (OSError, RuntimeError) as e:
            errors.append("memory on %s: %s" % (server.label, e))
        log("memory: %s done" % server.label)
    return results, errors


def memory_one(server, silent, active, settle):
    conns, clients = [], []
    try:
        server.ensure_alive()
        server.wait_idle(60.0)
        r = {}
        time.sleep(settle)
        base = tree_pss_kib(server.proc.pid)
        r["idle_kib"] = base
        r["idle_processes"] = len(tree_pids(server.proc.pid))
        for _ in range(silent):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(server.socket)
            conns.append(c)
        time.sleep(settle)
        r["silent_kib"] = tree_pss_kib(server.proc.pid) - base
        r["fresh_client_s"] = ping_once(server.socket)
        for c in conns:
            c.close()
        conns = []
        time.sleep(settle)
        for _ in range(active):
            clients.append(active_client(server.socket))
        time.sleep(settle)
        r["active_total_kib"] = tree_pss_kib(server.proc.pid)
        r["active_per_client_kib"] = r["active_total_kib"] / max(active, 1)
        for c in clients:
            c.close()
        clients = []
        time.sleep(settle)
        return r
    finally:
        for c in conns + clients:
            c.close()


# ---------------------------------------------------------------- helpers

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


def mean_or_none(xs):
    return statistics.mean(xs) if xs else None


def command_line():
    return shlex.join([os.path.basename(sys.executable) or "python3"] + sys.argv)


def package_version(pkg):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                             text=True, timeout=10)
        return ("%s %s" % (pkg, out.stdout.strip())) if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def glxinfo_mesa(server, xvfb):
    """Mesa's version and the renderer as virpipe reports them: `glxinfo -B`
    through `server` (on Xvfb it can fail with BadMatch), else a 0.1 s
    glmark2 run's GL_VERSION."""
    out = ""
    if shutil.which("glxinfo"):
        out = run_client(mesa_argv(server, ["glxinfo", "-B"]), mesa_env(xvfb), 60)[2]
    m = re.search(r"OpenGL (?:core profile )?version string:.*?(Mesa \S+)", out)
    r = re.search(r"OpenGL renderer string:\s*(.*)", out)
    if not m:
        out = run_client(mesa_argv(server, ["glmark2", "--off-screen", "-b", "build:duration=0.1"]),
                         mesa_env(xvfb), 60)[2]
        m = re.search(r"GL_VERSION:.*?(Mesa \S+)", out)
        r = re.search(r"GL_RENDERER:\s*(.*)", out)
    return (m.group(1) if m else None), (r.group(1).strip() if r else None)


def help_text(argv):
    """What `argv --help` prints."""
    try:
        out = subprocess.run(list(argv) + ["--help"], capture_output=True, text=True, timeout=15,
                             stdin=subprocess.DEVNULL)
        return out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired):
        return ""


def reference_base_env(mode, home=None):
    """A server's environment: no inherited cache settings; a HOME of its
    own (Mesa's cache lives in $HOME/.cache), or the cache off."""
    env = dict(os.environ)
    for k in CACHE_VARS:
        env.pop(k, None)
    if home:
        # Mesa takes its cache directory from XDG_CACHE_HOME, else from the
        # passwd entry's home (not $HOME): set both.
        env["HOME"] = home
        env["XDG_CACHE_HOME"] = os.path.join(home, ".cache")
    if mode == "off":
        env["MESA_SHADER_CACHE_DISABLE"] = "true"
    return env


# ---------------------------------------------------------------- main

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
    ap.add_argument("--shader-cache", choices=list(CACHE_MODES), default="default",
                    help="the servers' Mesa shader caches (default %(default)s): " + "; ".join(
                        "%s: %s" % kv for kv in CACHE_MODES.items()))
    g = ap.add_argument_group("glmark2")
    g.add_argument("--scenes", default=",".join(DEFAULT_SCENES),
                   help="comma-separated glmark2 -b scene specs; default %(default)s")
    g.add_argument("--duration", type=float, default=4, help="seconds per glmark2 scene (default %(default)s)")
    g.add_argument("--rounds", type=int, default=3, help="glmark2 rounds over all scenes (default %(default)s)")
    g.add_argument("--skip-glmark2", action="store_true")
    p = ap.add_argument_group("piglit")
    p.add_argument("--piglit", action="store_true",
                   help="run piglit's texelfetch fs sampler2dms 4 1x130-501x130 and the "
                   "shader_runner slice on both servers")
    p.add_argument("--piglit-dir", help="piglit's installation (bin/, tests/); default: the first of %s"
                   % ", ".join(PIGLIT_DIRS))
    p.add_argument("--piglit-slice", type=int, default=100,
                   help="shader_runner tests: the first N of --piglit-slice-file (default %(default)s)")
    p.add_argument("--piglit-slice-file", default=PIGLIT_SLICE, help="default %(default)s")
    p.add_argument("--piglit-rounds", type=int, default=1, help="passes over the piglit tests (default %(default)s)")
    p.add_argument("--piglit-timeout", type=float, default=300, help="seconds per piglit test (default %(default)s)")
    p.add_argument("--skip-texelfetch", action="store_true", help="with --piglit: only the slice")
    p.add_argument("--piglit-make-slice", type=int, metavar="N",
                   help="only write --piglit-slice-file: N shader tests that pass through the "
                   "reference, spread over the sorted %s files, then exit" % " + ".join(PIGLIT_SLICE_DIRS))
    la = ap.add_argument_group("latency, CPU, burst")
    la.add_argument("--latency-clients", type=int, default=200,
                    help="measured sequential clients per server (default %(default)s)")
    la.add_argument("--latency-warmup", type=int, default=5,
                    help="unmeasured clients per server first (default %(default)s)")
    la.add_argument("--latency-gap-ms", type=float, default=10,
                    help="pause after each latency client, so that one server's teardown "
                    "overlaps the other's set-up less; 0: none (default %(default)s)")
    la.add_argument("--skip-latency", action="store_true")
    la.add_argument("--burst", type=int, default=64,
                    help="clients connecting at once in the burst; 0: no burst (default %(default)s)")
    la.add_argument("--burst-rounds", type=int, default=5, help="bursts per server (default %(default)s)")
    m = ap.add_argument_group("memory")
    m.add_argument("--skip-memory", action="store_true")
    m.add_argument("--silent-connections", type=int, default=32,
                   help="connections that never send, for the memory figure (default %(default)s)")
    m.add_argument("--active-clients", type=int, default=64,
                   help="clients holding a context and a resource (default %(default)s)")
    o = ap.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    o.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown "
                   "(for bench/readme_update.py)")
    o.add_argument("--keep-logs", metavar="DIR", help="copy both server logs into DIR")
    args = ap.parse_args()

    if os.geteuid() != 0:
        log("note: `unshare -m` + `mount --bind` need root (or CAP_SYS_ADMIN)")

    piglit = None
    if args.piglit or args.piglit_make_slice:
        piglit = find_piglit(args.piglit_dir)
        if not piglit:
            ap.error("piglit not found (bin/shader_runner under %s); pass --piglit-dir"
                     % (args.piglit_dir or ", ".join(PIGLIT_DIRS)))
    if args.piglit_make_slice:
        xvfb = Xvfb()
        try:
            make_piglit_slice(args, xvfb, piglit)
        finally:
            xvfb.stop()
        return 0
    piglit_tests = []
    if args.piglit:
        if not args.skip_texelfetch:
            name, argv = PIGLIT_TEXELFETCH
            piglit_tests.append((name, [os.path.join(piglit, "bin", argv[0])] + argv[1:] + ["-auto", "-fbo"]))
        if args.piglit_slice > 0:
            if not os.path.exists(args.piglit_slice_file):
                ap.error("%s missing: write it with --piglit-make-slice 100" % args.piglit_slice_file)
            rels = read_slice(args.piglit_slice_file)[:args.piglit_slice]
            missing = [r for r in rels if not os.path.exists(os.path.join(piglit, "tests", r))]
            if missing:
                ap.error("%d slice tests missing under %s/tests (another piglit version?), e.g. %s"
                         % (len(missing), piglit, missing[0]))
            piglit_tests += [(rel, piglit_shader_test(piglit, rel)) for rel in rels]

    if args.vtestd_cmd:
        vtestd_argv = shlex.split(args.vtestd_cmd)
    else:
        if not os.access(args.vtestd, os.X_OK):
            ap.error("%s is not an executable; build it (cargo build --release -p vtestd) "
                     "or pass --vtestd / --vtestd-cmd" % args.vtestd)
        vtestd_argv = [args.vtestd, "serve"]
    reference_argv = shlex.split(args.reference_cmd)
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]

    # Cache directories: outside /tmp (each vtestd worker assembles its
    # private root there), one set per run.
    base = os.path.join(REPO, "target")
    os.makedirs(base, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="bench-run-", dir=base)
    homes = {"vtestd": os.path.join(run_dir, "vtestd-home"),
             "reference": os.path.join(run_dir, "reference-home")}
    # vtestd's default cache root ($CACHE_DIRECTORY, else /var/cache/vtestd
    # for root) and the directory given with --shader-cache-dir.
    vtestd_cache_root = os.path.join(run_dir, "vtestd-cache-root")
    vtestd_cache_dir = os.path.join(run_dir, "vtestd-cache-dir")
    for d in list(homes.values()) + [vtestd_cache_root, vtestd_cache_dir]:
        os.makedirs(d)
    # Run a private copy of the vtestd binary: its broker starts workers from
    # its own executable, and a rebuild of target/release/vtestd in the middle
    # of a run would hand the old broker new workers (and the run would fail).
    vtestd_binary = None
    exe = shutil.which(vtestd_argv[0]) if vtestd_argv else None
    if exe and os.path.realpath(exe).startswith(os.path.join(REPO, "target") + os.sep):
        vtestd_binary = os.path.realpath(exe)
        os.makedirs(os.path.join(run_dir, "bin"))
        copy = os.path.join(run_dir, "bin", os.path.basename(exe))
        shutil.copy2(vtestd_binary, copy)
        vtestd_argv[0] = copy
    mode = args.shader_cache
    cache_notes = []
    vhelp = help_text(vtestd_argv)
    has_dir = "--shader-cache-dir" in vhelp
    has_scope = re.search(r"--shader-cache[ =]<", vhelp) is not None   # --shader-cache listener|uid|off
    vtestd_wipe, reference_wipe = [], []
    if mode in ("on", "cold"):
        if has_dir:
            vtestd_argv.append("--shader-cache-dir=" + vtestd_cache_dir)
        else:
            cache_notes.append("the vtestd command has no --shader-cache-dir (not in its --help): "
                               "it runs as started (its HOME and CACHE_DIRECTORY per run)")
    if mode == "off":
        if has_scope:
            vtestd_argv.append("--shader-cache=off")
        elif not has_dir:
            cache_notes.append("the vtestd command has no --shader-cache off switch (not in its "
                               "--help): it runs as started, with MESA_SHADER_CACHE_DISABLE=true")
    if mode == "cold":
        vtestd_wipe = [homes["vtestd"], vtestd_cache_root, vtestd_cache_dir]
        reference_wipe = [homes["reference"]]
    vtestd_env = reference_base_env(mode, homes["vtestd"])
    # vtestd's default cache root: a per-run directory instead of
    # /var/cache/vtestd, as the reference's HOME is per run.
    vtestd_env["CACHE_DIRECTORY"] = vtestd_cache_root
    reference_env = reference_base_env(mode, homes["reference"])

    xvfb = None
    servers = []
    t_run = time.monotonic()
    results = {
        "command": command_line(),
        "run_dir": run_dir,
        "vtestd_cmd": shlex.join(vtestd_argv),
        "vtestd_binary_copied_from": vtestd_binary,
        "reference_cmd": shlex.join(reference_argv),
        "shader_cache": mode,
        "shader_cache_meaning": CACHE_MODES[mode],
        "shader_cache_notes": cache_notes,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_start": os.getloadavg(),
        "cpus": os.cpu_count(),
        "machine": {"nproc": os.cpu_count(), "kernel": platform.release(),
                    "mesa_package": package_version("libgl1-mesa-dri"),
                    "virglrenderer_package": package_version("libvirglrenderer1"),
                    "glmark2_package": package_version("glmark2-x11"),
                    "piglit_package": package_version("piglit") if piglit else None},
    }
    errors = []
    try:
        xvfb = Xvfb()
        servers.append(Server("vtestd", vtestd_argv, env=vtestd_env, wipe_dirs=vtestd_wipe))
        servers.append(Server("reference", reference_argv, env=reference_env, wipe_dirs=reference_wipe))
        log("Xvfb %s; vtestd: %s; reference: %s; shader cache: %s" % (
            xvfb.display, results["vtestd_cmd"], results["reference_cmd"], mode))
        for note in cache_notes:
            log("note: " + note)
        results["machine"]["mesa"], results["machine"]["gl_renderer"] = glxinfo_mesa(servers[1], xvfb)
        results["cpu_counter"] = ("perf task-clock" if servers[0].perf_fd is not None
                                  and servers[1].perf_fd is not None else "/proc")
        for n in PERF_NOTE[:1]:
            log("note: %s: server CPU from /proc instead" % n)

        if not args.skip_glmark2:
            fps, renderer, errs = bench_glmark2(servers, xvfb, scenes, args.duration, args.rounds)
            errors += errs
            results["glmark2"] = {"duration": args.duration, "rounds": args.rounds,
                                  "scenes": scenes, "fps": fps, "renderer": renderer}
        if piglit_tests:
            t0 = time.monotonic()
            runs, errs = bench_piglit(servers, xvfb, piglit, piglit_tests, args.piglit_rounds,
                                      args.piglit_timeout)
            errors += errs
            results["piglit"] = {"dir": piglit, "rounds": args.piglit_rounds,
                                 "texelfetch": None if args.skip_texelfetch else PIGLIT_TEXELFETCH[0],
                                 "slice": [n for n, _ in piglit_tests if n.endswith(".shader_test")],
                                 "slice_file": args.piglit_slice_file,
                                 "runs": runs, "phase_s": time.monotonic() - t0}
        if not args.skip_latency:
            lat, cpu, wall, errs = bench_latency(servers, args.latency_clients, args.latency_warmup,
                                                 args.latency_gap_ms / 1000.0)
            errors += errs
            results["latency"] = {"clients": args.latency_clients, "gap_ms": args.latency_gap_ms,
                                  "seconds": lat, "cpu": cpu, "phase_s": wall}
        # Memory before the burst: vtestd's pool grows during a burst and stays grown.
        if not args.skip_memory:
            mem, errs = bench_memory(servers, args.silent_connections, args.active_clients, settle=2.0)
            errors += errs
            results["memory"] = {"silent": args.silent_connections, "active": args.active_clients,
                                 "servers": mem}
        if args.burst > 0 and args.burst_rounds > 0:
            times, each, errs = bench_burst(servers, args.burst, args.burst_rounds)
            errors += errs
            results["burst"] = {"clients": args.burst, "rounds": args.burst_rounds,
                                "seconds": times, "per_client_s": each}
        results["server_restarts"] = {s.label: s.restarts for s in servers}
        results["loadavg_end"] = os.getloadavg()
        usage = {"vtestd HOME": dir_usage(homes["vtestd"]),
                 "vtestd CACHE_DIRECTORY": dir_usage(vtestd_cache_root),
                 "vtestd --shader-cache-dir": dir_usage(vtestd_cache_dir),
                 "reference HOME": dir_usage(homes["reference"])}
        results["cache_usage_end"] = {k: {"files": f, "bytes": b} for k, (f, b) in usage.items()}
    finally:
        cleanup(servers, xvfb, run_dir, args.keep_logs)
    results["run_s"] = time.monotonic() - t_run

    summarize(results)
    print(report_text(results, errors), flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report_markdown(results, errors))
        log("Markdown written to %s" % args.markdown)
    if args.json:
        results["errors"] = errors
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        log("JSON written to %s" % args.json)
    return 1 if errors else 0


def cleanup(servers, xvfb, run_dir, keep_logs):
    """Stops everything this run started, even when interrupted (a second
    Ctrl-C kills the rest at once)."""
    for s in servers:
        try:
            s.stop()
        except BaseException:  # noqa: BLE001 - interrupted: kill, go on
            if s.proc and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
            s.close_perf()
        try:
            s.cleanup(keep_logs)
        except OSError as e:
            log("keeping %s's log failed: %s" % (s.label, e))
    if xvfb:
        try:
            xvfb.stop()
        except BaseException:  # noqa: BLE001
            xvfb.proc.kill()
    shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------- summaries

def summarize(results):
    """Adds a "summary" to each workload's results."""
    if "glmark2" in results:
        g = results["glmark2"]
        scenes, ratios = {}, []
        means = {"vtestd": [], "reference": []}
        for scene in g["scenes"]:
            v, r = g["fps"]["vtestd"][scene], g["fps"]["reference"][scene]
            mv, mr = mean_or_none(v), mean_or_none(r)
            rt = ratio(mv, mr)
            scenes[scene] = {"vtestd": mv, "reference": mr, "ratio": rt, "vtestd_cv": cv(v),
                             "reference_cv": cv(r), "slow": rt is not None and rt < SLOW_SCENE}
            if mv is not None and mr is not None:
                means["vtestd"].append(mv)
                means["reference"].append(mr)
                ratios.append(rt)
        # glmark2's own score is the mean FPS over the scenes it ran.
        sv, sr = mean_or_none(means["vtestd"]), mean_or_none(means["reference"])
        gm = math.exp(statistics.mean(math.log(x) for x in ratios)) if ratios else None
        g["summary"] = {"scenes": scenes, "score": {"vtestd": sv, "reference": sr, "ratio": ratio(sv, sr)},
                        "geomean_ratio": gm,
                        "slow_scenes": [s for s, x in scenes.items() if x["slow"]]}
    if "piglit" in results:
        p = results["piglit"]
        parts = []
        if p["texelfetch"]:
            parts.append((p["texelfetch"], [p["texelfetch"]]))
        if p["slice"]:
            parts.append(("shader_runner slice (%d tests)" % len(p["slice"]), p["slice"]))
        rows = []
        for title, names in parts:
            row = {"part": title, "tests": len(names)}
            for label in ("vtestd", "reference"):
                runs = p["runs"][label]
                # wall time of the part, per round, then the mean over rounds
                per_round = [sum(runs[n][r][1] for n in names) for r in range(p["rounds"])
                             if all(len(runs[n]) > r for n in names)]
                counts = {}
                for n in names:
                    for res, _ in runs[n]:
                        counts[res] = counts.get(res, 0) + 1
                row[label] = {"wall_s": mean_or_none(per_round), "wall_cv": cv(per_round),
                              "counts": counts}
            row["ratio"] = ratio(row["vtestd"]["wall_s"], row["reference"]["wall_s"])
            rows.append(row)
        differ = [n for n in p["runs"]["vtestd"]
                  if sorted(x for x, _ in p["runs"]["vtestd"][n])
                  != sorted(x for x, _ in p["runs"]["reference"][n])]
        p["summary"] = {"parts": rows, "results_differ": differ}
    if "latency" in results:
        lat = results["latency"]
        stats = {}
        for label in ("vtestd", "reference"):
            xs = [x * 1000 for x in lat["seconds"][label]]
            stats[label] = {"n": len(xs), "p50": percentile(xs, 50), "p90": percentile(xs, 90),
                            "p99": percentile(xs, 99), "mean": mean_or_none(xs),
                            "min": min(xs) if xs else None, "max": max(xs) if xs else None}
        stats["ratio"] = {k: ratio(stats["vtestd"][k], stats["reference"][k])
                          for k in ("p50", "p90", "p99", "mean")}
        cpu = {}
        for label, c in lat["cpu"].items():
            ms = 1000.0 * c["cpu_s"] / max(c["clients"], 1)
            cpu[label] = {"ms_per_client": ms, "clients_per_cpu_s": 1000.0 / ms if ms > 0 else None,
                          "settled": c["settled"], "method": c["method"],
                          "proc_ms_per_client": 1000.0 * c["proc_cpu_s"] / max(c["clients"], 1)}
        if "vtestd" in cpu and "reference" in cpu:
            cpu["ratio"] = ratio(cpu["vtestd"]["ms_per_client"], cpu["reference"]["ms_per_client"])
            cpu["phase_clients_per_s"] = (2.0 * lat["clients"] / lat["phase_s"]) if lat.get("phase_s") else None
        stats["cpu"] = cpu
        lat["summary"] = stats
    if "burst" in results:
        b = results["burst"]
        st = {}
        for label in ("vtestd", "reference"):
            xs = b["seconds"][label]
            med = statistics.median(xs) if xs else None
            each = [x * 1000 for x in b["per_client_s"][label]]
            st[label] = {"median_s": med, "min_s": min(xs) if xs else None,
                         "max_s": max(xs) if xs else None, "mean_s": mean_or_none(xs),
                         "clients_per_s": b["clients"] / med if med else None,
                         "client_p50_ms": percentile(each, 50), "client_max_ms": max(each) if each else None}
        st["ratio"] = ratio(st["vtestd"]["median_s"], st["reference"]["median_s"])
        b["summary"] = st


def counts_text(c):
    order = ["pass", "fail", "skip", "warn", "crash", "timeout", "no result"]
    keys = [k for k in order if k in c] + sorted(k for k in c if k not in order)
    return ", ".join("%d %s" % (c[k], k) for k in keys) if keys else "-"


def machine_line(results):
    m = results["machine"]
    mesa = m.get("mesa") or "Mesa ?"
    parts = ["%s CPUs (nproc)" % m["nproc"], "Linux %s" % m["kernel"],
             "%s (through virpipe; %s)" % (mesa, m.get("mesa_package") or "package ?"),
             m.get("virglrenderer_package") or "libvirglrenderer1 ?"]
    if m.get("gl_renderer"):
        parts.append("host renderer %s" % m["gl_renderer"])
    for k in ("glmark2_package", "piglit_package"):
        if m.get(k):
            parts.append(m[k])
    return ", ".join(parts)


def load_line(results):
    la0, la1 = results.get("loadavg_start"), results.get("loadavg_end")
    return "load average %s at the start, %s at the end (%s CPUs)%s" % (
        fmt(la0[0] if la0 else None, "%.2f"), fmt(la1[0] if la1 else None, "%.2f"), results.get("cpus"),
        "; the machine was busy: ratios are noisy" if la0 and la0[0] > 0.5 else "")


def report_text(results, errors):
    out = []
    out.append("vtestd:    %s%s" % (results["vtestd_cmd"], " (a copy of %s)" % results["vtestd_binary_copied_from"]
                                     if results.get("vtestd_binary_copied_from") else ""))
    out.append("reference: %s" % results["reference_cmd"])
    out.append("Mesa shader cache: %s (%s)" % (results["shader_cache"], results["shader_cache_meaning"]))
    for n in results["shader_cache_notes"]:
        out.append("  note: " + n)
    out.append("machine: " + machine_line(results))
    if "glmark2" in results:
        g = results["glmark2"]
        s = g["summary"]
        out.append("")
        out.append("glmark2 --off-screen, %gs per scene, %d round(s); FPS = mean over rounds" % (
            g["duration"], g["rounds"]))
        for label, rend in sorted(g["renderer"].items()):
            out.append("  %s GL_RENDERER: %s" % (label, rend))
        out.append("  %-24s %9s %6s %9s %6s %8s" % ("scene", "vtestd", "+-%", "reference", "+-%", "ratio"))
        for scene in g["scenes"]:
            x = s["scenes"][scene]
            out.append("  %-24s %9s %6s %9s %6s %8s%s" % (
                scene[:24], fmt(x["vtestd"]), fmt(x["vtestd_cv"], "%.0f"), fmt(x["reference"]),
                fmt(x["reference_cv"], "%.0f"), fmt(x["ratio"], "%.3f"),
                "  << below %.2f" % SLOW_SCENE if x["slow"] else ""))
        sc = s["score"]
        out.append("  %-24s %9s %6s %9s %6s %8s" % ("score (mean FPS)", fmt(sc["vtestd"], "%.0f"), "",
                                                  fmt(sc["reference"], "%.0f"), "", fmt(sc["ratio"], "%.3f")))
        out.append("  %-24s %9s %6s %9s %6s %8s" % ("geometric mean of ratios", "", "", "", "",
                                                  fmt(s["geomean_ratio"], "%.3f")))
        out.append("  (+-%: coefficient of variation over rounds; runs alternate between the servers)")
        if s["slow_scenes"]:
            out.append("  scenes below %.2fx: %s" % (SLOW_SCENE, ", ".join(s["slow_scenes"])))
    if "piglit" in results:
        p = results["piglit"]
        out.append("")
        out.append("piglit (%s), %d round(s), alternating test by test; wall time = sum over the "
                   "tests (mean over rounds), s; ratio > 1: vtestd slower" % (p["dir"], p["rounds"]))
        out.append("  %-40s %9s %9s %8s" % ("", "vtestd", "reference", "ratio"))
        for row in p["summary"]["parts"]:
            out.append("  %-40s %9s %9s %8s" % (row["part"][:40], fmt(row["vtestd"]["wall_s"], "%.2f"),
                                               fmt(row["reference"]["wall_s"], "%.2f"),
                                               fmt(row["ratio"], "%.3f")))
            for label in ("vtestd", "reference"):
                out.append("  %-40s %s" % ("  results " + label, counts_text(row[label]["counts"])))
        if p["summary"]["results_differ"]:
            out.append("  results differ between the servers: %s" % ", ".join(p["summary"]["results_differ"]))
    if "latency" in results:
        lat = results["latency"]
        s = lat["summary"]
        out.append("")
        out.append("connection set-up latency (connect -> CREATE_RENDERER + PING -> [0,10] reply), "
                   "%d sequential clients per server, %g ms apart, ms" % (lat["clients"], lat["gap_ms"]))
        out.append("  %-12s %9s %9s %9s %9s %9s %9s" % ("", "p50", "p90", "p99", "mean", "min", "max"))
        for label in ("vtestd", "reference"):
            st = s[label]
            out.append("  %-12s %9s %9s %9s %9s %9s %9s" % (
                label, fmt(st["p50"], "%.2f"), fmt(st["p90"], "%.2f"), fmt(st["p99"], "%.2f"),
                fmt(st["mean"], "%.2f"), fmt(st["min"], "%.2f"), fmt(st["max"], "%.2f")))
        rt = s["ratio"]
        out.append("  %-12s %9s %9s %9s %9s" % ("ratio", fmt(rt["p50"], "%.3f"), fmt(rt["p90"], "%.3f"),
                                              fmt(rt["p99"], "%.3f"), fmt(rt["mean"], "%.3f")))
        cpu = s["cpu"]
        if "vtestd" in cpu and "reference" in cpu:
            out.append("")
            out.append("server CPU over those clients (%s of the server and everything it started, "
                       "exited workers included)" % cpu["vtestd"]["method"])
            out.append("  %-30s %9s %9s %8s" % ("", "vtestd", "reference", "ratio"))
            v, r = cpu["vtestd"], cpu["reference"]
            out.append("  %-30s %9s %9s %8s" % ("CPU ms per client", fmt(v["ms_per_client"], "%.2f"),
                                               fmt(r["ms_per_client"], "%.2f"), fmt(cpu["ratio"], "%.3f")))
            out.append("  %-30s %9s %9s %8s" % ("clients per CPU-second", fmt(v["clients_per_cpu_s"], "%.0f"),
                                               fmt(r["clients_per_cpu_s"], "%.0f"),
                                               fmt(ratio(v["clients_per_cpu_s"], r["clients_per_cpu_s"]), "%.3f")))
            if v["method"] != "/proc":
                out.append("  %-30s %9s %9s %8s" % ("(/proc u+s+cu+cs, ms/client)", fmt(v["proc_ms_per_client"], "%.2f"),
                                                   fmt(r["proc_ms_per_client"], "%.2f"),
                                                   fmt(ratio(v["proc_ms_per_client"], r["proc_ms_per_client"]), "%.3f")))
            out.append("  both servers together: %s clients/s through the sequential phase (gaps included)"
                       % fmt(cpu.get("phase_clients_per_s"), "%.1f"))
            if not (v["settled"] and r["settled"]):
                out.append("  (a server had not settled back to idle at the end: its figure is uncertain)")
    if "burst" in results:
        b = results["burst"]
        s = b["summary"]
        out.append("")
        out.append("burst: %d clients connect at once (CREATE_RENDERER + PING each), first connect -> "
                   "last reply, %d round(s) per server, alternating" % (b["clients"], b["rounds"]))
        out.append("  %-12s %9s %9s %9s %11s %12s %12s" % ("", "median s", "min s", "max s", "clients/s",
                                                          "client p50ms", "client max"))
        for label in ("vtestd", "reference"):
            st = s[label]
            out.append("  %-12s %9s %9s %9s %11s %12s %12s" % (
                label, fmt(st["median_s"], "%.3f"), fmt(st["min_s"], "%.3f"), fmt(st["max_s"], "%.3f"),
                fmt(st["clients_per_s"], "%.0f"), fmt(st["client_p50_ms"], "%.1f"),
                fmt(st["client_max_ms"], "%.1f")))
        out.append("  %-12s %9s" % ("ratio", fmt(s["ratio"], "%.3f")))
    if "memory" in results:
        m = results["memory"]
        v, r = m["servers"].get("vtestd"), m["servers"].get("reference")
        if v and r:
            out.append("")
            out.append("memory (PSS of the server's process tree)")
            out.append("  %-44s %10s %10s %8s" % ("", "vtestd", "reference", "ratio"))
            for title, a, b, spec in memory_rows(m):
                out.append("  %-44s %10s %10s %8s" % (title, fmt(a, spec), fmt(b, spec),
                                                      fmt(ratio(a, b), "%.3f")))
    out.append("")
    usage = results.get("cache_usage_end", {})
    if usage:
        out.append("shader cache contents at the end: " + ", ".join(
            "%s %d files / %.1f MiB" % (k, u["files"], u["bytes"] / 1048576.0) for k, u in usage.items()))
    out.append(load_line(results))
    out.append("the run took %.1f min" % (results["run_s"] / 60.0))
    restarts = results.get("server_restarts", {})
    if any(restarts.values()):
        out.append("")
        out.append("server restarts (a server died mid-run): %s" % restarts)
    if errors:
        out.append("")
        out.append("%d error(s):" % len(errors))
        for e in errors[:20]:
            out.append("  " + e.replace("\n", "\n    "))
    return "\n".join(out)


def memory_rows(m):
    v, r = m["servers"]["vtestd"], m["servers"]["reference"]
    mib = lambda k: k / 1024.0
    return [
        ("idle (MiB; %d and %d processes)" % (v.get("idle_processes", 0), r.get("idle_processes", 0)),
         mib(v["idle_kib"]), mib(r["idle_kib"]), "%.1f"),
        ("added by %d silent connections (MiB)" % m["silent"], mib(v["silent_kib"]), mib(r["silent_kib"]), "%.1f"),
        ("fresh client meanwhile (ms, connect->reply)", v["fresh_client_s"] * 1000,
         r["fresh_client_s"] * 1000, "%.1f"),
        ("per active client, %d clients (MiB)" % m["active"], mib(v["active_per_client_kib"]),
         mib(r["active_per_client_kib"]), "%.1f"),
    ]


def report_markdown(results, errors):
    cmd = "`%s`" % results["command"]
    md = []
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    md.append("Measured %s: %s; release build; both servers running at once and alternated; "
              "%s; the run took %.1f min." % (date, machine_line(results), load_line(results),
                                              results["run_s"] / 60.0))
    md.append("")
    vcmd = results["vtestd_cmd"]
    if results.get("vtestd_binary_copied_from"):
        vcmd = shlex.join([results["vtestd_binary_copied_from"]] + shlex.split(vcmd)[1:])
    md.append("vtestd: `%s`; reference: `%s`; Mesa shader cache `%s`: %s.%s" % (
        vcmd.replace(results.get("run_dir", "//"), "<run dir>").replace(REPO + "/", ""),
        results["reference_cmd"], results["shader_cache"],
        results["shader_cache_meaning"],
        "".join(" Note: %s." % n for n in results["shader_cache_notes"])))
    if "glmark2" in results:
        g = results["glmark2"]
        s = g["summary"]
        md += ["", "**glmark2** (`--off-screen`, %d scenes, %d rounds of %g s; FPS = mean over rounds, "
               "±%% = coefficient of variation; ratio > 1: vtestd faster; **bold**: below %.2f):"
               % (len(g["scenes"]), g["rounds"], g["duration"], SLOW_SCENE), "", cmd, "",
               "| scene (FPS) | vtestd | ±% | reference | ±% | ratio |", "|---|---|---|---|---|---|"]
        for scene in g["scenes"]:
            x = s["scenes"][scene]
            rt = fmt(x["ratio"], "%.3f")
            md.append("| %s | %s | %s | %s | %s | %s |" % (
                scene, fmt(x["vtestd"]), fmt(x["vtestd_cv"], "%.0f"), fmt(x["reference"]),
                fmt(x["reference_cv"], "%.0f"), "**%s**" % rt if x["slow"] else rt))
        sc = s["score"]
        md.append("| **score** (mean FPS) | **%s** | | **%s** | | **%s** |" % (
            fmt(sc["vtestd"], "%.0f"), fmt(sc["reference"], "%.0f"), fmt(sc["ratio"], "%.3f")))
        md.append("| geometric mean of ratios | | | | | %s |" % fmt(s["geomean_ratio"], "%.3f"))
        if s["slow_scenes"]:
            md += ["", "Scenes below %.2f×: %s." % (SLOW_SCENE, ", ".join(s["slow_scenes"]))]
    if "piglit" in results:
        p = results["piglit"]
        md += ["", "**piglit** (%d round(s), alternating test by test; wall time summed over the tests, "
               "s; ratio > 1: vtestd slower; slice: `%s`):" % (
                   p["rounds"], os.path.relpath(p["slice_file"], REPO)), "", cmd, "",
               "| piglit | vtestd s | reference s | ratio | vtestd results | reference results |",
               "|---|---|---|---|---|---|"]
        for row in p["summary"]["parts"]:
            md.append("| %s | %s | %s | %s | %s | %s |" % (
                row["part"], fmt(row["vtestd"]["wall_s"], "%.2f"), fmt(row["reference"]["wall_s"], "%.2f"),
                fmt(row["ratio"], "%.3f"), counts_text(row["vtestd"]["counts"]),
                counts_text(row["reference"]["counts"])))
        if p["summary"]["results_differ"]:
            md += ["", "Results differ between the servers: %s." % ", ".join(
                "`%s`" % n for n in p["summary"]["results_differ"])]
    if "latency" in results:
        lat = results["latency"]
        s = lat["summary"]
        md += ["", "**Connection set-up** (connect → `CREATE_RENDERER` + `PING` → reply, %d sequential "
               "clients each, alternating, %g ms apart; ratio > 1: vtestd slower):" % (lat["clients"], lat["gap_ms"]),
               "", cmd, "", "| | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---|---|---|---|"]
        for label in ("vtestd", "reference"):
            st = s[label]
            md.append("| %s | %s | %s | %s | %s |" % (label, fmt(st["p50"], "%.2f"), fmt(st["p90"], "%.2f"),
                                                     fmt(st["p99"], "%.2f"), fmt(st["mean"], "%.2f")))
        rt = s["ratio"]
        md.append("| ratio | **%s** | %s | %s | %s |" % (fmt(rt["p50"], "%.3f"), fmt(rt["p90"], "%.3f"),
                                                        fmt(rt["p99"], "%.3f"), fmt(rt["mean"], "%.3f")))
        cpu = s["cpu"]
        if "vtestd" in cpu and "reference" in cpu:
            v, r = cpu["vtestd"], cpu["reference"]
            md += ["", "**Server CPU per client** (%s of the server and everything it started, exited "
                   "workers included, over those %d clients; clients per CPU-second = 1000 / ms):"
                   % (v["method"], lat["clients"]), "", cmd, "",
                   "| | vtestd | reference | ratio |", "|---|---|---|---|",
                   "| CPU ms per client | %s | %s | **%s** |" % (
                       fmt(v["ms_per_client"], "%.2f"), fmt(r["ms_per_client"], "%.2f"), fmt(cpu["ratio"], "%.3f")),
                   "| clients per CPU-second | %s | %s | %s |" % (
                       fmt(v["clients_per_cpu_s"], "%.0f"), fmt(r["clients_per_cpu_s"], "%.0f"),
                       fmt(ratio(v["clients_per_cpu_s"], r["clients_per_cpu_s"]), "%.3f"))]
    if "burst" in results:
        b = results["burst"]
        s = b["summary"]
        md += ["", "**Burst** (%d clients connect at once, each `CREATE_RENDERER` + `PING`; first connect "
               "→ last reply, median of %d rounds per server, alternating; ratio > 1: vtestd slower):"
               % (b["clients"], b["rounds"]), "", cmd, "",
               "| | median s | min s | max s | clients/s |", "|---|---|---|---|---|"]
        for label in ("vtestd", "reference"):
            st = s[label]
            md.append("| %s | %s | %s | %s | %s |" % (label, fmt(st["median_s"], "%.3f"), fmt(st["min_s"], "%.3f"),
                                                     fmt(st["max_s"], "%.3f"), fmt(st["clients_per_s"], "%.0f")))
        md.append("| ratio | **%s** | | | |" % fmt(s["ratio"], "%.3f"))
    if "memory" in results and results["memory"]["servers"].get("vtestd") and results["memory"]["servers"].get("reference"):
        m = results["memory"]
        md += ["", "**Memory** (PSS of the server's process tree):", "", cmd, "",
               "| | vtestd | reference | ratio |", "|---|---|---|---|"]
        for title, a, b, spec in memory_rows(m):
            md.append("| %s | %s | %s | %s |" % (title, fmt(a, spec), fmt(b, spec), fmt(ratio(a, b), "%.3f")))
    if errors:
        md += ["", "%d client(s) failed in this run (see the JSON / the script's output)." % len(errors)]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        log("error: %s" % e)
        sys.exit(2)
