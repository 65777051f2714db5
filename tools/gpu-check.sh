#!/bin/bash
# tools/gpu-check.sh - the one script the GPU machine runs, from the repository root:
#   bash tools/gpu-check.sh
# It needs build/gpu-bundle (or build/gpu-bundle.tar.xz) made on the build machine by
# tools/gpu-bundle.sh: test_cuda, bench_cuda, tandem, tandem-drafter, tandem-verifier and the Debian
# shared libraries that machine lacks. Stages, each under its own time limit, each logged with its
# exit status, a failing one never stopping the next:
#   1. nvidia-smi, nvcc, ldd of every binary (a binary with unresolved libraries is not run);
#   2. test_cuda: every CUDA op (device-side sampling included) and every fixture forward against
#      the CPU backend;
#   3. bench_cuda, one process per model (qwen2.5-0.5b, qwen2.5-7b, dream-7b; both matmul paths):
#      AR decode, scoring 8/16 vs 1, the Dream-7B diffusion step, each against the HBM bound;
#   4. a drafter and a verifier process on the same GPU (--device), a client generating through
#      them, nvidia-smi's process list while they run, the output compared with the CPU's; both
#      models in one process; `generate --method ar --device N` (sampling on the device), greedy
#      compared with the CPU's and one sampled run;
#   5. --device honoured: a device that does not exist is refused with a message; with two GPUs
#      the drafter runs on the second one.
# The whole run stays within GPU_CHECK_SECONDS (default 540 s: the device tool allows 600 per
# command): each stage gets what it asks for or what is left. Everything goes to
# $OUT/gpu-<device name>.txt when OUT is set (the device tool brings $OUT back; commit the file
# under bench/results/), else to bench/results/gpu-<device name>.txt. The log is written as the run
# goes, so a run cut short still returns what it did. Exit status 0 when every stage passed.
# Environment: BUILD (build), GPU_CHECK_SECONDS (540), GPU_CHECK_DEVICE (0; -1 runs stages 4-5 on
# the CPU, to check the script itself without a GPU).
set -u
cd "$(dirname "$0")/.."
B=${BUILD:-build}
LIMIT=${GPU_CHECK_SECONDS:-540}
DEV=${GPU_CHECK_DEVICE:-0}
t_start=$(date +%s)
left() { echo $((LIMIT - ($(date +%s) - t_start))); }
# budget WANT [RESERVE]: seconds for the next stage: WANT, or what is left minus RESERVE
budget() {
  local want=$1 l
  l=$(($(left) - ${2:-15}))
  [ "$l" -lt "$want" ] && want=$l
  [ "$want" -lt 1 ] && want=1
  echo "$want"
}

if [ ! -d "$B/gpu-bundle" ] && [ -f "$B/gpu-bundle.tar.xz" ]; then
  # tar's xz filter needs the xz program; Python's tarfile (PyTorch's python3) does without
  tar -C "$B" -xJf "$B/gpu-bundle.tar.xz" 2>/dev/null ||
    python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$B/gpu-bundle.tar.xz" "$B" ||
    { echo "gpu-check: cannot unpack $B/gpu-bundle.tar.xz"; exit 1; }
fi
[ -d "$B/gpu-bundle/bin" ] || { echo "gpu-check: no $B/gpu-bundle; run tools/gpu-bundle.sh on the build machine and carry it"; exit 1; }
BIN=$PWD/$B/gpu-bundle/bin

name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9.\n_-' '-' | sed 's/-*$//')
[ -n "$name" ] || name=unknown
outdir=${OUT:-bench/results}
mkdir -p "$outdir"
res=$outdir/gpu-$name.txt
exec > >(tee "$res") 2>&1
work=$(mktemp -d /tmp/tandem-gpu-check-XXXXXX)

# CUDA libraries: the toolkit's, else wherever the missing ones are (PyTorch's nvidia-* wheels)
. "$(dirname "$0")/gpu-libpath.sh"
gpu_libpath "$PWD/$B/gpu-bundle" "$BIN"

summary=""
# stage NAME STATUS: remember one stage's result for the summary
stage() { summary="$summary $1=$2"; echo "-- $1: exit $2 (at $(( $(date +%s) - t_start )) s of $LIMIT)"; }
failed=0
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 77 ]; }
# stop_pid PID NAME: SIGTERM a worker this script started, SIGKILL after 5 s, report its exit
stop_pid() {
  kill "$1" 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$1" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$1" 2>/dev/null
  wait "$1"; echo "$2 exit $? (after SIGTERM)"
}

