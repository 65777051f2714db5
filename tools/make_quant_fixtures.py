#!/usr/bin/env python3
"""make_quant_fixtures.py - writes tests/data/quant/blocks.bin: random blocks of every GGUF
quantized type tandem reads, each followed by the gguf Python package's dequantization of them
(float32), for tests/test_quant.c.

Format (little-endian): for each type: 8-byte NUL-padded name, u32 block count, u32 block bytes,
u32 elements per block, the raw blocks, then count * elements float32 values.
Scales are random finite half floats of moderate size (not NaN/inf), every other byte random.
Usage: /work/venv/bin/python tools/make_quant_fixtures.py [out]  (needs numpy, gguf)"""
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

TYPES = [  # name, type, block bytes, elems, offsets of f16 scales in the block
    ("Q8_0", T.Q8_0, 34, 32, [0]),
    ("Q4_0", T.Q4_0, 18, 32, [0]),
    ("Q4_1", T.Q4_1, 20, 32, [0, 2]),
    ("Q5_0", T.Q5_0, 22, 32, [0]),
    ("Q5_1", T.Q5_1, 24, 32, [0, 2]),
    ("Q4_K", T.Q4_K, 144, 256, [0, 2]),
    ("Q5_K", T.Q5_K, 176, 256, [0, 2]),
    ("Q6_K", T.Q6_K, 210, 256, [208]),
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/quant/blocks.bin"
    rng = np.random.default_rng(12)
    parts = []
    for name, qt, bb, be, scale_offs in TYPES:
        nblk = 48 if be == 32 else 12
        raw = rng.integers(0, 256, size=(nblk, bb), dtype=np.uint8)
        for off in scale_offs:
            # |scale| in [2^-10, 2^3), random sign: finite, normal
            mag = rng.uniform(-10, 3, size=nblk)
            sign = rng.choice([-1.0, 1.0], size=nblk)
            h = (sign * np.exp2(mag)).astype(np.float16).view(np.uint8).reshape(nblk, 2)
            raw[:, off:off + 2] = h
        deq = dequantize(raw.reshape(-1), qt).astype(np.float32).reshape(-1)
        assert deq.size == nblk * be and np.all(np.isfinite(deq))
        parts.append(name.encode().ljust(8, b"\0") + struct.pack("<III", nblk, bb, be))
        parts.append(raw.tobytes())
        parts.append(deq.astype("<f4").tobytes())
    data = b"".join(parts)
    with open(out, "wb") as f:
        f.write(data)
    print(f"wrote {out}: {len(data)} bytes")


if __name__ == "__main__":
    main()
