#!/usr/bin/env bash
# Does the dashboard slow sending? The same campaign sent with the dashboard
# (edm send in a real terminal: tmux, 120x40) and with plain lines (--no-tui),
# against postfix smtp-sink, interleaved REPS times. The rate is taken from the
# state file (first attempt to last outcome), so it measures sending only.
#
#   bash tests/bench/dashboard.sh          # N=20000 recipients, ~4 KB, concurrency 32
#   N=5000 REPS=1 bash tests/bench/dashboard.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-20000}
CONC=${CONC:-32}
REPS=${REPS:-3}
LIMIT_S=${LIMIT_S:-300}

command -v tmux >/dev/null || { echo "tmux is needed" >&2; exit 2; }
command -v sqlite3 >/dev/null || { echo "sqlite3 is needed" >&2; exit 2; }
bench_init dashboard
SESSION="edm-bench-$$"
trap 'tmux kill-session -t "$SESSION" 2>/dev/null || true; bench_cleanup' EXIT

PORT=$(free_port)
start_smtp_sink "$PORT" "$BENCH_TMP/smtp-sink.log"
make_campaign "$BENCH_TMP/c" "$N" 4k "$PORT" "concurrency = $CONC"
DB="$BENCH_TMP/c/.edm/state.db"

# rate_from_db: sent / (last outcome - first attempt), msg/s
rate_from_db() {
    sqlite3 -readonly "$DB" \
        "SELECT count(*), min(first_attempt_at), max(updated_at) FROM recipients WHERE status = 'sent'" |
        awk -F'|' '{ if ($3 > $2) printf "%.0f", $1 / (($3 - $2) / 1000); else print 0 }'
}

sent_count() {
    sqlite3 -readonly "$DB" "SELECT count(*) FROM recipients WHERE status = 'sent'" 2>/dev/null || echo 0
}

PLAIN=() TUI=()
for rep in $(seq 1 "$REPS"); do
    rm -rf "$BENCH_TMP/c/.edm"
    timeout "$LIMIT_S" "$EDM_BIN" send "$BENCH_TMP/c" --no-tui >"$BENCH_TMP/plain.log" 2>&1
    PLAIN+=("$(rate_from_db)")
    echo "== run $rep: plain lines: ${PLAIN[-1]} msg/s"

    rm -rf "$BENCH_TMP/c/.edm"
    tmux new-session -d -s "$SESSION" -x 120 -y 40 "$EDM_BIN send $BENCH_TMP/c; sleep 1"
    start=$(date +%s)
    until [ "$(sent_count)" = "$N" ]; do
        [ $(( $(date +%s) - start )) -lt "$LIMIT_S" ] || { echo "dashboard run did not finish" >&2; exit 1; }
        sleep 0.2
    done
    # The finished dashboard waits for a key.
    until ! tmux has-session -t "$SESSION" 2>/dev/null; do
        tmux send-keys -t "$SESSION" q 2>/dev/null || true
        sleep 0.3
        [ $(( $(date +%s) - start )) -lt "$LIMIT_S" ] || { echo "the dashboard did not leave on q" >&2; exit 1; }
    done
    TUI+=("$(rate_from_db)")
    echo "== run $rep: dashboard:   ${TUI[-1]} msg/s"
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
P=$(median "${PLAIN[@]}")
T=$(median "${TUI[@]}")
echo
echo "================ dashboard results ($(date +%F), $(nproc) cores) ================"
echo "plain lines (--no-tui): median $P msg/s (runs: ${PLAIN[*]})"
echo "dashboard (tmux 120x40): median $T msg/s (runs: ${TUI[*]})"
echo "ratio dashboard/plain: $(echo "scale=3; $T / $P" | bc -l) (target >= 0.95)"
