#!/usr/bin/env python3
"""Captures real Mesa vtest traffic (client -> server bytes) as fuzz seeds.

For each client it starts a vtest server, the team's logging relay
(vtest_proxy.py, imported so that its fd-preserving relay and parser are the
ones used) with a recorder on the client->server stream, a private Xvfb, and
the Mesa client in a private mount namespace whose /tmp holds the relay's
socket as /tmp/.virgl_test (Mesa 22.3 ignores VTEST_SOCKET_NAME). Each client
connection becomes one file, truncated to --max-bytes.

Run as root (unshare -m, mount --bind), from the repository root:

    python3 fuzz/tools/capture.py --proxy ../shared/tools/vtest_proxy.py \
        --server target/release/vtestd --out /tmp/captures

--server is a `vtestd` binary (run as `vtestd serve --socket-path=...`) or the
reference `virgl_test_server` (run with --use-egl-surfaceless). Output files:
<out>/<server>-<client>-<connection>.bin, plus the relay's log and summary.
"""

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

CLIENTS = {
    "glxinfo": ["glxinfo", "-B"],
    "glmark2-build": ["glmark2", "--off-screen", "-b", "build:duration=1"],
    "glmark2-texture": ["glmark2", "--off-screen", "-b", "texture:duration=1"],
    "glmark2-shading": ["glmark2", "--off-screen", "-b", "shading:duration=1"],
}

# Vulkan through Mesa's Venus ICD (--venus: the server serves Venus; Debian
# 13). Mesa 25 honours VTEST_SOCKET_NAME, but the private /tmp works too.
VENUS_CLIENTS = {
    "vulkaninfo": ["vulkaninfo", "--summary"],
    "vulkaninfo-full": ["vulkaninfo"],
}
VENUS_ENV = {"VK_DRIVER_FILES": "/usr/share/vulkan/icd.d/virtio_icd.json", "VN_DEBUG": "vtest"}


def load_proxy(path):
    spec = importlib.util.spec_from_file_location("vtest_proxy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def wait_for_socket(path, proc, what, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit("%s exited early (status %s)" % (what, proc.returncode))
        if os.path.exists(path):
            return
        time.sleep(0.05)
    sys.exit("%s did not create %s" % (what, path))


def start_xvfb(log):
    for n in range(180, 260):
        if os.path.exists("/tmp/.X11-unix/X%d" % n) or os.path.exists("/tmp/.X%d-lock" % n):
            continue
        p = subprocess.Popen(["Xvfb", ":%d" % n, "-noreset", "-nolisten", "tcp",
                              "-screen", "0", "1024x768x24"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for_socket("/tmp/.X11-unix/X%d" % n, p, "Xvfb", timeout=10)
            return p, n
        except SystemExit:
            stop(p)
    sys.exit("no free X display")


def stop(p):
    """Ends a process this script started, by its pid."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxy", required=True, help="path of vtest_proxy.py")
    ap.add_argument("--server", required=True, help="vtestd or virgl_test_server binary")
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-bytes", type=int, default=64 << 10)
    ap.add_argument("--clients", default=None, help="comma-separated subset")
    ap.add_argument("--venus", action="store_true",
                    help="serve Venus and capture the Vulkan clients (%s)" % ", ".join(VENUS_CLIENTS))
    a = ap.parse_args()
    clients = VENUS_CLIENTS if a.venus else CLIENTS
    if a.clients is None:
        a.clients = ",".join(clients)

    vp = load_proxy(a.proxy)
    os.makedirs(a.out, exist_ok=True)
    server_name = "vtestd" if "vtestd" in os.path.basename(a.server) else "reference"
    work = tempfile.mkdtemp(prefix="vtest-capture-")
    relay_dir = os.path.join(work, "tmp")  # the client's /tmp
    os.makedirs(relay_dir)
    os.chmod(relay_dir, 0o1777)
    upstream = os.path.join(work, "server.sock")
    listen = os.path.join(relay_dir, ".virgl_test")
    logf = open(os.path.join(a.out, "%s-relay.log" % server_name), "a")
    current = {"client": None}
    written = []

    # Record the client->server stream of every session the relay parses.
    orig_init = vp.Session.__init__

    def init(self, sid, log, verbose):
        orig_init(self, sid, log, verbose)
        name = "%s-%s-%d.bin" % (server_name, current["client"], sid)
        path = os.path.join(a.out, name)
        out = open(path, "wb")
        left = [a.max_bytes]
        feed = self.c2s.feed

        def recording_feed(b, nfds=0):
            if left[0] > 0:
                out.write(b[:left[0]])
                out.flush()
                left[0] -= min(len(b), left[0])
            feed(b, nfds)

        self.c2s.feed = recording_feed
        written.append(path)

    vp.Session.__init__ = init

    lock = threading.Lock()

    def log(msg):
        with lock:
            logf.write(msg + "\n")
            logf.flush()

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(listen)
    os.chmod(listen, 0o777)
    srv.listen(8)
    summaries = []
    sid = [0]

    def accept_loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            sid[0] += 1
            threading.Thread(target=vp.handle,
                             args=(c, upstream, sid[0], log, False,
                                   os.path.join(a.out, "%s-summary.json" % server_name),
                                   summaries), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()

    server_log = open(os.path.join(a.out, "%s-server.log" % server_name), "a")
    if server_name == "vtestd":
        cmd = [a.server, "serve", "--socket-path=%s" % upstream]
    else:
        cmd = [a.server, "--use-egl-surfaceless", "--socket-path=%s" % upstream]
    if a.venus:
        cmd.append("--venus")
    server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=server_log,
                              stderr=server_log)
    xvfb = None
    try:
        wait_for_socket(upstream, server, "server")
        xvfb, display = start_xvfb(server_log)
        env = dict(os.environ, DISPLAY=":%d" % display, GALLIUM_DRIVER="virpipe",
                   SWRAST_NO_PRESENT="1")
        if a.venus:
            env.update(VENUS_ENV)
            env.pop("DISPLAY")
        for name in a.clients.split(","):
            current["client"] = name
            before = len(written)
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /tmp && exec "$@"', relay_dir] + clients[name]
            r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=300)
            time.sleep(0.5)  # let the relay see the disconnect
            tail = r.stdout.decode(errors="replace").strip().splitlines()[-3:]
            print("%s via %s: exit %d, %d connection(s)  %s"
                  % (name, server_name, r.returncode, len(written) - before,
                     " | ".join(tail)))
    finally:
        srv.close()
        stop(xvfb)
        stop(server)
        shutil.rmtree(work, ignore_errors=True)
    for p in written:
        print("%7d %s" % (os.path.getsize(p), p))


if __name__ == "__main__":
    main()
