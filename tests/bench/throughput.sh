#!/usr/bin/env bash
# Throughput and memory of `edm send` against postfix smtp-sink, compared with
# postfix smtp-source (the raw client) on the same sink.
#
#   bash tests/bench/throughput.sh                 # full run (20k x 4 KB, then 200k x 1 KB)
#   N=2000 BIG=20000 bash tests/bench/throughput.sh   # quick run
#
# Env: N (recipients, 4 KB messages, default 20000), BIG (recipients, 1 KB
# messages, default 200000; 0 skips part c), CONC (connections, default 32),
# REPS (repetitions of a and b, interleaved, medians reported; default 3),
# LIMIT_S (time limit per edm run, default 900), EDM (binary), KEEP=1 (keep temp dir),
# DKIM (ed25519 or rsa2048: campaign a signs with that test key of
# crates/template/tests/keys; default none).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-20000}
BIG=${BIG:-200000}
CONC=${CONC:-32}
REPS=${REPS:-3}
LIMIT_S=${LIMIT_S:-900}

bench_init throughput
[ -n "$TIME_BIN" ] || { echo "/usr/bin/time is needed (Debian package time)" >&2; exit 2; }

PORT=$(free_port)
start_smtp_sink "$PORT" "$BENCH_TMP/smtp-sink.log"
echo "smtp-sink on 127.0.0.1:$PORT (pid $SINK_PID), temp dir $BENCH_TMP"

# run_edm NAME DIR: times `edm send DIR --no-tui`; sets WALL, INGEST, RSS_KB,
# CPU_S, EXIT, and from the state file FIRST (first attempt) and LAST (last
# outcome recorded), in seconds since the process started.
run_edm() {
    local name=$1 dir=$2 t0 line
    t0=$EPOCHREALTIME
    set +e
    "$TIME_BIN" -v -o "$BENCH_TMP/$name.time" timeout "$LIMIT_S" \
        "$EDM_BIN" send "$dir" --no-tui 2>&1 |
        while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$BENCH_TMP/$name.log"
    EXIT=${PIPESTATUS[0]}
    set -e
    WALL=$(echo "$EPOCHREALTIME - $t0" | bc -l)
    # the "read N recipients from the CSV" line is printed once ingest and prepare are done
    INGEST=$(awk -v t0="$t0" '/read [0-9]+ recipients from the CSV/ {printf "%.2f", $1 - t0; exit}' "$BENCH_TMP/$name.log")
    RSS_KB=$(peak_rss_kb "$BENCH_TMP/$name.time")
    CPU_S=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u + s}' "$BENCH_TMP/$name.time")
    read -r FIRST LAST < <(sqlite3 -readonly "$dir/.edm/state.db" \
        "SELECT min(first_attempt_at), max(updated_at) FROM recipients WHERE status = 'sent'" |
        awk -F'|' -v t0="$t0" '{printf "%.3f %.3f\n", $1 / 1000 - t0, $2 / 1000 - t0}')
    if [ "$EXIT" != 0 ]; then
        echo "edm send ($name) exited $EXIT; last lines:" >&2
        tail -5 "$BENCH_TMP/$name.log" >&2
    fi
}

# ---- (a) and (b), interleaved REPS times; the medians are reported
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
make_campaign "$BENCH_TMP/a" "$N" 4k "$PORT" "concurrency = $CONC"
case ${DKIM:-none} in
none) ;;
ed25519 | rsa2048)
    cp "$BENCH_ROOT/crates/template/tests/keys/$DKIM.pem" "$BENCH_TMP/a/dkim.pem"
    alg=rsa && [ "$DKIM" = ed25519 ] && alg=ed25519
    printf '\n[dkim]\nselector = "s1"\ndomain = "sender.example.com"\nkey_file = "dkim.pem"\nalgorithm = "%s"\n' \
        "$alg" >>"$BENCH_TMP/a/campaign.toml"
    echo "campaign a signs with DKIM ($DKIM, test key)"
    ;;
*) echo "DKIM must be none, ed25519 or rsa2048" >&2 && exit 2 ;;
esac
A_RATES=() A_ACTIVES=() B_RATES=() A_RSSES=() A_CPUS=() A_OK=1
for rep in $(seq 1 "$REPS"); do
    echo "== (a) edm send: $N recipients, ~4 KB, concurrency $CONC, rate unlimited (run $rep/$REPS)"
    rm -rf "$BENCH_TMP/a/.edm"
    run_edm a "$BENCH_TMP/a"
    A_SENT=$(status_field "$BENCH_TMP/a" sent)
    [ "$A_SENT" = "$N" ] && [ "$EXIT" = 0 ] || A_OK=0
    A_RATES+=("$(echo "$N / $WALL" | bc -l)")
    A_ACTIVES+=("$(echo "$N / ($LAST - $FIRST)" | bc -l)")
    A_RSSES+=("$RSS_KB") A_CPUS+=("$CPU_S")
    printf '   wall %.2fs (ingest %ss, first attempt %.2fs, last outcome %.2fs): %.0f msg/s start-to-exit, %.0f msg/s while sending; exit %s, sent %s, peak RSS %.1f MB, CPU %ss\n' \
        "$WALL" "${INGEST:-?}" "$FIRST" "$LAST" "${A_RATES[-1]}" "${A_ACTIVES[-1]}" "$EXIT" "$A_SENT" "$(echo "$RSS_KB/1024" | bc -l)" "$CPU_S"

    echo "== (b) smtp-source: $N messages, 4096-byte payload, $CONC sessions, reused (-d) (run $rep/$REPS)"
    t0=$EPOCHREALTIME
    timeout "$LIMIT_S" /usr/sbin/smtp-source -d -s "$CONC" -m "$N" -l 4096 \
        -f bench@sender.example.com -t user@d1.example.com -M bench.example.com \
        127.0.0.1:"$PORT" >"$BENCH_TMP/smtp-source.log" 2>&1
    B_WALL=$(echo "$EPOCHREALTIME - $t0" | bc -l)
    B_RATES+=("$(echo "$N / $B_WALL" | bc -l)")
    printf '   wall %.2fs, %.0f msg/s\n' "$B_WALL" "${B_RATES[-1]}"
