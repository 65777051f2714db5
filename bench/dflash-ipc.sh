#!/bin/sh
# bench/dflash-ipc.sh - issue 13's two-process check: the same `tandem bench` of dflash on the Q4_1
# SmolLM2 with the DFlash drafter in-process and as a second process over ipc:// (tandem-drafter
# --threads 1), alternately ROUNDS times each, so the machine's drift hits both alike. Writes
# bench/results/dflash-ipc.txt with every run's line and the ratio of the mean tok/s.
#   [SPIN="--spin-us 0"] sh bench/dflash-ipc.sh [--rounds N] [--gamma G] [--limit N]
# SPIN goes to both tandem-drafter and tandem bench (their polling before a blocking wait).
set -e
cd "$(dirname "$0")/.."
BIN=${BUILD:-build}/bin
rounds=2 gamma=3 limit=8
while [ $# -gt 0 ]; do
	case $1 in
	--rounds) rounds=$2; shift 2 ;;
	--gamma) gamma=$2; shift 2 ;;
	--limit) limit=$2; shift 2 ;;
	*) echo "bench/dflash-ipc.sh: unknown option $1" >&2; exit 2 ;;
	esac
done
G=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
D=models/dflash-smollm2
OUT=bench/results/dflash-ipc
DIR=$(mktemp -d /tmp/tandem-dfipc-XXXXXX)
"$BIN/tandem-drafter" --model "$D" --target "$G" --bind "ipc://$DIR/d.sock" --threads 1 $SPIN 2>"$DIR/d.log" &
P=$!
trap 'kill $P 2>/dev/null; wait $P 2>/dev/null; rm -rf "$DIR"' EXIT INT TERM
sleep 2
{
	echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); drafter process:"
	echo "#   $BIN/tandem-drafter --model $D --target $G --bind ipc://$DIR/d.sock --threads 1"
	echo "# $BIN/tandem bench --verifier $G --prompts bench/chat-prompts.txt --chat auto --limit $limit"
	echo "#   --methods dflash --gamma $gamma --dflash-drafter {$D|ipc://...} --threads 1 --max-tokens 64"
} > "$OUT.txt"
i=0
while [ $i -lt "$rounds" ]; do
	for mode in inproc ipc; do
		src=$D
		[ $mode = ipc ] && src=ipc://$DIR/d.sock
		"$BIN/tandem" bench --verifier "$G" --prompts bench/chat-prompts.txt --chat auto --limit "$limit" \
			--methods dflash --gamma "$gamma" --dflash-drafter "$src" --threads 1 --max-tokens 64 $SPIN \
			--out "$DIR/$mode-$i" >/dev/null 2>&1
		python3 -c "
import json; j = json.load(open('$DIR/$mode-$i.json'))
r = [r for r in j['results'] if r['method'] == 'dflash'][0]
print('$mode', 'tokens', r['tokens'], 'tok/s %.1f' % r['tokens_per_second'], 'accepted %.4f' % r['mean_accepted_length'],
      'transport %.1f%%' % (100 * r['transport_share']), 'fallbacks', r['fallbacks'])" >> "$OUT.txt"
	done
	i=$((i + 1))
done
python3 - "$OUT.txt" <<'EOF' | tee -a "$OUT.txt"
import sys
rows = [l.split() for l in open(sys.argv[1]) if l[:3] in ("inp", "ipc")]
tps = {m: [float(r[4]) for r in rows if r[0] == m] for m in ("inproc", "ipc")}
same = len({(r[2], r[6]) for r in rows}) == 1
print("# ipc / inproc mean tok/s: %.1f / %.1f = %.3f; tokens and acceptance %s in every run"
      % (sum(tps["ipc"]) / len(tps["ipc"]), sum(tps["inproc"]) / len(tps["inproc"]),
         (sum(tps["ipc"]) / len(tps["ipc"])) / (sum(tps["inproc"]) / len(tps["inproc"])),
         "identical" if same else "NOT identical"))
EOF
