#!/usr/bin/env python3
"""Trains the DFlash drafter (issue 13) on the features gen_data.py stored. CPU PyTorch, seeded,
checkpoints every --ckpt-minutes to <out>/ckpt.pt and resumes from it; the best held-out
acceptance so far is kept in <out>/best.pt (export.py reads it). Progress: <out>/log.jsonl and
PNG curves (loss, acceptance) in tools/train/dflash/plots/.

Packed training forward: a step takes --seqs sequences; in each it samples --blocks anchors a in
the answer part (positions P .. T-2); block n holds the anchor token x[a] and mask tokens at
absolute positions a .. a+B-1 and sees the context features of positions 0 .. a-1 plus all rows of
its own block (an explicit boolean mask over [context rows ; all block rows of the sequence]).
A fraction --p8 of the blocks is of size 8 instead of 16 (rows 8..15 absent: neither attended
nor scored), so the same drafter serves block 8 and block 16.

Loss: cross-entropy of block row i (i = 1..B-1) against the target's token x[a+i] (rows past the
end of the sequence are not scored), weighted by the position decay w_i = exp(-(i-1)/gamma_B),
gamma_16 = 7, gamma_8 = 4 (the DFlash paper's choice: early rows matter most since a draft is
accepted only up to its first miss); loss = sum(w*CE) / sum(w).

Held-out acceptance: prompts with idx % 10 == 9 of the training prompt set (never the bench
prompts) are not trained on; for anchors every 12 positions of (up to 12 of) their answers with a full block in
the sequence, the greedy drafts d_1..d_{B-1} are compared with the target's tokens: acceptance
length = number of leading matches; tokens per verification = that + 1 (the verifier's bonus).

    python3 tools/train/dflash/train.py --steps 400 --max-minutes 10
"""
import argparse
import glob
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)
from gen_data import iter_answers  # noqa: E402
from reference import DFlashDrafter  # noqa: E402

TARGET_LAYERS = [1, 8, 15, 22, 29]
GAMMA = {16: 7.0, 8: 4.0}


def is_heldout(idx):
    return idx % 10 == 9


def make_cfg(mask_id, block_size=16, anchor_feature=False):
    return {"architecture": "dflash", "target_layers": TARGET_LAYERS, "block_size": block_size,
            "anchor_feature": anchor_feature,
            "mask_token_id": mask_id, "hidden_size": 576, "num_hidden_layers": 2,
            "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
            "intermediate_size": 1536, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "target": {"name": "SmolLM2-135M-Instruct", "n_layer": 30, "hidden_size": 576,
                       "vocab_size": 49152, "fingerprints": []}}


def pick_mask_id(data):
    """A special-token id (3..16 of SmolLM2's vocabulary) that occurs in no prompt or answer."""
    seen = set()
    for r in iter_answers(data):
        seen.update(r["prompt_ids"])
        seen.update(r["answer_ids"])
    for c in range(3, 17):
        if c not in seen:
            return c, len(seen)
    raise RuntimeError("no unused special id for the mask token")


class Data:
    def __init__(self, data):
        self.dir = data
        self.seqs = {}
        self.refresh()

    def refresh(self):
        for fp in sorted(glob.glob(os.path.join(self.dir, "feat_*.pt"))):
            idx = int(os.path.basename(fp)[5:10])
            if idx not in self.seqs:
                d = torch.load(fp)
                self.seqs[idx] = (d["ids"].long(), d["prompt_len"], d["feats"])
        self.train = [k for k in sorted(self.seqs) if not is_heldout(k)
                      and len(self.seqs[k][0]) - self.seqs[k][1] >= 2]
        self.held = [k for k in sorted(self.seqs) if is_heldout(k)]
        # training vocabulary: every id of the training sequences (see loss_fn)
        ids = torch.cat([self.seqs[k][0] for k in self.train]).unique()
        self.vocab = ids
        self.remap = torch.full((49152,), -1, dtype=torch.long)
        self.remap[ids] = torch.arange(len(ids))


