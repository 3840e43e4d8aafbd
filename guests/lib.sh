# shellcheck shell=bash
# Shared helpers for the guest recipes: cache location, progress and error
# lines. Sourced by fetch.sh, build-initramfs.sh, expected.sh and build.sh;
# not meant to be run on its own.

UMBRA_GUEST_CACHE="${UMBRA_GUEST_CACHE:-$HOME/.cache/umbra/guests}"
CACHE="$UMBRA_GUEST_CACHE"
GUESTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Where fetch.sh extracts things inside the cache.
DEB_DIR="$CACHE/debs"
KERNEL_ROOT="$CACHE/linux"
BUSYBOX_ROOT="$CACHE/busybox"
BUSYBOX="$BUSYBOX_ROOT/bin/busybox"
INITRD="$CACHE/initramfs.cpio.gz"
EXPECTED="$CACHE/expected.txt"
GUEST_ENV="$CACHE/guest.env"

log() { printf 'umbra-guests: %s\n' "$*" >&2; }
die() { printf 'umbra-guests: error: %s\n' "$*" >&2; exit 1; }

# The extracted kernel image, e.g. $CACHE/linux/boot/vmlinuz-6.1.0-28-686;
# empty when not fetched yet. If several versions were fetched over time,
# the newest by version sort wins.
kernel_path() {
    local k
    k=$(ls -1 "$KERNEL_ROOT"/boot/vmlinuz-*-686 2>/dev/null | sort -V | tail -n 1)
    printf '%s' "$k"
}

# True when every file named after the first argument exists and $1 exists
# and is at least as new as each of them.
up_to_date() {
    local out="$1" in
    shift
    [ -e "$out" ] || return 1
    for in in "$@"; do
        [ -e "$in" ] || return 1
        [ "$out" -nt "$in" ] || [ ! "$in" -nt "$out" ] || return 1
    done
    return 0
}

# The newc.py spec lines of the default initramfs (busybox, /init, the
# workload); build-disk.sh adds its modules after them.
base_initramfs_spec() {
    cat <<SPEC
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
}
