#!/usr/bin/env bash
# tools/peer/build-llama.sh - build llama.cpp's tools (the peer tandem is measured against) from the
# llama.cpp tree inside the PyPI sdist of llama-cpp-python. Nothing of llama.cpp is committed: the sdist,
# its sources and the binaries live under build/peer/ (git-ignored).
#
# usage: tools/peer/build-llama.sh [VARIANT...]     (default: noamx)
#   noamx   GGML_NATIVE=ON (-march=native) with the AMX extensions compiled out (-mno-amx-tile/-int8/-bf16).
#           The build that runs everything on every VM seen: decode, prompts (batch > 1), llama-server.
#   avx512  GGML_NATIVE=OFF with AVX2/FMA/F16C/BMI2 + AVX512 F/VBMI/VNNI/BF16 named explicitly, AMX off
#           (decode within 5% of noamx here, inside the noise: docs/peers.md).
#   native  GGML_NATIVE=ON as llama.cpp builds by default. Where cpuid lists AMX, AMX is compiled in: one-token
#           decode then uses AVX512-VNNI kernels over repacked weights (270 tok/s Q4_1 on such a VM), but any
#           batch > 1 runs AMX tiles and dies with SIGILL where the hypervisor does not enable them: use it
#           for llama-bench tg only. Where cpuid lists no AMX (the VM of 2026-12-07) it equals noamx.
# Binaries: build/peer/<variant>/bin/{llama-bench,llama-quantize,llama-perplexity,llama-server,llama-cli};
# build/peer/bin is a link to the first variant named. The first variant is built in full; the others
# build only ggml's CPU backend (the one library their flags change) and get llama-bench linked from the
# first variant's other libraries (FULL=1 builds every variant in full). Idempotent: a finished step is
# not redone (cmake/ninja rebuild only what changed).
# Environment: LLAMA_CPP_PYTHON_VERSION (default 0.3.36), JOBS (default 2), PEER_TARGETS (cmake targets).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
ver=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
jobs=${JOBS:-2}
targets=${PEER_TARGETS:-llama-bench llama-quantize llama-perplexity llama-server llama-cli}
peer=$root/build/peer
src=$peer/src/llama_cpp_python-$ver/vendor/llama.cpp
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(noamx)
first=${variants[0]}

mkdir -p "$peer/src"
if [ ! -f "$src/CMakeLists.txt" ]; then
	tarball=$peer/src/llama_cpp_python-$ver.tar.gz
	if [ ! -f "$tarball" ]; then
		echo "== pip download llama-cpp-python==$ver (sdist)"
		python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$peer/src"
	fi
	echo "== unpacking $(basename "$tarball")"
	tar -xzf "$tarball" -C "$peer/src"
	[ -f "$src/CMakeLists.txt" ] || { echo "build-llama: no llama.cpp tree at $src" >&2; exit 1; }
fi

common=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF
	-DLLAMA_CURL=OFF -DGGML_CCACHE=OFF -DGGML_OPENMP=ON)
noamx='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'

for v in "${variants[@]}"; do
	case $v in
	noamx) flags=(-DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=$noamx" "-DCMAKE_CXX_FLAGS=$noamx") ;;
	avx512) flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
		-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
		-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF) ;;
	native) flags=(-DGGML_NATIVE=ON) ;;
	*) echo "build-llama: unknown variant '$v' (noamx, avx512, native)" >&2; exit 2 ;;
	esac
	b=$peer/$v
	echo "== configure $v: ${flags[*]}"
	cmake -S "$src" -B "$b" "${common[@]}" "${flags[@]}" > "$peer/$v.configure.log" 2>&1 ||
		{ tail -30 "$peer/$v.configure.log" >&2; exit 1; }
	if [ "$v" = "$first" ] || [ "${FULL:-0}" = 1 ]; then
		echo "== build $v (-j$jobs): $targets"
		# shellcheck disable=SC2086
		cmake --build "$b" -j "$jobs" --target $targets > "$peer/$v.build.log" 2>&1 ||
			{ tail -30 "$peer/$v.build.log" >&2; exit 1; }
	else
		# Only ggml's CPU backend depends on these flags: build that library here and link llama-bench
		# from the first variant's objects with it (saves compiling llama, common and the tools again).
		echo "== build $v (-j$jobs): ggml-cpu, then llama-bench linked against $first's other libraries"
		cmake --build "$b" -j "$jobs" --target ggml-cpu > "$peer/$v.build.log" 2>&1 ||
			{ tail -30 "$peer/$v.build.log" >&2; exit 1; }
		link=$(cd "$peer/$first" && ninja -t commands bin/llama-bench | tail -1)
		case $link in *ggml/src/libggml-cpu.a*) ;; *) echo "build-llama: unexpected link line: $link" >&2; exit 1 ;; esac
		mkdir -p "$b/bin"
		link=${link//ggml\/src\/libggml-cpu.a/$b\/ggml\/src\/libggml-cpu.a}
		link=${link//-o bin\/llama-bench/-o $b\/bin\/llama-bench}
		(cd "$peer/$first" && eval "$link") >> "$peer/$v.build.log" 2>&1 ||
			{ tail -30 "$peer/$v.build.log" >&2; exit 1; }
	fi
	printf '%s\n' "${flags[*]}" > "$b/FLAGS"
	echo "== $v: $(ls "$b/bin" | tr '\n' ' ')"
done
ln -sfn "${variants[0]}/bin" "$peer/bin"
echo "== build/peer/bin -> ${variants[0]}/bin"
