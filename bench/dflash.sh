#!/usr/bin/env bash
# bench/dflash.sh - issue 13's measurement: speculative decoding on the real model, side by side.
#
#   bench/dflash.sh [--threads N] [--max-tokens N] [--limit N] [--gamma LIST] [--files "A.gguf B.gguf"]
#
# For each GGUF (default: the shipped Q4_1 and, when tools/peer/make-variants.sh made it, the BF16
# variant): one `tandem bench` run over the 24 held-out chat prompts (bench/chat-prompts.txt, never
# trained on) rendered with the model's chat template: ar, specdiff with the standalone baseline
# drafter (models/specdiff-smollm2, `make specdiff-drafter`; skipped when absent), dflash
# (models/dflash-smollm2) at gamma 3 and 7 (block 8) and 15 (block 16) (--gamma, default 3,7,15), greedy; then llama.cpp's llama-bench
# tg on the same file and threads (build/peer/bin, tools/peer/build-llama.sh). Writes
# bench/results/dflash-<variant>.{json,csv,txt} and the figures bench/results/dflash-speedup.png,
# dflash-acceptance.png (tools/plot/bench_dflash.py). The machine is shared: ratios within one run
# are what counts.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=1 max_tokens=64 limit=24 files="" gamma=3,7,15
while [ $# -gt 0 ]; do
	case $1 in
	--threads) threads=$2; shift 2 ;;
	--max-tokens) max_tokens=$2; shift 2 ;;
	--limit) limit=$2; shift 2 ;;
	--files) files=$2; shift 2 ;;
	--gamma) gamma=$2; shift 2 ;;
	*) echo "bench/dflash.sh: unknown option $1" >&2; exit 2 ;;
	esac
done
m=models/smollm2/SmolLM2-135M-Instruct
[ -n "$files" ] || { files="$m.Q4_1.gguf"; [ -f "$m.BF16.gguf" ] && files="$files $m.BF16.gguf"; }
py=${PYTHON:-python3}
[ -x /work/venv/bin/python ] && py=${PYTHON:-/work/venv/bin/python}
lb=${LLAMA_BENCH:-build/peer/bin/llama-bench}
mkdir -p bench/results
plots=() peer_args=()
for f in $files; do
	v=$(basename "$f" .gguf); v=${v##*.}; v=$(echo "$v" | tr 'A-Z' 'a-z')
	out=bench/results/dflash-$v
	methods=ar,dflash
	extra=()
	if [ -f models/specdiff-smollm2/model.safetensors ]; then
		methods=ar,specdiff,dflash
		extra=(--diffusion-drafter models/specdiff-smollm2 --steps 1)
	fi
	cmd=(build/bin/tandem bench --verifier "$f" --prompts bench/chat-prompts.txt --chat auto
		--limit "$limit" --methods "$methods" --gamma "$gamma" --dflash-drafter models/dflash-smollm2
		"${extra[@]}" --threads "$threads" --max-tokens "$max_tokens" --out "$out")
	{
		echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
		echo "# ${cmd[*]}"
		"${cmd[@]}" 2>&1
	} | tee "$out.txt"
	ar_tps=$("$py" -c "import json,sys; j=json.load(open('$out.json')); print([r['tokens_per_second'] for r in j['results'] if r['method']=='ar'][0])")
	if [ -x "$lb" ]; then
		echo "# $lb -m $f -t $threads -p 0 -n $max_tokens -r 3 -o json" | tee -a "$out.txt"
		l_tps=$("$lb" -m "$f" -t "$threads" -p 0 -n "$max_tokens" -r 3 -o json 2>/dev/null |
			"$py" -c "import json,sys; print(json.load(sys.stdin)[0]['avg_ts'])")
		echo "llama.cpp tg$max_tokens: $l_tps tok/s; tandem ar in the bench above: $ar_tps tok/s" | tee -a "$out.txt"
		peer_args+=(--peer-ratio "$out.json=$("$py" -c "print($l_tps / $ar_tps)")")
	else
		echo "# no $lb (tools/peer/build-llama.sh): llama.cpp not measured" | tee -a "$out.txt"
	fi
	plots+=("$out.json")
done
"$py" tools/plot/bench_dflash.py "${plots[@]}" "${peer_args[@]}" --out bench/results/dflash
