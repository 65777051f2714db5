#!/bin/sh
# check-proto.sh - fails (exit 1) when the committed protocol/tandem.pb-c.{c,h} are not what
# scripts/gen-proto.sh generates from protocol/tandem.proto (stale or hand-edited).
# Exit 0 when they match; exit 1 with a message otherwise. Run from the repository root.
set -u
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tandem-proto.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
if ! sh scripts/gen-proto.sh "$tmp" >"$tmp/log" 2>&1; then
  cat "$tmp/log" >&2
  echo "check-proto: could not regenerate the protobuf-c code" >&2
  exit 1
fi
bad=0
for f in tandem.pb-c.c tandem.pb-c.h; do
  if [ ! -f "protocol/$f" ]; then
    echo "check-proto: protocol/$f is missing" >&2
    bad=1
  elif ! cmp -s "$tmp/$f" "protocol/$f"; then
    echo "check-proto: protocol/$f differs from what protocol/tandem.proto generates:" >&2
    diff -u "protocol/$f" "$tmp/$f" | head -20 >&2
    bad=1
  fi
done
if [ $bad -ne 0 ]; then
  echo "check-proto: run 'make proto' (sh scripts/gen-proto.sh) and commit the result" >&2
  exit 1
fi
echo "check-proto: protocol/tandem.pb-c.{c,h} are current"
