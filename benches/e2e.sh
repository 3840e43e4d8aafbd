#!/usr/bin/env bash
# End-to-end benchmark: boots the workload guest (guests/build.sh made it;
# ~/.cache/umbra/guests/guest.env names KERNEL and INITRD) on Umbra's
# engines and on QEMU (TCG) with the same kernel, initrd and command line,
# one after the other, and prints for boot-to-userspace (BOOT-OK) and each
# workload part the host wall time on each and the ratio to QEMU.
#
# Times are taken on the host when each line arrives on the serial console:
# boot = launch to BOOT-OK, a part = the previous line (BOOT-OK or the
# previous WORKLOAD line) to its own WORKLOAD line. Two tables: host wall
# seconds, then host CPU seconds of the emulator process (user + system,
# all threads, from /proc/PID/stat at the same moments). On a shared host
# whose hypervisor steals time, wall times of runs minutes apart can
# differ twofold; CPU time leaves out what was stolen, so compare ratios
# from the CPU table there. The guest's own time
# for a part (last field of its line, from the guest clock) is kept in the
# raw log but not used: guest clocks of different engines are not
# comparable. Progress on stderr: each BOOT-OK/WORKLOAD line as it
# arrives, and a heartbeat after 30 s without serial output.
#
# Usage: benches/e2e.sh [options]
#   --engines LIST   comma-separated, of interp, jit, qemu (default all);
#                    NAME=PATH runs engine NAME of the umbra binary PATH
#                    (e.g. jit,jit=/tmp/old/umbra to compare two builds;
#                    its column is NAME:FILE, FILE the binary's file name)
#   --deterministic  Umbra engines run with --deterministic: the guest
#                    then does the same work on every run and build (its
#                    time comes from retired instructions), so that host
#                    times compare emulator builds; not QEMU's
#   --quick          boot to BOOT-OK only (umbra.poweroff=1), no workload
#   --timeout SECS   per engine (default 3600; the workload on the
#                    interpreter takes ~20 min)
#   --memory SIZE    guest RAM, MiB (default 256)
#   --umbra PATH     umbra binary (default target/release/umbra, built
#                    with cargo build --release if missing)
#   --qemu PATH      QEMU binary (default qemu-system-i386 on PATH; the
#                    qemu column is left out when there is none)
#   --log DIR        keep each engine's serial output there (default a
#                    temporary directory, printed at the end)
#   --runs N         run the engines N times, interleaved (jit, qemu, jit,
#                    qemu, ...), and report each part's minimum over the
#                    runs: on a shared host, interference only ever adds
#                    time (default 1)
set -euo pipefail

engines="interp,jit,qemu"
quick=0
det=()
timeout_s=3600
memory=256
here="$(cd "$(dirname "$0")/.." && pwd)"
umbra="$here/target/release/umbra"
qemu="$(command -v qemu-system-i386 || true)"
logdir=""
runs=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
    --engines) engines="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --deterministic) det=(--deterministic); shift ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    --memory) memory="$2"; shift 2 ;;
    --umbra) umbra="$2"; shift 2 ;;
    --qemu) qemu="$2"; shift 2 ;;
    --log) logdir="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    -h | --help) usage 0 ;;
    *) echo "e2e.sh: unknown option $1" >&2; usage 2 >&2 ;;
    esac
done

case "$runs" in
'' | *[!0-9]* | 0) echo "e2e.sh: --runs takes a positive number, not '$runs'" >&2; exit 2 ;;
esac

env_file="${UMBRA_GUEST_ENV:-$HOME/.cache/umbra/guests/guest.env}"
if [ ! -r "$env_file" ]; then
    echo "e2e.sh: no $env_file: build the guest first (guests/build.sh)" >&2
    exit 2
fi
# shellcheck disable=SC1090
. "$env_file"
for f in "$KERNEL" "$INITRD"; do
    [ -r "$f" ] || { echo "e2e.sh: missing $f: rerun guests/build.sh" >&2; exit 2; }
done

if [ "$quick" = 1 ]; then
    append="console=ttyS0 umbra.poweroff=1 cryptomgr.notests"
else
    append="console=ttyS0 umbra.workload=1 cryptomgr.notests"
fi

IFS=, read -r -a list <<<"$engines"
run_list=()
for e in "${list[@]}"; do
    case "$e" in
    interp=* | jit=*)
        [ -x "${e#*=}" ] || { echo "e2e.sh: no umbra binary ${e#*=}" >&2; exit 2; }
        run_list+=("$e")
        ;;
    interp | jit)
        if [ ! -x "$umbra" ]; then
            echo "e2e.sh: building $umbra" >&2
            (cd "$here" && cargo build --release >&2)
        fi
        run_list+=("$e")
        ;;
    qemu)
        if [ -z "$qemu" ]; then
            echo "e2e.sh: skipped qemu: no qemu-system-i386 (apt-get install qemu-system-x86)" >&2
        else
            run_list+=("$e")
        fi
        ;;
    *) echo "e2e.sh: unknown engine $e (interp, jit, qemu)" >&2; exit 2 ;;
    esac
