#!/usr/bin/env bash
# Compute the workload's expected results by running guests/workload.sh
# natively on the host with the SAME busybox-static i386 binary the guest
# uses, and write $CACHE/expected.txt:
#   md5 <hex>
#   sha256 <hex>
#   awk <hex>
#   gzip <hex> <bytes>
#   fork 500
# (each workload line without "WORKLOAD " and without its time field).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ -x "$BUSYBOX" ] || die "no busybox at $BUSYBOX: run guests/fetch.sh first"
[ "$("$BUSYBOX" echo hi 2>/dev/null)" = hi ] ||
    die "this host cannot run the i386 static busybox ($BUSYBOX): needs an x86 host with 32-bit support (CONFIG_IA32_EMULATION)"

log "computing expected results natively with $BUSYBOX ..."
work=$(mktemp -d "${TMPDIR:-/tmp}/umbra-guests.XXXXXX")
trap 'rm -rf "$work"' EXIT
BB="$BUSYBOX" WORKDIR="$work" "$BUSYBOX" sh "$GUESTS_DIR/workload.sh" >"$work/out" ||
    die "the workload failed on the host (see guests/workload.sh)"
sed -n 's/^WORKLOAD \(.*\) [0-9.]*s$/\1/p' "$work/out" >"$work/expected"
[ "$(wc -l <"$work/expected")" -eq 5 ] && [ "$(tail -n 1 "$work/expected")" = "fork 500" ] ||
    die "the workload printed unexpected output: $(tr '\n' '|' <"$work/out")"
mv -f "$work/expected" "$EXPECTED"
