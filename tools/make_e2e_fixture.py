#!/usr/bin/env python3
"""Builds tests/data/e2e/qwen2-chat: a tiny random Qwen2 checkpoint whose vocabulary matches the
Qwen2-flavour fixture tokenizer (tests/data/tokenizers/qwen2), with a ChatML chat template, and the
HF reference outputs the command-line tests compare against:

  score.json     per-token log-probabilities of a text (HF Qwen2ForCausalLM, fp32)
  greedy.json    HF generate(do_sample=False) token ids for a prompt

Deterministic (fixed seed). Run from the repo root: python3 tools/make_e2e_fixture.py
"""
import json
import os
import shutil

import torch
from tokenizers import Tokenizer
from transformers import Qwen2Config, Qwen2ForCausalLM

ROOT = os.path.join("tests", "data", "e2e", "qwen2-chat")
TOK = os.path.join("tests", "data", "tokenizers", "qwen2", "tokenizer.json")

CHATML = (
    "{%- for message in messages %}{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def main():
    torch.manual_seed(1234)
    os.makedirs(ROOT, exist_ok=True)
    tok = Tokenizer.from_file(TOK)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    eos = tok.token_to_id("<|im_end|>")
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      eos_token_id=eos, bos_token_id=None, attn_implementation="eager")
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.25 * torch.randn_like(p))
    model.save_pretrained(ROOT, safe_serialization=True)
    shutil.copy(TOK, os.path.join(ROOT, "tokenizer.json"))
    with open(os.path.join(ROOT, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "model_max_length": 128}, f, indent=1)
    with open(os.path.join(ROOT, "generation_config.json"), "w") as f:
        json.dump({"do_sample": False, "eos_token_id": eos}, f, indent=1)

    text = "In the beginning God created the heaven and the earth."
    ids = tok.encode(text, add_special_tokens=False).ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    logprobs = [None] + [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]
    with open(os.path.join(ROOT, "score.json"), "w") as f:
        json.dump({"text": text, "tokens": ids, "logprobs": logprobs}, f, indent=1)

    prompt = "And God said"
    pids = tok.encode(prompt, add_special_tokens=False).ids
    with torch.no_grad():
        out = model.generate(torch.tensor([pids]), max_new_tokens=24, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)
    gen = out[0, len(pids):].tolist()
    with open(os.path.join(ROOT, "greedy.json"), "w") as f:
        json.dump({"prompt": prompt, "prompt_tokens": pids, "tokens": gen,
                   "text": tok.decode(gen, skip_special_tokens=True)}, f, indent=1)
    print("wrote", ROOT, "vocab", vocab, "greedy", gen[:8], "...")

    # Drafters sharing the tokenizer: the verifier's weights plus noise, so that they agree with it
    # often but not always (exercises both accepting and rejecting paths).
    mask = tok.token_to_id("<mask>")
    for name, noise, dream in (("qwen2-ar-drafter", 0.08, False), ("dream-drafter", 0.01, True)):
        out_dir = os.path.join("tests", "data", "e2e", name)
        os.makedirs(out_dir, exist_ok=True)
        d = Qwen2ForCausalLM(cfg).eval()
        with torch.no_grad():
            for (n1, p1), (n2, p2) in zip(model.named_parameters(), d.named_parameters()):
                p2.copy_(p1 + noise * torch.randn_like(p1) * p1.abs().mean())
        d.save_pretrained(out_dir, safe_serialization=True)
        shutil.copy(TOK, os.path.join(out_dir, "tokenizer.json"))
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"chat_template": CHATML, "eos_token": "<|im_end|>"}, f, indent=1)
        if dream:
            with open(os.path.join(out_dir, "config.json")) as f:
                c = json.load(f)
            c["model_type"] = "Dream"
            c["architectures"] = ["DreamModel"]
            c["mask_token_id"] = mask
            with open(os.path.join(out_dir, "config.json"), "w") as f:
                json.dump(c, f, indent=1)
        print("wrote", out_dir)


if __name__ == "__main__":
    main()
