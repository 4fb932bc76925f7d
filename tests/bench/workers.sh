#!/usr/bin/env bash
# Several `edm send` workers on one campaign in PostgreSQL (issue 14,
# docs/scaling.md): the campaign's rate held by their sum, and the time the
# others take to recover a worker killed with SIGKILL.
#
#   EDM=target/debug/edm bash tests/bench/workers.sh          # 3 workers, 60 s at 200/s
#   EDM=target/debug/edm RATE=100 SECS=20 bash tests/bench/workers.sh   # quick run
#
# Part 1: W workers (default 3) start together on RATE*SECS recipients at
# [delivery] rate = RATE, burst = BURST (default 3, shared by the workers);
# `edm sink --maildir` stamps each message's arrival (file names). Reported:
# achieved rate = (n-1)/(t_last-t_first) against RATE, the busiest 1 s
# window against RATE + BURST, each worker's share (`edm status --json`).
#
# Part 2: the same with the default lease (30 s; LEASE_MS= to shorten it):
# one worker killed with SIGKILL after a third of the run. Reported: the
# time from the kill to the takeover event ("its lease expired"), the
# recipients it held, and whether the others completed the campaign.
#
# Env: W, RATE, SECS, BURST, CONC (per worker, default 4), LEASE_MS, PART
# (1 or 2: one part only), EDM
# (binary, default target/release/edm), KEEP=1.
# PostgreSQL: a throwaway server in a temp dir (as the postgres user when
# root), fsync=off as in the tests.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

W=${W:-3}
RATE=${RATE:-200}
SECS=${SECS:-60}
BURST=${BURST:-3}
CONC=${CONC:-4}
N=$((RATE * SECS))

