#!/usr/bin/env python3
"""make_model_fixtures.py - tiny random checkpoints in real HF layouts plus reference logits.

For each supported family (qwen2, qwen2-untied, llama, dream, llada, gpt2, diffugpt, and a sharded
qwen2) this builds a tiny random model with the real HF transformers module, writes it in the layout
users bring (config.json + model.safetensors, or shards + index), once with float32 weights and once
with the same weights rounded to bfloat16, and records reference logits for a set of forward cases
(causal, bidirectional, block-causal, explicit mask, KV cache filled in chunks, a batch of two
sequences). tests/test_model_golden.c replays the cases through td_model_forward.

Output (under tests/data/models/ by default):
  <name>/config.json, <name>/model.safetensors            float32 weights
  <name>/ref/<case>.json, <name>/ref/<case>.bin           HF float32 logits
  <name>-bf16/...                                         the same weights rounded to bfloat16
  <name>-bf16/ref/<case>.bin                              HF logits computed in bfloat16 (loose check)
  <name>-bf16/ref/<case>.f32.bin                          HF float32 on the bf16-rounded weights (tight)

Logits files: 8-byte magic "TDLOGIT1", u32 version (1), u32 n_rows, u32 n_vocab, then float32
[n_rows, n_vocab], little-endian. Deterministic from SEED. Run from the repo root:
    python3 tools/make_model_fixtures.py [--out tests/data/models]
"""

import argparse
import json
import os
import shutil
import struct
import sys

import torch
from safetensors.torch import save_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)
from transformers.cache_utils import DynamicCache

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train"))
from common import hf_sizes  # noqa: E402

SEED = 20240611
MAGIC = b"TDLOGIT1"
VERSION = 1

VOCAB = 160
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FF = 128
MAX_POS = 64
SEQ_LEN = 12
BLOCK = 4
CHUNKS = [5, 4, 3]
BATCH_LENS = [7, 10]


# --- model construction ------------------------------------------------------------------------


def qwen2_config(tied, theta):
    c = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FF,
                    num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                    num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POS, rope_theta=theta,
                    rms_norm_eps=1e-6, tie_word_embeddings=tied, bos_token_id=VOCAB - 3,
                    eos_token_id=VOCAB - 2, attn_implementation="eager")
    return c


def llama_config(theta, eps):
    return LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FF + 44,
                       num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                       num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POS,
                       rope_theta=theta, rms_norm_eps=eps, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2,
                       attn_implementation="eager")


def gpt2_config():
    return GPT2Config(vocab_size=VOCAB, n_positions=MAX_POS, n_embd=HIDDEN, n_layer=LAYERS,
                      n_head=HEADS, n_inner=FF, activation_function="gelu_new",
                      layer_norm_epsilon=1e-5, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
                      attn_implementation="eager")


def reinit(model, gen):
    """Re-initialises every parameter so the logits are O(1): default HF init (std 0.02) gives
    near-zero logits, which would make any tolerance meaningless."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln_" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "wte" in name or "embed_tokens" in name or "wpe" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                # Conv1D stores [in, out]; Linear stores [out, in]: fan_in is the input side.
                fan_in = p.shape[0] if "c_attn" in name or "c_fc" in name or "c_proj" in name \
                    else p.shape[1]
                std = 1.3 / fan_in ** 0.5
                if "lm_head" in name:
                    std = 0.3
                p.copy_(std * torch.randn(p.shape, generator=gen))


def round_bf16_(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


# --- saving ------------------------------------------------------------------------------------


def state_for_save(model, dtype):
    """The state dict as HF save_pretrained writes it: tied heads and non-persistent buffers
    dropped (GPT-2's attn.bias / masked_bias are not saved either)."""
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"):
            continue
        if k == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        out[k] = v.detach().to(dtype).contiguous().clone()
    return out


def write_config(path, cfg):
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def hf_config_dict(model, dtype_name):
    cfg = json.loads(model.config.to_json_string(use_diff=False))
    # Checkpoints on the hub carry rope_theta at the top level (transformers 5 writes
    # rope_parameters); keep both so a loader can read either.
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and "rope_theta" in rp:
        cfg["rope_theta"] = rp["rope_theta"]
    cfg["torch_dtype"] = dtype_name
    cfg["dtype"] = dtype_name
    cfg.pop("_attn_implementation_autoset", None)
    return cfg


def save_hf(model, path, dtype, dtype_name, shards=1, strip_prefix=None):
    os.makedirs(path, exist_ok=True)
    sd = state_for_save(model, dtype)
    if strip_prefix:
        sd = {k.removeprefix(strip_prefix): v for k, v in sd.items()}
    if shards == 1:
        save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        names = list(sd.keys())
        per = (len(names) + shards - 1) // shards
        weight_map = {}
        total = 0
        for i in range(shards):
            fname = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
            part = {k: sd[k] for k in names[i * per:(i + 1) * per]}
            save_file(part, os.path.join(path, fname), metadata={"format": "pt"})
            for k, v in part.items():
                weight_map[k] = fname
                total += v.numel() * v.element_size()
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                      sort_keys=True)
            f.write("\n")
    write_config(path, hf_config_dict(model, dtype_name))


