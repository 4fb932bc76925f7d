#!/usr/bin/env bash
# Rate accuracy of `edm send` against `edm sink --maildir`, and how the
# adaptive rate moves when the sink throttles.
#
#   bash tests/bench/rate.sh                       # 3000 messages at 50/s, then the throttling scenario
#   RATE=20 COUNT=200 THROTTLE_COUNT=300 bash tests/bench/rate.sh   # quick run
#
# Part 1: COUNT messages (default 60 s worth) at [delivery] rate = RATE, burst 1.
# The sink names each Maildir file <unix_ms>.<pid>_<n>.edm-sink, stamped when
# the final "." of DATA was received, so the file names give the arrival time
# of every message. Reported: achieved rate = (n-1)/(t_last-t_first) and the
# largest number of arrivals in any 1-second window [t, t+1000 ms).
#
# Part 2: the sink answers 5% of DATA with "454 4.7.0 Throttling failure"
# (deterministic per address and attempt) while edm sends THROTTLE_COUNT
# messages at THROTTLE_RATE (default 100/s, ~20 s worth). The plain progress
# lines print "limit X/s", the effective rate; the script prints how it moved
# and whether everyone ended sent, within THROTTLE_LIMIT_S seconds (default
# 150; edm is then stopped with SIGTERM, which stops it gracefully).
#
# Env: RATE, COUNT, CONC (default 8), THROTTLE_RATE, THROTTLE_COUNT,
# THROTTLE_LIMIT_S, EDM (binary), KEEP=1 (keep the temp dir).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

RATE=${RATE:-50}
COUNT=${COUNT:-$((RATE * 60))}
CONC=${CONC:-8}
THROTTLE_RATE=${THROTTLE_RATE:-100}
THROTTLE_COUNT=${THROTTLE_COUNT:-$((THROTTLE_RATE * 20))}
THROTTLE_LIMIT_S=${THROTTLE_LIMIT_S:-150}

bench_init rate

