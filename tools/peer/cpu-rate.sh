#!/usr/bin/env bash
# tools/peer/cpu-rate.sh - llama.cpp's one-thread decode rate per CPU-second, a figure that a shared,
# oversubscribed machine distorts much less than wall-clock tok/s (llama-bench reports wall clock).
#
# usage: tools/peer/cpu-rate.sh [-n GEN] [-r REPS] FILE.gguf...
# For each file: llama-bench -t 1 -p 0 -n GEN -r REPS --no-warmup under /usr/bin/time, minus the CPU time
# of the same run with -n 1 -r 1 (model load and setup); prints GEN*REPS / (that CPU time) beside the
# wall-clock median llama-bench itself reports. One thread only: with more, spinning threads burn CPU
# while they wait for descheduled ones, and CPU time no longer measures work.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lb=${LLAMA_BENCH:-$root/build/peer/bin/llama-bench}
gen=128
reps=3
while getopts n:r: o; do
	case $o in
	n) gen=$OPTARG ;;
	r) reps=$OPTARG ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: tools/peer/cpu-rate.sh [-n GEN] [-r REPS] FILE.gguf..." >&2; exit 2; }
[ -x "$lb" ] || { echo "cpu-rate: no $lb (run tools/peer/build-llama.sh)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cpu() { # args -> CPU seconds (user + system) of one llama-bench run; its stdout in $tmp/out
	/usr/bin/time -f '%U %S' -o "$tmp/t" "$lb" -t 1 --no-warmup -o jsonl "$@" > "$tmp/out" 2> /dev/null
	awk '{print $1 + $2}' "$tmp/t"
}
printf '%-36s %6s %10s %12s %12s\n' file tokens cpu_s tok/cpu_s wall_tok/s
for f in "$@"; do
	base=$(cpu -m "$f" -p 0 -n 1 -r 1)
	all=$(cpu -m "$f" -p 0 -n "$gen" -r "$reps")
	wall=$(jq -r '.avg_ts' "$tmp/out")
	awk -v f="$(basename "$f")" -v n=$((gen * reps)) -v a="$all" -v b="$base" -v w="$wall" \
		'BEGIN {printf "%-36s %6d %10.2f %12.1f %12.1f\n", f, n, a - b, n / (a - b), w}'
done