def remote_code_head(arch, model_type, stem, config_class):
    """The first keys of a config.json whose model code ships with the checkpoint
    (configuration_STEM.py / modeling_STEM.py, as Dream's and LLaDA's do)."""
    return {
        "architectures": [arch],
        "model_type": model_type,
        "auto_map": {"AutoConfig": f"configuration_{stem}.{config_class}",
                     "AutoModel": f"modeling_{stem}.{arch}"},
    }


def save_dream(model, path, dtype, dtype_name):
    os.makedirs(path, exist_ok=True)
    save_file(state_for_save(model, dtype), os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    c = model.config
    cfg = {
        **remote_code_head("DreamModel", "Dream", "dream", "DreamConfig"),
        **hf_sizes(c),
        "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": c.rope_parameters["rope_theta"],
        "rope_scaling": None,
        "rms_norm_eps": c.rms_norm_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": c.num_hidden_layers,
        "attention_dropout": 0.0,
        "mask_token_id": VOCAB - 4,
        "pad_token_id": VOCAB - 3,
        "bos_token_id": VOCAB - 2,
        "eos_token_id": VOCAB - 3,
        "torch_dtype": dtype_name,
    }
    write_config(path, cfg)


LLADA_NAMES = {
    "self_attn.q_proj.weight": "q_proj.weight",
    "self_attn.k_proj.weight": "k_proj.weight",
    "self_attn.v_proj.weight": "v_proj.weight",
    "self_attn.o_proj.weight": "attn_out.weight",
    "mlp.gate_proj.weight": "ff_proj.weight",
    "mlp.up_proj.weight": "up_proj.weight",
    "mlp.down_proj.weight": "ff_out.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ff_norm.weight",
}


def save_llada(model, path, dtype, dtype_name):
    os.makedirs(path, exist_ok=True)
    sd = state_for_save(model, dtype)
    out = {}
    for k, v in sd.items():
        if k == "model.embed_tokens.weight":
            out["model.transformer.wte.weight"] = v
        elif k == "model.norm.weight":
            out["model.transformer.ln_f.weight"] = v
        elif k == "lm_head.weight":
            out["model.transformer.ff_out.weight"] = v
        else:
            parts = k.split(".")  # model.layers.{i}.<rest>
            assert parts[0] == "model" and parts[1] == "layers", k
            rest = ".".join(parts[3:])
            out["model.transformer.blocks.%s.%s" % (parts[2], LLADA_NAMES[rest])] = v
    save_file(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    c = model.config
    cfg = {
        **remote_code_head("LLaDAModelLM", "llada", "llada", "LLaDAConfig"),
        "d_model": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "n_kv_heads": c.num_key_value_heads,
        "mlp_hidden_size": c.intermediate_size,
        "mlp_ratio": 4,
        "vocab_size": c.vocab_size,
        "embedding_size": c.vocab_size,
        "max_sequence_length": c.max_position_embeddings,
        "rope": True,
        "rope_theta": c.rope_parameters["rope_theta"],
        "rms_norm_eps": c.rms_norm_eps,
        "layer_norm_type": "rms",
        "activation_type": "silu",
        "block_type": "llama",
        "alibi": False,
        "attention_layer_norm": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "weight_tying": False,
        "mask_token_id": VOCAB - 5,
        "eos_token_id": VOCAB - 2,
        "pad_token_id": VOCAB - 2,
        "torch_dtype": dtype_name,
    }
    write_config(path, cfg)


def save_diffugpt(model, path, dtype, dtype_name):
    # GPT-2 weights named as in the hub's original GPT-2 file (wte.weight, h.0.attn.c_attn.weight,
    # no "transformer." prefix); the gpt2 fixture keeps the prefix save_pretrained writes, so the
    # loader is exercised on both layouts.
    save_hf(model, path, dtype, dtype_name, strip_prefix="transformer.")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["DiffuGPTLMHeadModel"]
    cfg["model_type"] = "gpt2"
    cfg["mask_token_id"] = VOCAB - 6
    write_config(path, cfg)


# --- masks and reference runs ------------------------------------------------------------------


def visible(kind, n, explicit=None):
    """[n, n] bool: query i may see key position j (single sequence at positions 0..n-1)."""
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    if kind == "causal":
        return k <= q
    if kind == "bidir":
        return torch.ones(n, n, dtype=torch.bool)
    if kind == "block":
        return (k // BLOCK) <= (q // BLOCK)
    if kind == "explicit":
        return explicit.clone()
    raise ValueError(kind)


def mask4d(vis, dtype):
    m = torch.zeros(vis.shape, dtype=dtype)
    m.masked_fill_(~vis, torch.finfo(dtype).min)
    return m[None, None]


def run(model, tokens, dtype, vis=None):
    """Logits [n, vocab] as float32 for one sequence at positions 0..n-1; vis=None uses the
    model's own causal masking (no mask argument)."""
    ids = torch.tensor([tokens])
    pos = torch.arange(len(tokens))[None]
    kw = {}
    if vis is not None:
        kw["attention_mask"] = mask4d(vis, dtype)
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=pos, use_cache=False, **kw)
    return out.logits[0].float()


def run_chunks(model, tokens, chunks):
    cache = DynamicCache(config=model.config)
    rows = []
    start = 0
    with torch.no_grad():
        for c in chunks:
            ids = torch.tensor([tokens[start:start + c]])
            pos = torch.arange(start, start + c)[None]
            out = model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True)
            rows.append(out.logits[0].float())
            start += c
    return torch.cat(rows, 0)


def write_logits(path, logits):
    logits = logits.detach().to(torch.float32).contiguous()
    n_rows, n_vocab = logits.shape
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<III", VERSION, n_rows, n_vocab))
        f.write(logits.numpy().astype("<f4").tobytes())


class Cases:
    """The forward cases of one family: token ids and masks shared by every dtype."""

    def __init__(self, gen, default_kind):
        rnd = lambda n: torch.randint(0, VOCAB, (n,), generator=gen).tolist()
        self.default_kind = default_kind
        self.tokens = rnd(SEQ_LEN)
        ex = torch.rand(SEQ_LEN, SEQ_LEN, generator=gen) < 0.45
        ex |= torch.eye(SEQ_LEN, dtype=torch.bool)
        self.explicit = ex
        self.batch = [rnd(n) for n in BATCH_LENS]

    def describe(self):
        """[(name, json description)] with tokens/positions/seqs in C batch order."""
        n = SEQ_LEN
        base = {"tokens": self.tokens, "pos": list(range(n)), "seq": [0] * n, "n_seq": 1,
                "chunks": [n], "block_size": 0, "mask": None}
        out = []
        for kind in ("causal", "bidir", "block", "explicit"):
            d = dict(base, kind=kind)
            if kind == "block":
                d["block_size"] = BLOCK
            if kind == "explicit":
                d["mask"] = self.explicit.int().tolist()
            out.append((kind, d))
        out.append(("kvchunks", dict(base, kind="causal", chunks=list(CHUNKS))))
        toks, pos, seq = [], [], []
        for s, t in enumerate(self.batch):
            toks += t
            pos += list(range(len(t)))
            seq += [s] * len(t)
        out.append(("batch2", {"tokens": toks, "pos": pos, "seq": seq, "n_seq": 2,
                               "chunks": [len(toks)], "kind": self.default_kind,
                               "block_size": 0, "mask": None}))
        return out

    def compute(self, model, dtype):
        """{case name: logits [rows, vocab]} from the HF module in dtype."""
        n = SEQ_LEN
        res = {}
        for kind in ("causal", "bidir", "block", "explicit"):
            res[kind] = run(model, self.tokens, dtype, visible(kind, n, self.explicit))
        res["kvchunks"] = run_chunks(model, self.tokens, CHUNKS)
        rows = []
        for t in self.batch:
            vis = visible(self.default_kind, len(t))
            rows.append(run(model, t, dtype, vis))
        res["batch2"] = torch.cat(rows, 0)
        return res

    def verify(self, model, dtype, res, tag):
        """Checks the masks took effect in HF (a silently ignored mask would make the fixture
        worthless)."""
        n = SEQ_LEN
        tol = 1e-5 if dtype == torch.float32 else 0.05
        plain = run(model, self.tokens, dtype, None)
        d = (plain - res["causal"]).abs().max().item()
        assert d <= tol, "%s: 4D lower-triangular mask != plain causal (%g)" % (tag, d)
        for a, b in (("causal", "bidir"), ("causal", "block"), ("block", "bidir"),
                     ("explicit", "bidir"), ("explicit", "causal")):
            d = (res[a] - res[b]).abs().max().item()
            assert d > 0.05, "%s: %s and %s logits do not differ (%g)" % (tag, a, b, d)
        allv = run(model, self.tokens, dtype, visible("explicit", n,
                                                      torch.ones(n, n, dtype=torch.bool)))
        d = (allv - res["bidir"]).abs().max().item()
        assert d <= tol, "%s: all-ones explicit != bidir (%g)" % (tag, d)
        ctol = 1e-4 if dtype == torch.float32 else 0.1
        d = (res["kvchunks"] - res["causal"]).abs().max().item()
        assert d <= ctol, "%s: chunked KV cache != one-shot causal (%g)" % (tag, d)


# --- families ----------------------------------------------------------------------------------


def build(family, gen):
    if family in ("qwen2", "qwen2-untied", "dream"):
        tied = family == "qwen2"
        theta = 1e6 if family != "qwen2-untied" else 10000.0
        model = Qwen2ForCausalLM(qwen2_config(tied, theta))
    elif family in ("llama", "llada"):
        theta = 10000.0 if family == "llama" else 5e5
        eps = 1e-5 if family == "llama" else 1e-5
        model = LlamaForCausalLM(llama_config(theta, eps))
    elif family in ("gpt2", "diffugpt"):
        model = GPT2LMHeadModel(gpt2_config())
    else:
        raise ValueError(family)
    model.eval()
    reinit(model, gen)
    if hasattr(model, "tie_weights") and model.config.tie_word_embeddings:
        model.tie_weights()
    return model


SAVERS = {
    "qwen2": save_hf, "qwen2-untied": save_hf, "llama": save_hf, "gpt2": save_hf,
    "dream": save_dream, "llada": save_llada, "diffugpt": save_diffugpt,
}
DIFFUSION = {"dream", "llada", "diffugpt"}
FAMILIES = ["qwen2", "qwen2-untied", "llama", "dream", "llada", "gpt2", "diffugpt"]


def write_cases(refdir, descs, results, dtype_name, f32_results=None):
    os.makedirs(refdir, exist_ok=True)
    for name, d in descs:
        d = dict(d, dtype=dtype_name, n_vocab=VOCAB, logits=name + ".bin",
                 reference="transformers %s eager, %s" % (
                     __import__("transformers").__version__, dtype_name))
        write_logits(os.path.join(refdir, name + ".bin"), results[name])
        if f32_results is not None:
            d["logits_f32"] = name + ".f32.bin"
            write_logits(os.path.join(refdir, name + ".f32.bin"), f32_results[name])
        with open(os.path.join(refdir, name + ".json"), "w") as f:
            json.dump(d, f, separators=(",", ":"))
            f.write("\n")


def make_family(family, out, idx):
    gen = torch.Generator().manual_seed(SEED + 101 * idx)
    model = build(family, gen)
    cases = Cases(gen, "bidir" if family in DIFFUSION else "causal")
    descs = cases.describe()
    saver = SAVERS[family]

    # float32 weights, float32 reference.
    res32 = cases.compute(model, torch.float32)
    cases.verify(model, torch.float32, res32, family)
    path = os.path.join(out, family)
    saver(model, path, torch.float32, "float32")
    write_cases(os.path.join(path, "ref"), descs, res32, "float32")
    std = res32["causal"].std().item()
    amax = res32["causal"].abs().max().item()

    sharded = None
    if family == "qwen2":
        sharded = os.path.join(out, "qwen2-sharded")
        save_hf(model, sharded, torch.float32, "float32", shards=2)
        write_cases(os.path.join(sharded, "ref"), descs, res32, "float32")

    # bf16-rounded weights: float32 reference on them (tight) and the HF bf16 run (loose).
    round_bf16_(model)
    res_w = cases.compute(model, torch.float32)
    model16 = model.to(torch.bfloat16)
    res16 = cases.compute(model16, torch.bfloat16)
    cases.verify(model16, torch.bfloat16, res16, family + "-bf16")
    path16 = os.path.join(out, family + "-bf16")
    saver(model16, path16, torch.bfloat16, "bfloat16")
    write_cases(os.path.join(path16, "ref"), descs, res16, "bfloat16", f32_results=res_w)

    spread = max((res16[k] - res_w[k]).abs().max().item() for k in res16)
    wdelta = max((res_w[k] - res32[k]).abs().max().item() for k in res32)
    print("%-13s logit std %.2f max|logit| %.2f  bf16-HF vs f32-on-bf16-weights max %.4f  "
          "(bf16 rounding moves logits by %.4f)" % (family, std, amax, spread, wdelta))
    if std < 1.0:
        sys.exit("%s: logit std %.2f < 1, re-init scale too small" % (family, std))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/data/models")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(args.out):
        p = os.path.join(args.out, name)
        if os.path.isdir(p) and (name.removesuffix("-bf16") in FAMILIES or name == "qwen2-sharded"):
            shutil.rmtree(p)
    for i, fam in enumerate(FAMILIES):
        make_family(fam, args.out, i)


if __name__ == "__main__":
    main()
