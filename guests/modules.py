#!/usr/bin/env python3
"""Resolve kernel modules and their dependencies without depmod.

Usage: modules.py MODULE_DIR NAME...   (MODULE_DIR = lib/modules/<version>)

Reads the `depends=` field of each module's .modinfo strings (the same
field modinfo prints), follows it transitively and prints the module
files, relative to MODULE_DIR, in an order where every module comes after
what it depends on (the order insmod needs). Module names treat '-' and
'_' alike, as the kernel does.
"""
import os
import sys


def norm(name):
    return name.replace("-", "_")


def index(root):
    by_name = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".ko"):
                by_name[norm(f[:-3])] = os.path.join(dirpath, f)
    return by_name


def depends(path):
    data = open(path, "rb").read()
    for field in data.split(b"\0"):
        if field.startswith(b"depends="):
            v = field[len(b"depends="):].decode()
            return [norm(d) for d in v.split(",") if d]
    return []


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    root = sys.argv[1]
    mods = index(root)
    order, state = [], {}

    def visit(name, chain):
        if state.get(name) == "done":
            return
        if state.get(name) == "busy":
            sys.exit("dependency cycle: " + " -> ".join(chain + [name]))
        if name not in mods:
            sys.exit("module %s not found under %s (needed by %s)"
                     % (name, root, chain[-1] if chain else "the command line"))
        state[name] = "busy"
        for d in depends(mods[name]):
            visit(d, chain + [name])
        state[name] = "done"
        order.append(os.path.relpath(mods[name], root))

    for n in sys.argv[2:]:
        visit(norm(n), [])
    print("\n".join(order))


if __name__ == "__main__":
    main()
