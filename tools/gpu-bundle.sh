#!/bin/sh
# tools/gpu-bundle.sh - packs what the GPU machine needs to run tools/gpu-check.sh with binaries
# built here: build/gpu-bundle/bin (test_cuda, bench_cuda, and tandem, tandem-drafter,
# tandem-verifier for the two-process check) and build/gpu-bundle/lib (the non-system
# shared libraries they link: libzmq, protobuf-c, openblas, cjson, pcre2, utf8proc and their
# dependencies; not glibc, libstdc++/libgcc_s, nor the CUDA libraries, which that machine has),
# then compresses it to build/gpu-bundle.tar.xz (OpenBLAS alone is 35 MB; the device tool carries
# at most 64 MiB). Run from the repository root after `make` with nvcc present:
#   make all build/tests/test_cuda build/bench/bench_cuda && sh tools/gpu-bundle.sh
# Then carry build/gpu-bundle.tar.xz and run `bash tools/gpu-check.sh` there.
set -eu
B=${BUILD:-build}
out=$B/gpu-bundle
bins="$B/tests/test_cuda $B/bench/bench_cuda $B/bin/tandem $B/bin/tandem-drafter $B/bin/tandem-verifier"
for f in $bins; do
  [ -x "$f" ] || { echo "gpu-bundle: $f is missing; run make $f first" >&2; exit 1; }
done
for f in $bins; do
  if ! nm "$f" | grep -q cublasGemmEx; then
    echo "gpu-bundle: $f was built with the CUDA stub (no nvcc?); make clean, then make with nvcc" >&2; exit 1
  fi
done
rm -rf "$out" "$B/gpu-bundle.tar.xz"
mkdir -p "$out/bin" "$out/lib"
cp $bins "$out/bin/"
strip --strip-debug "$out/bin/"*
skip='^(libc|libm|libpthread|libdl|librt|libresolv|ld-linux-x86-64|libstdc\+\+|libgcc_s|linux-vdso|libcuda|libcudart|libcublas|libcublasLt)\.'
for f in "$out/bin/"*; do
  ldd "$f" | awk '/=> \//{print $1" "$3}' | while read -r name path; do
    echo "$name" | grep -Eq "$skip" && continue
    [ -e "$out/lib/$name" ] || cp -L "$path" "$out/lib/$name"
  done
done
tar -C "$B" -cJf "$B/gpu-bundle.tar.xz" gpu-bundle
echo "gpu-bundle: $(ls "$out/lib" | wc -l) libraries, $(du -sh "$out" | cut -f1) -> $B/gpu-bundle.tar.xz ($(du -h "$B/gpu-bundle.tar.xz" | cut -f1))"
