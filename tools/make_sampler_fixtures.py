#!/usr/bin/env python3
"""make_sampler_fixtures.py - reference distributions for tests/test_sampler.c.

Runs HF transformers' own warpers (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper from
transformers.generation.logits_process, applied in that order as generate() does) on float32 logit
vectors and stores the logits and the resulting distribution softmax(warped) (float64) in
tests/data/sampler/dist.bin. It also stores the first outputs of xoshiro256** seeded through
splitmix64, from the pure-Python implementation below, in tests/data/sampler/rng.bin.

Every case is checked here against an independent float64 reimplementation of the rules (stable
ascending sort for top-p) and rejected when the two disagree on the kept set, so that no fixture
depends on float32 rounding at the top-p boundary or on the order of torch's unstable sort among
tied logits.

dist.bin, little endian:
  char magic[8] = "TDSAMPL1"; u32 version = 1; u32 n_cases;
  per case: u32 V; f32 temperature; i32 top_k (0 = off); f32 top_p (1 = off); u32 n_kept;
            f32 logits[V]; n_kept x { i32 id; f64 prob }   (ids not listed have probability 0)
rng.bin:
  char magic[8] = "TDRNG001"; u32 version = 1; u32 n_seeds; u32 n_values;
  per seed: u64 seed; u64 values[n_values]; f64 uniforms[n_values]  (uniforms from a fresh seeding)

Usage: python tools/make_sampler_fixtures.py   (from the repository root)
"""
import os
import struct

import numpy as np
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

OUT = os.path.join("tests", "data", "sampler")
VERSION = 1
M64 = (1 << 64) - 1


def hf_warp(logits, temperature, top_k, top_p):
    """The warpers exactly as generate() chains them (float32 scores)."""
    scores = torch.tensor(logits, dtype=torch.float32).reshape(1, -1)
    ids = torch.zeros((1, 1), dtype=torch.long)
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(float(temperature))(ids, scores)
    if top_k > 0:
        scores = TopKLogitsWarper(int(top_k))(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(float(top_p))(ids, scores)
    return scores[0].numpy()


def ref_kept(logits, temperature, top_k, top_p):
    """Independent float64 reading of the same rules; stable sort for ties."""
    s = np.asarray(logits, dtype=np.float64) / temperature
    keep = np.isfinite(s) | (s == np.inf)
    v = s.copy()
    if 0 < top_k < len(v):
        kth = np.sort(v)[::-1][top_k - 1]
        v[v < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(v, kind="stable")  # ascending, ties by increasing id
        sv = v[order]
        m = np.max(sv)
        w = np.exp(sv - m) if np.isfinite(m) else np.zeros_like(sv)
        cum = np.cumsum(w / w.sum())
        remove = cum <= 1.0 - top_p
        remove[-1] = False
        rm = np.zeros(len(v), dtype=bool)
        rm[order] = remove
        v[rm] = -np.inf
    return np.isfinite(v) & keep


def case(rng_np, name, logits, temperature, top_k, top_p, cases):
    logits = np.asarray(logits, dtype=np.float32)
    warped = hf_warp(logits, temperature, top_k, top_p)
    kept = np.isfinite(warped)
    ref = ref_kept(logits, temperature, top_k, top_p)
    if not np.array_equal(kept, ref):
        raise SystemExit(f"case {name}: HF kept set differs from the float64/stable reference "
                         f"({kept.sum()} vs {ref.sum()}); pick other logits")
    w = warped.astype(np.float64)
    m = w[kept].max()
    p = np.zeros(len(w))
    p[kept] = np.exp(w[kept] - m)
    p /= p.sum()
    print(f"  {name:28s} V={len(logits):6d} T={temperature:<5g} k={top_k:<4d} p={top_p:<6g} "
          f"kept={int(kept.sum())}")
    cases.append((logits, temperature, top_k, top_p, np.nonzero(kept)[0], p))


def write_dist(cases):
    path = os.path.join(OUT, "dist.bin")
    with open(path, "wb") as f:
        f.write(b"TDSAMPL1" + struct.pack("<II", VERSION, len(cases)))
        for logits, t, k, tp, ids, p in cases:
            f.write(struct.pack("<IfifI", len(logits), t, k, tp, len(ids)))
            f.write(logits.astype("<f4").tobytes())
            rec = np.zeros(len(ids), dtype=[("id", "<i4"), ("p", "<f8")])
            rec["id"] = ids
            rec["p"] = p[ids]
            f.write(rec.tobytes())
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(cases)} cases)")


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return x, z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Xoshiro256ss:
    def __init__(self, seed):
        self.s = []
        x = seed & M64
        for _ in range(4):
            x, z = splitmix64(x)
            self.s.append(z)

    def next(self):
        s = self.s
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result


