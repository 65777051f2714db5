#!/bin/sh
# gen-proto.sh - regenerates the protobuf-c code for protocol/tandem.proto.
#   sh scripts/gen-proto.sh [OUTDIR]    (default: protocol/, run from the repository root)
# The generated tandem.pb-c.c/.h are committed and never edited by hand; scripts/check-proto.sh
# verifies that the committed files match what this script produces.
set -eu
out=${1:-protocol}
if ! command -v protoc-c >/dev/null 2>&1; then
  echo "gen-proto: protoc-c not found (install protobuf-c-compiler)" >&2
  exit 1
fi
mkdir -p "$out"
protoc-c --c_out="$out" -Iprotocol protocol/tandem.proto