done
[ "${#run_list[@]}" -gt 0 ] || { echo "e2e.sh: no engine to run" >&2; exit 2; }

[ -n "$logdir" ] || logdir="$(mktemp -d /tmp/umbra-e2e.XXXXXX)"
mkdir -p "$logdir"

# Results: secs[engine.part] (wall) and cpu[engine.part], and the parts
# in the order they appeared.
declare -A secs cpu status
parts=(boot)

# label ENGINE: how tables name ENGINE (NAME=PATH: NAME:file name).
label() {
    case "$1" in
    *=*) echo "${1%%=*}:$(basename "${1#*=}")" ;;
    *) echo "$1" ;;
    esac
}

# keep_min ARRAY KEY VALUE: ARRAY[KEY] = VALUE unless it holds less.
keep_min() {
    local -n a="$1"
    if [ -z "${a[$2]:-}" ] || awk -v x="$3" -v y="${a[$2]}" 'BEGIN { exit !(x < y) }'; then
        a[$2]="$3"
    fi
}

# Seconds from $EPOCHREALTIME $1 to $EPOCHREALTIME $2, three decimals, into
# REPLY: no process started, so that the reader of the serial lines keeps
# up with a boot's burst of kernel messages (a reader that forks for each
# line falls behind, and every later line's time is then when it was read,
# not when it was written).
since_at() {
    local a="${1/[.,]/}" b="${2/[.,]/}"
    local d=$((10#$b - 10#$a))
    printf -v REPLY '%d.%03d' $((d / 1000000)) $((d % 1000000 / 1000))
}

clk_tck="$(getconf CLK_TCK)"
# CPU seconds (user + system, all threads) of process $1 so far; the last
# value known if it is gone.
cpu_of() {
    local f
    if f="$(cat "/proc/$1/stat" 2>/dev/null)"; then
        # Fields after the ")" closing the command name: utime is the
        # 12th, stime the 13th.
        awk -v t="$clk_tck" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' <<<"$f"
    else
        echo "${cpu_last:-0}"
    fi
}

# run_engine NAME ROUND: boot the guest on NAME, record the times (the
# least so far of each part).
run_engine() {
    local name="$1" round="$2" cmd bin="$umbra"
    case "$name" in
    interp=* | jit=*)
        bin="${name#*=}"
        cmd=("$bin" run --engine "${name%%=*}" "${det[@]}" --kernel "$KERNEL" --initrd "$INITRD"
            --append "$append" --memory "${memory}M" --serial stdio) ;;
    interp | jit)
        cmd=("$umbra" run --engine "$name" "${det[@]}" --kernel "$KERNEL" --initrd "$INITRD"
            --append "$append" --memory "${memory}M" --serial stdio) ;;
    qemu)
        cmd=("$qemu" -accel tcg -m "$memory" -kernel "$KERNEL" -initrd "$INITRD"
            -append "$append" -nodefaults -display none -serial stdio
            -monitor none -no-reboot) ;;
    esac
    local file
    file="$(label "$name")"
    file="${file//\//_}"
    local log="$logdir/$file.serial" fifo="$logdir/$file.fifo"
    [ "$runs" = 1 ] || log="$logdir/$file.$round.serial"
    rm -f "$fifo"
    mkfifo "$fifo"
    echo "== $name: ${cmd[*]}" >&2
    local t0="$EPOCHREALTIME" last="$EPOCHREALTIME"
    timeout "$timeout_s" "${cmd[@]}" </dev/null >"$fifo" 2>"$logdir/$file.stderr" &
    local pid=$! line at now part got="" pending="" lines=0 rc child="" c cpu_last=0 cpu_mark=0
    : >"$log"
    while :; do
        # A heartbeat every 30 s of silence; a line cut by the timeout is
        # kept and completed by the next read.
        if IFS= read -r -t 30 line; then
            line="$pending$line"
            pending=""
        else
            rc=$?
            if [ "$rc" -gt 128 ]; then
                pending="$pending$line"
                since_at "$t0" "$EPOCHREALTIME"
                echo "[$name ${REPLY}s] running, $lines serial lines so far" >&2
                continue
            fi
            break
        fi
        at="$EPOCHREALTIME"
        lines=$((lines + 1))
        line="${line%$'\r'}"
        since_at "$t0" "$at"
        printf '%s %s\n' "$REPLY" "$line" >>"$log"
        case "$line" in
        BOOT-OK* | "WORKLOAD "* | WORK-DONE*)
            # The emulator is the child of `timeout`.
            [ -n "$child" ] || child="$(pgrep -P "$pid" | head -n 1 || true)"
            c="$(cpu_of "${child:-$pid}")"
            cpu_last="$c"
            ;;
        esac
        case "$line" in
        BOOT-OK*)
            since_at "$t0" "$at"
            now="$REPLY"
            keep_min secs "$name.boot" "$now"
            keep_min cpu "$name.boot" "$c"
            cpu_mark="$c"
            last="$at"
            echo "[$name ${now}s] $line" >&2
            got=boot
            [ "$quick" = 1 ] && break
            ;;
        "WORKLOAD "*)
            part="$(awk '{ print $2 }' <<<"$line")"
            since_at "$last" "$at"
            keep_min secs "$name.$part" "$REPLY"
            keep_min cpu "$name.$part" "$(awk -v a="$c" -v b="$cpu_mark" 'BEGIN { printf "%.2f", a - b }')"
            cpu_mark="$c"
            last="$at"
            since_at "$t0" "$at"
            echo "[$name ${REPLY}s] $line" >&2
            case " ${parts[*]} " in *" $part "*) ;; *) parts+=("$part") ;; esac
            got="$part"
            ;;
        WORK-DONE*)
            since_at "$t0" "$at"
            keep_min secs "$name.total" "$REPLY"
            keep_min cpu "$name.total" "$c"
            echo "[$name ${REPLY}s] WORK-DONE" >&2
            got=done
            ;;
        esac
    done <"$fifo"
    # Quick mode stops reading at BOOT-OK: end the run we started.
    kill "$pid" 2>/dev/null || true
    rc=0
    wait "$pid" || rc=$?
    rm -f "$fifo"
    # A run that fails keeps its failure in the report.
    [ "${status[$name]:-ok}" = ok ] || return 0
    if [ "$rc" = 124 ]; then
        status[$name]="timeout after ${timeout_s}s (last: ${got:-nothing})"
    elif [ -z "$got" ]; then
        status[$name]="no BOOT-OK (exit $rc, see $logdir/$file.stderr)"
    elif [ "$quick" = 0 ] && [ "$got" != done ]; then
        status[$name]="stopped after $got (exit $rc)"
    else
        status[$name]=ok
    fi
    echo "== $name: ${status[$name]}" >&2
}