echo "== tandem gpu-check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), budget $LIMIT s"
echo "== nvidia-smi"
nvidia-smi
nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
ngpu=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
echo "GPUs: $ngpu"
echo "== nvcc"
nvcc --version 2>/dev/null | tail -2 || echo "(no nvcc on PATH)"
echo "== ldd"
runnable=""
for f in "$BIN"/*; do
  echo "-- $f"
  ldd "$f"
  if ldd "$f" | grep -q 'not found'; then echo "gpu-check: $(basename "$f") has unresolved libraries: not run"; failed=1
  else runnable="$runnable $(basename "$f")"; fi
done
can() { case " $runnable " in *" $1 "*) return 0 ;; esac; echo "-- $1 not runnable (see ldd above)"; return 1; }

echo "== test_cuda"
if can test_cuda; then
  TD_TANDEM_BIN="$BIN/tandem" timeout -k 5 "$(budget 150 330)" "$BIN/test_cuda"; rc=$?
  stage test_cuda $rc; ok $rc || failed=1
  if [ $rc -eq 77 ]; then
    echo "test_cuda skipped everything: no usable device"
    [ "$ngpu" -gt 0 ] && { echo "gpu-check: nvidia-smi lists $ngpu GPU(s), yet CUDA found none: failure"; failed=1; }
  fi
else stage test_cuda missing; failed=1; fi

echo "== bench_cuda"
if can bench_cuda; then
  for m in qwen2.5-0.5b qwen2.5-7b dream-7b; do
    case $m in qwen2.5-0.5b) want=70 reserve=250 ;; qwen2.5-7b) want=90 reserve=160 ;; *) want=70 reserve=90 ;; esac
    echo "-- bench_cuda --model $m --matmul both --device $DEV"
    timeout -k 5 "$(budget $want $reserve)" "$BIN/bench_cuda" --model "$m" --matmul both --device "$([ "$DEV" -ge 0 ] && echo "$DEV" || echo 0)" | tee "$work/bench.txt"; rc=${PIPESTATUS[0]}
    # bench_cuda exits 0 when it finds no device; with a GPU present that is a failure
    [ $rc -eq 0 ] && [ "$ngpu" -gt 0 ] && grep -q '^bench_cuda: skipped' "$work/bench.txt" && rc=77
    stage "bench-$m" $rc; [ $rc -eq 0 ] || failed=1
  done
else stage bench_cuda missing; failed=1; fi

echo "== drafter and verifier processes on device $DEV"
prompt="And God said"
gen_args=(--prompt "$prompt" --max-tokens 48 --temperature 0 --method specdiff --json)
if can tandem && can tandem-drafter && can tandem-verifier; then
  dsock="ipc://$work/drafter.sock" vsock="ipc://$work/verifier.sock"
  ddev=$DEV
  [ "$ngpu" -ge 2 ] && [ "$DEV" -ge 0 ] && ddev=1 && echo "two GPUs: the drafter goes to device 1"
  "$BIN/tandem-drafter" --model models/tiny-diffusion-drafter --bind "$dsock" --device "$ddev" --threads 2 >"$work/drafter.log" 2>&1 &
  dpid=$!
  "$BIN/tandem-verifier" --model models/tiny-verifier --drafter "$dsock" --bind "$vsock" --device "$DEV" --threads 2 >"$work/verifier.log" 2>&1 &
  vpid=$!
  for _ in $(seq 1 60); do [ -S "$work/verifier.sock" ] && break; sleep 0.5; done
  sleep 1
  echo "-- processes on the GPU while both workers run (drafter pid $dpid, verifier pid $vpid):"
  nvidia-smi --query-compute-apps=pid,process_name,gpu_uuid,used_memory --format=csv 2>&1
  nvidia-smi --query-gpu=index,uuid --format=csv,noheader 2>&1
  timeout -k 5 "$(budget 40 50)" "$BIN/tandem" generate --verifier "$vsock" "${gen_args[@]}" >"$work/gpu.json"; rc=$?
  echo "-- generate through the workers: exit $rc"; cat "$work/gpu.json"; echo
  stage processes $rc; [ $rc -eq 0 ] || failed=1
  stop_pid "$dpid" drafter
  stop_pid "$vpid" verifier
  echo "-- drafter log"; tail -20 "$work/drafter.log"
  echo "-- verifier log"; tail -20 "$work/verifier.log"
  # the same greedy generation in one process on the CPU: informational (GPU and CPU logits differ
  # in the last bits, which may flip a near-tie)
  timeout -k 5 "$(budget 30 20)" "$BIN/tandem" generate "${gen_args[@]}" --device -1 --threads 4 >"$work/cpu.json"; rc=$?
  gt=$(sed -n 's/.*"tokens":\[\([^]]*\)\].*/\1/p' "$work/gpu.json") ct=$(sed -n 's/.*"tokens":\[\([^]]*\)\].*/\1/p' "$work/cpu.json")
  if [ $rc -eq 0 ] && [ -n "$gt" ] && [ "$gt" = "$ct" ]; then echo "same 48 greedy tokens as the CPU backend"
  else echo "CPU run exit $rc; tokens differ from the GPU run (or a run failed):"; echo "cpu: $ct"; echo "gpu: $gt"; fi
  # both models in one process on the GPU (an in-process drafter with --drafter-device)
  timeout -k 5 "$(budget 40 15)" "$BIN/tandem" generate "${gen_args[@]}" --device "$DEV" --drafter-device "$ddev" --threads 2 >"$work/inproc.json"; rc=$?
  echo "-- generate with both models in one process on device $DEV/$ddev: exit $rc"; cat "$work/inproc.json"; echo
  stage in-process $rc; [ $rc -eq 0 ] || failed=1
  # plain AR decoding on the device: each step samples on the GPU (td_model_forward_sample) and
  # only the token comes back; greedy compared with the CPU (informational, as above), and one
  # sampled run (another random stream than the CPU's: its tokens are not compared)
  ar_args=(--prompt "$prompt" --max-tokens 48 --method ar --json)
  timeout -k 5 "$(budget 30 10)" "$BIN/tandem" generate "${ar_args[@]}" --temperature 0 --device "$DEV" --threads 2 >"$work/ar-gpu.json"; rc=$?
  echo "-- ar greedy on device $DEV (sampling on the device): exit $rc"; cat "$work/ar-gpu.json"; echo
  timeout -k 5 "$(budget 30 10)" "$BIN/tandem" generate "${ar_args[@]}" --temperature 0 --device -1 --threads 4 >"$work/ar-cpu.json"
  gt=$(sed -n 's/.*"tokens":\[\([^]]*\)\].*/\1/p' "$work/ar-gpu.json") ct=$(sed -n 's/.*"tokens":\[\([^]]*\)\].*/\1/p' "$work/ar-cpu.json")
  if [ -n "$gt" ] && [ "$gt" = "$ct" ]; then echo "ar: same 48 greedy tokens as the CPU backend"
  else echo "ar: greedy tokens differ from the CPU backend's (or a run failed):"; echo "cpu: $ct"; echo "gpu: $gt"; fi
  timeout -k 5 "$(budget 30 10)" "$BIN/tandem" generate "${ar_args[@]}" --temperature 0.8 --top-p 0.95 --seed 7 --device "$DEV" --threads 2 >"$work/ar-gpu-s.json"; rc2=$?
  echo "-- ar sampled (T 0.8, top-p 0.95) on device $DEV: exit $rc2"; cat "$work/ar-gpu-s.json"; echo
  [ $rc -eq 0 ] && rc=$rc2
  stage ar-device $rc; [ $rc -eq 0 ] || failed=1
else stage processes missing; failed=1; fi

echo "== --device honoured"
if can tandem; then
  bad=$((ngpu > 0 ? ngpu : 1))
  out=$(timeout -k 5 "$(budget 20 5)" "$BIN/tandem" generate "${gen_args[@]}" --device "$bad" 2>&1); rc=$?
  echo "tandem generate --device $bad (no such device): exit $rc: $(echo "$out" | tail -2)"
  if [ $rc -ne 0 ] && echo "$out" | grep -q -- "--device $bad"; then stage device-refused 0; else stage device-refused 1; failed=1; fi
fi

echo "== nvidia-smi after"
nvidia-smi --query-gpu=name,temperature.gpu,power.draw,clocks.sm,clocks.mem --format=csv
echo "== gpu-check done in $(( $(date +%s) - t_start )) s:$summary; output in $res"
rm -rf "$work"
sleep 1
exit $failed
