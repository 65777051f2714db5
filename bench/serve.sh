#!/bin/sh
# bench/serve.sh - `tandem serve` under 1, 4, 8 and 16 concurrent streaming chat clients (fixed
# prompts from bench/prompts.txt, MAX_TOKENS each): aggregate tokens/s, time to first token
# p50/p99 and inter-token latency, for --method ar and the speculative METHOD; then 1000 malformed
# requests while 8 clients are served (none may crash the server or lose a well-formed request);
# then, when a llama-server binary and a GGUF are given (LLAMA_SERVER, GGUF; built by
# tools/peer/build-llama.sh), the same load against llama-server on the same threads and slots.
#
# Usage: sh bench/serve.sh [OUT]   (default bench/results/serve.txt)
# Environment: BUILD (build), VERIFIER / DRAFTER (default: the bundled pair), METHOD (specdiff),
#   PARALLEL (16 slots), THREADS (per model; default: cores / slots), MAX_TOKENS (128),
#   REQS_PER_CLIENT (2), CLIENTS ("1 4 8 16"), MALFORMED (1000), PROMPTS (bench/prompts.txt), LLAMA_SERVER, GGUF.
set -e
BIN=${BUILD:-build}/bin/tandem
OUT=${1:-bench/results/serve.txt}
METHOD=${METHOD:-specdiff}
PARALLEL=${PARALLEL:-16}
MAX_TOKENS=${MAX_TOKENS:-128}
RPC=${REQS_PER_CLIENT:-2}
CLIENTS=${CLIENTS:-1 4 8 16}
MALFORMED=${MALFORMED:-1000}
PROMPTS=${PROMPTS:-bench/prompts.txt}
MODEL_ARGS=""
[ -n "$VERIFIER" ] && MODEL_ARGS="$MODEL_ARGS --verifier $VERIFIER"
[ -n "$DRAFTER" ] && MODEL_ARGS="$MODEL_ARGS --drafter $DRAFTER"
THREAD_ARGS=""
[ -n "$THREADS" ] && THREAD_ARGS="--threads $THREADS"
PORT=${PORT:-18080}
LOG=$(mktemp /tmp/tandem-serve-bench-XXXXXX)
SRV=""
stop_server() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null && wait "$SRV" 2>/dev/null; SRV=""; }
trap 'stop_server; rm -f "$LOG"' EXIT INT TERM

wait_up() { # port
  i=0
  while ! curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 600 ] && { echo "server did not start:"; cat "$LOG"; exit 1; }; sleep 0.2
  done
}

load() { # label port [extra serve_load args]
  label=$1; port=$2; shift 2
  for c in $CLIENTS; do
    printf '%-28s ' "$label" | tee -a "$OUT"
    python3 tools/serve_load.py --url "http://127.0.0.1:$port" --clients "$c" \
      --requests $((c * RPC)) --max-tokens "$MAX_TOKENS" --prompts "$PROMPTS" "$@" | tee -a "$OUT"
  done
}

mkdir -p "$(dirname "$OUT")"
{
  echo "# sh bench/serve.sh $OUT  ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -m))"
  echo "# tandem serve $MODEL_ARGS --parallel $PARALLEL $THREAD_ARGS (ar: without the drafter when VERIFIER is set); clients: $CLIENTS; $RPC requests per client;"
  echo "# streamed chat, $MAX_TOKENS max tokens, temperature 0 (tools/serve_load.py); tok/s = completion tokens / wall"
} > "$OUT"

methods=ar
[ "$METHOD" != ar ] && methods="ar $METHOD"
for m in $methods; do
  args=$MODEL_ARGS # ar with a given verifier: no drafter loaded beside it
  [ "$m" = ar ] && [ -n "$VERIFIER" ] && args="--verifier $VERIFIER"
  "$BIN" serve $args --method "$m" --parallel "$PARALLEL" $THREAD_ARGS --port "$PORT" \
    --max-tokens "$MAX_TOKENS" >"$LOG" 2>&1 &
  SRV=$!
  wait_up "$PORT"
  load "tandem $m" "$PORT"
  if [ "$m" = "$METHOD" ] && [ "$MALFORMED" -gt 0 ]; then
    echo "# $MALFORMED malformed requests while 8 clients are served:" | tee -a "$OUT"
    printf '%-28s ' "tandem $m + malformed" | tee -a "$OUT"
    python3 tools/serve_load.py --url "http://127.0.0.1:$PORT" --clients 8 --requests 16 \
      --max-tokens "$MAX_TOKENS" --malformed "$MALFORMED" | tee -a "$OUT"
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && echo "# server still healthy" | tee -a "$OUT"
    curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^tandem:(request_success|http_errors|spec_decode_num_(drafts|draft_tokens|accepted_tokens)_total)' >>"$OUT"
  fi
  stop_server
done

if [ -n "$LLAMA_SERVER" ] && [ -x "$LLAMA_SERVER" ] && [ -n "$GGUF" ] && [ -f "$GGUF" ]; then
  "$LLAMA_SERVER" -m "$GGUF" -t "${THREADS:-$(nproc)}" -np "$PARALLEL" -c $((PARALLEL * 512)) \
    --port $((PORT + 1)) >"$LOG" 2>&1 &
  SRV=$!
  wait_up $((PORT + 1))
  load "llama-server" $((PORT + 1))
  stop_server
else
  echo "# llama-server: not run (set LLAMA_SERVER to a llama-server built by tools/peer/build-llama.sh and GGUF to the same model as a .gguf)" | tee -a "$OUT"
fi
