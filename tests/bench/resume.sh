#!/usr/bin/env bash
# Resume latency and `edm status` time on a big, half-sent campaign.
#
#   bash tests/bench/resume.sh                     # 1,000,000 recipients, 500,000 sent first
#   TOTAL=100000 bash tests/bench/resume.sh        # quick run
#
# 1. Builds a TOTAL-recipient campaign (~1 KB messages) and sends the first
#    half with `edm send --limit TOTAL/2 --rate 0` to postfix smtp-sink
#    (timed, with peak RSS: this run also ingests the CSV).
# 2. Times `edm status DIR` and `edm status DIR --json` (3 times each).
# 3. Resumes with `edm send --limit RESUME_LIMIT` against `edm sink --maildir`:
#    the sink names each file <unix_ms>.<pid>_<n>.edm-sink, stamped when the
#    final "." of DATA arrived, so "first message at the sink" is the smallest
#    name minus the time the script started the process (EPOCHREALTIME just
#    before exec; that includes exec and loading the binary). Also reported:
#    edm's first claim (min first_attempt_at of this run in the state file).
# 4. Times `edm status` again.
#
# Env: TOTAL (default 1000000), RESUME_LIMIT (default 20000), CONC (default
# 32), LIMIT_S (time limit for the first half, default 1200), EDM, KEEP=1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TOTAL=${TOTAL:-1000000}
HALF=$((TOTAL / 2))
RESUME_LIMIT=${RESUME_LIMIT:-20000}
CONC=${CONC:-32}
LIMIT_S=${LIMIT_S:-1200}

bench_init resume
[ -n "$TIME_BIN" ] || { echo "/usr/bin/time is needed (Debian package time)" >&2; exit 2; }
DIR=$BENCH_TMP/big

# ---- 1. the first half
PORT=$(free_port)
start_smtp_sink "$PORT" "$BENCH_TMP/smtp-sink.log"
make_campaign "$DIR" "$TOTAL" 1k "$PORT" "concurrency = $CONC"
echo "== 1. $TOTAL recipients ($(du -h "$DIR/recipients.csv" | cut -f1) CSV); sending the first $HALF to smtp-sink on port $PORT"
t0=$EPOCHREALTIME
set +e
"$TIME_BIN" -v -o "$BENCH_TMP/first.time" timeout "$LIMIT_S" \
    "$EDM_BIN" send "$DIR" --no-tui --limit "$HALF" --rate 0 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$BENCH_TMP/first.log"
FIRST_EXIT=${PIPESTATUS[0]}
set -e
FIRST_WALL=$(echo "$EPOCHREALTIME - $t0" | bc -l)
FIRST_INGEST=$(awk -v t0="$t0" '/read [0-9]+ recipients from the CSV/ {printf "%.2f", $1 - t0; exit}' "$BENCH_TMP/first.log")
FIRST_RSS=$(peak_rss_kb "$BENCH_TMP/first.time")
stop_pid "$SINK_PID"
FIRST_SENT=$(status_field "$DIR" sent)
DB_MB=$(du -cm "$DIR/.edm/" | tail -1 | cut -f1)
printf '   exit %s (3 = --limit reached) after %.1f s (ingest %s s); sent %s; peak RSS %.1f MB; state %s MB\n' \
    "$FIRST_EXIT" "$FIRST_WALL" "${FIRST_INGEST:-?}" "$FIRST_SENT" "$(echo "$FIRST_RSS/1024" | bc -l)" "$DB_MB"
if [ "$FIRST_SENT" != "$HALF" ]; then
    echo "the first half did not complete (sent $FIRST_SENT of $HALF); see $BENCH_TMP/first.log" >&2
    tail -5 "$BENCH_TMP/first.log" >&2
fi

# ---- 2. status on the half-sent campaign
# time_cmd ARGS...: seconds the command takes (output discarded)
time_cmd() {
    local t=$EPOCHREALTIME
    "$@" >/dev/null
    echo "$EPOCHREALTIME - $t" | bc -l
}
STATUS_TIMES=() STATUS_JSON_TIMES=()
for _ in 1 2 3; do
    STATUS_TIMES+=("$(time_cmd "$EDM_BIN" status "$DIR")")
    STATUS_JSON_TIMES+=("$(time_cmd "$EDM_BIN" status "$DIR" --json)")
done
printf '== 2. edm status: %s s; --json: %s s\n' "$(printf '%.3f ' "${STATUS_TIMES[@]}")" "$(printf '%.3f ' "${STATUS_JSON_TIMES[@]}")"

