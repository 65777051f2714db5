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
  export     HF-layout model directories, evaluation (export.py): eval_results.json, heldout_ppl.json, loss_curves.png
Everything is seeded (--seed) and runs on the CPU (--threads, default 1: on a shared 2-core machine one
thread was 3x faster than two, which stall on each other when another process holds a core).
"""
import argparse
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
def heldout_loss(model, held_windows):
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


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def opt_step(model, opt, loss):
    """Backward through loss, the gradient norm clipped to 1, one optimizer step, gradients cleared."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def shuffled_batches(rng, n, batch, steps):
    """(step, idx) for each of steps steps: batch indices (a tensor) into n windows, in an order rng
    shuffles anew at every epoch."""
    order, pos = rng.permutation(n), 0
    for step in range(steps):
        if pos + batch > len(order):
            order, pos = rng.permutation(n), 0
        yield step, torch.from_numpy(order[pos:pos + batch])
        pos += batch


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
        set_lr(opt, lr_at(step, steps, 2e-3, 30))
        loss = model(input_ids=x, labels=x).loss
        opt_step(model, opt, loss)
        hist["step"].append(step)
        hist["train_loss"].append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            hl = heldout_loss(model, held_w)
            hist["eval_step"].append(step)
            hist["heldout_loss"].append(hl)
            log("verifier step %d loss %.3f heldout %.3f (%.0fs)" % (step, loss.item(), hl, time.time() - t0))
        elif step % 10 == 0:
            log("verifier step %d loss %.3f (%.0fs)" % (step, loss.item(), time.time() - t0))
    save_ckpt(model, os.path.join(work, "verifier.pt"), hist)
    return model


# ----------------------------------------------------------------------------- teacher targets
def load_model(shape, tok, path):
    m = new_model(shape, tok, 0)
    m.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    return m


@torch.no_grad()
def make_targets(tok, train_ids, work):
    """Top-TOPK next-token distribution of the verifier at every position of the fixed training windows."""
    ver = load_model(VERIFIER, tok, os.path.join(work, "verifier.pt")).eval()
    w = common.windows(train_ids)
    ids = torch.empty(w.size(0), SEQ_LEN, TOPK, dtype=torch.int16)
    prob = torch.empty(w.size(0), SEQ_LEN, TOPK, dtype=torch.float16)
    mass = 0.0
    t0 = time.time()
    for i in range(0, w.size(0), 32):
        p = torch.softmax(ver(input_ids=w[i:i + 32]).logits.float(), -1)
        v, k = p.topk(TOPK, -1)
        mass += v.sum(-1).sum().item()
        ids[i:i + 32] = k.to(torch.int16)
        prob[i:i + 32] = (v / v.sum(-1, keepdim=True)).to(torch.float16)
    log("targets: %d windows, mean top-%d mass %.4f (%.0fs)" % (w.size(0), TOPK, mass / w.numel(), time.time() - t0))
    torch.save({"windows": w, "ids": ids, "prob": prob, "topk_mass": mass / w.numel()},
               os.path.join(work, "targets.pt"))


def soft_ce(logp, t_ids, t_prob):
    """Cross-entropy of the student log-probs against the teacher's renormalised top-k distribution."""
    return -(t_prob.float() * logp.gather(-1, t_ids.long())).sum(-1)


# ----------------------------------------------------------------------------- AR drafter
def train_ar_drafter(tok, held_w, work, seed, steps, batch, kd):
    name = "ar_kd" if kd else "ar_ce"
    tg = torch.load(os.path.join(work, "targets.pt"), weights_only=False)
    w, t_ids, t_prob = tg["windows"], tg["ids"], tg["prob"]
    model = new_model(DRAFTER, tok, seed)
    rng = np.random.RandomState(seed)
    opt = make_opt(model, 3e-3)
    hist = {"step": [], "train_loss": [], "eval_step": [], "heldout_loss": []}
    t0 = time.time()
    for step, idx in shuffled_batches(rng, w.size(0), batch, steps):
        x = w[idx]
        set_lr(opt, lr_at(step, steps, 3e-3, 30))
        logp = torch.log_softmax(model(input_ids=x).logits.float()[:, :-1], -1)
        hard = -logp.gather(-1, x[:, 1:, None]).squeeze(-1).mean()
        if kd:
            soft = soft_ce(logp, t_ids[idx, :-1], t_prob[idx, :-1]).mean()
            loss = 0.7 * soft + 0.3 * hard
        else:
            loss = hard
        opt_step(model, opt, loss)
        hist["step"].append(step)
        hist["train_loss"].append(hard.item())  # plotted: hard-label CE, comparable across runs
        if step % 100 == 0 or step == steps - 1:
            hl = heldout_loss(model, held_w)
            hist["eval_step"].append(step)
            hist["heldout_loss"].append(hl)
            log("%s step %d loss %.3f ce %.3f heldout %.3f (%.0fs)" % (name, step, loss.item(), hard.item(), hl,
                                                                      time.time() - t0))
    save_ckpt(model, os.path.join(work, name + ".pt"), hist)


# ----------------------------------------------------------------------------- diffusion drafter
MASK_ID = 3  # <|mask|>, checked against the tokenizer at run time


