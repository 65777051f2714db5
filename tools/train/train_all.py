#!/usr/bin/env python3
"""Train tandem's bundled tiny model family on the King James Bible, end to end.

  python3 tools/train/train_all.py --out models

Stages (each caches its result under --work, default build/train, and is skipped when the
result exists; --force reruns everything):
  corpus     extract the KJV from Debian's bible-kjv-text (prepare_corpus.py)
  tokenizer  byte-level BPE, Qwen2 pre-tokenizer, 4096 tokens incl. 4 specials
  verifier   causal Qwen2, hidden 256, 6 layers, trained with cross-entropy
  targets    the verifier's top-32 next-token distribution at every training position
  ar_kd      AR drafter (hidden 128, 4 layers), distilled from the verifier's soft targets
  ar_ce      the same AR drafter trained on cross-entropy only (baseline for the KD comparison)
  diffusion  Dream-style diffusion drafter, initialised from ar_kd, masked-diffusion objective
  export     HF-layout model directories, evaluation (eval.py), README figures
Everything is seeded (--seed) and runs on the CPU with 2 threads.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import DRAFTER, SEQ_LEN, VERIFIER  # noqa: E402

TOPK = 32


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def make_opt(model, lr):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def new_model(shape, tok, seed):
    from transformers import Qwen2ForCausalLM
    torch.manual_seed(seed)
    cfg = common.qwen2_config(shape, tok)
    cfg._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(cfg)


@torch.no_grad()
def heldout_loss(model, held_windows, attn_mask_fn=None):
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(held_windows), 16):
        x = held_windows[i:i + 16]
        logits = model(input_ids=x).logits.float()
        l = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum")
        tot += l.item()
        n += x[:, 1:].numel()
    model.train()
    return tot / n


def save_ckpt(model, path, history):
    torch.save({"state_dict": model.state_dict(), "history": history}, path)


# ----------------------------------------------------------------------------- verifier
def train_verifier(tok, train_ids, held_w, work, seed, steps, batch):
    model = new_model(VERIFIER, tok, seed)
    rng = np.random.RandomState(seed)
    opt = make_opt(model, 2e-3)
    hist = {"step": [], "train_loss": [], "eval_step": [], "heldout_loss": []}
    order, pos = [], 0
    t0 = time.time()
    for step in range(steps):
        if pos + batch > len(order):  # new epoch: random offset, shuffled windows
            off = rng.randint(SEQ_LEN)
            w = common.windows(train_ids[off:])
            order = [w[i] for i in rng.permutation(len(w))]
            pos = 0
        x = torch.stack(order[pos:pos + batch])
        pos += batch
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 2e-3, 50)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        hist["step"].append(step)
        hist["train_loss"].append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            hl = heldout_loss(model, held_w)
            hist["eval_step"].append(step)
            hist["heldout_loss"].append(hl)
            log("verifier step %d loss %.3f heldout %.3f (%.0fs)" % (step, loss.item(), hl, time.time() - t0))
    save_ckpt(model, os.path.join(work, "verifier.pt"), hist)
    return model


# ----------------------------------------------------------------------------- main
STAGES = ["corpus", "tokenizer", "verifier", "targets", "ar_kd", "diffusion", "ar_ce", "export"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models")
    ap.add_argument("--work", default="build/train")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--verifier-steps", type=int, default=700)
    ap.add_argument("--drafter-steps", type=int, default=800)
    ap.add_argument("--diffusion-steps", type=int, default=1100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stages = args.stages.split(",")
    work = args.work
    os.makedirs(work, exist_ok=True)
    corpus = os.path.join(work, "corpus")
    here = os.path.dirname(os.path.abspath(__file__))

    def todo(stage, path):
        return stage in stages and (args.force or not os.path.exists(path))

    if todo("corpus", os.path.join(corpus, "corpus_info.json")):
        subprocess.run([sys.executable, os.path.join(here, "prepare_corpus.py"), "--out", corpus], check=True)
    tok_path = os.path.join(work, "tokenizer.json")
    if todo("tokenizer", tok_path):
        common.build_tokenizer(os.path.join(corpus, "train.txt"), tok_path)
        log("tokenizer built")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tok_path)
    train_ids = common.encode_file(tok, os.path.join(corpus, "train.txt"))
    held_ids = common.encode_file(tok, os.path.join(corpus, "heldout.txt"))
    held_w = common.windows(held_ids)
    log("train tokens %d, held-out tokens %d" % (len(train_ids), len(held_ids)))

    if todo("verifier", os.path.join(work, "verifier.pt")):
        train_verifier(tok, train_ids, held_w, work, args.seed, args.verifier_steps, args.batch)
    if todo("targets", os.path.join(work, "targets.pt")):
        make_targets(tok, train_ids, work)
    if todo("ar_kd", os.path.join(work, "ar_kd.pt")):
        train_ar_drafter(tok, held_w, work, args.seed + 1, args.drafter_steps, args.batch, kd=True)
    if todo("diffusion", os.path.join(work, "diffusion.pt")):
        train_diffusion(tok, held_w, work, args.seed + 2, args.diffusion_steps, args.batch)
    if todo("ar_ce", os.path.join(work, "ar_ce.pt")):
        train_ar_drafter(tok, held_w, work, args.seed + 1, args.drafter_steps, args.batch, kd=False)
    if "export" in stages:
        import export
        export.export_all(tok_path, work, args.out, args)


if __name__ == "__main__":
    main()
