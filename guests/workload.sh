# The guest workload, run by busybox sh. The SAME file is copied into the
# initramfs (run by /init when the kernel command line has umbra.workload=1)
# and run natively on the host by expected.sh with the same busybox binary,
# so both sides execute identical commands.
#
# Every applet is called through "$BB" (default /bin/busybox) so the host
# run cannot pick up the host's own md5sum, gzip, awk ...
# Scratch files go to $WORKDIR (default /tmp).
#
# Output: one line per part, fixed format, fields separated by one space:
#   WORKLOAD md5 <md5hex> <secs>s            md5sum of 32 MiB of zeros
#   WORKLOAD sha256 <sha256hex> <secs>s      sha256sum of the same
#   WORKLOAD awk <md5hex> <secs>s            md5sum of 262144 bytes of LCG text
#   WORKLOAD gzip <md5hex> <bytes> <secs>s   md5sum and size of gzip -9 of it
#                                            (last of 16 runs)
#   WORKLOAD fork <count> <secs>s            count of fork/execs done (500)
# <secs> is elapsed wall time with two decimals (from /proc/uptime; whole
# seconds from date +%s where /proc is not mounted). Dropping the leading
# WORKLOAD and the trailing time field gives the line of expected.txt.

BB="${BB:-/bin/busybox}"
WORKDIR="${WORKDIR:-/tmp}"

# Time now in centiseconds.
now_cs() {
    local up
    if read -r up _ </proc/uptime 2>/dev/null; then
        # /proc/uptime reads "12345.67 ..." : always two decimals.
        up="${up%.*}${up#*.}"
        # strip leading zeros so $(( )) does not read octal
        while [ "${up#0}" != "$up" ] && [ "${#up}" -gt 1 ]; do up="${up#0}"; done
        echo "$up"
    else
        echo $(( $($BB date +%s) * 100 ))
    fi
}

# Elapsed seconds since centisecond mark $1, as "S.CCs".
elapsed() {
    local d=$(( $(now_cs) - $1 ))
    printf '%d.%02ds' $(( d / 100 )) $(( d % 100 ))
}

first_field() { local f; read -r f _; echo "$f"; }

# a. md5sum over 32 MiB of /dev/zero
t=$(now_cs)
r=$($BB dd if=/dev/zero bs=1M count=32 2>/dev/null | $BB md5sum | first_field)
echo "WORKLOAD md5 $r $(elapsed "$t")"

# b. sha256sum over the same 32 MiB
t=$(now_cs)
r=$($BB dd if=/dev/zero bs=1M count=32 2>/dev/null | $BB sha256sum | first_field)
echo "WORKLOAD sha256 $r $(elapsed "$t")"

# c. 262144 bytes of pseudo-random text from a Park-Miller LCG
#    x' = 16807 x mod (2^31 - 1): 16807 x < 2^46, exact in awk's doubles.
#    4096 lines of 63 characters and a newline = 262144 bytes.
t=$(now_cs)
$BB awk 'BEGIN {
    cs = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789.,";
    n = length(cs); x = 20260101;
    for (l = 0; l < 4096; l++) {
        s = "";
        for (i = 0; i < 63; i++) {
            x = (16807 * x) % 2147483647;
            s = s substr(cs, (x % n) + 1, 1);
        }
        print s;
    }
}' | $BB head -c 262144 >"$WORKDIR/umbra-text"
r=$($BB md5sum <"$WORKDIR/umbra-text" | first_field)
echo "WORKLOAD awk $r $(elapsed "$t")"

# d. gzip -9 of that text, sixteen runs; from stdin busybox gzip writes no
#    name and a zero mtime, so the output is deterministic.
t=$(now_cs)
i=0
while [ $i -lt 16 ]; do
    $BB gzip -9 -c <"$WORKDIR/umbra-text" >"$WORKDIR/umbra-text.gz"
    i=$((i + 1))
done
r=$($BB md5sum <"$WORKDIR/umbra-text.gz" | first_field)
sz=$($BB wc -c <"$WORKDIR/umbra-text.gz")
echo "WORKLOAD gzip $r $((sz + 0)) $(elapsed "$t")"
$BB rm -f "$WORKDIR/umbra-text" "$WORKDIR/umbra-text.gz"

# e. 500 fork/execs of a small applet
t=$(now_cs)
i=0
while [ $i -lt 500 ]; do
    $BB true && i=$((i + 1))
done
echo "WORKLOAD fork $i $(elapsed "$t")"
