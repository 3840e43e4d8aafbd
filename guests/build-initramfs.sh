#!/usr/bin/env bash
# Build $CACHE/initramfs.cpio.gz from the fetched busybox-static (i386),
# guests/init.sh (as /init) and guests/workload.sh (as /workload.sh).
# Root-independent and reproducible: guests/newc.py writes the archive
# (owners 0:0, mtime 0, /dev/console as a header-only device node).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ -x "$BUSYBOX" ] || die "no busybox at $BUSYBOX: run guests/fetch.sh first"
command -v python3 >/dev/null 2>&1 || die "python3 not found (needed to write the cpio archive)"

log "building $INITRD ..."
tmp="$INITRD.tmp.$$"
trap 'rm -f "$tmp"' EXIT
base_initramfs_spec | python3 "$GUESTS_DIR/newc.py" "$tmp" || die "writing the cpio archive failed"
mv -f "$tmp" "$INITRD"
trap - EXIT
