#!/usr/bin/env python3
"""Writes bench/prompts.txt: 24 prompts from the held-out books of the KJV corpus (no bundled
model trains on them; see models/README.md). Each prompt is the first 12 words of a verse picked
at an even stride through the held-out text. Needs the corpus made by tools/train/prepare_corpus.py
(build/train/corpus/heldout.txt). Deterministic."""
import os

SRC = os.path.join("build", "train", "corpus", "heldout.txt")
OUT = os.path.join("bench", "prompts.txt")

lines = [l.strip() for l in open(SRC, encoding="utf-8") if len(l.split()) >= 16]
stride = len(lines) // 24
picked = [" ".join(lines[i * stride].split()[:12]) for i in range(24)]
with open(OUT, "w", encoding="utf-8") as f:
    f.write("# 24 prompts from the held-out KJV books (tools/make_bench_prompts.py); one per line\n")
    for p in picked:
        f.write(p + "\n")
print("wrote", OUT, len(picked), "prompts")
