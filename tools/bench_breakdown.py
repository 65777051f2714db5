#!/usr/bin/env python3
"""Per-round cost breakdown of a `tandem bench` JSON, in units of one `ar` step of the same run.

For every speculative row: verify, draft and transport time per round divided by ar's seconds per
token, the tokens per round L (mean_accepted_length), the speedup the breakdown predicts,
L / (verify + draft + transport), next to the measured one, and two ceilings: L / verify (drafting
and transport free) and (gamma + 1) / verify (every draft accepted as well).

Usage: python3 tools/bench_breakdown.py bench/results/cpu-bench.json
"""
import json
import sys


def main(path):
    d = json.load(open(path))
    ar = next(r for r in d["results"] if r["method"] == "ar")
    t1 = ar["seconds"] / ar["tokens"]
    print(f"{path}: ar {t1 * 1e3:.3f} ms per token; costs below in ar steps per round")
    print(f"{'method':9} {'g':>3} {'s':>2} {'verify':>7} {'draft':>6} {'transp':>6} {'L':>5} "
          f"{'model':>6} {'measured':>8} {'L/verify':>8} {'(g+1)/verify':>12}")
    for r in d["results"]:
        if not r["rounds"] or r["method"] in ("selfspec", "planned"):
            continue
        n = r["rounds"]
        v, dr, tr = (r[k] / n / t1 for k in ("verifier_s", "drafter_s", "transport_s"))
        L = r["mean_accepted_length"]
        print(f"{r['method']:9} {r['gamma']:3d} {r['steps']:2d} {v:7.2f} {dr:6.2f} {tr:6.2f} "
              f"{L:5.2f} {L / (v + dr + tr):5.2f}x {r['speedup_vs_ar']:7.2f}x {L / v:7.2f}x "
              f"{(r['gamma'] + 1) / v:11.2f}x")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/cpu-bench.json")
