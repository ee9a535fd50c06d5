#!/usr/bin/env python3
"""Puts a benchmark's Markdown tables into the README.

    python3 bench/side_by_side.py --piglit --markdown /tmp/bench.md
    python3 bench/readme_update.py /tmp/bench.md            # edits README.md
    python3 bench/readme_update.py /tmp/bench.md --readme COPY.md --dry-run

Replaces everything between the lines `<!-- bench:begin -->` and
`<!-- bench:end -->` of the README (default: the repository's README.md)
with FILE's content; the marker lines stay. Exit status 2 if the markers
are missing, repeated or out of order, or FILE is empty.
"""

import argparse
import difflib
import os
import sys
import tempfile

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def markers(block):
    """The marker lines of block NAME (`bench`: the side-by-side tables;
    `venus-bench`: bench/venus_setup.py's)."""
    return "<!-- %s:begin -->" % block, "<!-- %s:end -->" % block
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def replace_block(text, content, block="bench"):
    """text with the lines between the markers replaced by content."""
    BEGIN, END = markers(block)
    lines = text.splitlines(keepends=True)
    begins = [i for i, ln in enumerate(lines) if ln.strip() == BEGIN]
    ends = [i for i, ln in enumerate(lines) if ln.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise ValueError("expected one line %r and, after it, one line %r (found %d and %d)"
                         % (BEGIN, END, len(begins), len(ends)))
    body = content.strip("\n")
    if not body:
        raise ValueError("the new content is empty")
    new = "\n" + body + "\n\n"     # blank lines around it: Markdown tables need them
    return "".join(lines[:begins[0] + 1]) + new + "".join(lines[ends[0]:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("file", help="Markdown written by side_by_side.py --markdown")
    ap.add_argument("--readme", default=os.path.join(REPO, "README.md"), help="default %(default)s")
    ap.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
    ap.add_argument("--block", default="bench",
                    help="which marked block: bench (side_by_side.py) or venus-bench (venus_setup.py)")
    args = ap.parse_args()
    with open(args.file) as f:
        content = f.read()
    with open(args.readme) as f:
        old = f.read()
    try:
        new = replace_block(old, content, args.block)
    except ValueError as e:
        print("%s: %s" % (args.readme, e), file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                                   args.readme, args.readme + " (new)"))
        return 0
    if new == old:
        print("%s: already up to date" % args.readme, file=sys.stderr)
        return 0
    # Atomically, keeping the file's mode.
    d = os.path.dirname(os.path.abspath(args.readme))
    fd, tmp = tempfile.mkstemp(prefix=".readme-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(new)
        os.chmod(tmp, os.stat(args.readme).st_mode & 0o7777)
        os.replace(tmp, args.readme)
    except BaseException:
        os.unlink(tmp)
        raise
    print("%s: benchmark block replaced (%d lines)" % (args.readme, content.count("\n")), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