# ---- 3. resume
PORT=$(free_port)
start_edm_sink "$PORT" "$BENCH_TMP/edm-sink.log" --maildir "$BENCH_TMP/maildir"
sed -i "s/^port = .*/port = $PORT/" "$DIR/campaign.toml"
echo "== 3. resuming (--limit $RESUME_LIMIT) against edm sink on port $PORT"
t0=$EPOCHREALTIME
set +e
"$TIME_BIN" -v -o "$BENCH_TMP/resume.time" timeout 600 \
    "$EDM_BIN" send "$DIR" --no-tui --limit "$RESUME_LIMIT" --rate 0 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$BENCH_TMP/resume.log"
RESUME_EXIT=${PIPESTATUS[0]}
set -e
RESUME_WALL=$(echo "$EPOCHREALTIME - $t0" | bc -l)
T0_MS=$(echo "$t0 * 1000" | bc -l | cut -d. -f1)
# (one pass with awk: `sort | head -1` would die of SIGPIPE under pipefail)
read -r RESUME_FILES FIRST_AT_SINK_MS LAST_AT_SINK_MS < <(ls "$BENCH_TMP/maildir/new" | cut -d. -f1 |
    awk 'NR == 1 {lo = $1; hi = $1} $1 < lo {lo = $1} $1 > hi {hi = $1} END {print NR, lo, hi}')
FIRST_AT_SINK=$(echo "($FIRST_AT_SINK_MS - $T0_MS) / 1000" | bc -l)
FIRST_CLAIM_MS=$(sqlite3 -readonly "$DIR/.edm/state.db" "SELECT min(first_attempt_at) FROM recipients WHERE first_attempt_at >= $T0_MS")
FIRST_CLAIM=$(echo "($FIRST_CLAIM_MS - $T0_MS) / 1000" | bc -l)
FIRST_LINE=$(awk -v t0="$t0" '/^[0-9.]+ \[/ {printf "%.2f", $1 - t0; exit}' "$BENCH_TMP/resume.log")
RESUME_RSS=$(peak_rss_kb "$BENCH_TMP/resume.time")
RESUME_RATE=$(echo "($RESUME_FILES - 1) * 1000 / ($LAST_AT_SINK_MS - $FIRST_AT_SINK_MS)" | bc -l)
stop_pid "$SINK_PID"
printf '   exit %s after %.2f s; first message at the sink %.3f s after start; %s messages, %.0f msg/s; peak RSS %.1f MB\n' \
    "$RESUME_EXIT" "$RESUME_WALL" "$FIRST_AT_SINK" "$RESUME_FILES" "$RESUME_RATE" "$(echo "$RESUME_RSS/1024" | bc -l)"

# ---- 4. status again
STATUS2=$(time_cmd "$EDM_BIN" status "$DIR" --json)
SENT2=$(status_field "$DIR" sent)

verdict() { if [ "$1" = 1 ]; then echo PASS; else echo MISS; fi; }
echo
echo "================ resume results ($(date -u +%F), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)) ================"
printf 'first half: %d of %d recipients (~1 KB) in %.1f s wall (ingest %s s) = %.0f msg/s; exit %s; peak RSS %.1f MB; state %s MB\n' \
    "$FIRST_SENT" "$TOTAL" "$FIRST_WALL" "${FIRST_INGEST:-?}" "$(echo "$FIRST_SENT / $FIRST_WALL" | bc -l)" "$FIRST_EXIT" \
    "$(echo "$FIRST_RSS/1024" | bc -l)" "$DB_MB"
printf 'edm status (half sent): %s s, --json: %s s (target < 1 s: %s)\n' \
    "$(printf '%.3f ' "${STATUS_TIMES[@]}")" "$(printf '%.3f ' "${STATUS_JSON_TIMES[@]}")" \
    "$(verdict "$(printf '%s\n' "${STATUS_TIMES[@]}" "${STATUS_JSON_TIMES[@]}" | awk '$1 >= 1 {bad = 1} END {print bad ? 0 : 1}')")"
printf 'resume: first message received by the sink %.3f s after process start (target < 2 s: %s)\n' \
    "$FIRST_AT_SINK" "$(verdict "$(echo "$FIRST_AT_SINK < 2" | bc -l)")"
printf 'resume: first claim recorded at %.3f s, first progress line at %s s; %s messages at %.0f msg/s; exit %s after %.2f s; peak RSS %.1f MB\n' \
    "$FIRST_CLAIM" "${FIRST_LINE:-?}" "$RESUME_FILES" "$RESUME_RATE" "$RESUME_EXIT" "$RESUME_WALL" "$(echo "$RESUME_RSS/1024" | bc -l)"
printf 'edm status --json after the resume: %.3f s; sent %s\n' "$STATUS2" "$SENT2"
