#!/usr/bin/env python3
"""Train and export the bundled tiny planned-diffusion model (models/tiny-planned).

  python3 tools/train/planned_data.py --check       # build/train/planned/train.pt
  python3 tools/train/train_planned.py --steps 900  # build/train/planned/model.pt + models/tiny-planned

Initialised from models/tiny-diffusion-drafter (Dream-style, logit shift, mask id 3); the embedding
grows from 4096 to 4104 rows (the six tags 4096..4101, two unused rows to a multiple of 8; new rows =
the mean embedding plus small noise). One forward per packed row with an explicit attention mask
that is exactly the one drafter/planned.c builds at inference, for each example:

  prompt + plan rows        causal                              (the planner, run causally)
  span rows (<async>..</async>) keys before the scaffold + their own span, tags included
  nothing before the scaffold sees it; sibling spans are invisible to each other.

Several examples are packed into a row of 256 positions (attention confined to each example, its
positions restarting at 0).  Mixed objective (Planned Diffusion):
  AR:        cross-entropy of row i predicting token i+1 for every prompt and plan position; the last
             plan token (`</topic>`) predicts EOS, the stage terminator the runtime removes before the
             scaffold (see planned_data.py); mean over those tokens.
  diffusion: per span, t ~ U(0.05, 1) (a quarter of the spans t = 1, fully masked as at inference);
             each span token ([PAD] included, tags never) is replaced by <|mask|> with probability t;
             the masked token q is predicted by row q-1 (Dream logit shift: the first one by the
             `<async>` row); loss sum(CE / t) / (span tokens).
  loss = AR + diffusion.
CPU, fp32, one thread, AdamW (0.9, 0.95), wd 0.1 on matrices, warm-up 30 steps then cosine to 10%.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import planned_data as pdata  # noqa: E402
from common import DRAFTER  # noqa: E402

ROOT = pdata.ROOT
ROW = 256
VOCAB_ROWS = 4104


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def lr_at(step, total, peak, warmup=30):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def init_model(seed):
    """tiny-diffusion-drafter's bf16 weights in fp32, embedding grown to VOCAB_ROWS."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=VOCAB_ROWS, max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, hidden_act="silu", bos_token_id=0, eos_token_id=0, pad_token_id=0,
                      attention_dropout=0.0, use_cache=False, use_sliding_window=False, **DRAFTER)
    cfg._attn_implementation = "sdpa"
    m = Qwen2ForCausalLM(cfg)
    sd = {k: v.float() for k, v in load_file(os.path.join(ROOT, "models", "tiny-diffusion-drafter",
                                                           "model.safetensors")).items()}
    emb = sd["model.embed_tokens.weight"]
    g = torch.Generator().manual_seed(seed)
    extra = emb.mean(0, keepdim=True) + 0.5 * emb.std() * torch.randn(VOCAB_ROWS - emb.size(0), emb.size(1),
                                                                        generator=g)
    sd["model.embed_tokens.weight"] = torch.cat([emb, extra], 0)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    m.tie_weights()
    return m


def pack(examples, order):
    """Greedy packing of examples (in order) into rows of ROW positions: list of lists of indices."""
    rows, cur, used = [], [], 0
    for i in order:
        L = len(examples[i]["ids"])
        if used + L > ROW and cur:
            rows.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += L
    if cur:
        rows.append(cur)
    return rows


def make_batch(examples, rows, rng, full_mask_frac=0.25):
    """inputs, clean targets, attention [B,1,ROW,ROW] bool, position ids, AR weight, diffusion weight.
    Weights sit on the row that predicts (row i predicts token i+1 for both objectives)."""
    B = len(rows)
    inp = torch.zeros(B, ROW, dtype=torch.long)
    tgt = torch.zeros(B, ROW, dtype=torch.long)  # tgt[i] = the token row i predicts
    attn = torch.zeros(B, ROW, ROW, dtype=torch.bool)
    pos = torch.zeros(B, ROW, dtype=torch.long)
    w_ar = torch.zeros(B, ROW)
    w_df = torch.zeros(B, ROW)
    n_ar = n_df = 0
    for r, idxs in enumerate(rows):
        o = 0
        for i in idxs:
            ex = examples[i]
            ids = ex["ids"].long()
            L, pe = len(ids), ex["plan_end"]
            x = ids.clone()
            pos[r, o:o + L] = torch.arange(L)
            # prompt + plan: causal
            attn[r, o:o + pe, o:o + pe] = torch.tril(torch.ones(pe, pe, dtype=torch.bool))
            tgt[r, o:o + pe - 1] = ids[1:pe]
            tgt[r, o + pe - 1] = pdata.EOS_ID
            w_ar[r, o:o + pe] = 1.0
            n_ar += pe
            for lo, hi in ex["spans"]:
                attn[r, o + lo:o + hi, o:o + pe] = True
                attn[r, o + lo:o + hi, o + lo:o + hi] = True
                n = hi - lo - 2
                t = 1.0 if rng.rand() < full_mask_frac else rng.uniform(0.05, 1.0)
                m = rng.rand(n) < t
                if not m.any():
                    m[rng.randint(n)] = True
                q = lo + 1 + np.nonzero(m)[0]
                x[q] = pdata.MASK_ID
                qq = torch.from_numpy(o + q - 1)
                tgt[r, qq] = ids[q]
                w_df[r, qq] = 1.0 / t
                n_df += n
            inp[r, o:o + L] = x
            o += L
        for k in range(o, ROW):  # padding: sees itself only
            attn[r, k, k] = True
    return inp, tgt, attn[:, None], pos, w_ar / max(1, n_ar), w_df / max(1, n_df)


