#!/usr/bin/env python3
"""The baseline drafter of issue 13: a standalone SpecDiff-style diffusion LM for SmolLM2.

A Dream-layout model (Qwen2 blocks, bidirectional attention, mask token, logits shifted by one:
row i-1 predicts token i) with SmolLM2's vocabulary, started from SmolLM2's own embedding, first
--layers decoder layers and final norm (the AR -> diffusion adaptation Dream did from Qwen), then
trained on the SAME self-distilled data as the DFlash drafter (tools/train/dflash/gen_data.py
answers: the Q4_1 target's greedy answers as tandem generated them) to denoise blocks of 8-16
masked tokens after a clean prefix — exactly what `--method specdiff` asks of it.

    python3 tools/train/specdiff_smollm2/train.py --data build/dflash-data --minutes 30 --threads 1
    python3 tools/train/specdiff_smollm2/train.py --data build/dflash-data --export-only

Checkpoints (build/specdiff-smollm2/ckpt.pt) every --ckpt-minutes; a rerun resumes. The budget is
wall-clock minutes at a fixed thread count, so it can be matched to the DFlash run's. Export:
models/specdiff-smollm2/ (config.json, generation_config.json, tokenizer.json from the GGUF,
model.safetensors bf16) and the curves (loss, held-out block acceptance) as PNG + JSON.
"""
import argparse
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
GGUF = os.path.join(ROOT, "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
sys.path.insert(0, os.path.join(ROOT, "tools/train/dflash"))
from gen_data import load_answers  # noqa: E402  (the same answers.jsonl reader as DFlash's)


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def split(recs, held_frac):
    """Held-out = every record whose prompt index is 0 mod round(1/held_frac): a fixed slice of
    the training prompt set (never the bench prompts), the same whatever the data size."""
    k = max(2, round(1 / held_frac))
    held = [r for r in recs if r["idx"] % k == 0]
    train = [r for r in recs if r["idx"] % k != 0]
    return train, held


def rope_theta(c):
    rp = getattr(c, "rope_parameters", None) or {}
    return float(rp.get("rope_theta", getattr(c, "rope_theta", 10000.0)))


def build_model(gguf, n_layers, mask_id):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM
    d, fn = os.path.split(os.path.abspath(gguf))
    tgt = AutoModelForCausalLM.from_pretrained(d, gguf_file=fn, torch_dtype=torch.float32)
    tc = tgt.config
    cfg = Qwen2Config(vocab_size=tc.vocab_size, hidden_size=tc.hidden_size,
                      intermediate_size=tc.intermediate_size, num_hidden_layers=n_layers,
                      num_attention_heads=tc.num_attention_heads,
                      num_key_value_heads=tc.num_key_value_heads,
                      max_position_embeddings=tc.max_position_embeddings,
                      rope_parameters={"rope_type": "default", "rope_theta": rope_theta(tc)},
                      rms_norm_eps=tc.rms_norm_eps, tie_word_embeddings=True, hidden_act="silu",
                      bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id,
                      pad_token_id=tc.pad_token_id, attention_dropout=0.0, use_cache=False,
                      use_sliding_window=False)
    m = Qwen2ForCausalLM(cfg)
    sd = tgt.state_dict()
    own = m.state_dict()
    n = 0
    for k in own:
        if k in sd and sd[k].shape == own[k].shape:
            own[k] = sd[k].clone()
            n += 1
        elif k.endswith(".bias"):
            own[k] = torch.zeros_like(own[k])  # llama has no q/k/v bias: start at 0
    m.load_state_dict(own)
    log(f"drafter: {n_layers} layers of SmolLM2 copied ({n} tensors), "
        f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f}M params, mask id {mask_id}")
    return m, tgt.config


def make_batch(recs, rng, batch, window, mask_id, pad_id):
    """Rows of `window` tokens ending with a block of 8-16 positions inside an answer.
    60%: the block is all masks (what a first denoising step sees), 20%: its first k are clean
    (later left-to-right steps), 20%: masks at random in the block; plus, in every row, a random
    10% of the earlier answer tokens masked (denoising practice, lower weight). Loss on masked
    positions only, each block weighted 1/#masked. Short rows are padded on the right with
    positions no one attends to."""
    X = torch.full((batch, window), pad_id, dtype=torch.long)
    inp = X.clone()
    valid = torch.zeros(batch, window, dtype=torch.bool)
    wgt = torch.zeros(batch, window)
    for b in range(batch):
        r = recs[rng.randrange(len(recs))]
        ids = r["prompt_ids"] + r["answer_ids"]
        P = len(r["prompt_ids"])
        if len(ids) - P < 2:
            r = max(recs, key=lambda q: len(q["answer_ids"]))
            ids = r["prompt_ids"] + r["answer_ids"]
            P = len(r["prompt_ids"])
        B = rng.randint(8, 16)
        a = rng.randint(P, len(ids) - 1)  # first block position
        e = min(a + B, len(ids))
        s = max(0, e - window)
        seq = ids[s:e]
        L = len(seq)
        X[b, :L] = torch.tensor(seq)
        inp[b, :L] = X[b, :L]
        valid[b, :L] = True
        blk = list(range(a - s, L))
        mode = rng.random()
        if mode < 0.6:
            m = blk
        elif mode < 0.8:
            k = rng.randint(1, len(blk) - 1) if len(blk) > 1 else 0
            m = blk[k:]
        else:
            m = [p for p in blk if rng.random() < 0.5] or [blk[0]]
        m = [p for p in m if p >= 1]  # position 0 has no row to its left
        for p in m:
            inp[b, p] = mask_id
            wgt[b, p] = 1.0 / len(m)
        for p in range(max(1, P - s), a - s):
            if rng.random() < 0.1:
                inp[b, p] = mask_id
                wgt[b, p] = 0.2 / max(1, (a - s) - max(1, P - s))
    attn = (valid[:, :, None] & valid[:, None, :]) | torch.eye(window, dtype=torch.bool)[None]
    return X, inp, attn[:, None], wgt


def shifted_loss(model, X, inp, attn, wgt):
    h = model.model(input_ids=inp, attention_mask=attn).last_hidden_state
    sel = wgt[:, 1:] > 0
    hs = h[:, :-1][sel]  # row p-1 predicts token p
    logits = model.lm_head(hs).float()
    ce = F.cross_entropy(logits, X[:, 1:][sel], reduction="none")
    return (ce * wgt[:, 1:][sel]).sum() / X.size(0)


@torch.no_grad()
def block_acceptance(model, held, mask_id, pad_id, gamma, n_blocks, seed, window):
    """Greedy one-step drafting (the block all masks, every position argmax at once) at anchors in
    held-out answers: the mean number of leading draft tokens equal to the target's = accepted
    drafts per verification (add 1 for the bonus token)."""
    model.eval()
    rng = random.Random(seed)
    acc = []
    for _ in range(n_blocks):
        r = held[rng.randrange(len(held))]
        ids = r["prompt_ids"] + r["answer_ids"]
        P = len(r["prompt_ids"])
        if len(ids) - P < gamma + 1:
            continue
        a = rng.randint(P, len(ids) - gamma)  # prefix = ids[:a], the block = ids[a:a+gamma]
        s = max(0, a - (window - gamma))
        seq = ids[s:a] + [mask_id] * gamma
        x = torch.tensor([seq])
        h = model.model(input_ids=x, attention_mask=torch.ones(1, 1, len(seq), len(seq), dtype=torch.bool)
                        ).last_hidden_state
        pred = model.lm_head(h[0, len(seq) - gamma - 1:len(seq) - 1]).argmax(-1).tolist()
        k = 0
        while k < gamma and pred[k] == ids[a + k]:
            k += 1
        acc.append(k)
    model.train()
    return float(np.mean(acc)) if acc else 0.0


def export(model, tcfg, out, mask_id, gguf, meta):
    from safetensors.torch import save_file
    from transformers import AutoTokenizer
    os.makedirs(out, exist_ok=True)
    c = model.config
    cfg = {"architectures": ["DreamModel"], "model_type": "Dream", "vocab_size": c.vocab_size,
           "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
           "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
           "num_key_value_heads": c.num_key_value_heads,
           "head_dim": c.hidden_size // c.num_attention_heads, "hidden_act": "silu",
           "max_position_embeddings": c.max_position_embeddings, "rope_theta": rope_theta(c),
           "rope_scaling": None, "rms_norm_eps": c.rms_norm_eps, "tie_word_embeddings": True,
           "attention_dropout": 0.0, "use_sliding_window": False, "sliding_window": None,
           "max_window_layers": c.num_hidden_layers, "use_cache": False,
           "bos_token_id": tcfg.bos_token_id, "eos_token_id": tcfg.eos_token_id,
           "pad_token_id": tcfg.pad_token_id, "torch_dtype": "bfloat16", "mask_token_id": mask_id,
           "training": meta}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    gen = {"bos_token_id": tcfg.bos_token_id, "eos_token_id": tcfg.eos_token_id,
           "pad_token_id": tcfg.pad_token_id, "mask_token_id": mask_id}
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    d, fn = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fn)
    tok.save_pretrained(out)
    # transformers' GGUF conversion drops the pre-tokenizer the GGUF names (tokenizer.ggml.pre =
    # "smollm": digits one by one, then byte-level); without it numbers tokenize differently and
    # tandem's handshake rightly refuses the pair (tokenizer hash). Put SmolLM2's back.
    tp = os.path.join(out, "tokenizer.json")
    with open(tp, encoding="utf-8") as f:
        tj = json.load(f)
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    with open(tp, "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
          if k != "lm_head.weight"}
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    log(f"exported {out}")


