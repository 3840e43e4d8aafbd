#!/usr/bin/env bash
# Build the bootable media of the Umbra test guest, without mounting
# anything (issue 5): a raw disk image with a FAT file system and syslinux
# ($CACHE/disk.img) and an isolinux ISO ($CACHE/boot.iso), both holding the
# Debian kernel and an initramfs that also carries the kernel's own ATA,
# SCSI disk/CD-ROM, FAT and ISO 9660 modules ($CACHE/initramfs-disk.cpio.gz).
# Needs the guest from build.sh and the host tools dosfstools, mtools,
# syslinux, syslinux-common, isolinux and xorriso (Debian packages).
# Each output is rebuilt only when older than its inputs. Appends DISK=,
# ISO= and DISK_INITRD= to $CACHE/guest.env.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$GUESTS_DIR/build.sh" >/dev/null
# One build at a time (tests running in parallel all call this script).
exec 9>"$CACHE/.build-disk.lock"
flock 9
KERNEL=$(kernel_path)
KVER=${KERNEL##*/vmlinuz-}

need() {
    command -v "$1" >/dev/null 2>&1 ||
        die "$1 not found: apt-get install dosfstools mtools syslinux syslinux-common isolinux xorriso"
}
need mkfs.fat
need mcopy
need syslinux
need xorriso
SYSLINUX_BIOS=/usr/lib/syslinux/modules/bios
ISOLINUX_BIN=/usr/lib/ISOLINUX/isolinux.bin
[ -f "$SYSLINUX_BIOS/ldlinux.c32" ] || die "no $SYSLINUX_BIOS/ldlinux.c32: apt-get install syslinux-common"
[ -f "$ISOLINUX_BIN" ] || die "no $ISOLINUX_BIN: apt-get install isolinux"

MODS_ROOT="$CACHE/modules"
MODDIR="$MODS_ROOT/lib/modules/$KVER"
DISK_INITRD="$CACHE/initramfs-disk.cpio.gz"
DISK_IMG="$CACHE/disk.img"
ISO="$CACHE/boot.iso"
KDEB=$(ls "$DEB_DIR"/linux-image-"$KVER"_*_i386.deb 2>/dev/null | head -n 1)
[ -n "$KDEB" ] || die "no linux-image-$KVER deb in $DEB_DIR: run guests/fetch.sh"

# The modules the guest loads, roots only: modules.py adds what they need.
ROOT_MODULES="ata_piix sd_mod sr_mod crct10dif_generic vfat nls_cp437 nls_ascii isofs"

# 1. The module subset, from the same kernel package.
if ! up_to_date "$MODS_ROOT/load-order" "$KDEB" "$GUESTS_DIR/modules.py" "$GUESTS_DIR/build-disk.sh"; then
    log "extracting kernel modules ..."
    rm -rf "$MODS_ROOT"
    mkdir -p "$MODS_ROOT"
    dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$MODS_ROOT" --wildcards \
        "./lib/modules/$KVER/kernel/drivers/ata/*" "./lib/modules/$KVER/kernel/drivers/scsi/*" \
        "./lib/modules/$KVER/kernel/drivers/cdrom/*" "./lib/modules/$KVER/kernel/fs/fat/*" \
        "./lib/modules/$KVER/kernel/fs/isofs/*" "./lib/modules/$KVER/kernel/fs/nls/*" \
        "./lib/modules/$KVER/kernel/lib/*" "./lib/modules/$KVER/kernel/crypto/*" \
        "./lib/modules/$KVER/kernel/block/*" || die "extracting modules from $KDEB failed"
    # shellcheck disable=SC2086
    python3 "$GUESTS_DIR/modules.py" "$MODDIR" $ROOT_MODULES >"$MODS_ROOT/load-order.tmp" ||
        die "resolving module dependencies failed"
    mv "$MODS_ROOT/load-order.tmp" "$MODS_ROOT/load-order"
fi

# 2. The initramfs: the default one's files plus the modules and their
#    load order (/lib/modules/load-order, read by /init).
if ! up_to_date "$DISK_INITRD" "$MODS_ROOT/load-order" "$BUSYBOX" "$GUESTS_DIR/init.sh" \
    "$GUESTS_DIR/workload.sh" "$GUESTS_DIR/newc.py" "$GUESTS_DIR/build-disk.sh"; then
    log "building $DISK_INITRD ..."
    spec=$(mktemp)
    trap 'rm -f "$spec"' EXIT
    {
        base_initramfs_spec
        echo "dir   mnt       755"
        echo "dir   lib       755"
        echo "dir   lib/modules 755"
        echo "file  lib/modules/load-order 644 $MODS_ROOT/load-order"
        while read -r m; do
            echo "file  lib/modules/$(basename "$m") 644 $MODDIR/$m"
        done <"$MODS_ROOT/load-order"
    } >"$spec"
    python3 "$GUESTS_DIR/newc.py" "$DISK_INITRD.tmp" <"$spec" || die "writing the cpio archive failed"
    mv -f "$DISK_INITRD.tmp" "$DISK_INITRD"
    rm -f "$spec"
    trap - EXIT
fi

# The boot menu. DEFAULT is the interactive shell; tests copy the image
# and replace syslinux.cfg (mcopy -o) to pick another entry.
boot_cfg() {
    cat <<CFG
SERIAL 0 115200
UI menu.c32
MENU TITLE Umbra test guest (Debian $KVER)
PROMPT 0
TIMEOUT ${2:-30}
DEFAULT ${1:-shell}
LABEL shell
  MENU LABEL Linux, shell on ttyS0
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 cryptomgr.notests
LABEL workload
  MENU LABEL Linux, run the workload and power off
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 cryptomgr.notests umbra.workload=1
LABEL poweroff
  MENU LABEL Linux, power off after boot
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 cryptomgr.notests umbra.poweroff=1
LABEL disktest
  MENU LABEL Linux, write a file to the disk and power off
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 cryptomgr.notests umbra.disktest=1
LABEL diskloop
  MENU LABEL Linux, write to the disk until killed
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 cryptomgr.notests umbra.diskloop=1
CFG
}
COM32="ldlinux.c32 libcom32.c32 libutil.c32 menu.c32"

# 3. The disk: a 48 MiB FAT16 file system on the whole disk (no partition
#    table: SeaBIOS runs syslinux's boot sector at LBA 0).
if ! up_to_date "$DISK_IMG" "$KERNEL" "$DISK_INITRD" "$GUESTS_DIR/build-disk.sh"; then
    log "building $DISK_IMG ..."
    tmp="$DISK_IMG.tmp"
    rm -f "$tmp"
    mkfs.fat -C -n UMBRA "$tmp" 49152 >/dev/null || die "mkfs.fat failed"
    syslinux --install "$tmp" || die "syslinux --install failed"
    export MTOOLS_SKIP_CHECK=1
    mcopy -i "$tmp" "$KERNEL" ::/vmlinuz
    mcopy -i "$tmp" "$DISK_INITRD" ::/initrd.gz
    for c in $COM32; do
        [ "$c" = ldlinux.c32 ] || mcopy -i "$tmp" "$SYSLINUX_BIOS/$c" "::/$c"
    done
    boot_cfg | mcopy -i "$tmp" - ::/syslinux.cfg
    mv -f "$tmp" "$DISK_IMG"
fi

# 4. The ISOs: isolinux (El Torito, no emulation) with the same files;
#    boot.iso defaults to the shell, boot-poweroff.iso to the power-off
#    entry (for the tests: an ISO's menu cannot be edited in place).
make_iso() {
    local out="$1" default="$2" dir
    log "building $out ..."
    dir=$(mktemp -d)
    mkdir -p "$dir/isolinux"
    cp "$ISOLINUX_BIN" "$dir/isolinux/"
    for c in $COM32; do cp "$SYSLINUX_BIOS/$c" "$dir/isolinux/"; done
    cp "$KERNEL" "$dir/vmlinuz"
    cp "$DISK_INITRD" "$dir/initrd.gz"
    boot_cfg "$default" "$3" >"$dir/isolinux/isolinux.cfg"
    if ! xorriso -as mkisofs -quiet -o "$out.tmp" -V UMBRA -J -R \
        -b isolinux/isolinux.bin -c isolinux/boot.cat \
        -no-emul-boot -boot-load-size 4 -boot-info-table "$dir" 2>"$CACHE/xorriso.log"; then
        rm -rf "$dir"
        die "xorriso failed; see $CACHE/xorriso.log"
    fi
    rm -rf "$dir" "$CACHE/xorriso.log"
    mv -f "$out.tmp" "$out"
}
ISO_POWEROFF="$CACHE/boot-poweroff.iso"
if ! up_to_date "$ISO" "$KERNEL" "$DISK_INITRD" "$GUESTS_DIR/build-disk.sh"; then
    make_iso "$ISO" shell 30
fi
if ! up_to_date "$ISO_POWEROFF" "$KERNEL" "$DISK_INITRD" "$GUESTS_DIR/build-disk.sh"; then
    make_iso "$ISO_POWEROFF" poweroff 1
fi

for kv in "DISK=$DISK_IMG" "ISO=$ISO" "DISK_INITRD=$DISK_INITRD"; do
    grep -qxF "$kv" "$GUEST_ENV" 2>/dev/null || {
        envtmp=$(mktemp "$CACHE/guest.env.XXXXXX")
        grep -v "^${kv%%=*}=" "$GUEST_ENV" >"$envtmp" || true
        echo "$kv" >>"$envtmp"
        mv -f "$envtmp" "$GUEST_ENV"
    }
done
echo "disk:     $DISK_IMG"
echo "iso:      $ISO"
echo "initrd:   $DISK_INITRD (with modules)"
