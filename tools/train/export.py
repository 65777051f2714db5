"""Export the trained checkpoints as HF-layout model directories and evaluate the shipped weights.

Called by train_all.py (stage `export`).  All figures are measured on the bf16 weights as written to
disk, upcast to float32, with PyTorch on the CPU; they land in <out>/eval_results.json,
<out>/heldout_ppl.json and <out>/loss_curves.png.
"""
import hashlib
import json
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import common
from common import DRAFTER, SEQ_LEN, VERIFIER

NAMES = {"verifier": "tiny-verifier", "ar_kd": "tiny-ar-drafter", "diffusion": "tiny-diffusion-drafter"}
PREFIX_LEN = 64
DRAFT_LEN = 8
N_PROMPTS = 256
MASK_RATIOS = [0.1, 0.3, 0.5, 0.7, 0.9]


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def tokenizer_config(ids):
    added = {}
    for s, i in sorted(ids.items(), key=lambda kv: kv[1]):
        added[str(i)] = {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "errors": "replace",
    }


def state_dict_bf16(model):
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def write_model_dir(d, model, tok_path, ids, diffusion):
    os.makedirs(d, exist_ok=True)
    c = model.config
    eos = ids["<|endoftext|>"]
    cfg = {
        "architectures": ["DreamModel" if diffusion else "Qwen2ForCausalLM"],
        "model_type": "Dream" if diffusion else "qwen2",
        **common.hf_sizes(c),
        "head_dim": c.hidden_size // c.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": True,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": c.num_hidden_layers,
        "use_cache": not diffusion,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "torch_dtype": "bfloat16",
    }
    gen = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos, "do_sample": False,
           "max_new_tokens": 128}
    if diffusion:
        cfg["mask_token_id"] = ids["<|mask|>"]
        gen["mask_token_id"] = ids["<|mask|>"]
    common.save_json(cfg, os.path.join(d, "config.json"))
    common.save_json(gen, os.path.join(d, "generation_config.json"))
    common.save_json(tokenizer_config(ids), os.path.join(d, "tokenizer_config.json"))
    shutil.copyfile(tok_path, os.path.join(d, "tokenizer.json"))
    save_file(state_dict_bf16(model), os.path.join(d, "model.safetensors"), metadata={"format": "pt"})