done
A_RATE=$(median "${A_RATES[@]}") A_ACTIVE_RATE=$(median "${A_ACTIVES[@]}") B_RATE=$(median "${B_RATES[@]}")
A_RSS=$(median "${A_RSSES[@]}") A_CPU=$(median "${A_CPUS[@]}")

# ---- (c) edm, BIG recipients, ~1 KB messages
if [ "$BIG" -gt 0 ]; then
    echo "== (c) edm send: $BIG recipients, ~1 KB, concurrency $CONC, rate unlimited"
    make_campaign "$BENCH_TMP/c" "$BIG" 1k "$PORT" "concurrency = $CONC"
    run_edm c "$BENCH_TMP/c"
    C_WALL=$WALL C_INGEST=$INGEST C_RSS=$RSS_KB C_CPU=$CPU_S C_EXIT=$EXIT C_FIRST=$FIRST C_LAST=$LAST
    C_ACTIVE_RATE=$(echo "$BIG / ($C_LAST - $C_FIRST)" | bc -l)
    C_SENT=$(status_field "$BENCH_TMP/c" sent)
    C_RATE=$(echo "$BIG / $C_WALL" | bc -l)
    C_SEND_RATE=$(echo "$BIG / ($C_WALL - ${C_INGEST:-0})" | bc -l)
    printf '   wall %.2fs (ingest %ss), %.0f msg/s overall, %.0f msg/s after ingest, exit %s, sent %s, peak RSS %.1f MB, CPU %ss\n' \
        "$C_WALL" "${C_INGEST:-?}" "$C_RATE" "$C_SEND_RATE" "$C_EXIT" "$C_SENT" "$(echo "$C_RSS/1024" | bc -l)" "$C_CPU"
fi

RATIO=$(echo "$A_RATE / $B_RATE" | bc -l)
ACTIVE_RATIO=$(echo "$A_ACTIVE_RATE / $B_RATE" | bc -l)
verdict() { if [ "$1" = 1 ]; then echo PASS; else echo MISS; fi; }
echo
echo "================ throughput results ($(date -u +%F), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)) ================"
printf 'edm (a)         %6d x ~4 KB, conc %d, median of %d: %6.0f msg/s start-to-exit, %6.0f msg/s first attempt..last outcome (all runs exit 0 and sent %d: %s)\n' \
    "$N" "$CONC" "$REPS" "$A_RATE" "$A_ACTIVE_RATE" "$N" "$(verdict "$A_OK")"
printf 'edm (a)         runs: %s msg/s start-to-exit\n' "$(printf '%.0f ' "${A_RATES[@]}")"
printf 'edm (a)         peak RSS %.1f MB, CPU %.2f s (%.0f us/msg)\n' \
    "$(echo "$A_RSS/1024" | bc -l)" "$A_CPU" "$(echo "$A_CPU * 1000000 / $N" | bc -l)"
printf 'smtp-source (b) %6d x 4096 B, %d reused sessions, median of %d: %6.0f msg/s  (runs: %s)\n' \
    "$N" "$CONC" "$REPS" "$B_RATE" "$(printf '%.0f ' "${B_RATES[@]}")"
printf 'ratio edm/smtp-source: %.2f start-to-exit (target >= 0.5: %s); %.2f first attempt..last outcome\n' \
    "$RATIO" "$(verdict "$(echo "$RATIO >= 0.5" | bc -l)")" "$ACTIVE_RATIO"
if [ "$BIG" -gt 0 ]; then
    printf 'edm (c)        %6d x ~1 KB, conc %d: %8.0f msg/s  (%.2f s wall, ingest %s s, %.0f msg/s after ingest; exit %s; status sent %s/%d %s)\n' \
        "$BIG" "$CONC" "$C_RATE" "$C_WALL" "${C_INGEST:-?}" "$C_SEND_RATE" "$C_EXIT" "$C_SENT" "$BIG" "$(verdict $([ "$C_SENT" = "$BIG" ] && echo 1))"
    printf 'edm (c)        first attempt at %.2f s, last outcome at %.2f s, exit at %.2f s: %.0f msg/s while sending\n' \
        "$C_FIRST" "$C_LAST" "$C_WALL" "$C_ACTIVE_RATE"
    printf 'edm (c)        peak RSS %.1f MB (target < 100 MB: %s), CPU %.2f s (%.0f us/msg)\n' \
        "$(echo "$C_RSS/1024" | bc -l)" "$(verdict "$(echo "$C_RSS < 102400" | bc -l)")" "$C_CPU" "$(echo "$C_CPU * 1000000 / $BIG" | bc -l)"
fi
