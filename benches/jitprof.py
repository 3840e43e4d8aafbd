#!/usr/bin/env python3
"""Where the time inside translated code goes, host instruction by host
instruction.

Usage:
  UMBRA_PERF_MAP=1 perf record -o perf.data -- umbra run --code-cache 1G ...
  perf script -i perf.data -F ip,sym > samples.txt
  benches/jitprof.py /tmp/umbra-code-<pid>.bin samples.txt [--top N]

With UMBRA_PERF_MAP set, the translator writes every block's host code to
/tmp/umbra-code-<pid>.bin (and names blocks in /tmp/perf-<pid>.map). A code
cache large enough never to evict (--code-cache 1G) keeps each host address
to one block. The script decodes the blocks (the `iced-x86` Python package:
pip install iced-x86) and prints:

  - the share of all samples that fell in generated code;
  - samples per host mnemonic;
  - samples per host instruction *sequence class*: each instruction is
    labelled by a few recognisable idioms of the code generator (flag
    spill/restore, shadow lookup, guest registers to and from the context);
  - the hottest blocks, each with its hottest instructions.
"""

import bisect
import struct
import sys
from collections import Counter, defaultdict

try:
    from iced_x86 import Decoder, Formatter, FormatterSyntax
except ImportError:
    sys.exit("jitprof.py: needs the iced-x86 package (pip install iced-x86)")


def load_blocks(path):
    """[(addr, bytes, guest_lin)] sorted by address; a later block at the
    same address replaces an earlier one."""
    data = open(path, "rb").read()
    at = 0
    blocks = {}
    while at + 16 <= len(data):
        addr, n, lin = struct.unpack_from("<QII", data, at)
        at += 16
        blocks[addr] = (data[at : at + n], lin)
        at += n
    return sorted((a, b, lin) for a, (b, lin) in blocks.items())


def load_samples(path):
    """Sample IPs (ints) from `perf script -F ip,sym` output."""
    ips = []
    for line in open(path, errors="replace"):
        f = line.split()
        if not f:
            continue
        try:
            ips.append(int(f[0], 16))
        except ValueError:
            continue
    return ips


def classify(text):
    """A coarse label for one host instruction of generated code (Intel
    syntax text from iced-x86; offset of `ctx::JitCtx::hflags`: 20h; R8
    holds the shadow table, whose 32-byte entries are read at
    [r8+rsi+...])."""
    t = text
    if t.startswith(("pushfq", "popfq", "sahf", "lahf")) or "[rbp+20h]" in t or "[rbp+21h]" in t:
        return "flags to/from hflags"
    if "[r8+" in t:
        return "shadow table loads"
    if t.startswith("call"):
        return "monitor call"
    if "[rbp" in t and t.startswith("mov") and ("[rbp]" in t or "[rbp+4]" in t or "[rbp+8]" in t
                                             or "[rbp+0Ch]" in t or "[rbp+10h]" in t or "[rbp+14h]" in t
                                             or "[rbp+18h]" in t or "[rbp+1Ch]" in t):
        return "guest registers to/from the context"
    return None


def main():
    args = sys.argv[1:]
    top = 15
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i : i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    blocks = load_blocks(args[0])
    ips = load_samples(args[1])
    starts = [b[0] for b in blocks]
    fmt = Formatter(FormatterSyntax.INTEL)

    per_block = defaultdict(Counter)
    in_code = 0
    for ip in ips:
        i = bisect.bisect_right(starts, ip) - 1
        if i < 0:
            continue
        a, code, _ = blocks[i]
        if ip >= a + len(code):
            continue
        in_code += 1
        per_block[i][ip] += 1

    by_mnemonic = Counter()
    by_class = Counter()
    hot_blocks = []
    for i, cnt in per_block.items():
        a, code, lin = blocks[i]
        dec = Decoder(64, code, ip=a)
        texts = {}
        for ins in dec:
            texts[ins.ip] = fmt.format(ins)
        total = sum(cnt.values())
        hot_blocks.append((total, i))
        for ip, n in cnt.items():
            t = texts.get(ip, "?")
            by_mnemonic[t.split()[0] if t else "?"] += n
            by_class[classify(t) or "other"] += n

    print(f"samples {len(ips)}, in generated code {in_code} ({100 * in_code / max(1, len(ips)):.1f}%)")
    print("\nby host mnemonic (share of samples in generated code; a sample is")
    print("usually charged to the instruction after the one that stalled):")
    for m, n in by_mnemonic.most_common(top):
        print(f"  {100 * n / max(1, in_code):5.1f}%  {m}")
    print("\nby idiom:")
    for m, n in by_class.most_common():
        print(f"  {100 * n / max(1, in_code):5.1f}%  {m}")
    print(f"\nhottest {top} blocks:")
    for total, i in sorted(hot_blocks, reverse=True)[:top]:
        a, code, lin = blocks[i]
        print(f"\n  guest {lin:08x}  host {a:x}  {len(code)} bytes  {100 * total / max(1, in_code):.1f}%")
        dec = Decoder(64, code, ip=a)
        cnt = per_block[i]
        for ins in dec:
            n = cnt.get(ins.ip, 0)
            mark = f"{n:6d}" if n else "      "
            print(f"    {mark}  {ins.ip - a:5x}  {fmt.format(ins)}")


if __name__ == "__main__":
    main()
