#!/usr/bin/env bash
# Where edm's instructions go: `edm send` of N recipients (~4 KB, text + HTML)
# to postfix's smtp-sink under callgrind, one profile per thread, then the
# totals per thread and the top functions (inclusive) printed per message.
# Instruction counts are stable on a loaded machine, unlike wall time.
#
#   bash tests/bench/profile.sh              # N=5000, 4 KB, concurrency 32
#   N=2000 SIZE=1k bash tests/bench/profile.sh
#
# Env: N (default 5000), SIZE (4k or 1k), CONC (default 32), TOP (functions
# listed, default 40), EDM (binary), KEEP=1 (keep the temp dir and the
# callgrind.out.* files for callgrind_annotate / kcachegrind).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-5000}
SIZE=${SIZE:-4k}
CONC=${CONC:-32}
TOP=${TOP:-40}

command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 2; }
bench_init profile

PORT=$(free_port)
start_smtp_sink "$PORT" "$BENCH_TMP/smtp-sink.log"
make_campaign "$BENCH_TMP/c" "$N" "$SIZE" "$PORT" "concurrency = $CONC"
# Ingest first, outside the profile (the send path is what is measured per
# message); `--limit 1` sends one message, so the profiled run sends N - 1.
"$EDM_BIN" send "$BENCH_TMP/c" --no-tui --limit 1 >"$BENCH_TMP/ingest.log" 2>&1 || true

cd "$BENCH_TMP"
timeout 1200 valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$BENCH_TMP/callgrind.out" \
    "$EDM_BIN" send "$BENCH_TMP/c" --no-tui >"$BENCH_TMP/send.log" 2>"$BENCH_TMP/valgrind.log" || {
    echo "edm send under callgrind failed:" >&2
    tail -20 "$BENCH_TMP/send.log" "$BENCH_TMP/valgrind.log" >&2
    exit 1
}
SENT=$(status_field "$BENCH_TMP/c" sent)
MSGS=$((SENT - 1))
echo "== sent $SENT of $N (profiled run: $MSGS messages)"

TOTAL=0
echo "== instructions per thread"
for f in "$BENCH_TMP"/callgrind.out*; do
    ir=$(awk '/^summary:/ {print $2}' "$f")
    [ -n "$ir" ] || ir=$(awk '/^totals:/ {print $2}' "$f")
    [ -n "$ir" ] || continue
    TOTAL=$((TOTAL + ir))
    # The thread's name: the first function called in it that is edm's or tokio's.
    printf '%-40s %14d Ir  %8.0f Ir/msg\n' "$(basename "$f")" "$ir" "$(echo "$ir / $MSGS" | bc -l)"
done
printf '%-40s %14d Ir  %8.0f Ir/msg\n' total "$TOTAL" "$(echo "$TOTAL / $MSGS" | bc -l)"

echo "== top $TOP functions, inclusive, all threads (Ir/msg)"
callgrind_annotate --inclusive=yes --threshold=100 "$BENCH_TMP"/callgrind.out* 2>/dev/null |
    awk -v m="$MSGS" -v top="$TOP" '
        /^-+$/ {sep++; next}
        sep >= 3 && $1 ~ /^[0-9,]+$/ && n < top {
            ir = $1; gsub(",", "", ir);
            $1 = ""; $2 = $2;
            printf "%9.0f  %s\n", ir / m, substr($0, 1, 150); n++
        }'
echo "== result"
echo "profile: $MSGS messages, $(echo "$TOTAL / $MSGS" | bc -l | xargs printf '%.0f') instructions per message (all threads)"
