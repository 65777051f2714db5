#!/usr/bin/env python3
"""make_dflash_fixture.py - a random-init DFlash drafter on the bundled tiny verifier, and the
expected drafter logits from a reference forward written here from docs/dflash.md (the shared
spec), independent of the C code.

Writes tests/data/dflash/:
  drafter/config.json, drafter/model.safetensors   the drafter (BF16 weights, seed 1234), on top of
                                                   models/tiny-verifier (H=256, 6 layers),
                                                   target_layers [1, 3, 5], block 8, 2 layers,
                                                   4 heads of 32 (q dim 128 != H), 2 KV heads,
                                                   intermediate 64; fingerprints: the tiny
                                                   verifier's, from build/bin/tandem inspect --json
  cases.json                                       per case: tokens (the committed text; the last is
                                                   the anchor), block, the files below
  case<i>_feat.bin                                 the context features [len-1, 3*256] f32: HF
                                                   output_hidden_states[L] of tokens[:-1], rounded
                                                   to bf16 (what the wire carries)
  case<i>_logits.bin                               the drafter's logits [block-1, 4096] f32, computed
                                                   in float64 from those features
  case<i>_logits_af.bin                            the same with "anchor_feature": true (every block
                                                   row plus the last context row)
  drafter-vocab/                                   the same drafter with a draft vocabulary: tensor
                                                   draft_vocab (I32, ascending) in model.safetensors,
                                                   every third id plus case 0's argmax ids of rows
                                                   1-3 (so some drafts change, some do not)

Run from the repo root (after `make`): /work/venv/bin/python tools/make_dflash_fixture.py
"""

import json
import os
import subprocess

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

TARGET = "models/tiny-verifier"
OUT = "tests/data/dflash"
TARGET_LAYERS = [1, 3, 5]
H, NL, NH, NKV, HD, FF = 256, 2, 4, 2, 32, 64
MASK = 4001
THETA = 10000.0
CASES = [  # (n tokens, block)
    (5, 8),
    (13, 8),
    (21, 16),
]


def bf16(t):
    return t.to(torch.bfloat16)


def rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, pos):  # x [n, heads, hd], HF rotate_half
    inv = THETA ** (-torch.arange(0, HD, 2, dtype=torch.float64) / HD)
    ang = pos.double()[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
    x1, x2 = x[..., : HD // 2], x[..., HD // 2 :]
    rot = torch.cat([-x2, x1], -1)
    return x * cos + rot * sin


def reference(W, emb, feats, anchor, block, eps, anchor_feature=False):
    """The spec's drafter forward in float64. feats [n_ctx, k*H]. anchor_feature: every block row
    also gets the last context row c[n_ctx - 1] (config "anchor_feature")."""
    n_ctx = feats.shape[0]
    c = rms(feats @ W["fc.weight"].T, W["hidden_norm.weight"], eps)
    ids = [anchor] + [MASK] * (block - 1)
    h = emb[ids].clone()
    if anchor_feature and n_ctx > 0:
        h = h + c[-1]
    pc = torch.arange(n_ctx)
    pb = n_ctx + torch.arange(block)
    for i in range(NL):
        p = f"layers.{i}."
        x = rms(h, W[p + "input_layernorm.weight"], eps)
        q = rope((x @ W[p + "self_attn.q_proj.weight"].T).view(block, NH, HD), pb)
        kc = rope((c @ W[p + "self_attn.k_proj.weight"].T).view(n_ctx, NKV, HD), pc)
        vc = (c @ W[p + "self_attn.v_proj.weight"].T).view(n_ctx, NKV, HD)
        kb = rope((x @ W[p + "self_attn.k_proj.weight"].T).view(block, NKV, HD), pb)
        vb = (x @ W[p + "self_attn.v_proj.weight"].T).view(block, NKV, HD)
        k = torch.cat([kc, kb], 0).repeat_interleave(NH // NKV, dim=1)  # [n, NH, HD]
        v = torch.cat([vc, vb], 0).repeat_interleave(NH // NKV, dim=1)
        s = torch.einsum("qhd,khd->hqk", q, k) / HD**0.5
        a = torch.softmax(s, -1)
        o = torch.einsum("hqk,khd->qhd", a, v).reshape(block, NH * HD)
        h = h + o @ W[p + "self_attn.o_proj.weight"].T
        x = rms(h, W[p + "post_attention_layernorm.weight"], eps)
        g = x @ W[p + "mlp.gate_proj.weight"].T
        u = x @ W[p + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(g) * u) @ W[p + "mlp.down_proj.weight"].T
    return rms(h[1:], W["norm.weight"], eps) @ emb.T


def main():
    os.makedirs(OUT + "/drafter", exist_ok=True)
    tcfg = json.load(open(TARGET + "/config.json"))
    eps = tcfg["rms_norm_eps"]
    k = len(TARGET_LAYERS)
    g = torch.Generator().manual_seed(1234)

    def rnd(*shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * std

    W = {
        "fc.weight": rnd(H, k * H, std=(k * H) ** -0.5),
        "hidden_norm.weight": 1 + rnd(H, std=0.1),
        "norm.weight": 1 + rnd(H, std=0.1),
    }
    for i in range(NL):
        p = f"layers.{i}."
        W[p + "input_layernorm.weight"] = 1 + rnd(H, std=0.1)
        W[p + "self_attn.q_proj.weight"] = rnd(NH * HD, H, std=H**-0.5 * 2)
        W[p + "self_attn.k_proj.weight"] = rnd(NKV * HD, H, std=H**-0.5 * 2)
        W[p + "self_attn.v_proj.weight"] = rnd(NKV * HD, H, std=H**-0.5)
        W[p + "self_attn.o_proj.weight"] = rnd(H, NH * HD, std=(NH * HD) ** -0.5)
        W[p + "post_attention_layernorm.weight"] = 1 + rnd(H, std=0.1)
        W[p + "mlp.gate_proj.weight"] = rnd(FF, H, std=H**-0.5)
        W[p + "mlp.up_proj.weight"] = rnd(FF, H, std=H**-0.5)
        W[p + "mlp.down_proj.weight"] = rnd(H, FF, std=FF**-0.5)
    Wb = {n: bf16(t).contiguous() for n, t in W.items()}
    save_file(Wb, OUT + "/drafter/model.safetensors")
    W = {n: t.double() for n, t in Wb.items()}  # the reference uses the stored values

    out = subprocess.run(["build/bin/tandem", "inspect", "--json", TARGET], check=True,
                         capture_output=True, text=True).stdout
    fp = json.loads(out)["fingerprint"]
    cfg = {
        "architecture": "dflash", "target_layers": TARGET_LAYERS, "block_size": 8,
        "mask_token_id": MASK, "hidden_size": H, "num_hidden_layers": NL,
        "num_attention_heads": NH, "num_key_value_heads": NKV, "head_dim": HD,
        "intermediate_size": FF, "rms_norm_eps": eps, "rope_theta": THETA,
        "target": {"name": "tiny-verifier", "n_layer": tcfg["num_hidden_layers"],
                   "hidden_size": tcfg["hidden_size"], "vocab_size": tcfg["vocab_size"],
                   "fingerprints": [fp]},
        "training": {"note": "random init (tools/make_dflash_fixture.py, seed 1234); untrained"},
    }
    json.dump(cfg, open(OUT + "/drafter/config.json", "w"), indent=2)

    model = AutoModelForCausalLM.from_pretrained(TARGET, dtype=torch.float32).eval()
    emb = model.get_input_embeddings().weight.detach().double()
    tg = torch.Generator().manual_seed(99)
    cases = []
    for ci, (n, block) in enumerate(CASES):
        toks = torch.randint(1, tcfg["vocab_size"], (n,), generator=tg).tolist()
        with torch.no_grad():
            hs = model(torch.tensor([toks[:-1]]), output_hidden_states=True).hidden_states
        feats = torch.cat([hs[L][0] for L in TARGET_LAYERS], -1)  # [n-1, k*H]
        feats = bf16(feats).float()
        logits = reference(W, emb, feats.double(), toks[-1], block, eps).float()
        feats.numpy().astype("<f4").tofile(f"{OUT}/case{ci}_feat.bin")
        logits.numpy().astype("<f4").tofile(f"{OUT}/case{ci}_logits.bin")
        laf = reference(W, emb, feats.double(), toks[-1], block, eps, anchor_feature=True).float()
        laf.numpy().astype("<f4").tofile(f"{OUT}/case{ci}_logits_af.bin")
        cases.append({"tokens": toks, "block": block, "features": f"case{ci}_feat.bin",
                      "logits": f"case{ci}_logits.bin", "logits_anchor_feature": f"case{ci}_logits_af.bin"})
    json.dump({"target": TARGET, "target_layers": TARGET_LAYERS, "cases": cases},
              open(OUT + "/cases.json", "w"), indent=1)
    # the draft-vocabulary variant (same weights and config)
    l0 = np.fromfile(f"{OUT}/case0_logits.bin", dtype="<f4").reshape(-1, tcfg["vocab_size"])
    keep = set(range(0, tcfg["vocab_size"], 3)) | {int(l0[i].argmax()) for i in range(3)}
    vocab = torch.tensor(sorted(keep), dtype=torch.int32)
    os.makedirs(OUT + "/drafter-vocab", exist_ok=True)
    save_file(dict(Wb, draft_vocab=vocab), OUT + "/drafter-vocab/model.safetensors")
    json.dump(cfg, open(OUT + "/drafter-vocab/config.json", "w"), indent=2)
    print("wrote", OUT, "fingerprint", fp)


if __name__ == "__main__":
    main()
