#!/usr/bin/env bash
# bench/peer.sh - tandem against llama.cpp's llama-bench on the same GGUF files and thread counts.
#
# For each file and thread count, ROUNDS rounds interleaved (tandem, llama, tandem, llama, ...):
#   llama-bench (build/peer/bin, the AMX-free build that runs everything): pp9, pp64 and tgGEN,
#     REPS repetitions per round; every repetition is a sample.
#   llama-bench of the `native` build (tools/peer/build-llama.sh native) when it exists and cpuid lists
#     AMX: tg only, labelled llama-native (there its batch > 1 runs AMX tiles, which fault on VMs that
#     list AMX without enabling it). On a CPU without AMX the native build is the AMX-free one: skipped.
#   tandem: `build/bin/tandem bench --verifier FILE --methods ar --max-tokens GEN` (plain greedy decode
#     of TANDEM_PROMPTS prompts; tok/s over the generated tokens, prompt included in the time), when
#     tandem can read the file; otherwise the row says "tandem: not supported yet".
# Prints medians over the samples, pp cost relative to one decode step (tg tok/s * n / pp tok/s), and
# tandem/llama ratios per file and thread count. Writes the whole report, the command first, to OUT.
#
# usage: bench/peer.sh [--llama-only] [--files "A.gguf B.gguf"] [--threads "1 2"] [--rounds N]
#                      [--reps N] [--gen N] [--out FILE]
# Defaults: the four models/smollm2/SmolLM2-135M-Instruct.{Q4_1,Q8_0,Q4_K_M,BF16}.gguf present
# (scripts/get-models.sh, tools/peer/make-variants.sh), threads "1 2", 3 rounds, 5 repetitions, GEN 128,
# OUT bench/results/peer-latest.txt. Needs jq. `make bench-peer` runs it with the defaults.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cmdline="bench/peer.sh $*"
llama_only=0
files=""
threads="1 2"
rounds=3
reps=5
gen=128
out=bench/results/peer-latest.txt
tandem=${TANDEM:-build/bin/tandem}
tandem_prompts=${TANDEM_PROMPTS:-4}
lb=${LLAMA_BENCH:-build/peer/bin/llama-bench}
lbn=${LLAMA_BENCH_NATIVE:-build/peer/native/bin/llama-bench}
while [ $# -gt 0 ]; do
	case $1 in
	--llama-only) llama_only=1 ;;
	--files) files=$2; shift ;;
	--threads) threads=$2; shift ;;
	--rounds) rounds=$2; shift ;;
	--reps) reps=$2; shift ;;
	--gen) gen=$2; shift ;;
	--out) out=$2; shift ;;
	-h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "bench/peer.sh: unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
command -v jq > /dev/null || { echo "bench/peer.sh: needs jq (apt-get install jq)" >&2; exit 1; }
[ -x "$lb" ] || { echo "bench/peer.sh: no $lb (run tools/peer/build-llama.sh)" >&2; exit 1; }
if [ -z "$files" ]; then
	for t in Q4_1 Q8_0 Q4_K_M BF16; do
		f=models/smollm2/SmolLM2-135M-Instruct.$t.gguf
		[ -f "$f" ] && files="$files $f"
	done
fi
[ -n "$files" ] || { echo "bench/peer.sh: no models/smollm2/*.gguf (scripts/get-models.sh, tools/peer/make-variants.sh)" >&2; exit 1; }

native=0
[ -x "$lbn" ] && grep -q amx_tile /proc/cpuinfo && native=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$out")"
exec > >(tee "$out") 2>&1

median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }

echo "# $cmdline"
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'); host $(uname -n)"
echo "# CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; flags with avx512: $(grep -o 'avx512[a-z0-9_]*\|amx[a-z0-9_]*\|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "# llama.cpp: $lb ($(cat "$(dirname "$lb")/../FLAGS" 2>/dev/null || echo '?')); $("$lb" --version 2>&1 | grep -m1 version || true)"
[ $native = 1 ] && echo "# llama-native: $lbn ($(cat "$(dirname "$lbn")/../FLAGS" 2>/dev/null || echo '?')), tg only"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (the machine is shared; 2 threads on a loaded 2-core VM measure the scheduler)"
echo "# rounds $rounds x reps $reps, tg$gen; interleaved tandem, llama per round; medians over all samples"
echo

