#!/usr/bin/env bash
# Do two builds render the same messages? `edm preview` of the bench
# campaign's rows (text + HTML, ~4.2 KB) and of campaigns/welcome with each
# binary, then the .eml files compared with their Date line and the random
# MIME boundary masked (the only parts that differ from run to run).
# For rendering optimisations that must keep the output byte-identical
# (issue 11).
#
#   EDM=target/release/edm BEFORE=/path/to/edm-before bash tests/bench/same_output.sh
#
# Env: BEFORE (required: the other binary), EDM (default target/release/edm),
# N (rows of the bench campaign, default 300), KEEP=1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-300}
[ -x "${BEFORE:-}" ] || { echo "set BEFORE=/path/to/the/other/edm" >&2; exit 2; }
bench_init same-output
cp "$BEFORE" "$BENCH_TMP/edm-before"

make_campaign "$BENCH_TMP/c" "$N" 4k 2525 "concurrency = 4"
cp -r "$BENCH_ROOT/campaigns/welcome" "$BENCH_TMP/w"
rows=()
for i in $(seq 2 $((N + 1))); do rows+=(--row "$i"); done
for which in after before; do
    exe=$EDM_BIN
    [ "$which" = before ] && exe=$BENCH_TMP/edm-before
    "$exe" preview "$BENCH_TMP/c" "${rows[@]}" --out "$BENCH_TMP/$which/c" >/dev/null
    "$exe" preview "$BENCH_TMP/w" --row 2 --row 3 --row 4 --out "$BENCH_TMP/$which/w" >/dev/null
    for f in "$BENCH_TMP/$which"/*/*.eml; do
        sed -i -E '/^Date: /d; s/[0-9a-f]{8,16}_[0-9a-f]{6,16}_[0-9a-f]{6,16}/BOUNDARY/g' "$f"
    done
done
files=$(find "$BENCH_TMP/after" -name '*.eml' | wc -l)
echo "== result"
if diff -r "$BENCH_TMP/before" "$BENCH_TMP/after" >"$BENCH_TMP/diff" && [ "$files" -gt "$N" ]; then
    echo "same output: $files messages identical (Date and MIME boundary masked)"
else
    echo "DIFFERENT output ($files messages): first lines of the diff:"
    head -20 "$BENCH_TMP/diff"
    exit 1
fi