def diffusion_batch(x, rng):
    """Build one masked-diffusion batch from clean windows x [B, L].

    Returns (inputs, attention mask [B,1,L,L] bool, position ids, per-token loss weight [B,L],
    soft-target flag [B,L]).  Position i's token is predicted from hidden i-1 (logit shift), so a
    masked position always has its left neighbour in the same segment.
      75% of rows: segment A = clean prefix of P tokens + a block of B in [8,16] tokens, masked
        all (40%), left-to-right partially (30%: first k clean) or at random (30%); weight 1/#masked,
        distilled from the verifier.  Segment B = the rest of the row as an independent sequence
        (positions restart at 0, attention confined to it) with random masking at rate t ~ U(.05,1),
        weight 1/(t*len).
      25% of rows: the whole row with random masking at rate t, weight 1/(t*len).
    Attention is bidirectional within a segment.
    """
    Bsz, L = x.shape
    inp = x.clone()
    seg = torch.zeros(Bsz, L, dtype=torch.long)
    posid = torch.arange(L).repeat(Bsz, 1)
    wgt = torch.zeros(Bsz, L)
    soft = torch.zeros(Bsz, L, dtype=torch.bool)

    def random_mask(r, a, b):  # positions a+1..b-1 of row r (a is the segment start)
        t = rng.uniform(0.05, 1.0)
        m = torch.from_numpy(rng.rand(b - a - 1) < t)
        if not m.any():
            m[rng.randint(b - a - 1)] = True
        idx = torch.arange(a + 1, b)[m]
        inp[r, idx] = MASK_ID
        wgt[r, idx] = 1.0 / (t * (b - a - 1))

    for r in range(Bsz):
        if rng.rand() < 0.75:
            blk = rng.randint(8, 17)
            p = rng.randint(4, L - blk - 31)
            mode = rng.rand()
            if mode < 0.4:
                m = np.ones(blk, dtype=bool)
            elif mode < 0.7:
                m = np.arange(blk) >= rng.randint(1, blk)
            else:
                m = rng.rand(blk) < rng.uniform(0.1, 1.0)
                if not m.any():
                    m[rng.randint(blk)] = True
            idx = torch.arange(p, p + blk)[torch.from_numpy(m)]
            inp[r, idx] = MASK_ID
            wgt[r, idx] = 1.0 / len(idx)
            soft[r, idx] = True
            e = p + blk
            seg[r, e:] = 1
            posid[r, e:] = torch.arange(L - e)
            random_mask(r, e, L)
        else:
            random_mask(r, 0, L)
    attn = (seg[:, :, None] == seg[:, None, :])[:, None]
    return inp, attn, posid, wgt, soft


@torch.no_grad()
def diffusion_heldout(model, held_w, ratio=0.5, seed=7):
    """Masked-token CE and accuracy on held-out windows at a fixed mask ratio (shifted prediction)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x = held_w[:48]
    m = torch.rand(x.shape, generator=g) < ratio
    m[:, 0] = False
    inp = x.masked_fill(m, MASK_ID)
    attn = torch.ones(x.size(0), 1, x.size(1), x.size(1), dtype=torch.bool)
    logits = model(input_ids=inp, attention_mask=attn).logits.float()[:, :-1]
    tm = m[:, 1:]
    ce = F.cross_entropy(logits[tm], x[:, 1:][tm]).item()
    acc = (logits[tm].argmax(-1) == x[:, 1:][tm]).float().mean().item()
    model.train()
    return ce, acc


def train_diffusion(tok, held_w, work, seed, steps, batch):
    assert tok.token_to_id("<|mask|>") == MASK_ID
    tg = torch.load(os.path.join(work, "targets.pt"), weights_only=False)
    w, t_ids, t_prob = tg["windows"], tg["ids"], tg["prob"]
    model = load_model(DRAFTER, tok, os.path.join(work, "ar_kd.pt"))  # AR -> diffusion adaptation
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    opt = make_opt(model, 2e-3)
    hist = {"step": [], "train_loss": [], "eval_step": [], "heldout_loss": [], "heldout_acc": []}
    t0 = time.time()
    for step, idx in shuffled_batches(rng, w.size(0), batch, steps):
        x = w[idx]
        inp, attn, posid, wgt, soft = diffusion_batch(x, rng)
        set_lr(opt, lr_at(step, steps, 2e-3, 30))
        logits = model(input_ids=inp, attention_mask=attn, position_ids=posid).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1)  # row i-1 predicts token i
        tw, ts = wgt[:, 1:], soft[:, 1:]
        hard = -logp.gather(-1, x[:, 1:, None]).squeeze(-1)
        # the verifier's next-token distribution at i-1 (given the clean text up to i-1) as soft target
        sce = soft_ce(logp, t_ids[idx, :-1], t_prob[idx, :-1])
        per = torch.where(ts, 0.5 * hard + 0.5 * sce, hard)
        loss = (per * tw).sum() / x.size(0)
        opt_step(model, opt, loss)
        hist["step"].append(step)
        hist["train_loss"].append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            ce, acc = diffusion_heldout(model, held_w)
            hist["eval_step"].append(step)
            hist["heldout_loss"].append(ce)
            hist["heldout_acc"].append(acc)
            log("diffusion step %d loss %.3f heldout@0.5 ce %.3f acc %.3f (%.0fs)" % (step, loss.item(), ce, acc,
                                                                                     time.time() - t0))
    save_ckpt(model, os.path.join(work, "diffusion.pt"), hist)


# ----------------------------------------------------------------------------- main
STAGES = ["corpus", "tokenizer", "verifier", "targets", "ar_kd", "diffusion", "ar_ce", "export"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models")
    ap.add_argument("--work", default="build/train")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--verifier-steps", type=int, default=300)
    ap.add_argument("--drafter-steps", type=int, default=400)
    ap.add_argument("--diffusion-steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
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
