#!/usr/bin/env bash
# The cost of keeping the campaign state in PostgreSQL rather than SQLite:
# the same campaign sent by `edm send` to postfix smtp-sink, once with the
# SQLite file and once with EDM_STORE_URL, interleaved REPS times; medians.
#
#   bash tests/bench/postgres.sh                   # 20000 recipients, 1 KB
#   N=5000 REPS=3 bash tests/bench/postgres.sh     # quick run
#
# Env: N (recipients, default 20000), CONC (connections, default 32), REPS
# (default 3), EDM (binary, default target/release/edm), KEEP=1.
# PostgreSQL: a throwaway server in a temp dir (as the postgres user when
# root), fsync=off as in the tests: this measures edm's work per message
# against the server, not the disk's.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-20000}
CONC=${CONC:-32}
REPS=${REPS:-3}

bench_init postgres
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
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"

PORT=$(free_port)
start_smtp_sink "$PORT" "$BENCH_TMP/smtp-sink.log"
make_campaign "$BENCH_TMP/c" "$N" 1k "$PORT" "concurrency = $CONC"

# run NAME [ENV...]: times one `edm send`; sets WALL, CPU_S, EXIT.
run() {
    local name=$1 t0
    shift
    t0=$EPOCHREALTIME
    set +e
    env "$@" "$TIME_BIN" -v -o "$BENCH_TMP/$name.time" "$EDM_BIN" send "$BENCH_TMP/c" --no-tui \
        >"$BENCH_TMP/$name.log" 2>&1
    EXIT=$?
    set -e
    WALL=$(echo "$EPOCHREALTIME - $t0" | bc -l)
    CPU_S=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u + s}' "$BENCH_TMP/$name.time")
    [ "$EXIT" = 0 ] || { echo "edm send ($name) exited $EXIT" >&2; tail -5 "$BENCH_TMP/$name.log" >&2; }
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
S_WALL=() S_CPU=() P_WALL=() P_CPU=()
for rep in $(seq 1 "$REPS"); do
    rm -rf "$BENCH_TMP/c/.edm"
    run sqlite
    S_WALL+=("$WALL") S_CPU+=("$CPU_S")
    printf '== SQLite     run %s: %.2fs wall, %.0f msg/s, edm CPU %ss, exit %s\n' "$rep" "$WALL" "$(echo "$N / $WALL" | bc -l)" "$CPU_S" "$EXIT"
    "${as_pg[@]}" "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "DROP SCHEMA IF EXISTS edm CASCADE" >/dev/null
    run postgres EDM_STORE_URL="$URL"
    P_WALL+=("$WALL") P_CPU+=("$CPU_S")
    printf '== PostgreSQL run %s: %.2fs wall, %.0f msg/s, edm CPU %ss, exit %s\n' "$rep" "$WALL" "$(echo "$N / $WALL" | bc -l)" "$CPU_S" "$EXIT"
done
SW=$(median "${S_WALL[@]}") PW=$(median "${P_WALL[@]}")
SC=$(median "${S_CPU[@]}") PC=$(median "${P_CPU[@]}")
echo
printf 'medians over %s runs, %s recipients, concurrency %s, load %s:\n' "$REPS" "$N" "$CONC" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '  SQLite      %.2fs  %.0f msg/s  edm CPU %.2fs\n' "$SW" "$(echo "$N / $SW" | bc -l)" "$SC"
printf '  PostgreSQL  %.2fs  %.0f msg/s  edm CPU %.2fs\n' "$PW" "$(echo "$N / $PW" | bc -l)" "$PC"
printf '  overhead per message: %+.1f us wall, %+.1f us edm CPU (the server'"'"'s own CPU not counted)\n' \
    "$(echo "($PW - $SW) * 1000000 / $N" | bc -l)" "$(echo "($PC - $SC) * 1000000 / $N" | bc -l)"