def losses(model, batch):
    inp, tgt, attn, pos, w_ar, w_df = batch
    logits = model(input_ids=inp, attention_mask=attn, position_ids=pos).logits.float()
    ce = F.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1), reduction="none").view(tgt.shape)
    return (ce * w_ar).sum(), (ce * w_df).sum(), logits


@torch.no_grad()
def evaluate(model, examples, seed=7):
    """Plan-token AR CE/accuracy (incl. the EOS after the plan) and fully-masked span CE/accuracy."""
    model.eval()
    rng = np.random.RandomState(seed)
    rows = pack(examples, range(len(examples)))
    a_ce = a_n = a_ok = d_ce = d_n = d_ok = 0.0
    for s in range(0, len(rows), 16):
        b = make_batch(examples, rows[s:s + 16], rng, full_mask_frac=1.0)
        inp, tgt, attn, pos, w_ar, w_df = b
        logits = model(input_ids=inp, attention_mask=attn, position_ids=pos).logits.float()
        ce = F.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1), reduction="none").view(tgt.shape)
        ok = (logits.argmax(-1) == tgt).float()
        # AR: plan positions only (rows from the last prompt token on)
        pm = torch.zeros_like(w_ar, dtype=torch.bool)
        for r, idxs in enumerate(rows[s:s + 16]):
            o = 0
            for i in idxs:
                ex = examples[i]
                pm[r, o + ex["n_prompt"] - 1:o + ex["plan_end"]] = True
                o += len(ex["ids"])
        dm = w_df > 0
        a_ce += ce[pm].sum().item(); a_ok += ok[pm].sum().item(); a_n += pm.sum().item()  # noqa: E702
        d_ce += ce[dm].sum().item(); d_ok += ok[dm].sum().item(); d_n += dm.sum().item()  # noqa: E702
    model.train()
    return {"plan_ce": a_ce / a_n, "plan_acc": a_ok / a_n, "span_ce_t1": d_ce / d_n, "span_acc_t1": d_ok / d_n}


@torch.no_grad()
def check_mask(model, ex):
    """A span's logits do not change when a sibling span changes; the prefix's do not change at all."""
    model.eval()
    rng = np.random.RandomState(0)
    b1 = make_batch([ex], [[0]], rng, full_mask_frac=1.0)
    inp2 = b1[0].clone()
    lo, hi = ex["spans"][1]
    inp2[0, lo + 1:hi - 1] = 100
    l1 = model(input_ids=b1[0], attention_mask=b1[2], position_ids=b1[3]).logits
    l2 = model(input_ids=inp2, attention_mask=b1[2], position_ids=b1[3]).logits
    a, z = ex["spans"][0]
    same_sib = torch.equal(l1[0, a:z], l2[0, a:z])
    same_pre = torch.equal(l1[0, :ex["plan_end"]], l2[0, :ex["plan_end"]])
    changed = not torch.equal(l1[0, lo:hi], l2[0, lo:hi])
    model.train()
    return same_sib and same_pre and changed


def export(model, out_dir, tok, hist):
    import export as ex
    tok_path = os.path.join(ROOT, "build", "train", "planned", "tokenizer.json")
    tok.save(tok_path)
    ids = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|mask|>": 3}
    ids.update(pdata.tag_ids(tok))
    ex.write_model_dir(out_dir, model, tok_path, ids, diffusion=True)
    common.save_json(hist, os.path.join(ROOT, "build", "train", "planned", "train_log.json"))


PROMPTS = 8  # held-out prompts for --report: the first verse of every 7th held-out chapter


