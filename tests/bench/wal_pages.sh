#!/usr/bin/env bash
# Which b-trees each WAL commit of `edm send` writes: strace of the pwrite64
# calls (each WAL frame is a 24-byte header then the page), frame headers
# mapped to b-trees with dbstat. `EDM=bin N=20000 bash tests/bench/wal_pages.sh`;
# DROP_MID=1 drops the Message-ID index first (the experiment of issue 11);
# SIZE=1k for 1 KB messages.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
N=${N:-20000}
bench_init pages
PORT=$(free_port)
start_smtp_sink "$PORT" "$BENCH_TMP/smtp-sink.log"
make_campaign "$BENCH_TMP/c" "$N" "${SIZE:-4k}" "$PORT" "concurrency = 32"
"$EDM_BIN" send "$BENCH_TMP/c" --no-tui --limit 1 >"$BENCH_TMP/ingest.log" 2>&1 || true
[ -n "${DROP_MID:-}" ] && sqlite3 "$BENCH_TMP/c/.edm/state.db" "DROP INDEX IF EXISTS recipients_message_id"
strace -f -e trace=pwrite64,openat -xx -s 24 -o "$BENCH_TMP/trace.txt" "$EDM_BIN" send "$BENCH_TMP/c" --no-tui >"$BENCH_TMP/send.log" 2>&1
DB=$(ls "$BENCH_TMP"/c/.edm/state.db)
sqlite3 "$DB" "SELECT pageno, name FROM dbstat" > "$BENCH_TMP/pages.txt"
python3 "$BENCH_ROOT/tests/bench/wal_pages.py" "$BENCH_TMP/trace.txt" "$BENCH_TMP/pages.txt" "$(status_field "$BENCH_TMP/c" sent)"