def write_rng():
    seeds = [0, 1, 42, 0xDEADBEEFCAFEBABE, M64]
    n = 16
    path = os.path.join(OUT, "rng.bin")
    with open(path, "wb") as f:
        f.write(b"TDRNG001" + struct.pack("<III", VERSION, len(seeds), n))
        for seed in seeds:
            g = Xoshiro256ss(seed)
            vals = [g.next() for _ in range(n)]
            g = Xoshiro256ss(seed)
            unis = [(g.next() >> 11) * 2.0**-53 for _ in range(n)]
            f.write(struct.pack("<Q", seed))
            f.write(struct.pack(f"<{n}Q", *vals))
            f.write(struct.pack(f"<{n}d", *unis))
    print(f"wrote {path}")


def main():
    os.makedirs(OUT, exist_ok=True)
    r = np.random.default_rng(20240611)
    cases = []
    normal = lambda v, s: (r.standard_normal(v) * s).astype(np.float32)
    case(r, "plain softmax", normal(1000, 3.0), 1.0, 0, 1.0, cases)
    case(r, "temperature only", normal(1000, 3.0), 0.6, 0, 1.0, cases)
    case(r, "top-k 50", normal(1000, 2.0), 0.7, 50, 1.0, cases)
    case(r, "top-p 0.9", normal(1000, 2.0), 1.3, 0, 0.9, cases)
    case(r, "top-k 100 + top-p 0.8", normal(1000, 2.0), 0.8, 100, 0.8, cases)
    case(r, "top-k 1", normal(300, 1.0), 1.0, 1, 1.0, cases)
    case(r, "V=1", normal(1, 1.0), 1.0, 5, 0.5, cases)
    case(r, "V=1 top-p tiny", normal(1, 1.0), 0.5, 0, 1e-8, cases)
    case(r, "k > V", normal(20, 1.5), 0.9, 50, 1.0, cases)
    case(r, "k > V with top-p", normal(20, 1.5), 0.9, 50, 0.7, cases)
    case(r, "top-p tiny", normal(1000, 2.0), 1.0, 0, 1e-8, cases)
    case(r, "top-p 0", normal(500, 2.0), 1.0, 0, 0.0, cases)
    # ties at the top-k boundary: HF keeps every id equal to the k-th largest
    ties = r.integers(0, 40, 200).astype(np.float32)
    case(r, "top-k boundary ties", ties, 1.0, 15, 1.0, cases)
    # top-p landing between two tie groups (torch's unstable sort cannot matter): p between the
    # mass of the top group minus one member and the mass of the whole group
    top = ties == ties.max()
    wts = np.exp((ties.astype(np.float64) - ties.max()) / 0.5)
    kth = np.sort(ties)[::-1][14]
    f = wts[top].sum() / wts[ties >= kth].sum()
    case(r, "top-k ties + top-p at a group", ties, 0.5, 15, float(f - 0.5 * wts[top][0] / wts[ties >= kth].sum()), cases)
    # ties cut by the top-p boundary; V <= 16 where torch's sort orders ties by id, so HF's output
    # is well defined (lower ids among a split tie group are removed first)
    small = np.array([2, 2, 2, 1, 1, 1, 0, 0, 2, 1, 0, 3], dtype=np.float32)
    case(r, "top-p splits a tie group", small, 1.0, 0, 0.5, cases)
    case(r, "top-p splits ties, T=2", small, 2.0, 0, 0.85, cases)
    case(r, "all equal, top-p 0.5", np.zeros(10, dtype=np.float32), 1.0, 0, 0.5, cases)
    # masked vocabularies: -inf entries are never kept, even when k exceeds the finite count
    masked = normal(500, 2.0)
    masked[r.random(500) < 0.3] = -np.inf
    case(r, "-inf entries, k > finite", masked, 1.0, 400, 0.95, cases)
    case(r, "-inf entries, top-p", masked, 0.7, 0, 0.9, cases)
    # Qwen-sized vocabulary
    case(r, "V=151936 top-p 0.95", normal(151936, 2.5), 0.8, 0, 0.95, cases)
    case(r, "V=32000 k=50 p=0.9", normal(32000, 2.0), 0.7, 50, 0.9, cases)
    write_dist(cases)
    write_rng()


if __name__ == "__main__":
    main()