def report(model_dir, max_tokens=192):
    """Runs build/bin/tandem on held-out prompts: --method planned on model_dir (planner and filler)
    and --method ar on models/tiny-verifier, greedy; the outputs' mean NLL per token under the
    verifier (given the prompt) as the quality measure. Returns a dict (also printed)."""
    import re
    import subprocess
    import export as ex
    chs = open(os.path.join(ROOT, "models", "heldout.txt"), encoding="utf-8").read().split("\n\n")
    prompts = [c.strip().split("\n")[0] for c in chs[::7]][:PROMPTS]
    vtok = pdata.load_tokenizer()
    ver = ex.load_shipped(os.path.join(ROOT, "models", "tiny-verifier"), common.VERIFIER, vtok)
    tandem = os.path.join(ROOT, "build", "bin", "tandem")

    def run(args):
        p = subprocess.run([tandem, "generate"] + args + ["--max-tokens", str(max_tokens), "--json"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        if "{" not in p.stdout:
            return None, None, p.stderr
        js = json.loads(p.stdout[p.stdout.index("{"):p.stdout.rindex("}") + 1])
        m = re.search(r"\[planned\] plan (\d+) tokens, (\d+) stage.*?(\d+) span.*?([0-9.]+) steps per span, "
                      r"critical path (\d+)", p.stderr)
        return js, m, p.stderr

    @torch.no_grad()
    def nll(prompt, out_ids):
        pi = vtok.encode(prompt).ids
        ids = torch.tensor([pi + out_ids])
        if not out_ids:
            return float("nan")
        lp = torch.log_softmax(ver(input_ids=ids).logits.float()[0, :-1], -1)
        t = ids[0, 1:]
        return -lp[torch.arange(len(t)), t][len(pi) - 1:].mean().item()

    rows = []
    for pr in prompts:
        pj, pm, perr = run(["--drafter", model_dir, "--method", "planned", "--prompt", pr])
        aj, _, _ = run(["--verifier", os.path.join(ROOT, "models", "tiny-verifier"), "--method", "ar",
                        "--prompt", pr])
        if pj is None:
            rows.append({"prompt": pr, "error": perr.strip().splitlines()[-1]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        row = {"prompt": pr, "fallback": "falling back" in perr,
               "planned": {"text": pj["text"], "tokens": pj["stats"]["generated"],
                           "critical_path": pj["stats"]["forwards"], "total_s": pj["stats"]["total_s"],
                           "verifier_nll": nll(pr, pj["tokens"])},
               "ar": {"text": aj["text"], "tokens": aj["stats"]["generated"], "critical_path": aj["stats"]["forwards"],
                      "total_s": aj["stats"]["total_s"], "verifier_nll": nll(pr, aj["tokens"])}}
        if pm:
            row["planned"].update(plan_tokens=int(pm.group(1)), spans=int(pm.group(3)),
                                  steps_per_span=float(pm.group(4)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "build", "train", "planned", "train.pt"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "tiny-planned"))
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch", type=int, default=16, help="packed rows of 256 positions per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=150)
    ap.add_argument("--time-only", type=int, default=0, help="run N steps, print the step time, exit")
    ap.add_argument("--report", action="store_true", help="only run the tandem comparison on --out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.report:
        rows = report(a.out)
        common.save_json(rows, os.path.join(ROOT, "build", "train", "planned", "report.json"))
        return
    torch.manual_seed(a.seed)
    rng = np.random.RandomState(a.seed)
    examples = torch.load(a.data, weights_only=False)["examples"]
    tok = pdata.load_tokenizer()
    # a held-out evaluation set built the same way from the held-out books (evaluation only)
    held, _ = pdata.build(tok, os.path.join(ROOT, "models", "heldout.txt"), 99)
    held = [held[i] for i in np.random.RandomState(5).permutation(len(held))[:192]]
    model = init_model(a.seed)
    multi = next(e for e in examples if len(e["spans"]) >= 2)
    assert check_mask(model, multi), "attention mask check failed"
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    hist = {"steps": a.steps, "batch_rows": a.batch, "row": ROW, "lr": a.lr, "seed": a.seed,
            "step": [], "ar_loss": [], "diff_loss": [], "eval": []}
    ev = evaluate(model, held)
    hist["eval"].append(dict(step=0, **ev))
    log("init heldout %s" % json.dumps({k: round(v, 4) for k, v in ev.items()}))
    rows, rp = pack(examples, rng.permutation(len(examples))), 0
    t0 = time.time()
    steps = a.time_only or a.steps
    for step in range(steps):
        if rp + a.batch > len(rows):
            rows, rp = pack(examples, rng.permutation(len(examples))), 0
        batch = make_batch(examples, rows[rp:rp + a.batch], rng)
        rp += a.batch
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, a.lr)
        la, ld, _ = losses(model, batch)
        (la + ld).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        hist["step"].append(step)
        hist["ar_loss"].append(round(la.item(), 4))
        hist["diff_loss"].append(round(ld.item(), 4))
        if a.time_only:
            log("step %d ar %.3f diff %.3f (%.2fs/step)" % (step, la.item(), ld.item(), (time.time() - t0) / (step + 1)))
            continue
        if step % 25 == 0:
            log("step %d ar %.3f diff %.3f (%.0fs)" % (step, la.item(), ld.item(), time.time() - t0))
        if (step + 1) % a.eval_every == 0 or step == steps - 1:
            ev = evaluate(model, held)
            hist["eval"].append(dict(step=step + 1, **ev))
            log("step %d heldout %s" % (step + 1, json.dumps({k: round(v, 4) for k, v in ev.items()})))
            torch.save(model.state_dict(), os.path.join(ROOT, "build", "train", "planned", "model.pt"))
    if a.time_only:
        return
    hist["train_s"] = round(time.time() - t0, 1)
    assert check_mask(model, multi)
    export(model, a.out, tok, hist)
    log("exported %s" % a.out)


if __name__ == "__main__":
    sys.exit(main())
