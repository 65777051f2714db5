"""Shared pieces of the tiny-model training pipeline: tokenizer, model configs, data windows.

Everything here is deterministic given the seed; see train_all.py for the pipeline.
"""
import json
import os

import numpy as np
import torch

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
VOCAB_SIZE = 4096
SEQ_LEN = 256  # training window and held-out scoring window

# Model shapes.  FLOPs per token are counted as 2 * (non-embedding params + LM head params).
VERIFIER = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
                num_key_value_heads=2)
DRAFTER = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2)


def build_tokenizer(train_txt_path, out_path):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([train_txt_path], trainer)
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit("tokenizer has %d tokens, wanted %d" % (tok.get_vocab_size(), VOCAB_SIZE))
    tok.save(out_path)
    return tok


def special_ids(tok):
    return {s: tok.token_to_id(s) for s in SPECIALS}


def qwen2_config(shape, tok, **kw):
    from transformers import Qwen2Config
    ids = special_ids(tok)
    return Qwen2Config(vocab_size=VOCAB_SIZE, max_position_embeddings=1024, rope_theta=10000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                       bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
                       pad_token_id=ids["<|endoftext|>"], attention_dropout=0.0, use_cache=True,
                       use_sliding_window=False, **shape, **kw)


def hf_sizes(c):
    """The size fields of a Qwen2-style HF config.json, taken from the model config c."""
    names = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads")
    return {k: getattr(c, k) for k in names}


def count_flops_params(model):
    """Non-embedding parameters plus the LM head (counted even when tied)."""
    n = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name or "lm_head" in name:
            continue
        n += p.numel()
    n += model.config.vocab_size * model.config.hidden_size
    return n


def encode_file(tok, path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return np.array(tok.encode(text).ids, dtype=np.int32)


def windows(ids, seq_len=SEQ_LEN):
    """Non-overlapping windows of seq_len tokens (the tail shorter than seq_len is dropped)."""
    n = len(ids) // seq_len
    return torch.from_numpy(ids[: n * seq_len].astype(np.int64)).view(n, seq_len)


def save_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
