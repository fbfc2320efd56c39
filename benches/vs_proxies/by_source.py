#!/usr/bin/env python3
"""Instructions and instruction-cache misses a request, by source file.

    by_source.py CALLGRIND_OUT REQUESTS [--files N]

Reads a callgrind output file written with `--dump-instr=yes
--cache-sim=yes` from a binary with line tables (`debug =
"line-tables-only"`) and puts each instruction's cost down to the file
its line table names: an inlined function's code counts for the file it
was written in, not for the function it was inlined into, which is what
callgrind_annotate's per-function view cannot say. Prints a table by
crate (switchyard's own, core/alloc/std, each library), then the N
costliest files, each divided by REQUESTS. The README's *Whose
instructions they are* was read this way (`by_source.sh` runs it all).
"""
import collections
import os
import re
import sys


def read(path):
    """Self cost (Ir, I1mr) of each source file in a callgrind file."""
    names = {}
    ir = collections.Counter()
    miss = collections.Counter()
    events = []

    def name(spec):
        # `(id) name` defines a compressed name, `(id)` refers to it.
        m = re.match(r"\((\d+)\)(?: (.*))?", spec)
        if not m:
            return spec
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "?")

    fl = current = None
    after_call = False
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("fl="):
                fl = current = name(line[3:])
            elif line.startswith(("fi=", "fe=")):
                current = name(line[3:])
            elif line.startswith("fn="):
                current = fl
            elif line.startswith(("cfi=", "cfl=")):
                name(line[4:])
            elif line.startswith("calls="):
                # The next cost line is the call's inclusive cost: the
                # callee's own lines count it where they are.
                after_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                    continue
                # Two positions (instruction, line), then the events.
                costs = line.split()[2:]
                if "Ir" in events and len(costs) > events.index("Ir"):
                    ir[current] += int(costs[events.index("Ir")])
                if "I1mr" in events and len(costs) > events.index("I1mr"):
                    miss[current] += int(costs[events.index("I1mr")])
    return ir, miss


# The repository's root, where switchyard's own files are (a binary built
# from another checkout has its own files counted as "other").
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")) + "/"


def short(path):
    """A file's name without the registry's or the toolchain's prefix."""
    if path.startswith(ROOT):
        return "switchyard:" + path[len(ROOT):]
    path = re.sub(r".*/registry/src/[^/]+/", "", path)
    return re.sub(r"/rustc/[0-9a-f]+/", "rustc:", path)


def group(path):
    """The crate (or toolchain part) a file belongs to."""
    if path.startswith("switchyard:"):
        return "switchyard's own"
    if path.startswith("rustc:"):
        return "core, alloc, std"
    if "sysdeps" in path or "nptl" in path or path.startswith("./"):
        return "libc"
    m = re.match(r"([A-Za-z0-9_]+(?:-[A-Za-z_][A-Za-z0-9_]*)*)-\d", path)
    return m.group(1) if m else "other"


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ir, miss = read(sys.argv[1])
    n = float(sys.argv[2])
    top = int(sys.argv[sys.argv.index("--files") + 1]) if "--files" in sys.argv else 30
    files_ir = collections.Counter()
    files_miss = collections.Counter()
    for path, v in ir.items():
        files_ir[short(path)] += v
    for path, v in miss.items():
        files_miss[short(path)] += v
    groups_ir = collections.Counter()
    groups_miss = collections.Counter()
    for path, v in files_ir.items():
        groups_ir[group(path)] += v
        groups_miss[group(path)] += files_miss[path]
    print(f"{'by crate':40} {'instr/req':>10} {'I1 miss/req':>12}")
    for g, v in groups_ir.most_common():
        print(f"{g:40} {v / n:10.0f} {groups_miss[g] / n:12.1f}")
    print(f"{'all':40} {sum(ir.values()) / n:10.0f} {sum(miss.values()) / n:12.1f}")
    print()
    print(f"{'by file':70} {'instr/req':>10} {'I1 miss/req':>12}")
    for path, v in files_ir.most_common(top):
        print(f"{path[:70]:70} {v / n:10.0f} {files_miss[path] / n:12.1f}")


if __name__ == "__main__":
    main()
