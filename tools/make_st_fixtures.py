#!/usr/bin/env python3
"""make_st_fixtures.py - reference safetensors checkpoints for tests/test_safetensors.c and
tests/test_config.c, written by the real libraries (safetensors, transformers).

Writes, under tests/data/st/ (a few tens of KB in all):
  single/    model.safetensors from safetensors.torch.save_file: F32, F16, BF16, I64 tensors and
             __metadata__ {"format": "pt", "note": "tandem fixture"}
  gpt2-sharded/   a tiny random GPT-2 saved by transformers' save_pretrained with a small
             max_shard_size, so it has model.safetensors.index.json and several shards, plus the
             config.json transformers writes
  qwen2-tiny/     a tiny random Qwen2 (config.json + model.safetensors) from save_pretrained
Each directory gets expected.txt: one line per tensor,
  name dtype ndim d0 d1 ... file sum_of_values(float64, %.17g)
so the C tests compare against what the Python side wrote, not against themselves.

Usage: python3 tools/make_st_fixtures.py   (from the repo root; deterministic, seeds fixed)
"""
import json
import os
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

OUT = os.path.join("tests", "data", "st")


def expected(dirpath):
    """Lists every tensor of every .safetensors file in dirpath, as read back by safe_open."""
    lines = []
    for fn in sorted(os.listdir(dirpath)):
        if not fn.endswith(".safetensors"):
            continue
        with safe_open(os.path.join(dirpath, fn), framework="pt") as f:
            for name in sorted(f.keys()):
                t = f.get_tensor(name)
                dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                         torch.int64: "I64"}[t.dtype]
                s = float(t.double().sum())
                dims = " ".join(str(d) for d in t.shape)
                lines.append(f"{name} {dtype} {t.dim()} {dims} {fn} {s:.17g}".replace("  ", " "))
    with open(os.path.join(dirpath, "expected.txt"), "w") as fh:
        fh.write("\n".join(lines) + "\n")


def single():
    d = os.path.join(OUT, "single")
    os.makedirs(d, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    tensors = {
        "embed.weight": torch.randn(5, 3, generator=g),
        "norm.weight": (torch.arange(4, dtype=torch.float32) - 1.5).to(torch.float16),
        "proj.weight": torch.randn(2, 3, 2, generator=g).to(torch.bfloat16),
        "step": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }
    save_file(tensors, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt", "note": "tandem fixture"})
    expected(d)


def tiny_models():
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=32, n_embd=8, n_layer=2, n_head=2, n_positions=16, bos_token_id=31,
                     eos_token_id=31)
    m = GPT2LMHeadModel(cfg)
    d = os.path.join(OUT, "gpt2-sharded")
    shutil.rmtree(d, ignore_errors=True)
    m.save_pretrained(d, max_shard_size="2KB")
    if not os.path.exists(os.path.join(d, "model.safetensors.index.json")):
        raise SystemExit("expected a sharded save")
    os.remove(os.path.join(d, "generation_config.json"))
    expected(d)

    cfg = Qwen2Config(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rope_theta=1000000.0, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=[2, 3])
    m = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    d = os.path.join(OUT, "qwen2-tiny")
    shutil.rmtree(d, ignore_errors=True)
    m.save_pretrained(d)
    for junk in ("generation_config.json",):
        p = os.path.join(d, junk)
        if os.path.exists(p):
            os.remove(p)
    expected(d)


if __name__ == "__main__":
    single()
    tiny_models()
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT} ({total} bytes)")