# ---- part 1: accuracy
PORT=$(free_port)
start_edm_sink "$PORT" "$BENCH_TMP/sink1.log" --maildir "$BENCH_TMP/maildir"
echo "== part 1: $COUNT messages at rate $RATE/s (burst 1, concurrency $CONC) to edm sink on port $PORT"
make_campaign "$BENCH_TMP/p1" "$COUNT" 1k "$PORT" "rate = $RATE" "burst = 1" "concurrency = $CONC"
limit=$(( COUNT / RATE * 2 + 60 ))
t0=$EPOCHREALTIME
set +e
timeout "$limit" "$EDM_BIN" send "$BENCH_TMP/p1" --no-tui >"$BENCH_TMP/p1.log" 2>&1
P1_EXIT=$?
set -e
P1_WALL=$(echo "$EPOCHREALTIME - $t0" | bc -l)
P1_SENT=$(status_field "$BENCH_TMP/p1" sent)
stop_pid "$SINK_PID"
# one timestamp per file, sorted; awk computes the figures
ls "$BENCH_TMP/maildir/new" | cut -d. -f1 | sort -n >"$BENCH_TMP/arrivals.txt"
read -r P1_N P1_SPAN P1_ACHIEVED P1_MAXWIN P1_MAXWIN_AT < <(awk '
    { t[NR] = $1 }
    END {
        n = NR; j = 1; best = 0; at = 0
        for (i = 1; i <= n; i++) {
            while (j <= n && t[j] - t[i] < 1000) j++
            if (j - i > best) { best = j - i; at = t[i] - t[1] }
        }
        span = (t[n] - t[1]) / 1000
        printf "%d %.3f %.4f %d %.3f\n", n, span, (n - 1) / span, best, at / 1000
    }' "$BENCH_TMP/arrivals.txt")
# arrivals per whole second since the first one: the distribution
PER_SEC=$(awk 'NR == 1 {t0 = $1} {c[int(($1 - t0) / 1000)]++} END {for (s in c) print c[s]}' "$BENCH_TMP/arrivals.txt" |
    sort -n | uniq -c | awk '{printf "%s%d s x %d msgs", (NR > 1 ? ", " : ""), $1, $2}')
P1_ERR=$(echo "($P1_ACHIEVED - $RATE) * 100 / $RATE" | bc -l)
echo "   edm exit $P1_EXIT after $(printf %.1f "$P1_WALL") s; sink got $P1_N files"

# ---- part 2: throttling
PORT=$(free_port)
start_edm_sink "$PORT" "$BENCH_TMP/sink2.log" \
    --rule 'stage=data,percent=5,reply=454 4.7.0 Throttling failure: Maximum sending rate exceeded'
echo "== part 2: $THROTTLE_COUNT messages at rate $THROTTLE_RATE/s, sink throttles 5% of DATA (port $PORT, limit ${THROTTLE_LIMIT_S}s)"
make_campaign "$BENCH_TMP/p2" "$THROTTLE_COUNT" 1k "$PORT" "rate = $THROTTLE_RATE" "concurrency = $CONC" \
    'retry = ["1s", "2s", "5s"]' 'retry_for = "1h"'
t0=$EPOCHREALTIME
set +e
timeout "$THROTTLE_LIMIT_S" "$EDM_BIN" send "$BENCH_TMP/p2" --no-tui --max-retry-wait 600 >"$BENCH_TMP/p2.log" 2>&1
P2_EXIT=$?
set -e
P2_WALL=$(echo "$EPOCHREALTIME - $t0" | bc -l)
stop_pid "$SINK_PID"
"$EDM_BIN" status "$BENCH_TMP/p2" --json >"$BENCH_TMP/p2.status.json"
P2_SENT=$(jq -r .sent "$BENCH_TMP/p2.status.json")
P2_CATS=$(jq -c .by_category "$BENCH_TMP/p2.status.json")
# "[00:00:07] sending  sent 512 ... rate 49.8/s (limit 50.0/s) ..." -> "7s:50.0"
LIMITS=$(grep -o '^\[[0-9:]*\].*sent [0-9]*.*(limit [^)]*)' "$BENCH_TMP/p2.log" |
    sed -E 's/^\[([0-9]+):([0-9]+):([0-9]+)\].* sent ([0-9]+) .*rate ([0-9.]+)\/s \(limit ([^)]*)\)/\1 \2 \3 \4 \5 \6/' |
    awk '{ s = $1 * 3600 + $2 * 60 + $3; lim = $6; sub("/s", "", lim);
           if (lim != prev) { printf "%s%ds:%s", (n++ ? " " : ""), s, lim; prev = lim } ; last = s ": sent " $4 ", rate " $5 "/s, limit " lim }
         END { print ""; print last }')
LIMIT_CHANGES=${LIMITS%%$'\n'*}
LAST_LINE=${LIMITS##*$'\n'}
P2_ACHIEVED=$(echo "$P2_SENT / $P2_WALL" | bc -l)

verdict() { if [ "$1" = 1 ]; then echo PASS; else echo MISS; fi; }
echo
echo "================ rate results ($(date -u +%F), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)) ================"
printf 'part 1: configured %s/s, burst 1, concurrency %s, %s messages; edm exit %s, status sent %s\n' "$RATE" "$CONC" "$COUNT" "$P1_EXIT" "$P1_SENT"
printf 'part 1: achieved %.3f/s over %.2f s (first to last arrival) = %+.2f%% of configured (target within 1%%: %s)\n' \
    "$P1_ACHIEVED" "$P1_SPAN" "$P1_ERR" "$(verdict "$(echo "${P1_ERR#-} <= 1" | bc -l)")"
printf 'part 1: busiest 1-second window: %d messages, starting %.2f s after the first (target <= rate + burst = %d: %s)\n' \
    "$P1_MAXWIN" "$P1_MAXWIN_AT" "$((RATE + 1))" "$(verdict "$([ "$P1_MAXWIN" -le $((RATE + 1)) ] && echo 1)")"
printf 'part 1: arrivals per whole second: %s\n' "$PER_SEC"
printf 'part 2: configured %s/s, 5%% of DATA throttled (454); edm exit %s after %.1f s; status sent %s of %s (%s); failures by category %s\n' \
    "$THROTTLE_RATE" "$P2_EXIT" "$P2_WALL" "$P2_SENT" "$THROTTLE_COUNT" "$(verdict "$([ "$P2_SENT" = "$THROTTLE_COUNT" ] && echo 1)")" "$P2_CATS"
printf 'part 2: effective rate (progress "limit") when it changed, seconds since start: %s\n' "$LIMIT_CHANGES"
printf 'part 2: last progress line: %s; average %.1f msg/s over the run\n' "$LAST_LINE" "$P2_ACHIEVED"
