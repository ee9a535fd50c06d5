#!/usr/bin/env python3
"""Venus connection set-up: vtestd against the reference, side by side.

Both servers run at once, as a user starts them with Vulkan on:
`vtestd serve --venus` (its defaults: a pool of pre-started workers, each
with its confined render server, the sandbox on) and
`virgl_test_server --use-egl-surfaceless --venus`. The script runs
`vulkaninfo --summary` through Mesa's Venus ICD (`VN_DEBUG=vtest`,
`VTEST_SOCKET_NAME`) N times per server, alternating the servers run by
run, and reports the wall time of each run (process start to exit: the
connection, the handshake, the capset, CONTEXT_INIT(4), instance and
physical-device enumeration and the device queries vulkaninfo makes):
p50, p90, and vtestd / reference ratios. It needs virglrenderer 1.x, its
render server, Mesa's Venus ICD and lavapipe (Debian 13):

    scripts/debian13.sh enter 'cargo build --release -p vtestd && \\
        python3 bench/venus_setup.py --runs 50 --markdown target/venus.md'
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ICD = "/usr/share/vulkan/icd.d/virtio_icd.json"


class Server:
    def __init__(self, label, argv, root):
        self.label = label
        self.dir = tempfile.mkdtemp(prefix="venus-%s-" % label, dir=root)
        self.socket = os.path.join(self.dir, ".virgl_test")
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen(argv + ["--socket-path=" + self.socket],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("%s did not start: see %s" % (label, self.log.name))
            time.sleep(0.05)
        time.sleep(0.5)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def vulkaninfo_once(server):
    env = dict(os.environ, VK_DRIVER_FILES=ICD, VN_DEBUG="vtest",
               VTEST_SOCKET_NAME=server.socket)
    env.pop("DISPLAY", None)
    t0 = time.perf_counter()
    out = subprocess.run(["vulkaninfo", "--summary"], env=env, capture_output=True,
                         text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    ok = out.returncode == 0 and "Venus" in out.stdout
    return elapsed, ok


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50, help="vulkaninfo runs per server")
    ap.add_argument("--vtestd", default="target/release/vtestd", help="vtestd binary")
    ap.add_argument("--reference-cmd", default="virgl_test_server --use-egl-surfaceless --venus")
    ap.add_argument("--markdown", help="write the table here")
    args = ap.parse_args()
    for need in ["vulkaninfo", args.reference_cmd.split()[0]]:
        if shutil.which(need) is None:
            sys.exit("%s not found" % need)
    root = tempfile.mkdtemp(prefix="venus-bench-", dir="/tmp")
    # A copy of the binary: the broker starts its workers from its own file.
    vtestd = os.path.join(root, "vtestd")
    shutil.copy(args.vtestd, vtestd)
    cache = tempfile.mkdtemp(prefix="venus-bench-cache-", dir="/var/tmp")
    servers = [
        Server("vtestd", [vtestd, "serve", "--venus", "--shader-cache-dir=" + cache,
                          "--admin-socket=" + os.path.join(root, "admin.sock")], root),
        Server("reference", args.reference_cmd.split(), root),
    ]
    times = {s.label: [] for s in servers}
    failures = {s.label: 0 for s in servers}
    try:
        for i in range(args.runs):
            order = servers if i % 2 == 0 else servers[::-1]
            for s in order:
                t, ok = vulkaninfo_once(s)
                times[s.label].append(t)
                failures[s.label] += 0 if ok else 1
                # Let a finished client's worker go (and the pool refill)
                # as a user's next command would find it.
                time.sleep(0.05)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    rows = []
    for label in ["vtestd", "reference"]:
        xs = times[label]
        rows.append((label, statistics.median(xs) * 1e3, pct(xs, 0.9) * 1e3, failures[label]))
    ratio50 = rows[0][1] / rows[1][1]
    ratio90 = rows[0][2] / rows[1][2]
    lines = [
        "| Venus set-up (`vulkaninfo --summary`, %d runs each, alternated) | p50 ms | p90 ms | failed runs |"
        % args.runs,
        "|---|---|---|---|",
    ]
    for label, p50, p90, failed in rows:
        lines.append("| %s | %.1f | %.1f | %d |" % (label, p50, p90, failed))
    lines.append("| ratio vtestd / reference | %.2f | %.2f | |" % (ratio50, ratio90))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if any(failures.values()):
        sys.exit("some runs failed: %s" % failures)


if __name__ == "__main__":
    main()
