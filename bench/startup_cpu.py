#!/usr/bin/env python3
"""CPU per client of two or more server commands, A/B/...: all servers run
at once, and sequential `CREATE_RENDERER` + `PING` clients go to one server
after the other (the order alternating), so that whatever else the machine
does at the time weighs on every server alike. Per server and block of
clients: the task-clock of the server's whole tree (perf_event_open,
inherit: broker, reapers, workers, their threads, exited ones included);
the ratio to the first server's, block by block; and once, the whole
machine's busy time (/proc/stat: kernel threads too, such as the kworkers
that tear network namespaces down, and anything else running). Each client
of a vtestd with a pool costs one worker start, so this is the CPU per
worker start.

    sudo python3 bench/startup_cpu.py --clients 60 \\
        --cmd 'A=/tmp/vtestd-a serve' --cmd 'B=/tmp/vtestd-b serve' \\
        --cmd 'ref=virgl_test_server --use-egl-surfaceless'

A vtestd binary is best copied out of target/ first (a rebuild must not
replace it under a running broker).
"""

import argparse
import os
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import side_by_side as sbs  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    """Busy seconds of all CPUs so far (user..steal, not idle/iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK_TCK


def own_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ping_client(path):
    sbs.ping_once(path)


def render_client(path):
    """A client that makes the server create its context (a resource, an
    empty submit, a wait), then hangs up."""
    sbs.active_client(path).close()


CLIENTS = {"ping": ping_client, "render": render_client}


def measure(servers, clients, block, gap, client):
    """Sequential clients, one per server in turn (the order alternating),
    so that whatever else the machine does weighs on every server alike.
    Returns {label: [CPU ms per client of each block of `block` clients]}."""
    per_block = {s.label: [] for s in servers}
    for server in servers:  # unmeasured: first clients, pool refill
        for _ in range(3):
            client(server.socket)
            time.sleep(gap)
    for server in servers:
        server.wait_idle()
    for b in range(clients // block):
        start = {s.label: s.cpu_s() for s in servers}
        for i in range(block):
            for server in (servers if (b * block + i) % 2 == 0 else servers[::-1]):
                client(server.socket)
                time.sleep(gap)
        for server in servers:
            server.wait_idle()
        for server in servers:
            per_block[server.label].append((server.cpu_s() - start[server.label]) * 1e3 / block)
    return per_block


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cmd", action="append", required=True, metavar="LABEL=COMMAND",
                   help="a server command (--socket-path=... is appended); two or more")
    p.add_argument("--clients", type=int, default=60, help="measured clients per server")
    p.add_argument("--block", type=int, default=10,
                   help="clients per block: the figures are per block, and their ratios")
    p.add_argument("--client", choices=sorted(CLIENTS), default="ping",
                   help="ping: CREATE_RENDERER + PING (no context); render: the server "
                   "also creates the client's context and a resource (default ping)")
    p.add_argument("--gap-ms", type=float, default=150,
                   help="pause after each client (a worker start must fit in it)")
    args = p.parse_args()
    servers = []
    for spec in args.cmd:
        label, _, cmd = spec.partition("=")
        servers.append((label, shlex.split(cmd)))
    # Caches out of the way: the reference's in a private HOME, vtestd's
    # default under CACHE_DIRECTORY; both warm across a round's clients.
    home = tempfile.mkdtemp(prefix="startup-cpu-home-")
    cache = tempfile.mkdtemp(prefix="startup-cpu-cache-", dir="/var/tmp")
    env = dict(os.environ, HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"),
               CACHE_DIRECTORY=cache)
    env.pop("GALLIUM_DRIVER", None)
    started = []
    try:
        for label, argv in servers:
            started.append(sbs.Server(label, argv, env=env))
        if any(s.cpu_s() is None for s in started):
            sys.exit("perf_event_open failed (run as root): %s" % sbs.PERF_NOTE)
        busy0, own0 = machine_busy_s(), own_cpu_s()
        per_block = measure(started, args.clients, args.block, args.gap_ms / 1e3,
                            CLIENTS[args.client])
        busy = (machine_busy_s() - busy0) - (own_cpu_s() - own0)
    finally:
        for s in started:
            s.stop()
            s.cleanup()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    first = started[0].label
    print("CPU ms per %s client of each server's tree, %d clients each in blocks of %d" % (
        args.client, args.clients, args.block))
    for label, blocks in per_block.items():
        ratios = [b / a for a, b in zip(per_block[first], blocks)]
        print("  %-10s median %7.2f  mean %7.2f  (blocks %s)  /%s: median %.3f" % (
            label, statistics.median(blocks), statistics.mean(blocks),
            " ".join("%.1f" % b for b in blocks), first, statistics.median(ratios)))
    total = args.clients * len(started)
    print("whole machine, less this script: %.2f ms per client (all servers, kernel "
          "threads and anything else running)" % (busy * 1e3 / total))


if __name__ == "__main__":
    main()
