#!/bin/bash
# bench/cuda-quant.sh - the CUDA backend on block-quantized GGUF weights (kernels/cuda/quant.cu),
# checked and timed on a real GPU with the project's real model, SmolLM2-135M-Instruct Q4_1
# (Q4_1 matrices, Q8_0 embeddings/LM head; scripts/get-models.sh). docs/cuda.md, "Quantized
# weights", says what it must show.
#
# Two halves: the GPU machine has no build dependencies (tools/gpu-bundle.sh packs the binaries and
# libraries), and the device tool carries at most 64 MiB per call, less than bundle + model (16 +
# 98 MB), so the model goes over in two parts, on one warm machine (ignored files stay there
# between calls):
#   here (nvcc present):  bash bench/cuda-quant.sh prepare
#       builds test_cuda, bench_cuda and tandem with nvcc, bundles them (build/gpu-bundle.tar.xz)
#       and splits the model into build/cq/model.part1 (40 MB) and build/cq/model.part2 (58 MB).
#   device tool, call 1:  carry ["build/gpu-bundle.tar.xz", "build/cq/model.part1"],
#                         command "bash bench/cuda-quant.sh stage", timeout 120
#   device tool, call 2:  carry ["build/cq/model.part2"],
#                         command "bash bench/cuda-quant.sh run", timeout 600
#       (run refuses with a message when a part is missing or the sha256 differs; a machine that
#       went back between the calls has lost part 1: do both calls again.)
# run, each stage under its own time limit, all logged to $OUT/cuda-quant-<gpu>.txt (else
# bench/results/), each with its exit status; a failing stage never stops the next:
#   1. nvidia-smi;
#   2. test_cuda's quantized cases: every block type against both CPU backends (reference and
#      int8), batch invariance, get_rows, the tiny quantized GGUF forward, and cuda_quant_smollm2:
#      the real model's logits (prefill 9, decode 1, verify 9, prefill 40) against the CPU
#      reference backend within 2e-3 x max |logit|;
#   3. greedy AR, 128 tokens, the same prompt on the CPU (all cores) and on the GPU: token ids
#      compared (informational: int8 activations on the CPU move near-ties; the first difference
#      is printed), tok/s of each;
#   4. decode speed: 3 runs of 256 greedy tokens on the GPU (--method ar, sampling on the device),
#      tok/s of each; the same on the CPU once, side by side.
# Environment: BUILD (build), CQ_SECONDS (540), CQ_DEVICE (0).
set -u
cd "$(dirname "$0")/.."
B=${BUILD:-build}
MODEL=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
LIMIT=${CQ_SECONDS:-540}
DEV=${CQ_DEVICE:-0}
mode=${1:-}

if [ "$mode" = prepare ]; then
  set -e
  [ -f "$MODEL" ] || sh scripts/get-models.sh
  make -j2 all "$B/tests/test_cuda" "$B/bench/bench_cuda"
  BUILD=$B sh tools/gpu-bundle.sh
  mkdir -p "$B/cq"
  # part 1 travels with the bundle (about 16 MB): 40 MB keeps that call well under 64 MiB
  head -c 40000000 "$MODEL" >"$B/cq/model.part1"
  tail -c +40000001 "$MODEL" >"$B/cq/model.part2"
  cat "$B/cq/model.part1" "$B/cq/model.part2" | sha256sum | grep -q "$SHA" ||
    { echo "cuda-quant: the parts do not rebuild the model"; exit 1; }
  ls -l "$B/gpu-bundle.tar.xz" "$B/cq/"
  echo "cuda-quant: now the two device-tool calls of the header"
  exit 0
fi

if [ "$mode" = stage ]; then
  ls -l "$B/gpu-bundle.tar.xz" "$B/cq/model.part1" || exit 1
  tar -C "$B" -xJf "$B/gpu-bundle.tar.xz" 2>/dev/null ||
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$B/gpu-bundle.tar.xz" "$B" ||
    { echo "cuda-quant: cannot unpack the bundle"; exit 1; }
  echo "cuda-quant: staged; next call: carry [\"$B/cq/model.part2\"], bash bench/cuda-quant.sh run"
  exit 0
