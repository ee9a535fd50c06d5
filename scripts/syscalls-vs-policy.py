#!/usr/bin/env python3
"""Compares the system calls a worker made (strace -f -o FILE of a
`vtestd serve --sandbox=off` run, workers only) with a seccomp profile.

    strace -f -qq -o trace.txt vtestd serve --sandbox=off --pool=0 ...
    ... run clients ...
    scripts/syscalls-vs-policy.py trace.txt [llvmpipe|gpu]

Prints the calls the workers made that the profile's init list (with its
families) does not allow. A worker is a process whose first traced call is
the execve of `vtestd worker`; calls before the worker applies its sandbox
(the loader, argument parsing) are counted too, so the list over-reports.
"""
import json
import re
import sys
from pathlib import Path

policies = Path(__file__).resolve().parent.parent / "policies" / "seccomp"


def allowed(profile):
    names = set()
    for f in ("common.json", f"{profile}.json"):
        d = json.loads((policies / f).read_text())
        names |= {r["syscall"] for r in d["init"]}
    fams = json.loads((policies / "families.json").read_text())["families"]
    for fam in fams:
        if names & set(fam):
            names |= set(fam)
    return names


def main():
    trace = Path(sys.argv[1]).read_text(errors="replace").splitlines()
    profile = sys.argv[2] if len(sys.argv) > 2 else "llvmpipe"
    workers = set()
    parent = {}
    used = {}
    for line in trace:
        m = re.match(r"(\d+) +(\w+)\((.*)", line)
        if not m:
            continue
        pid, call, rest = int(m[1]), m[2], m[3]
        if call == "execve" and '"worker"' in rest:
            workers.add(pid)
        if call in ("clone", "clone3", "fork", "vfork"):
            r = re.search(r"= (\d+)$", line)
            if r:
                parent[int(r[1])] = pid
        p = pid
        while p not in workers and p in parent:
            p = parent[p]
        if p in workers:
            used[call] = used.get(call, 0) + 1
    ok = allowed(profile)
    print(f"{len(used)} distinct calls by workers; not in the {profile} init list:")
    for call in sorted(set(used) - ok):
        print(f"  {call} ({used[call]})")


main()
