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
