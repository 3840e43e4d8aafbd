#!/usr/bin/env bash
# Fetch the test guest's Debian packages (i386 kernel, static busybox) with
# apt into the cache and extract what we need. Nothing is installed on the
# host. Usage: guests/fetch.sh   (cache: $UMBRA_GUEST_CACHE or
# ~/.cache/umbra/guests). Re-running with everything present does nothing.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Already fetched (or a prebuilt cache was handed to us): nothing to do,
# and no root or network needed.
if [ -n "$(kernel_path)" ] && [ -x "$BUSYBOX" ]; then
    exit 0
fi

command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 ||
    die "apt-get/dpkg not found: fetching needs a Debian (or derived) host; or set UMBRA_GUEST_CACHE to a prebuilt cache"

# Commands that change apt's state need root: run directly as root, else
# through sudo when it works without a password prompt.
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        NEED_ROOT_MSG="not root and cannot run apt as root: run guests/build.sh as root or with sudo, or set UMBRA_GUEST_CACHE to a prebuilt cache"
    fi
fi
as_root() {
    if [ -n "${NEED_ROOT_MSG:-}" ]; then die "$NEED_ROOT_MSG"; fi
    "${SUDO[@]}" "$@"
}

mkdir -p "$CACHE" || die "cannot create or write the cache directory $CACHE (set UMBRA_GUEST_CACHE to a writable directory)"

# 1. The i386 architecture (once).
if ! dpkg --print-foreign-architectures | grep -qx i386; then
    log "adding dpkg architecture i386"
    as_root dpkg --add-architecture i386 || die "dpkg --add-architecture i386 failed"
fi

# 2. Package lists for i386, only when missing.
have_i386_lists() {
    ls /var/lib/apt/lists/*_binary-i386_Packages* >/dev/null 2>&1
}
if ! have_i386_lists; then
    log "apt-get update (no i386 package lists yet) ..."
    if ! as_root apt-get update -qq >"$CACHE/apt-update.log" 2>&1 || ! have_i386_lists; then
        # apt reports unreachable sources as warnings; the missing lists tell.
        have_i386_lists ||
            die "apt-get update could not fetch the i386 package lists (no network or Debian mirror unreachable?); see $CACHE/apt-update.log"
    fi
    rm -f "$CACHE/apt-update.log"
fi

# 3. Resolve the kernel metapackage to the concrete image package.
kpkg=$(apt-cache depends linux-image-686:i386 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^:[:space:]]*-686\)\(:i386\)\{0,1\}$/\1/p' | head -n 1)
[ -n "$kpkg" ] ||
    die "cannot resolve linux-image-686:i386 to a kernel package (apt-cache depends found none; are the i386 lists current?)"

# 4. Download (not install) both packages.
mkdir -p "$DEB_DIR"
chmod 755 "$CACHE" "$DEB_DIR" 2>/dev/null || true
download() {
    local pkg="$1"
    if ls "$DEB_DIR/${pkg}_"*_i386.deb >/dev/null 2>&1; then
        return 0
    fi
    log "downloading $pkg ..."
    # apt-get download fetches into the current directory. As root it would
    # drop to the _apt user, who may not be able to write the cache: keep
    # it as the caller (the download needs no privilege).
    if ! (cd "$DEB_DIR" && apt-get download -q -o APT::Sandbox::User="$(id -un)" "$pkg:i386") >"$DEB_DIR/download.log" 2>&1; then
        if grep -qiE 'unable to locate|no candidate|has no installation candidate' "$DEB_DIR/download.log"; then
            die "apt does not know $pkg:i386 (see $DEB_DIR/download.log)"
        fi
        die "could not download $pkg:i386 (no network or Debian mirror unreachable?); see $DEB_DIR/download.log"
    fi
    rm -f "$DEB_DIR/download.log"
}
download "$kpkg"
download busybox-static

# 5. Extract. From the kernel only boot/ is needed (vmlinuz, config,
#    System.map): the modules would be ~300 MB we never use.
deb_of() { ls -1 "$DEB_DIR/${1}_"*_i386.deb | sort -V | tail -n 1; }
log "extracting $kpkg (boot/ only) ..."
mkdir -p "$KERNEL_ROOT"
dpkg-deb --fsys-tarfile "$(deb_of "$kpkg")" | tar -x -C "$KERNEL_ROOT" ./boot ||
    die "extracting $(deb_of "$kpkg") failed"
log "extracting busybox-static ..."
rm -rf "$BUSYBOX_ROOT"
dpkg-deb -x "$(deb_of busybox-static)" "$BUSYBOX_ROOT" || die "extracting busybox-static failed"
[ -x "$BUSYBOX" ] || die "busybox-static did not contain bin/busybox"
[ -n "$(kernel_path)" ] || die "$kpkg did not contain boot/vmlinuz-*-686"
log "kernel: $(kernel_path)"
log "busybox: $BUSYBOX"
