#!/usr/bin/env python3
"""Write a gzip-compressed newc (SVR4, "070701") cpio archive from a list
of entries, without touching the host file system's owners or needing root:
every entry is owned by 0:0 with mtime 0, device nodes are written as
headers, so the output is byte-for-byte reproducible.

Usage: newc.py OUT.cpio.gz < SPEC, one entry per line:
    dir   PATH MODE
    file  PATH MODE HOSTFILE
    link  PATH TARGET
    cdev  PATH MODE MAJOR MINOR
PATH is inside the archive, without a leading slash; MODE is octal.
"""
import gzip
import sys

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


def header(ino, mode, nlink, size, rmaj, rmin, name):
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def pad4(n):
    return b"\0" * (-n % 4)


def entry(ino, mode, nlink, data, name, rmaj=0, rmin=0):
    name_b = name.encode() + b"\0"
    h = header(ino, mode, nlink, len(data), rmaj, rmin, name)
    out = h + name_b + pad4(len(h) + len(name_b)) + data + pad4(len(data))
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    parts = []
    ino = 1
    for lineno, line in enumerate(sys.stdin, 1):
        f = line.split()
        if not f or f[0].startswith("#"):
            continue
        kind, path = f[0], f[1].lstrip("/")
        ino += 1
        if kind == "dir":
            parts.append(entry(ino, S_IFDIR | int(f[2], 8), 2, b"", path))
        elif kind == "file":
            with open(f[3], "rb") as fh:
                data = fh.read()
            parts.append(entry(ino, S_IFREG | int(f[2], 8), 1, data, path))
        elif kind == "link":
            parts.append(entry(ino, S_IFLNK | 0o777, 1, f[2].encode(), path))
        elif kind == "cdev":
            parts.append(entry(ino, S_IFCHR | int(f[2], 8), 1, b"", path,
                               int(f[3]), int(f[4])))
        else:
            sys.exit("newc.py: line %d: unknown entry kind %r" % (lineno, kind))
    parts.append(entry(0, 0, 1, b"", "TRAILER!!!"))
    raw = b"".join(parts)
    raw += b"\0" * (-len(raw) % 512)
    with open(sys.argv[1], "wb") as out:
        out.write(gzip.compress(raw, compresslevel=9, mtime=0))


if __name__ == "__main__":
    main()
