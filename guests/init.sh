#!/bin/sh
# /init of the Umbra test guest (busybox sh). Mounts proc, sys and devtmpfs,
# prints "BOOT-OK <uptime> <idle>", then either runs /workload.sh (kernel
# command line has umbra.workload=1), prints WORK-DONE and powers off
# (ACPI S5 via reboot(RB_POWER_OFF)), or powers off at once
# (umbra.poweroff=1), or gives an interactive shell on the console.
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "BOOT-OK $(cat /proc/uptime)"

# The disk initramfs (guests/build-disk.sh) carries the kernel's ATA, SCSI,
# FAT and ISO 9660 modules: load them, dependencies first.
if [ -f /lib/modules/load-order ]; then
    while read -r m; do
        insmod "/lib/modules/${m##*/}" || echo "umbra-guest: insmod ${m##*/} failed"
    done </lib/modules/load-order
    # Give the SCSI layer a moment to register the disks it found.
    for i in 1 2 3 4 5 6 7 8 9 10; do
        [ -b /dev/sda ] || [ -b /dev/sr0 ] && break
        sleep 1
    done
    echo "MODULES-OK $(ls /sys/block | tr '\n' ' ')"
    # General-purpose events the ACPI core dispatched since boot: none on
    # a machine where nothing happens (floating GPE registers read as all
    # events pending, and the firmware's handlers then ejected PCI slots).
    echo "ACPI-GPES $(cat /sys/firmware/acpi/interrupts/gpe_all 2>/dev/null)"
fi

# umbra.disktest=1: write a file with known contents to the FAT file
# system on /dev/sda, sync, unmount, power off. The test reads it back on
# the host with mtools.
case " $(cat /proc/cmdline) " in
*" umbra.disktest=1 "*)
    mount -t vfat /dev/sda /mnt && {
        seq 1 20000 >/mnt/UMBRA.TXT
        sync
        umount /mnt && echo "DISKTEST-DONE $(seq 1 20000 | md5sum)"
    }
    poweroff -f
    ;;
*" umbra.diskloop=1 "*)
    # Write files until killed (the SIGKILL test).
    mount -t vfat /dev/sda /mnt && {
        echo "DISKLOOP-START"
        i=0
        while :; do
            seq 1 5000 >/mnt/LOOP$((i % 4)).TXT
            sync
            i=$((i + 1))
            echo "DISKLOOP $i"
        done
    }
    poweroff -f
    ;;
esac

case " $(cat /proc/cmdline) " in
*" umbra.workload=1 "*)
    BB=/bin/busybox WORKDIR=/tmp sh /workload.sh
    echo WORK-DONE
    sync
    poweroff -f
    # only reached if the power-off failed
    echo "WORK-POWEROFF-FAILED"
    while :; do sleep 3600; done
    ;;
esac

# umbra.poweroff=1: boot, report, power off (boot tests).
case " $(cat /proc/cmdline) " in
*" umbra.poweroff=1 "*)
    poweroff -f
    ;;
esac

# Interactive: cttyhack opens the real console tty (e.g. ttyS0) as the
# controlling terminal, so job control works. Restart the shell on exit:
# /init must never return (the kernel would panic).
export HOME=/root PS1='\w # '
mkdir -p /root
cd /root
while :; do
    setsid cttyhack sh -l
    echo "umbra-guest: shell exited, starting another (poweroff -f to stop)"
done
