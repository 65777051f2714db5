#!/usr/bin/env python3
"""make_hidden_fixtures.py - HF reference hidden states for td_batch_t.hidden_layers.

For the tiny checkpoints that tools/make_model_fixtures.py wrote (qwen2, llama, gpt2: loaded as
they are, not rebuilt), runs the causal case (ref/causal.json's tokens at positions 0..n-1) through
the HF transformers model with output_hidden_states=True and writes the residual stream at every
layer boundary L = 0..n_layer, in tandem's convention:

  L = 0          the input embeddings (token embedding, plus the position embedding for GPT-2)
  L = 1..n_layer the residual stream after decoder layer L, BEFORE the final norm

HF's hidden_states[L] is that for L < n_layer; its last entry has the final norm applied, so the
pre-norm output of the last layer is taken with a forward hook on that layer instead.

Output: <model>/ref/hidden.bin, TDLOGIT1 format (8-byte magic, u32 version 1, u32 rows, u32 cols,
float32 little-endian) with rows = n_tokens * (n_layer + 1) in [token][L] order and cols = hidden
size; <model>/ref/hidden.json describes it. Run from the repo root:
    python3 tools/make_hidden_fixtures.py [--dir tests/data/models]
"""

import argparse
import json
import os
import struct

import torch
import transformers
from transformers import AutoModelForCausalLM

MODELS = ["qwen2", "llama", "gpt2"]


def last_layer(model):
    if hasattr(model, "transformer"):  # GPT-2
        return model.transformer.h[-1]
    return model.model.layers[-1]


def hidden_states(path, tokens):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    captured = {}

    def hook(_mod, _inp, out):
        captured["last"] = (out[0] if isinstance(out, tuple) else out).detach()

    h = last_layer(model).register_forward_hook(hook)
    ids = torch.tensor([tokens])
    pos = torch.arange(len(tokens))[None]
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=pos, use_cache=False, output_hidden_states=True)
    h.remove()
    hs = list(out.hidden_states)  # n_layer + 1 entries of [1, n, hidden]
    n_layer = model.config.num_hidden_layers
    assert len(hs) == n_layer + 1
    hs[n_layer] = captured["last"].reshape(hs[n_layer].shape)  # pre-norm, as tandem returns it
    stack = torch.stack([x[0] for x in hs], dim=1)  # [n, n_layer + 1, hidden]
    return stack.float(), n_layer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="tests/data/models")
    args = ap.parse_args()
    torch.manual_seed(0)
    for name in MODELS:
        path = os.path.join(args.dir, name)
        with open(os.path.join(path, "ref", "causal.json")) as f:
            tokens = json.load(f)["tokens"]
        stack, n_layer = hidden_states(path, tokens)
        n, nl, hidden = stack.shape
        with open(os.path.join(path, "ref", "hidden.bin"), "wb") as f:
            f.write(b"TDLOGIT1")
            f.write(struct.pack("<III", 1, n * nl, hidden))
            f.write(stack.reshape(n * nl, hidden).numpy().astype("<f4").tobytes())
        meta = {"tokens": tokens, "n_layer": n_layer, "n_embd": hidden, "layout": "[token][L]",
                "hidden": "hidden.bin", "pre_final_norm": True,
                "reference": "transformers %s eager, float32, output_hidden_states + hook on the "
                             "last layer" % transformers.__version__}
        with open(os.path.join(path, "ref", "hidden.json"), "w") as f:
            json.dump(meta, f, separators=(",", ":"))
        print("%s: %d tokens x %d layer boundaries x %d" % (name, n, nl, hidden))


if __name__ == "__main__":
    main()