def build_batch(seqs, anchors_per_seq, sizes_per_seq, mask_id, Bmax=16):
    """seqs: list of (ids, P, feats); anchors/sizes: per sequence lists. Returns the packed tensors."""
    S = len(seqs)
    Tmax = max(len(s[0]) for s in seqs)
    N = max(len(a) for a in anchors_per_seq) * Bmax
    kH = seqs[0][2].shape[1]
    feats = torch.zeros(S, Tmax, kH)
    toks = torch.full((S, N), mask_id, dtype=torch.long)
    bpos = torch.zeros(S, N, dtype=torch.long)
    labels = torch.full((S, N), -100, dtype=torch.long)
    weights = torch.zeros(S, N)
    mask = torch.zeros(S, N, Tmax + N, dtype=torch.bool)
    cpos = torch.arange(Tmax).unsqueeze(0).expand(S, Tmax)
    for s, (ids, P, f) in enumerate(seqs):
        T = len(ids)
        feats[s, :T] = f.float()
        for n, (a, bs) in enumerate(zip(anchors_per_seq[s], sizes_per_seq[s])):
            r0 = n * Bmax
            toks[s, r0] = ids[a]
            bpos[s, r0:r0 + Bmax] = torch.arange(a, a + Bmax)
            for i in range(Bmax):
                r = r0 + i
                if i >= bs:
                    mask[s, r, Tmax + r] = True  # absent row: sees itself only, never scored
                    continue
                mask[s, r, :a] = True
                mask[s, r, Tmax + r0:Tmax + r0 + bs] = True
                if i >= 1 and a + i < T:
                    labels[s, r] = ids[a + i]
                    weights[s, r] = math.exp(-(i - 1) / GAMMA[bs])
        # unused block slots (fewer anchors than the widest sequence): self only
        for r in range(len(anchors_per_seq[s]) * Bmax, N):
            mask[s, r, Tmax + r] = True
    return feats, toks, bpos, cpos, mask, labels, weights


def loss_fn(model, batch, data):
    """The softmax of the training loss runs over data.vocab (every id that occurs in the training
    sequences, a few thousand of the 49152) instead of the whole vocabulary: the target's tokens
    are always in it and the LM head, the bulk of a step on this CPU, costs ~15x less. The held-out
    acceptance (evaluate) takes the argmax over the FULL vocabulary, as the C drafter does."""
    feats, toks, bpos, cpos, mask, labels, weights = batch
    hid = model.hidden(feats, toks, bpos, cpos, mask)
    sel = labels >= 0
    logits = hid[sel] @ model.embed[data.vocab].t()
    lab = data.remap[labels[sel]]
    ce = F.cross_entropy(logits, lab, reduction="none")
    w = weights[sel]
    loss = (ce * w).sum() / w.sum()
    with torch.no_grad():
        acc = (logits.argmax(-1) == lab).float().mean().item()
    return loss, acc


@torch.no_grad()
def evaluate(model, data, mask_id, B, max_seqs=12, stride=12):
    """Mean greedy acceptance length per block of size B on the held-out sequences, and the
    acceptance rate by position."""
    model.eval()
    lens = []
    by_pos = np.zeros(B - 1)
    for k in data.held[:max_seqs]:
        ids, P, f = data.seqs[k]
        T = len(ids)
        anchors = list(range(P, T - B + 1, stride))
        if not anchors:
            continue
        batch = build_batch([(ids, P, f)], [anchors], [[B] * len(anchors)], mask_id, Bmax=B)
        feats, toks, bpos, cpos, mask, labels, _ = batch
        hid = model.hidden(feats, toks, bpos, cpos, mask, block_len=B)
        pred = model.logits(hid).argmax(-1).view(len(anchors), B)
        lab = labels.view(len(anchors), B)
        for n in range(len(anchors)):
            m = 0
            for i in range(1, B):
                if pred[n, i] != lab[n, i]:
                    break
                m += 1
            lens.append(m)
            by_pos[:m] += 1
    model.train()
    if not lens:
        return None
    return {"accept_len": float(np.mean(lens)), "tokens_per_verify": float(np.mean(lens)) + 1.0,
            "blocks": len(lens), "accept_by_pos": (by_pos / len(lens)).round(4).tolist()}