def plot(hist, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    s = np.array(hist["step"])
    lo = np.array(hist["loss"])
    if len(lo) > 20:
        k = 20
        lo = np.convolve(lo, np.ones(k) / k, mode="valid")
        s = s[k - 1:]
    ax[0].plot(s, lo)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("masked CE (smoothed)")
    ax[0].set_title("SpecDiff baseline drafter: training loss")
    ax[1].plot(hist["eval_step"], hist["eval_acc"], marker="o")
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("accepted drafts / block (greedy, 1 step)")
    ax[1].set_title(f"held-out acceptance, block {hist['gamma']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "build/dflash-data"))
    ap.add_argument("--gguf", default=GGUF)
    ap.add_argument("--work", default=os.path.join(ROOT, "build/specdiff-smollm2"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models/specdiff-smollm2"))
    ap.add_argument("--plots", default=os.path.join(ROOT, "tools/train/specdiff_smollm2/plots"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--mask-id", type=int, default=-1, help="default: a special id absent from the data")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--ckpt-minutes", type=float, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--gamma", type=int, default=8, help="block of the held-out acceptance estimate")
    ap.add_argument("--held-frac", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    recs = load_answers(args.data)
    train, held = split(recs, args.held_frac)
    used = set()
    for r in recs:
        used.update(r["prompt_ids"])
        used.update(r["answer_ids"])
    mask_id = args.mask_id
    if mask_id < 0:
        mask_id = next(i for i in range(16, 2, -1) if i not in used)
    elif mask_id in used:
        sys.exit(f"--mask-id {mask_id} occurs in the data")
    log(f"{len(train)} training and {len(held)} held-out answers "
        f"({sum(len(r['answer_ids']) for r in train)} answer tokens)")
    model, tcfg = build_model(args.gguf, args.layers, mask_id)
    pad_id = tcfg.pad_token_id if tcfg.pad_token_id is not None else 0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    os.makedirs(args.work, exist_ok=True)
    ck = os.path.join(args.work, "ckpt.pt")
    hist = {"step": [], "loss": [], "eval_step": [], "eval_acc": [], "gamma": args.gamma,
            "seconds": 0.0}
    step = 0
    if os.path.exists(ck):
        st = torch.load(ck, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        hist, step, mask_id = st["hist"], st["step"], st["mask_id"]
        rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        log(f"resumed at step {step} ({hist['seconds'] / 60:.1f} of {args.minutes} min)")

    def save():
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "hist": hist, "step": step,
                    "mask_id": mask_id, "rng": rng.getstate(), "torch_rng": torch.get_rng_state()},
                   ck + ".tmp")
        os.replace(ck + ".tmp", ck)

    budget = args.minutes * 60
    if not args.export_only:
        if not hist["eval_step"]:
            a0 = block_acceptance(model, held, mask_id, pad_id, args.gamma, 200, 1, args.window)
            hist["eval_step"].append(0)
            hist["eval_acc"].append(a0)
            log(f"step 0: held-out acceptance {a0:.3f} drafts/block of {args.gamma}")
        t_ck = time.time()
        while hist["seconds"] < budget:
            t0 = time.time()
            lr = args.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(
                math.pi * min(1.0, hist["seconds"] / budget))))
            for g in opt.param_groups:
                g["lr"] = lr
            X, inp, attn, wgt = make_batch(train, rng, args.batch, args.window, mask_id, pad_id)
            loss = shifted_loss(model, X, inp, attn, wgt)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            hist["step"].append(step)
            hist["loss"].append(loss.item())
            hist["seconds"] += time.time() - t0
            if step % 50 == 0:
                log(f"step {step} loss {np.mean(hist['loss'][-50:]):.3f} lr {lr:.2e} "
                    f"({hist['seconds'] / 60:.1f}/{args.minutes} min)")
            if step % 200 == 0:
                a = block_acceptance(model, held, mask_id, pad_id, args.gamma, 200, 1, args.window)
                hist["eval_step"].append(step)
                hist["eval_acc"].append(a)
                log(f"step {step}: held-out acceptance {a:.3f} drafts/block of {args.gamma}")
            if time.time() - t_ck > args.ckpt_minutes * 60:
                save()
                t_ck = time.time()
        a = block_acceptance(model, held, mask_id, pad_id, args.gamma, 400, 2, args.window)
        hist["eval_step"].append(step)
        hist["eval_acc"].append(a)
        log(f"final (step {step}): held-out acceptance {a:.3f} drafts/block of {args.gamma}")
        save()
    os.makedirs(args.plots, exist_ok=True)
    plot(hist, os.path.join(args.plots, "specdiff_baseline_curves.png"))
    with open(os.path.join(args.plots, "specdiff_baseline_history.json"), "w") as f:
        json.dump({k: hist[k] for k in ("eval_step", "eval_acc", "gamma", "seconds")} |
                  {"steps": step, "final_loss": float(np.mean(hist["loss"][-50:])) if hist["loss"] else None},
                  f, indent=1)
    meta = {"data": "self-distilled answers of the Q4_1 target (tools/train/dflash/gen_data.py)",
            "train_answers": len(train), "held_out_answers": len(held), "steps": step,
            "batch": args.batch, "window": args.window, "minutes": round(hist["seconds"] / 60, 1),
            "threads": args.threads, "seed": args.seed, "init": f"SmolLM2 layers 0..{args.layers - 1}",
            "held_out_acceptance_block": args.gamma,
            "held_out_acceptance": hist["eval_acc"][-1] if hist["eval_acc"] else None}
    export(model, tcfg, args.out, mask_id, args.gguf, meta)


if __name__ == "__main__":
    main()
