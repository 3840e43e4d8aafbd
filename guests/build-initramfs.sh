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
python3 "$GUESTS_DIR/newc.py" "$tmp" <<SPEC || die "writing the cpio archive failed"
dir   bin       755
dir   sbin      755
dir   usr       755
dir   usr/bin   755
dir   usr/sbin  755
dir   dev       755
dir   proc      555
dir   sys       555
dir   tmp       1777
dir   root      700
dir   etc       755
file  bin/busybox 755 $BUSYBOX
link  bin/sh    busybox
cdev  dev/console 600 5 1
file  init      755 $GUESTS_DIR/init.sh
file  workload.sh 644 $GUESTS_DIR/workload.sh
SPEC
mv -f "$tmp" "$INITRD"
trap - EXIT