for ((round = 1; round <= runs; round++)); do
    [ "$runs" = 1 ] || echo "== round $round of $runs" >&2
    for e in "${run_list[@]}"; do
        run_engine "$e" "$round"
    done
done
[ "$quick" = 1 ] || parts+=(total)

# The tables: seconds per engine, then each Umbra engine's ratio to QEMU.
has_qemu=0
case " ${run_list[*]} " in *" qemu "*) has_qemu=1 ;; esac
# table TITLE ARRAY: one table of ARRAY (secs or cpu).
table() {
    local -n v="$2"
    echo "$1"
    local e l w
    declare -A width
    printf '%-8s' part
    for e in "${run_list[@]}"; do
        l="$(label "$e") s"
        w=$((${#l} > 10 ? ${#l} : 10))
        width[$e]=$w
        printf ' %*s' "$w" "$l"
    done
    if [ "$has_qemu" = 1 ]; then
        for e in "${run_list[@]}"; do
            [ "$e" = qemu ] || printf ' %12s' "$(label "$e")/qemu"
        done
    fi
    echo
    for p in "${parts[@]}"; do
        printf '%-8s' "$p"
        for e in "${run_list[@]}"; do printf ' %*s' "${width[$e]}" "${v[$e.$p]:--}"; done
        if [ "$has_qemu" = 1 ]; then
            for e in "${run_list[@]}"; do
                [ "$e" = qemu ] && continue
                l="$(label "$e")/qemu"
                awk -v a="${v[$e.$p]:-}" -v b="${v[qemu.$p]:-}" -v w=$((${#l} > 12 ? ${#l} : 12)) 'BEGIN {
                    if (a == "" || b == "" || b + 0 == 0) printf " %*s", w, "-";
                    else printf " %*.2f", w, a / b }'
            done
        fi
        echo
    done
}
over=""
[ "$runs" = 1 ] || over=", least of $runs interleaved runs"
{
    table "host wall seconds$over:" secs
    echo
    table "host CPU seconds of the emulator (user + system$over):" cpu
    for e in "${run_list[@]}"; do
        [ "${status[$e]}" = ok ] || echo "$e: ${status[$e]}"
    done
} | tee "$logdir/table.txt"
echo "serial logs and table in $logdir" >&2