bench_init workers
PG_BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1)")
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb)" >&2; exit 2; }
PG_DIR=$(mktemp -d /tmp/edm-bench-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$PG_DIR"
    as_pg=(runuser -u postgres --)
fi
stop_pg() {
    "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
    bench_cleanup
}
trap stop_pg EXIT
PG_PORT=$(free_port)
"${as_pg[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust --no-sync >/dev/null
"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -w -l "$PG_DIR/log" \
    -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
psql_q() { "${as_pg[@]}" "$PG_BIN/psql" -qAt -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "$1"; }
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"

# arrivals MAILDIR: count, span, achieved rate, busiest 1 s window, and the
# rate between the 5th and the 95th percentile of arrivals (the workers
# start one heartbeat apart and the last claims drain unevenly: the edges
# say nothing of the shared rate).
arrivals() {
    ls "$1/new" | cut -d. -f1 | sort -n | awk '
        { t[NR] = $1 }
        END {
            n = NR; j = 1; best = 0; at = 0
            for (i = 1; i <= n; i++) {
                while (j <= n && t[j] - t[i] < 1000) j++
                if (j - i > best) { best = j - i; at = (t[i] - t[1]) / 1000 }
            }
            span = (t[n] - t[1]) / 1000
            lo = int(n * 0.05) + 1; hi = int(n * 0.95)
            mid = (hi - lo) / ((t[hi] - t[lo]) / 1000)
            printf "%d %.3f %.2f %d %.2f %.1f\n", n, span, (n - 1) / span, best, mid, at
        }'
}

# workers DIR [ENV...]: starts W workers w1..wW in the background; sets PIDS.
workers() {
    local dir=$1 i
    shift
    PIDS=()
    for i in $(seq 1 "$W"); do
        env EDM_STORE_URL="$URL" "$@" "$EDM_BIN" send "$dir" --no-tui --worker "w$i" \
            >"$BENCH_TMP/w$i.log" 2>&1 &
        PIDS+=($!)
        BENCH_PIDS+=($!)
    done
}

# ---- part 1: the rate over the sum of the workers
if [ "${PART:-all}" != 2 ]; then
PORT=$(free_port)
start_edm_sink "$PORT" "$BENCH_TMP/sink1.log" --maildir "$BENCH_TMP/maildir1"
make_campaign "$BENCH_TMP/p1" "$N" 1k "$PORT" "rate = $RATE" "burst = $BURST" "concurrency = $CONC"
echo "== part 1: $W workers, $N messages at rate $RATE/s, burst $BURST, concurrency $CONC each"
workers "$BENCH_TMP/p1"
codes=()
for pid in "${PIDS[@]}"; do
    set +e; wait "$pid"; codes+=($?); set -e
done
stop_pid "$SINK_PID"
read -r P1_N P1_SPAN P1_ACH P1_MAX P1_MID P1_AT < <(arrivals "$BENCH_TMP/maildir1")
echo "   exit codes: ${codes[*]}"
printf '   %d messages in %.1f s: %.2f/s for %d/s (%+.2f%%), between the 5th and 95th percentile %.2f/s (%+.2f%%)\n' \
    "$P1_N" "$P1_SPAN" "$P1_ACH" "$RATE" "$(echo "($P1_ACH - $RATE) * 100 / $RATE" | bc -l)" \
    "$P1_MID" "$(echo "($P1_MID - $RATE) * 100 / $RATE" | bc -l)"
printf '   busiest 1 s window %d (%.1f s after the first arrival) for rate + burst %d\n' "$P1_MAX" "$P1_AT" "$((RATE + BURST))"
echo "   per worker (sent, share):"
EDM_STORE_URL="$URL" "$EDM_BIN" status "$BENCH_TMP/p1" --json \
    | jq -r '.workers[] | "     \(.name): \(.sent) sent, share \(.share)"'
fi
[ "${PART:-all}" = 1 ] && exit 0

# ---- part 2: one worker killed; the others recover its rows after its lease
psql_q "SET client_min_messages = warning; DROP SCHEMA IF EXISTS edm CASCADE" >/dev/null
PORT=$(free_port)
start_edm_sink "$PORT" "$BENCH_TMP/sink2.log" --maildir "$BENCH_TMP/maildir2"
make_campaign "$BENCH_TMP/p2" "$N" 1k "$PORT" "rate = $RATE" "burst = $BURST" "concurrency = $CONC"
lease_env=()
[ -n "${LEASE_MS:-}" ] && lease_env=(EDM_LEASE_MS="$LEASE_MS")
echo "== part 2: $W workers, w2 killed with SIGKILL after $((SECS / 3)) s (lease ${LEASE_MS:-30000} ms)"
workers "$BENCH_TMP/p2" "${lease_env[@]}"
sleep $((SECS / 3))
kill -9 "${PIDS[1]}"
KILLED_AT=$(date +%s%3N)
codes=()
for pid in "${PIDS[@]}"; do
    set +e; wait "$pid"; codes+=($?); set -e
done
stop_pid "$SINK_PID"
echo "   exit codes: ${codes[*]} (w2 killed: 137)"
TAKEOVER=$(psql_q "SELECT at || ' ' || text FROM edm.events WHERE kind = 'worker' AND text LIKE 'worker w2:%' ORDER BY id LIMIT 1")
if [ -n "$TAKEOVER" ]; then
    AT=${TAKEOVER%% *}
    printf '   takeover %.1f s after the kill: %s\n' "$(echo "($AT - $KILLED_AT) / 1000" | bc -l)" "${TAKEOVER#* }"
else
    echo "   no takeover event"
fi
read -r P2_N _ _ _ _ _ < <(arrivals "$BENCH_TMP/maildir2")
UNIQUE=$(grep -h -m1 '^Delivered-To:' "$BENCH_TMP"/maildir2/new/* | sort -u | wc -l)
echo "   messages at the sink: $P2_N, recipients: $UNIQUE (second copies: $((P2_N - UNIQUE)))"
echo "   status: $(EDM_STORE_URL="$URL" "$EDM_BIN" status "$BENCH_TMP/p2" --json | jq -c '{total, sent, in_doubt, sending}')"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
