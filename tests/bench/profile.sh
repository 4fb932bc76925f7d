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
# Under valgrind rendering is slow enough (>= 100 us a message) that the
# feeder renders each batch on threads (render_parallel): their instructions
# show as "render threads" instead of inside a tokio worker; the total holds.
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

# ann FILE: "Ir<TAB>function" lines, inclusive, paths shortened.
ann() {
    callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
        sed -n '/file:function/,$p' | tail -n +3 |
        sed -E 's/ \[[^]]*\] *$//; s#/root/.cargo/registry/src/[^/]*/##; s#/rustc/[0-9a-f]*/library/##; s#^ *([0-9,]+) \([ 0-9.]+%\) +#\1\t#' |
        awk -F'\t' 'NF == 2 {gsub(",", "", $1); print $1 "\t" $2}' |
        # one line per function (an inlined frame shows up once per file it
        # was inlined from): the largest count
        awk -F'\t' '{f = $2; sub(/^[^:]*:/, "", f); if ($1 > m[f]) m[f] = $1} END {for (f in m) print m[f] "\t" f}' |
        sort -t$'\t' -k1,1nr
}
TOTAL=0
echo "== instructions per thread (Ir = instructions executed)"
for f in "$BENCH_TMP"/callgrind.out-*; do
    ann "$f" >"$f.txt"
    # The thread's own total (valgrind reuses a thread number for threads
    # started one after another, e.g. the render threads of a batch, whose
    # inclusive counts then recurse through start_thread'2).
    ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    [ -n "$ir" ] || continue
    TOTAL=$((TOTAL + ir))
    name=other
    grep -q 'edm_store::writer::run' "$f.txt" && name="store writer (edm-store-writer)"
    grep -q 'multi_thread::worker::run' "$f.txt" && name="tokio worker"
    grep -q -- '(below main)' "$f.txt" && name="main thread"
    [ "$name" = other ] && grep -q 'Templates::render' "$f.txt" && name="render threads (render_parallel)"
    printf '%-34s %14d Ir  %8.0f Ir/msg\n' "$(basename "$f"): $name" "$ir" "$(echo "$ir / $MSGS" | bc -l)"
done
printf '%-34s %14d Ir  %8.0f Ir/msg\n' total "$TOTAL" "$(echo "$TOTAL / $MSGS" | bc -l)"

echo "== top $TOP functions, inclusive, summed over threads (Ir/msg, % of all)"
cat "$BENCH_TMP"/callgrind.out-*.txt |
    grep -Ev $'\t(=>|events annotated|\(below main\)$)|\([0-9,]+x\)$|backtrace|clone|start_thread|thread_start|call_once|tokio::runtime::(blocking|context|scheduler|task)' |
    awk -F'\t' '{s[$2] += $1} END {for (k in s) print s[k] "\t" k}' | sort -t$'\t' -k1,1nr |
    awk -F'\t' -v m="$MSGS" -v t="$TOTAL" -v top="$TOP" 'NR <= top {printf "%9.0f %5.1f%%  %s\n", $1 / m, 100 * $1 / t, substr($2, 1, 150)}'
echo "== result"
echo "profile: $MSGS messages, $(echo "$TOTAL / $MSGS" | bc -l | xargs printf '%.0f') instructions per message (all threads)"
