#!/usr/bin/env bash
# What DKIM signing adds per message: `edm preview` of N bench rows (~4.2 KB,
# text + HTML) without [dkim], with an ed25519 key and with an rsa-2048 key
# (the test keys of crates/template/tests/keys, never for real mail), under
# callgrind (instructions, stable on a loaded machine) and natively (user +
# sys CPU, REPS runs). The difference to the run without DKIM is the
# signature's cost (body hash, header canonicalisation, the signature).
#
#   bash tests/bench/dkim.sh            # N=300 under callgrind, 2,000 natively
#
# Env: N (default 300), NATIVE_N (default 2000), REPS (default 3), EDM, KEEP=1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${N:-300}
NATIVE_N=${NATIVE_N:-2000}
REPS=${REPS:-3}
command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 2; }
bench_init dkim
KEYS=$BENCH_ROOT/crates/template/tests/keys

make_campaign "$BENCH_TMP/c" "$NATIVE_N" 4k 2525 "concurrency = 4"
cp "$BENCH_TMP/c/campaign.toml" "$BENCH_TMP/campaign.toml.plain"
# use_key none|ed25519|rsa2048
use_key() {
    cp "$BENCH_TMP/campaign.toml.plain" "$BENCH_TMP/c/campaign.toml"
    [ "$1" = none ] && return 0
    local alg=rsa
    [ "$1" = ed25519 ] && alg=ed25519
    cp "$KEYS/$1.pem" "$BENCH_TMP/c/dkim.pem"
    printf '\n[dkim]\nselector = "s1"\ndomain = "sender.example.com"\nkey_file = "dkim.pem"\nalgorithm = "%s"\n' \
        "$alg" >>"$BENCH_TMP/c/campaign.toml"
}
rows() { for i in $(seq 2 $(($1 + 1))); do echo --row "$i"; done; }
mapfile -t SMALL < <(rows "$N" | tr ' ' '\n')
mapfile -t BIG < <(rows "$NATIVE_N" | tr ' ' '\n')

declare -A IR
for key in none ed25519 rsa2048; do
    use_key "$key"
    rm -rf "$BENCH_TMP/out"
    valgrind --tool=callgrind --callgrind-out-file="$BENCH_TMP/cg-$key" \
        "$EDM_BIN" preview "$BENCH_TMP/c" "${SMALL[@]}" --out "$BENCH_TMP/out" \
        >/dev/null 2>"$BENCH_TMP/vg-$key"
    IR[$key]=$(grep -o 'Collected : [0-9]*' "$BENCH_TMP/vg-$key" | awk '{print $3}')
done
declare -A US
for r in $(seq 1 "$REPS"); do
    for key in none ed25519 rsa2048; do
        use_key "$key"
        rm -rf "$BENCH_TMP/out"
        $TIME_BIN -f '%U %S' -o "$BENCH_TMP/time" "$EDM_BIN" preview "$BENCH_TMP/c" "${BIG[@]}" \
            --out "$BENCH_TMP/out" >/dev/null
        US[$key]+="$(awk -v n="$NATIVE_N" '{printf "%.0f ", ($1 + $2) * 1e6 / n}' "$BENCH_TMP/time")"
    done
done
echo "== result (load average $(cut -d' ' -f1-3 /proc/loadavg))"
for key in ed25519 rsa2048; do
    printf '%-8s +%s instructions per message (callgrind, %s messages); native CPU us/msg by run: %s(without DKIM: %s)\n' \
        "$key" "$(((IR[$key] - IR[none]) / N))" "$N" "${US[$key]}" "${US[none]}"
done
