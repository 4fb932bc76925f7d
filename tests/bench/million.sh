#!/usr/bin/env bash
# One big campaign end to end: `edm send` of TOTAL recipients to postfix's
# smtp-sink, with the peak RSS, the CPU per message and the rate of every
# block of BLOCK outcomes (does the rate decay as the list is worked through?).
#
#   bash tests/bench/million.sh                    # 1,000,000 recipients, ~1 KB, blocks of 100,000
#   TOTAL=100000 BLOCK=10000 bash tests/bench/million.sh   # quick run
#
# The per-block rates come from the state file: the outcomes sorted by the
# time they were recorded (`updated_at`, ms), block k's rate is BLOCK divided
# by the time from the last outcome of block k-1 (the first attempt, for
# block 1) to the last outcome of block k. Ingest is before the first attempt
# and is reported on its own.
#
# Env: TOTAL (default 1000000), BLOCK (default 100000), SIZE (1k or 4k,
# default 1k), CONC (default 32), LIMIT_S (default 1800), EDM, KEEP=1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TOTAL=${TOTAL:-1000000}
BLOCK=${BLOCK:-100000}
SIZE=${SIZE:-1k}
CONC=${CONC:-32}
LIMIT_S=${LIMIT_S:-1800}

bench_init million
[ -n "$TIME_BIN" ] || { echo "/usr/bin/time is needed (Debian package time)" >&2; exit 2; }
DIR=$BENCH_TMP/big
PORT=$(free_port)
start_smtp_sink "$PORT" "$BENCH_TMP/smtp-sink.log"
make_campaign "$DIR" "$TOTAL" "$SIZE" "$PORT" "concurrency = $CONC"
echo "== $TOTAL recipients (~$SIZE, $(du -h "$DIR/recipients.csv" | cut -f1) CSV), concurrency $CONC, to smtp-sink on port $PORT"

t0=$EPOCHREALTIME
set +e
"$TIME_BIN" -v -o "$BENCH_TMP/send.time" timeout "$LIMIT_S" \
    "$EDM_BIN" send "$DIR" --no-tui 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$BENCH_TMP/send.log"
EXIT=${PIPESTATUS[0]}
set -e
WALL=$(echo "$EPOCHREALTIME - $t0" | bc -l)
INGEST=$(awk -v t0="$t0" '/read [0-9]+ recipients from the CSV/ {printf "%.2f", $1 - t0; exit}' "$BENCH_TMP/send.log")
RSS_KB=$(peak_rss_kb "$BENCH_TMP/send.time")
USER_S=$(awk -F': ' '/User time/ {print $2}' "$BENCH_TMP/send.time")
SYS_S=$(awk -F': ' '/System time/ {print $2}' "$BENCH_TMP/send.time")
SENT=$(status_field "$DIR" sent)
if [ "$EXIT" != 0 ]; then
    echo "edm send exited $EXIT; last lines:" >&2
    tail -5 "$BENCH_TMP/send.log" >&2
fi

# Per-block rates, from the outcomes in the order they were recorded.
RATES=$(sqlite3 -readonly "$DIR/.edm/state.db" \
    "SELECT min(first_attempt_at) FROM recipients WHERE status = 'sent';
     SELECT updated_at FROM recipients WHERE status = 'sent' ORDER BY updated_at;" |
    awk -v block="$BLOCK" '
        NR == 1 { prev = $1; next }
        { n++ }
        n % block == 0 { dt = ($1 - prev) / 1000; printf "%.0f ", (dt > 0 ? block / dt : 0); prev = $1 }')

echo
echo "================ million results ($(date -u +%F), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)) ================"
printf 'edm send        %s recipients: exit %s, sent %s, wall %.1f s (ingest %s s), %.0f msg/s start to exit\n' \
    "$TOTAL" "$EXIT" "$SENT" "$WALL" "${INGEST:-?}" "$(echo "$TOTAL / $WALL" | bc -l)"
printf 'CPU             user %s s + sys %s s = %.1f us/msg (ingest included)\n' \
    "$USER_S" "$SYS_S" "$(echo "($USER_S + $SYS_S) * 1000000 / $TOTAL" | bc -l)"
printf 'peak RSS        %.1f MB (target <= 64 MB: %s)\n' "$(echo "$RSS_KB / 1024" | bc -l)" \
    "$([ "$RSS_KB" -le $((64 * 1024)) ] && echo PASS || echo FAIL)"
echo "msg/s per $BLOCK outcomes, in order: $RATES"
[ "$SENT" = "$TOTAL" ] && [ "$EXIT" = 0 ]