# one llama-bench run: appends "test tok/s" lines (one per repetition) to $2
run_llama() { # bin file threads tests... -> samples file
	local bin=$1 f=$2 t=$3 dst=$4
	shift 4
	"$bin" -m "$f" -t "$t" -r "$reps" "$@" -o jsonl > "$tmp/lb.jsonl" 2> "$tmp/lb.err" ||
		{ echo "  llama-bench failed: $(tail -2 "$tmp/lb.err" | tr '\n' ' ')"; return 1; }
	jq -r '(if .n_prompt > 0 then "pp\(.n_prompt)" else "tg" end) as $k | .samples_ts[] | "\($k) \(.)"' \
		"$tmp/lb.jsonl" >> "$dst"
}
# one tandem run: appends "ar tok/s" to $3, or returns 1 when tandem cannot decode the file
run_tandem() {
	local f=$1 t=$2 dst=$3
	[ -x "$tandem" ] || return 1
	"$tandem" bench --verifier "$f" --methods ar --threads "$t" --max-tokens "$gen" \
		--limit "$tandem_prompts" --out "$tmp/tb" > "$tmp/tb.txt" 2> "$tmp/tb.err" || return 1
	awk '$1 == "ar" {print "ar", $6}' "$tmp/tb.txt" >> "$dst"
	grep -q '^ar ' "$dst"
}

summary=()
for f in $files; do
	for t in $threads; do
		s_l=$tmp/l.$t.txt s_n=$tmp/n.$t.txt s_t=$tmp/t.$t.txt
		: > "$s_l"; : > "$s_n"; : > "$s_t"
		tandem_ok=1
		[ $llama_only = 1 ] && tandem_ok=2
		echo "== $(basename "$f"), $t thread(s)"
		for r in $(seq 1 "$rounds"); do
			if [ $tandem_ok = 1 ] && ! run_tandem "$f" "$t" "$s_t"; then
				tandem_ok=0
				echo "  tandem: not supported yet ($(tail -1 "$tmp/tb.err" 2>/dev/null || true))"
			fi
			run_llama "$lb" "$f" "$t" "$s_l" -p 9,64 -n "$gen" || true
			[ $native = 1 ] && { run_llama "$lbn" "$f" "$t" "$s_n" -p 0 -n "$gen" || true; }
		done
		tg=$(awk '$1=="tg"{print $2}' "$s_l" | median)
		pp9=$(awk '$1=="pp9"{print $2}' "$s_l" | median)
		pp64=$(awk '$1=="pp64"{print $2}' "$s_l" | median)
		tgn=$(awk '$1=="tg"{print $2}' "$s_n" | median)
		ar=$(awk '$1=="ar"{print $2}' "$s_t" | median)
		n_l=$(awk '$1=="tg"' "$s_l" | wc -l)
		line=$(awk -v f="$(basename "$f")" -v t="$t" -v tg="$tg" -v p9="$pp9" -v p64="$pp64" -v tgn="$tgn" \
			-v ar="$ar" -v ok="$tandem_ok" -v n="$n_l" '
			function has(x) { return x != "nan" && x + 0 > 0 }
			function fmt(x) { return has(x) ? sprintf("%.1f", x) : "-" }
			BEGIN {
			r9 = (has(p9) && has(tg)) ? sprintf("%.2fx", 9 * tg / p9) : "-";
			r64 = (has(p64) && has(tg)) ? sprintf("%.2fx", 64 * tg / p64) : "-";
			nat = fmt(tgn);
			if (ok == 1 && has(ar)) { ts = sprintf("%.1f", ar); q = has(tg) ? sprintf("%.2f", ar / tg) : "-";
				qn = has(tgn) ? sprintf("%.2f", ar / tgn) : "-" }
			else { ts = (ok == 2) ? "skip" : "n/s"; q = "-"; qn = "-" }
			printf "%-34s %2s %8s %8s %6s %8s %6s %9s %8s %7s %8s %3d", f, t, fmt(tg), fmt(p9), r9, fmt(p64), r64, nat, ts, q, qn, n }')
		summary+=("$line")
		echo "  $line"
	done
done

echo
echo "== summary (tok/s medians; pp9 cost = time of 9 prompt tokens at once / one decode step)"
printf '%-34s %2s %8s %8s %6s %8s %6s %9s %8s %7s %8s %3s\n' file thr tg$gen pp9 pp9/tg pp64 pp64/tg tg-native tandem t/llama t/native n
for l in "${summary[@]}"; do echo "$l"; done
echo "(tg-native: the AMX-on native build, decode only; tandem: ar decode tok/s from tandem bench, n/s = not"
echo " supported yet, skip = --llama-only; t/llama = tandem / llama tg of the AMX-free build, t/native = tandem / tg-native;"
echo " n = llama-bench samples per cell)"
