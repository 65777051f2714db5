#!/bin/sh
# bench/ipc.sh - `tandem bench` with the drafters in their own processes over ipc:// (the bundled
# models), writing bench/results/cpu-bench-ipc.{txt,json,csv}. Extra arguments go to tandem bench
# (e.g. --spin-us 0). Usage: sh bench/ipc.sh [OUT_PREFIX] [tandem bench options...]
set -e
BIN=${BUILD:-build}/bin
OUT=${1:-bench/results/cpu-bench-ipc}
[ $# -gt 0 ] && shift
DIR=$(mktemp -d /tmp/tandem-ipc-XXXXXX)
"$BIN/tandem-drafter" --model models/tiny-ar-drafter --bind "ipc://$DIR/ar.sock" --threads 1 2>"$DIR/ar.log" &
P1=$!
"$BIN/tandem-drafter" --model models/tiny-diffusion-drafter --bind "ipc://$DIR/df.sock" --threads 1 2>"$DIR/df.log" &
P2=$!
trap 'kill $P1 $P2 2>/dev/null; wait $P1 $P2 2>/dev/null; rm -rf "$DIR"' EXIT INT TERM
sleep 1
CMD="$BIN/tandem bench --threads 1 --max-tokens 64 --methods ar,spec-ar,specdiff,apd --gamma 4,8 --steps 1,4,8 \
--ar-drafter ipc://$DIR/ar.sock --diffusion-drafter ipc://$DIR/df.sock --out $OUT $*"
echo "# sh bench/ipc.sh: $CMD (drafters: tandem-drafter --threads 1, one process each)" > "$OUT.txt"
$CMD 2>/dev/null | tee -a "$OUT.txt"
