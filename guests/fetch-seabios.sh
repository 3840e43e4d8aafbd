#!/usr/bin/env bash
# Fetch Debian's SeaBIOS package (architecture all: bios.bin, bios-256k.bin,
# vgabios-*.bin) with apt into the guest cache and extract it to
# $CACHE/seabios, so that images are under $CACHE/seabios/usr/share/seabios.
# Nothing is installed on the host. Usage: guests/fetch-seabios.sh (cache:
# $UMBRA_GUEST_CACHE or ~/.cache/umbra/guests). Re-running with the images
# present does nothing.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SEABIOS_ROOT="$CACHE/seabios"
SEABIOS_DIR="$SEABIOS_ROOT/usr/share/seabios"

# Already extracted (or a prebuilt cache was handed to us): nothing to do.
if [ -f "$SEABIOS_DIR/bios.bin" ] && [ -f "$SEABIOS_DIR/vgabios-stdvga.bin" ]; then
    exit 0
fi

command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 ||
    die "apt-get/dpkg-deb not found: fetching needs a Debian (or derived) host; or set UMBRA_GUEST_CACHE to a prebuilt cache"

mkdir -p "$DEB_DIR" || die "cannot create or write $DEB_DIR (set UMBRA_GUEST_CACHE to a writable directory)"
chmod 755 "$CACHE" "$DEB_DIR" 2>/dev/null || true

# 1. Download (not install) the package, once. seabios is architecture
#    "all", so the host's package lists suffice; if apt does not know it,
#    the lists are probably missing: say so rather than run apt-get update
#    as root behind the user's back.
if ! ls "$DEB_DIR"/seabios_*_all.deb >/dev/null 2>&1; then
    log "downloading seabios ..."
    # apt-get download writes into the current directory; keep it as the
    # caller so that the _apt sandbox user need not write the cache.
    if ! (cd "$DEB_DIR" && apt-get download -q -o APT::Sandbox::User="$(id -un)" seabios) >"$DEB_DIR/download.log" 2>&1; then
        if grep -qiE 'unable to locate|no candidate|has no installation candidate' "$DEB_DIR/download.log"; then
            die "apt does not know the seabios package (run apt-get update as root, or see $DEB_DIR/download.log)"
        fi
        die "could not download seabios (no network or Debian mirror unreachable?); see $DEB_DIR/download.log"
    fi
    rm -f "$DEB_DIR/download.log"
fi

# 2. Extract the newest downloaded version afresh.
deb=$(ls -1 "$DEB_DIR"/seabios_*_all.deb | sort -V | tail -n 1)
log "extracting $(basename "$deb") ..."
rm -rf "$SEABIOS_ROOT"
dpkg-deb -x "$deb" "$SEABIOS_ROOT" || die "extracting $deb failed"
[ -f "$SEABIOS_DIR/bios.bin" ] || die "$deb did not contain usr/share/seabios/bios.bin"
log "seabios: $SEABIOS_DIR"
