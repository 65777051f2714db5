#!/bin/sh
# Runs every test binary given, each under a time limit, and prints one summary line that counts
# test cases: "N passed, N failed, N skipped". Exits non-zero when any case failed.
build=$1; shift
pass=0; fail=0; skip=0; bad=""
for t in "$@"; do
  echo "== $t"
  out=$(timeout 1200 "$t" 2>&1); rc=$?
  printf '%s\n' "$out"
  line=$(printf '%s\n' "$out" | grep -E ': [0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$' | tail -1)
  if [ -n "$line" ]; then
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/'); f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    s=$(echo "$line" | sed -E 's/.* ([0-9]+) skipped$/\1/')
    pass=$((pass+p)); fail=$((fail+f)); skip=$((skip+s))
  fi
  if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
    [ -z "$line" ] && fail=$((fail+1)); bad="$bad $t(rc=$rc)"
  fi
done
[ -n "$bad" ] && echo "failing binaries:$bad"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ] && [ -z "$bad" ]