def init_from_target(model, gguf):
    """Starts the drafter's layers from the target's last two layers, its final norm, and fc as
    the identity on the deepest target boundary (a well-formed start instead of noise)."""
    from gen_data import load_hf_target
    hf = load_hf_target(gguf)
    tl = hf.model.layers
    n = len(model.layers)
    sd = {}
    for i in range(n):
        src = tl[len(tl) - n + i].state_dict()
        for kk, v in src.items():
            sd[f"layers.{i}.{kk}"] = v.float()
    sd["norm.weight"] = hf.model.norm.weight.detach().float()
    sd["hidden_norm.weight"] = tl[len(tl) - n].input_layernorm.weight.detach().float()
    H = model.cfg["hidden_size"]
    fc = torch.zeros(H, model.fc.weight.shape[1])
    fc[:, -H:] = torch.eye(H)
    sd["fc.weight"] = fc + 0.01 * torch.randn_like(fc)
    missing = model.load_state_dict(sd, strict=True)
    del hf
    return missing


def plot(log, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tr = [r for r in log if "loss" in r]
    ev = [r for r in log if "eval16" in r]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    if tr:
        ax[0].plot([r["step"] for r in tr], [r["loss"] for r in tr], lw=0.8, label="weighted CE")
        ax[0].set_xlabel("step")
        ax[0].set_ylabel("loss")
        ax[0].set_title("DFlash drafter training loss (SmolLM2-135M target)")
        ax[0].grid(alpha=0.3)
    if ev:
        ax[1].plot([r["step"] for r in ev], [r["eval16"]["tokens_per_verify"] for r in ev], "o-", label="block 16")
        e8 = [r for r in ev if r.get("eval8")]
        ax[1].plot([r["step"] for r in e8], [r["eval8"]["tokens_per_verify"] for r in e8], "s-", label="block 8")
        ax[1].set_xlabel("step")
        ax[1].set_ylabel("tokens per verification (held-out, greedy)")
        ax[1].set_title("held-out acceptance (accepted drafts + 1)")
        ax[1].grid(alpha=0.3)
        ax[1].legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save(obj, path):
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "build/dflash-data"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build/dflash-train"))
    ap.add_argument("--gguf", default=os.path.join(ROOT, "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--steps", type=int, default=400, help="total steps (cosine schedule length)")
    ap.add_argument("--max-minutes", type=float, default=1e9, help="stop (after a checkpoint) after this long")
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=32, help="anchors per sequence per step")
    ap.add_argument("--p8", type=float, default=0.25, help="fraction of blocks of size 8")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", choices=["target", "random"], default="target")
    ap.add_argument("--ckpt-minutes", type=float, default=3.0)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-seqs", type=int, default=40, help="held-out sequences in an eval")
    ap.add_argument("--eval-stride", type=int, default=16, help="answer positions between held-out anchors")
    ap.add_argument("--anchor-feature", action="store_true",
                    help="every block row also gets the projected feature of the position before its anchor "
                         "(config anchor_feature; see reference.py)")
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast for the forward/backward (AVX512_BF16 CPUs; master weights stay float32)")
    ap.add_argument("--plot", default=os.path.join(HERE, "plots", "training_curves.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    log_path = os.path.join(args.out, "log.jsonl")

    data = Data(args.data)
    emb = torch.load(os.path.join(args.data, "target_embed.pt"))["embed"]
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        cfg = ck["cfg"]
        model = DFlashDrafter(cfg, emb)
        model.load_state_dict(ck["model"])
        step, log, best = ck["step"], ck["log"], ck["best"]
        train_s = ck["train_s"]
        print(f"resumed at step {step} ({train_s:.0f}s trained)", flush=True)
    else:
        torch.manual_seed(args.seed)
        mask_id, nseen = pick_mask_id(args.data)
        print(f"mask_token_id = {mask_id} (absent from the {nseen} distinct ids in the data)", flush=True)
        cfg = make_cfg(mask_id, anchor_feature=args.anchor_feature)
        model = DFlashDrafter(cfg, emb)
        if args.init == "target":
            init_from_target(model, args.gguf)
        ck, step, log, best, train_s = None, 0, [], None, 0.0
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd, betas=(0.9, 0.95))
    if ck is not None:
        opt.load_state_dict(ck["opt"])
        rng = random.Random()
        rng.setstate(ck["py_rng"])
        torch.set_rng_state(ck["torch_rng"])
    else:
        rng = random.Random(args.seed)
    mask_id = cfg["mask_token_id"]
    print(f"data: {len(data.train)} train sequences, {len(data.held)} held-out; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M trainable params", flush=True)

    def lr_at(s):
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        t = min(1.0, (s - args.warmup) / max(1, args.steps - args.warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    def checkpoint():
        save({"cfg": cfg, "model": model.state_dict(), "opt": opt.state_dict(), "step": step, "log": log,
              "best": best, "train_s": train_s, "py_rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
              "args": vars(args)}, ckpt_path)

    def do_eval():
        nonlocal best
        e16 = evaluate(model, data, mask_id, 16, args.eval_seqs, args.eval_stride)
        e8 = evaluate(model, data, mask_id, 8, args.eval_seqs, args.eval_stride)
        rec = {"step": step, "eval16": e16, "eval8": e8, "train_s": round(train_s, 1)}
        log.append(rec)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"eval step {step}: block16 tokens/verify {e16 and e16['tokens_per_verify']:.3f}  "
              f"block8 {e8 and e8['tokens_per_verify']:.3f}", flush=True)
        if e16 and (best is None or e16["tokens_per_verify"] > best["eval16"]["tokens_per_verify"]):
            best = rec
            save({"cfg": cfg, "model": model.state_dict(), "eval": rec,
                  "training": {"step": step, "train_s": train_s, "seed": args.seed,
                               "train_sequences": len(data.train), "heldout_sequences": len(data.held),
                               "args": vars(args)}}, os.path.join(args.out, "best.pt"))
        plot(log, args.plot)

    if step == 0:
        do_eval()
    t_start = time.time()
    t_ck = time.time()
    model.train()
    while step < args.steps:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        picks = [data.seqs[rng.choice(data.train)] for _ in range(args.seqs)]
        anchors, sizes = [], []
        for ids, P, _ in picks:
            T = len(ids)
            anchors.append([rng.randrange(P, T - 1) for _ in range(args.blocks)])
            sizes.append([8 if rng.random() < args.p8 else 16 for _ in range(args.blocks)])
        batch = build_batch(picks, anchors, sizes, mask_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss, acc = loss_fn(model, batch, data)
        opt.zero_grad()
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        train_s += time.time() - t0
        rec = {"step": step, "loss": round(loss.item(), 4), "top1": round(acc, 4), "lr": lr_at(step - 1),
               "gnorm": round(gn.item(), 3), "step_s": round(time.time() - t0, 2)}
        log.append(rec)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if step % 10 == 0:
            print(json.dumps(rec), flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            do_eval()
        if time.time() - t_ck > args.ckpt_minutes * 60 or step == args.steps:
            data.refresh()  # picks up shards written meanwhile by gen_data.py
            checkpoint()
            t_ck = time.time()
        if time.time() - t_start > args.max_minutes * 60:
            break
    checkpoint()
    plot(log, args.plot)
    print(f"stopped at step {step}; best block16 tokens/verify "
          f"{best and best['eval16']['tokens_per_verify']:.3f} at step {best and best['step']}", flush=True)


if __name__ == "__main__":
    main()
