#!/usr/bin/env python3
"""Figures for issue 13 from `tandem bench` JSON output (bench/dflash.sh writes them).

    python3 tools/plot/bench_dflash.py bench/results/dflash-q4_1.json [more.json ...] --out PREFIX

PREFIX-speedup.png: tokens/s over `ar` (same run) against the tokens drafted per round (gamma; a
dflash draft runs in the smallest block its drafter was trained for that holds gamma + 1) for each
speculative method, one line per input file (e.g. the Q4_1 and the BF16 GGUF), with llama.cpp's
plain decoding as a horizontal line when --peer-ratio FILE=R gives its tokens/s over tandem's ar.
PREFIX-acceptance.png: per draft position, the fraction of drafts accepted there (accepted_by_
position / drafted_by_position) for every speculative row.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        return json.load(f)


def finish(fig, ax, xlabel, ylabel, title, path):
    """Labels one figure's axes, adds its legend and writes it to path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--peer-ratio", action="append", default=[],
                    help="FILE=R: llama.cpp tokens/s over tandem ar for that file's model")
    a = ap.parse_args()
    peers = dict(x.split("=", 1) for x in a.peer_ratio)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    fig2, ax2 = plt.subplots(figsize=(6.4, 4))
    for path in a.files:
        j = load(path)
        label = os.path.splitext(os.path.basename(path))[0]
        by_m = {}
        for r in j["results"]:
            if r["method"] == "ar":
                continue
            by_m.setdefault(r["method"], []).append(r)
        for m, rows in sorted(by_m.items()):
            rows.sort(key=lambda r: r["gamma"])
            ax.plot([r["gamma"] for r in rows], [r["speedup_vs_ar"] for r in rows], marker="o",
                    label=f"{m} ({label})")
            for r in rows:
                acc = r.get("accepted_by_position") or []
                dr = r.get("drafted_by_position") or []
                fr = [x / d if d else 0 for x, d in zip(acc, dr)]
                if fr:
                    ax2.plot(range(1, len(fr) + 1), fr, marker=".",
                             label=f"{m} gamma {r['gamma']} ({label})")
        if path in peers:
            ax.axhline(float(peers[path]), linestyle="--", color="gray",
                       label=f"llama.cpp plain decoding ({label})")
    ax.axhline(1.0, color="black", linewidth=0.8)
    finish(fig, ax, "tokens drafted per round (gamma)", "tokens/s over tandem ar (same run)",
           "speculative decoding on SmolLM2-135M-Instruct", a.out + "-speedup.png")
    finish(fig2, ax2, "draft position", "accepted / drafted at that position",
           "acceptance by position", a.out + "-acceptance.png")
    print("wrote", a.out + "-speedup.png", a.out + "-acceptance.png")


if __name__ == "__main__":
    main()
