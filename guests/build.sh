#!/usr/bin/env bash
# Build the Umbra test guest: fetch (fetch.sh), initramfs
# (build-initramfs.sh), expected results (expected.sh). Each step is
# skipped when its output exists and is newer than its inputs. Prints the
# paths and writes $CACHE/guest.env (KERNEL=, INITRD=, EXPECTED=).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ -z "$(kernel_path)" ] || [ ! -x "$BUSYBOX" ]; then
    "$GUESTS_DIR/fetch.sh"
fi
KERNEL=$(kernel_path)
[ -n "$KERNEL" ] || die "no kernel in $KERNEL_ROOT/boot after fetching"

if ! up_to_date "$INITRD" "$BUSYBOX" "$GUESTS_DIR/init.sh" "$GUESTS_DIR/workload.sh" \
    "$GUESTS_DIR/newc.py" "$GUESTS_DIR/build-initramfs.sh"; then
    "$GUESTS_DIR/build-initramfs.sh"
fi
if ! up_to_date "$EXPECTED" "$BUSYBOX" "$GUESTS_DIR/workload.sh" "$GUESTS_DIR/expected.sh"; then
    "$GUESTS_DIR/expected.sh"
fi

# Lines other recipes added (build-disk.sh: DISK=, ISO=) are kept.
env_text="KERNEL=$KERNEL
INITRD=$INITRD
EXPECTED=$EXPECTED"
others=$(grep -vE '^(KERNEL|INITRD|EXPECTED)=' "$GUEST_ENV" 2>/dev/null || true)
[ -z "$others" ] || env_text="$env_text
$others"
if [ ! -f "$GUEST_ENV" ] || [ "$(cat "$GUEST_ENV")" != "$env_text" ]; then
    envtmp=$(mktemp "$CACHE/guest.env.XXXXXX")
    printf '%s\n' "$env_text" >"$envtmp"
    mv -f "$envtmp" "$GUEST_ENV"
fi

echo "kernel:   $KERNEL"
echo "initrd:   $INITRD"
echo "expected: $EXPECTED"
echo "env:      $GUEST_ENV"