def load_shipped(d, shape, tok):
    """The bf16 tensors from disk, upcast to float32, in a Qwen2ForCausalLM (eager attention)."""
    from transformers import Qwen2ForCausalLM
    cfg = common.qwen2_config(shape, tok)
    cfg._attn_implementation = "eager"
    m = Qwen2ForCausalLM(cfg)
    sd = {k: v.float() for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    m.tie_weights()
    return m.eval()


# ----------------------------------------------------------------------------- metrics
@torch.no_grad()
def heldout_ppl(model, ids):
    """Non-overlapping windows of SEQ_LEN tokens from token 0 (the last one may be shorter); each window
    is scored from its own start, i.e. tokens 1..n-1 of a window are predicted from the window only."""
    nll, n, win = 0.0, 0, 0
    for s in range(0, len(ids), SEQ_LEN):
        x = torch.from_numpy(ids[s:s + SEQ_LEN].astype(np.int64))[None]
        if x.size(1) < 2:
            continue
        logits = model(input_ids=x).logits.double()
        nll += F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum").item()
        n += x.size(1) - 1
        win += 1
    return {"nll_sum": nll, "scored_tokens": n, "windows": win, "mean_nll": nll / n, "ppl": float(np.exp(nll / n))}


def full_attn(b, n):
    return torch.ones(b, 1, n, n, dtype=torch.bool)


@torch.no_grad()
def masked_accuracy(model, held_w, mask_id, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(held_w.shape, generator=g) < ratio
    m[:, 0] = False
    correct, total, nll = 0, 0, 0.0
    for i in range(0, held_w.size(0), 16):
        x, mm = held_w[i:i + 16], m[i:i + 16]
        logits = model(input_ids=x.masked_fill(mm, mask_id), attention_mask=full_attn(x.size(0), x.size(1)))
        lg = logits.logits.float()[:, :-1]
        tm = mm[:, 1:]
        tgt = x[:, 1:][tm]
        correct += (lg[tm].argmax(-1) == tgt).sum().item()
        nll += F.cross_entropy(lg[tm], tgt, reduction="sum").item()
        total += tgt.numel()
    return {"ratio": ratio, "masked_tokens": total, "accuracy": correct / total, "masked_ce": nll / total}


def suppress(logits, ids):
    logits[..., ids] = -float("inf")
    return logits


@torch.no_grad()
def ar_greedy(model, prompts, n, bad):
    x = prompts.clone()
    for _ in range(n):
        nxt = suppress(model(input_ids=x).logits[:, -1].float(), bad).argmax(-1)
        x = torch.cat([x, nxt[:, None]], 1)
    return x[:, prompts.size(1):]


@torch.no_grad()
def diffusion_draft(model, prompts, n, mask_id, bad, mode):
    """Draft n tokens after the clean prompt with a shifted-logit masked diffusion model.
    one_step: argmax of all masks from one forward pass; l2r: n passes, unmask left to right;
    confidence: n passes, unmask the most confident masked position each time."""
    b, p = prompts.shape
    x = torch.cat([prompts, torch.full((b, n), mask_id, dtype=torch.long)], 1)
    attn = full_attn(b, p + n)
    steps = 1 if mode == "one_step" else n
    for k in range(steps):
        lg = suppress(model(input_ids=x, attention_mask=attn).logits.float()[:, p - 1:p + n - 1], bad)
        conf, tok = torch.softmax(lg, -1).max(-1)
        if mode == "one_step":
            return tok
        if mode == "l2r":
            x[:, p + k] = tok[:, k]
        else:
            still = x[:, p:] == mask_id
            pick = conf.masked_fill(~still, -1).argmax(-1)
            x[torch.arange(b), p + pick] = tok[torch.arange(b), pick]
    return x[:, p:]


def agreement(draft, ref):
    match = (draft == ref)
    run = match.long().cumprod(1).sum(1)  # matched prefix length
    return {"per_position_match": [round(v, 4) for v in match.float().mean(0).tolist()],
            "mean_matched_prefix": run.float().mean().item(),
            "mean_accepted_per_verification": (run + 1).float().mean().item()}


def prompts_from(ids):
    stride = (len(ids) - PREFIX_LEN - DRAFT_LEN) // N_PROMPTS
    starts = [k * stride for k in range(N_PROMPTS)]
    return torch.from_numpy(np.stack([ids[s:s + PREFIX_LEN] for s in starts]).astype(np.int64)), stride


@torch.no_grad()
def sample(model, tok, text, n, temperature, seed, bad):
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor([tok.encode(text).ids])
    for _ in range(n):
        lg = suppress(model(input_ids=x).logits[0, -1].float(), bad)
        if temperature == 0:
            nxt = lg.argmax()
        else:
            nxt = torch.multinomial(torch.softmax(lg / temperature, -1), 1, generator=g)[0]
        x = torch.cat([x, nxt.view(1, 1)], 1)
    return tok.decode(x[0].tolist(), skip_special_tokens=False)


def plot_curves(work, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(v, k=25):
        v = np.asarray(v)
        if len(v) < k:
            return v
        return np.convolve(v, np.ones(k) / k, mode="valid")

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, color, label in [("verifier", "C0", "verifier"), ("ar_kd", "C1", "AR drafter (KD)"),
                               ("ar_ce", "C2", "AR drafter (CE only)")]:
        p = os.path.join(work, name + ".pt")
        if not os.path.exists(p):
            continue
        h = torch.load(p, weights_only=False)["history"]
        s = smooth(h["train_loss"])
        ax[0 if name == "verifier" else 1].plot(np.arange(len(s)) + 12, s, color=color, label=label + " train CE")
        ax[0 if name == "verifier" else 1].plot(h["eval_step"], h["heldout_loss"], "o--", color=color, ms=3,
                                                label=label + " held-out CE")
    p = os.path.join(work, "diffusion.pt")
    h = torch.load(p, weights_only=False)["history"] if os.path.exists(p) else {
        "train_loss": [], "eval_step": [], "heldout_loss": [], "heldout_acc": []}
    s = smooth(h["train_loss"])
    ax[2].plot(np.arange(len(s)) + 12, s, color="C3", label="diffusion train loss (weighted)")
    ax[2].plot(h["eval_step"], h["heldout_loss"], "o--", color="C4", ms=3, label="held-out masked CE @0.5")
    a2 = ax[2].twinx()
    a2.plot(h["eval_step"], h["heldout_acc"], "s:", color="C5", ms=3, label="held-out masked acc @0.5")
    a2.set_ylabel("accuracy")
    a2.legend(loc="center right", fontsize=7)
    for a, t in zip(ax, ["verifier", "AR drafters", "diffusion drafter"]):
        a.set_title(t)
        a.set_xlabel("step")
        a.set_ylabel("nats / token")
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    ax[0].set_ylim(3.5, 6.5)
    ax[1].set_ylim(3.5, 6.5)
    fig.tight_layout()
    fig.savefig(path, dpi=70)


def export_all(tok_path, work, out, args):
    from tokenizers import Tokenizer
    import train_all as T
    tok = Tokenizer.from_file(tok_path)
    ids = common.special_ids(tok)
    bad = [ids["<|mask|>"], ids["<|im_start|>"], ids["<|im_end|>"]]
    os.makedirs(out, exist_ok=True)
    shapes = {"verifier": VERIFIER, "ar_kd": DRAFTER, "ar_ce": DRAFTER, "diffusion": DRAFTER}
    dirs = {}
    for key, shape in shapes.items():
        if not os.path.exists(os.path.join(work, key + ".pt")):
            continue
        d = os.path.join(out, NAMES[key]) if key in ("verifier", "diffusion") else os.path.join(work, "export-" + key)
        write_model_dir(d, T.load_model(shape, tok, os.path.join(work, key + ".pt")), tok_path, ids,
                        key == "diffusion")
        dirs[key] = d
    # Which AR drafter ships: the one the verifier agrees with more on prompts from the TRAINING text
    # (so the held-out figures below stay untouched by the choice).
    res = {"seed": args.seed, "sizes": {}, "heldout": {}, "agreement": {}}
    sel_ids = common.encode_file(tok, os.path.join(work, "corpus", "train.txt"))[-200000:]
    sel_prompts, _ = prompts_from(sel_ids)
    ver = load_shipped(dirs["verifier"], VERIFIER, tok)
    sel_ref = ar_greedy(ver, sel_prompts, DRAFT_LEN, bad)
    sel = {}
    for k in ["ar_kd", "ar_ce"]:
        if k in dirs:
            sel[k] = agreement(ar_greedy(load_shipped(dirs[k], DRAFTER, tok), sel_prompts, DRAFT_LEN, bad),
                               sel_ref)["mean_accepted_per_verification"]
    shipped = max(sel, key=lambda k: (sel[k], k == "ar_kd"))
    log("AR drafter selection on training-text prompts: %s -> ship %s" % (sel, shipped))
    res["ar_selection"] = {"mean_accepted_on_train_prompts": sel, "shipped": shipped,
                           "rule": "the AR drafter with the higher mean accepted tokens per verification (draft 8) "
                                   "on %d prompts from the last 200000 tokens of the training text" % N_PROMPTS}
    dst = os.path.join(out, NAMES["ar_kd"])
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(dirs[shipped], dst)
    dirs[shipped] = dst
    NAMES[shipped] = NAMES.pop("ar_kd")
    corpus = os.path.join(work, "corpus")
    shutil.copyfile(os.path.join(corpus, "heldout.txt"), os.path.join(out, "heldout.txt"))
    shutil.copyfile(os.path.join(corpus, "corpus_info.json"), os.path.join(out, "corpus_info.json"))
    models = {k: load_shipped(d, shapes[k], tok) for k, d in dirs.items()}

    with open(os.path.join(out, "heldout.txt"), encoding="utf-8") as f:
        held_text = f.read()
    held = np.array(tok.encode(held_text).ids, dtype=np.int32)
    vflops = common.count_flops_params(models["verifier"])
    for k, m in models.items():
        fp = common.count_flops_params(m)
        res["sizes"][k] = {"params": sum(p.numel() for p in m.parameters()), "flops_per_token": 2 * fp,
                           "flops_ratio_to_verifier": round(fp / vflops, 4),
                           "safetensors_bytes": os.path.getsize(os.path.join(dirs[k], "model.safetensors"))}

    # held-out perplexity (the protocol tandem score must reproduce)
    ppl = {"file": "models/heldout.txt", "sha256": hashlib.sha256(held_text.encode("utf-8")).hexdigest(),
           "tokenizer": "models/tiny-verifier/tokenizer.json (same file in every model directory)",
           "protocol": ("Read models/heldout.txt as UTF-8 and tokenize the whole file as one string with "
                        "tokenizer.json (no BOS/EOS or other tokens added). Split the token ids into non-overlapping "
                        "windows of %d tokens starting at token 0; the last window holds the remainder. Each window is "
                        "scored independently from its own start (fresh context, positions 0..n-1): the model predicts "
                        "tokens 1..n-1 of the window from the tokens before them in the window, so the first token of "
                        "each window is not scored. ppl = exp(sum of -log p(token) over all scored tokens / number of "
                        "scored tokens). Weights: the bf16 model.safetensors upcast to float32, computed in float32 "
                        "(softmax/log-sum-exp in float64) with PyTorch." % SEQ_LEN),
           "window": SEQ_LEN, "tokens": int(len(held)), "models": {}}
    for k in ["verifier", "ar_kd", "ar_ce"]:
        if k in models:
            r = heldout_ppl(models[k], held)
            name = NAMES.get(k, "%s AR drafter (not shipped)" % ("distilled" if k == "ar_kd" else "CE-only"))
            ppl["models"][name] = r
            res["heldout"][k] = r
            log("%s held-out ppl %.3f over %d tokens" % (k, r["ppl"], r["scored_tokens"]))
    common.save_json(ppl, os.path.join(out, "heldout_ppl.json"))

    # masked-token accuracy of the diffusion drafter
    held_w = common.windows(held)
    res["masked_accuracy"] = {
        "protocol": ("all %d full %d-token windows of the held-out text; each position except the first of a window "
                     "masked independently with probability r (torch seed 1000+10r); one forward pass, bidirectional "
                     "attention, the logits at i-1 predict token i (shift); accuracy = argmax == original token over "
                     "masked positions" % (held_w.size(0), SEQ_LEN)),
        "results": [masked_accuracy(models["diffusion"], held_w, ids["<|mask|>"], r, 1000 + int(10 * r))
                    for r in MASK_RATIOS]}
    log("masked acc %s" % [round(r["accuracy"], 4) for r in res["masked_accuracy"]["results"]])

    # greedy block agreement with the verifier
    prompts, stride = prompts_from(held)
    ref = ar_greedy(models["verifier"], prompts, DRAFT_LEN, bad)
    res["agreement"]["protocol"] = (
        "%d prompts of %d held-out tokens starting every %d tokens of the tokenized held-out text; reference = the "
        "verifier's greedy continuation of %d tokens; drafter block compared position by position; accepted per "
        "verification = matched prefix length + 1 (the verifier's bonus/correction token), so 9 when all %d match. "
        "<|mask|>, <|im_start|>, <|im_end|> are never drafted." % (N_PROMPTS, PREFIX_LEN, stride, DRAFT_LEN,
                                                                  DRAFT_LEN))
    for k in ["ar_kd", "ar_ce"]:
        if k in models:
            res["agreement"][k] = agreement(ar_greedy(models[k], prompts, DRAFT_LEN, bad), ref)
    for mode in ["one_step", "l2r", "confidence"]:
        res["agreement"]["diffusion_" + mode] = agreement(
            diffusion_draft(models["diffusion"], prompts, DRAFT_LEN, ids["<|mask|>"], bad, mode), ref)
    for k, v in res["agreement"].items():
        if k != "protocol":
            log("agreement %s: accepted %.3f per-pos %s" % (k, v["mean_accepted_per_verification"],
                                                            v["per_position_match"]))

    # samples from the verifier
    res["samples"] = []
    for i, p in enumerate(["In the beginning", "And Jesus said unto them,", "The LORD is my shepherd;",
                           "Blessed are the"]):
        res["samples"].append({"prompt": p, "greedy": sample(models["verifier"], tok, p, 48, 0, 0, bad),
                               "t0.8": sample(models["verifier"], tok, p, 48, 0.8, 100 + i, bad)})

    # HF transformers loads the causal directories and gives the same logits
    from transformers import AutoModelForCausalLM, AutoTokenizer
    for k in ["verifier", shipped]:
        hf = AutoModelForCausalLM.from_pretrained(dirs[k], dtype=torch.float32).eval()
        at = AutoTokenizer.from_pretrained(dirs[k])
        x = torch.tensor([at("And God said, Let there be light")["input_ids"]])
        with torch.no_grad():
            diff = (hf(input_ids=x).logits - models[k](input_ids=x).logits).abs().max().item()
        res.setdefault("hf_load_check", {})[k] = {"max_abs_logit_diff": diff, "eos": at.eos_token,
                                                  "mask": at.mask_token}
        log("HF load %s: max |dlogit| %.2e" % (k, diff))
    common.save_json(res, os.path.join(out, "eval_results.json"))
    plot_curves(work, os.path.join(out, "loss_curves.png"))
    log("export done")
