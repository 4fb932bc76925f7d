#!/usr/bin/env bash
# Syscalls and context switches of one `edm send` of N recipients (~4 KB)
# to postfix's smtp-sink, ingest excluded (a `--limit 1` send first).
#
#   bash tests/bench/syscalls.sh             # strace -f -c, N=20000
#   MODE=time bash tests/bench/syscalls.sh   # /usr/bin/time -v: CPU, context switches
#
# Env: N (default 20000), CONC (default 32), EDM (binary), MODE (strace or
# time), KEEP=1 (keep the temp dir).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-20000}
CONC=${CONC:-32}
MODE=${MODE:-strace}

bench_init syscalls
PORT=$(free_port)
start_smtp_sink "$PORT" "$BENCH_TMP/smtp-sink.log"
make_campaign "$BENCH_TMP/c" "$N" 4k "$PORT" "concurrency = $CONC"
"$EDM_BIN" send "$BENCH_TMP/c" --no-tui --limit 1 >"$BENCH_TMP/ingest.log" 2>&1 || true
case "$MODE" in
strace)
    command -v strace >/dev/null || { echo "strace is needed" >&2; exit 2; }
    strace -f -c -o "$BENCH_TMP/strace.txt" "$EDM_BIN" send "$BENCH_TMP/c" --no-tui >"$BENCH_TMP/send.log" 2>&1
    echo "sent $(status_field "$BENCH_TMP/c" sent) of $N"
    head -20 "$BENCH_TMP/strace.txt"
    ;;
time)
    [ -n "$TIME_BIN" ] || { echo "/usr/bin/time is needed" >&2; exit 2; }
    "$TIME_BIN" -v "$EDM_BIN" send "$BENCH_TMP/c" --no-tui >"$BENCH_TMP/send.log" 2>"$BENCH_TMP/time.txt"
    echo "sent $(status_field "$BENCH_TMP/c" sent) of $N"
    grep -E "User time|System time|Elapsed|context switches" "$BENCH_TMP/time.txt"
    ;;
*)
    echo "MODE is strace or time" >&2
    exit 2
    ;;
esac