fi

[ "$mode" = run ] || { sed -n '2,35p' "$0"; exit 2; }

t_start=$(date +%s)
left() { echo $((LIMIT - ($(date +%s) - t_start))); }
budget() { # WANT [RESERVE]
  local want=$1 l
  l=$(($(left) - ${2:-15}))
  [ "$l" -lt "$want" ] && want=$l
  [ "$want" -lt 1 ] && want=1
  echo "$want"
}
name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9.\n_-' '-' | sed 's/-*$//')
[ -n "$name" ] || name=unknown
outdir=${OUT:-bench/results}
mkdir -p "$outdir"
exec > >(tee "$outdir/cuda-quant-$name.txt") 2>&1
summary=""
stage() { summary="$summary $1=$2"; echo "-- $1: exit $2 (at $(($(date +%s) - t_start)) s of $LIMIT)"; }

echo "== tandem cuda-quant, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
[ -d "$B/gpu-bundle/bin" ] || { echo "cuda-quant: no $B/gpu-bundle (run the stage call first)"; exit 1; }
if [ ! -f "$MODEL" ] || ! sha256sum "$MODEL" | grep -q "$SHA"; then
  [ -f "$B/cq/model.part1" ] && [ -f "$B/cq/model.part2" ] ||
    { echo "cuda-quant: $B/cq/model.part1 or part2 missing (see the header)"; exit 1; }
  rm -f models/smollm2 2>/dev/null # a dangling symlink from the build machine
  mkdir -p models/smollm2
  cat "$B/cq/model.part1" "$B/cq/model.part2" >"$MODEL"
  sha256sum "$MODEL" | grep -q "$SHA" || { echo "cuda-quant: $MODEL: wrong sha256"; exit 1; }
fi
BIN=$PWD/$B/gpu-bundle/bin
. "$(dirname "$0")/../tools/gpu-libpath.sh"
gpu_libpath "$PWD/$B/gpu-bundle" "$BIN"
work=$(mktemp -d /tmp/tandem-cq-XXXXXX)

echo "== nvidia-smi"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv

echo "== test_cuda, quantized cases"
timeout -k 5 "$(budget 200 200)" "$BIN/test_cuda" cuda_quant_matmul_vs_cpu cuda_quant_get_rows \
  cuda_quant_forward cuda_quant_smollm2
stage test_cuda $?

prompt="The three most important things to know about the ocean are"
gen() { # DEVICE MAX_TOKENS OUT
  timeout -k 5 "$(budget 120 30)" "$BIN/tandem" generate --verifier "$MODEL" --method ar \
    --prompt "$prompt" --max-tokens "$2" --temperature 0 --json --device "$1" \
    --threads "$(nproc)" >"$3"
}
echo "== greedy 128 tokens, CPU vs device $DEV"
gen -1 128 "$work/cpu.json"; rc_c=$?
gen "$DEV" 128 "$work/gpu.json"; rc_g=$?
cat "$work/cpu.json" "$work/gpu.json"
python3 - "$work/cpu.json" "$work/gpu.json" <<'EOF' || true
import json, sys
try:
    a, b = (json.load(open(p)) for p in sys.argv[1:3])
except ValueError:
    sys.exit("cannot compare: a run gave no JSON")
ta, tb = a.get("tokens", []), b.get("tokens", [])
n = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
print(f"tokens equal for the first {n} of {len(ta)} (cpu) / {len(tb)} (gpu)")
EOF
stage greedy-cpu $rc_c
stage greedy-gpu $rc_g

echo "== decode speed, 256 greedy tokens (stats in each line's JSON)"
for i in 1 2 3; do
  gen "$DEV" 256 "$work/gpu-$i.json"; rc=$?
  echo "gpu run $i: $(cat "$work/gpu-$i.json")"
  stage "speed-gpu-$i" $rc
done
gen -1 256 "$work/cpu-speed.json"; rc=$?
echo "cpu ($(nproc) threads): $(cat "$work/cpu-speed.json")"
stage speed-cpu $rc
echo "== summary:$summary"
rm -rf "$work"
