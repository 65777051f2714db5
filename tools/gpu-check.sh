#!/bin/bash
# tools/gpu-check.sh - the one script the GPU machine runs (from the repository root):
#   bash tools/gpu-check.sh
# It needs build/gpu-bundle (or build/gpu-bundle.tar.xz) made here by tools/gpu-bundle.sh: the
# CUDA test and benchmark binaries plus the Debian shared libraries that machine lacks. It prints
# nvidia-smi, nvcc and ldd of the binaries, runs build/gpu-bundle/bin/test_cuda (every CUDA op and
# fixture forward against the CPU backend), then bench_cuda at Qwen2.5-0.5B, Qwen2.5-7B and
# Dream-7B shapes with both matmul paths, and writes everything to
# bench/results/gpu-<device name>.txt (and to $OUT when set). Takes about 2-5 minutes.
set -u
cd "$(dirname "$0")/.."
B=${BUILD:-build}
if [ ! -d "$B/gpu-bundle" ] && [ -f "$B/gpu-bundle.tar.xz" ]; then
  tar -C "$B" -xJf "$B/gpu-bundle.tar.xz" || { echo "gpu-check: cannot unpack $B/gpu-bundle.tar.xz"; exit 1; }
fi
[ -x "$B/gpu-bundle/bin/test_cuda" ] || { echo "gpu-check: no $B/gpu-bundle; run tools/gpu-bundle.sh on the build machine and carry it"; exit 1; }
BIN=$B/gpu-bundle/bin

name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9.\n_-' '-' | sed 's/-*$//')
[ -n "$name" ] || name=unknown
mkdir -p bench/results
res=bench/results/gpu-$name.txt
exec > >(tee "$res") 2>&1

# CUDA libraries: the toolkit's, else the pip wheels' (PyTorch's nvidia-* packages)
libdirs="$PWD/$B/gpu-bundle/lib"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d "$d" ] && libdirs="$libdirs:$d"; done
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$BIN/test_cuda" | grep -q 'libcublas.*not found'; then
  extra=$(find /usr /opt -name 'libcublas.so.13' -printf '%h\n' 2>/dev/null | head -1)
  [ -n "$extra" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$extra"
fi

echo "== tandem gpu-check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "== nvidia-smi"
nvidia-smi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
echo "== nvcc"
nvcc --version 2>/dev/null | tail -2 || echo "(no nvcc on PATH)"
echo "== ldd"
for f in "$BIN"/*; do echo "-- $f"; ldd "$f"; done
if ldd "$BIN/test_cuda" "$BIN/bench_cuda" | grep -q 'not found'; then
  echo "gpu-check: unresolved libraries above; stopping"
  exit 1
fi

rc=0
echo "== test_cuda"
t0=$(date +%s)
timeout 300 "$BIN/test_cuda"; trc=$?
echo "test_cuda exit $trc ($(( $(date +%s) - t0 )) s; 0 = passed, 77 = skipped, else failed)"
[ $trc -eq 0 ] || rc=1

echo "== bench_cuda"
t0=$(date +%s)
timeout 360 "$BIN/bench_cuda" --matmul both; brc=$?
echo "bench_cuda exit $brc ($(( $(date +%s) - t0 )) s)"
[ $brc -eq 0 ] || rc=1

echo "== nvidia-smi after"
nvidia-smi --query-gpu=name,temperature.gpu,power.draw,clocks.sm,clocks.mem --format=csv
echo "== gpu-check done: test_cuda $trc, bench_cuda $brc; output in $res"
[ -n "${OUT:-}" ] && cp "$res" "$OUT/" 2>/dev/null
sleep 1
exit $rc
