#!/usr/bin/env python3
"""Self-check of the DFlash training forward (issue 13): the packed training batch (many blocks of
sizes 16 and 8 in one sequence, one boolean mask) must give, for every block, the same logits as
reference.forward_block run on that block alone with only the context before its anchor (the way
the C drafter runs it). Random tiny drafter; no model files needed. Exit status 1 on mismatch.

    python3 tools/train/dflash/test_pipeline.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import DFlashDrafter  # noqa: E402
from train import build_batch  # noqa: E402


def check(anchor_feature):
    torch.manual_seed(0)
    H, V, k = 64, 97, 3
    cfg = {"target_layers": [1, 2, 3], "block_size": 16, "mask_token_id": 5, "hidden_size": H,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
           "intermediate_size": 96, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "target": {"hidden_size": H}, "anchor_feature": anchor_feature}
    m = DFlashDrafter(cfg, torch.randn(V, H))
    for p in m.parameters():  # non-trivial norms too
        torch.nn.init.normal_(p, std=0.3)
    m.eval()
    T, P = 40, 6
    ids = torch.randint(6, V, (T,))
    feats = torch.randn(T, k * H).to(torch.bfloat16)
    anchors, sizes = [P, 9, 20, 31, 38], [16, 8, 16, 8, 16]
    b = build_batch([(ids, P, feats)], [anchors], [sizes], cfg["mask_token_id"])
    with torch.no_grad():
        hid = m.hidden(*b[:5])
        lg = m.logits(hid)[0]
    worst = 0.0
    for n, (a, bs) in enumerate(zip(anchors, sizes)):
        ref = m.forward_block(feats[:a], ids[a], block_size=bs)  # rows 1..bs-1
        got = lg[n * 16 + 1:n * 16 + bs]
        worst = max(worst, (ref - got).abs().max().item())
        # labels: the target's next tokens, only inside the sequence and the block's size
        lab = b[5][0, n * 16:(n + 1) * 16]
        for i in range(16):
            want = ids[a + i].item() if (1 <= i < bs and a + i < T) else -100
            if lab[i].item() != want:
                print(f"FAIL: label of block {n} row {i}: {lab[i].item()} != {want}")
                return 1
    print(f"anchor_feature {anchor_feature}: packed vs per-block max |logit diff| = {worst:.2e}")
    if worst > 1e-3:
        print("FAIL: packed training forward differs from the per-block reference")
        return 1
    return 0


def main():
    rc = check(False) or check(True)
    print("FAIL" if rc else "ok")
    return rc


if __name__ == "__main__":
    sys.exit(main())
