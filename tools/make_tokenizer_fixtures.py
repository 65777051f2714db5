#!/usr/bin/env python3
"""make_tokenizer_fixtures.py - reference fixtures for model/tokenizer.c.

Trains two small byte-level BPE tokenizers with HF `tokenizers` on a multilingual text generated
here (so CJK, accents and emoji get merges of their own):

  gpt2   ByteLevel pre-tokenizer with the GPT-2 regex, special <|endoftext|>
  qwen2  NFC normaliser + Split(Qwen2 regex, Isolated) + ByteLevel(use_regex=False), specials
         <|endoftext|> <|im_start|> <|im_end|>, plus a few added tokens that exercise the
         special / non-special, lstrip and rstrip flags

Each is written as tests/data/tokenizers/<name>/tokenizer.json (merges as HF saves them: pairs)
and tests/data/tokenizers/<name>-strmerges/tokenizer.json (the same tokenizer, merges as "a b"
strings), tests/data/tokenizers/gpt2-ignoremerges/ is gpt2 with model.ignore_merges set (and its own
expected.tsv), and tests/data/tokenizers/<name>/expected.tsv holds what HF gives for hard strings:

  # tandem-tokenizer-fixture v1 tokenizers=<version> tokenizer=<name> cases=<n>
  <hex utf8 text>\t<ids, specials parsed>\t<ids, specials as text>\t<hex decode>\t<hex decode skip special>

ids are space-separated decimal ("-" for none: the empty string); decode columns are HF
`decode(ids, skip_special_tokens=False/True)` of the first ids column. Run from the repo root:
    python3 tools/make_tokenizer_fixtures.py
"""
import json
import os
import random
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, trainers

OUT = os.path.join("tests", "data", "tokenizers")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

EN = ("the quick brown fox jumps over the lazy dog while the people of the town watch and "
      "don't say a word; she's sure they'll come back, I'm not, we've seen it before. "
      "It was the best of times, it was the worst of times, it was the age of wisdom. "
      "Numbers like 12345, 3.14159 and 2024-06-01 appear in reports and tables. "
      "def main(argc, argv): return 0  # code has brackets {} [] () and operators == != <= >=")
FR = "Le café est très élégant; où est la bibliothèque? Ça coûte deux euros, merci beaucoup à vous."
DE = "Die Straße ist schön, Grüße aus München! Übermäßig große Bäume wachsen über der Brücke."
ES = "El niño comió piñata en la mañana; ¿dónde está la estación? ¡Qué día tan bonito!"
RU = "Привет, как дела? Москва — столица России, а Петербург стоит на Неве."
ZH = "我们今天去公园散步，天气非常好。中文分词是一个有趣的问题，机器学习模型需要大量数据。你好世界！"
JA = "こんにちは、世界。東京は日本の首都です。カタカナとひらがなを勉強しています。"
KO = "안녕하세요 세계. 한국어 문장은 띄어쓰기를 사용합니다. 감사합니다!"
AR = "مرحبا بالعالم، كيف حالك اليوم؟ اللغة العربية جميلة."
EMOJI = ("I love pizza 🍕🍕 and coffee ☕! Family: 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 thumbs 👍🏽 hearts ❤️❤️ "
         "rocket 🚀 smile 😀😀😀 party 🎉")


def corpus():
    rnd = random.Random(1234)
    paras = [EN, FR, DE, ES, RU, ZH, JA, KO, AR, EMOJI]
    lines = []
    for _ in range(60):
        for p in paras:
            words = p.split(" ")
            rnd.shuffle(words)
            lines.append(p)
            lines.append(" ".join(words[: max(3, len(words) // 2)]))
        lines.append(" ".join(str(rnd.randint(0, 10**rnd.randint(1, 9))) for _ in range(8)))
        lines.append("\t".join(rnd.choice(["if", "else", "for", "while", "x", "y"]) for _ in range(6)))
    return lines


def train_gpt2(lines):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=2,
                                  special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def train_qwen2(lines):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1800, min_frequency=2,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)
    # Added tokens beyond the specials: a non-special one (like Qwen's <tool_call>), one with
    # lstrip and one with rstrip, so the C side is checked against HF on those flags too.
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False),
                            AddedToken("<sep>", rstrip=True, special=True, normalized=False)])
    return tok


def hard_strings(specials):
    s = [
        "", " ", "  ", "hello", "Hello world", " leading space", "trailing space ", "  both  ",
        "café", "cafe\u0301", "e\u0301e\u0301e\u0301", "Ame\u0301lie et Zoe\u0308", "\u212b ohm \u2126",
        "élégant très où", "Straße Grüße", "¿Qué? ¡Sí!",
        "我们今天去公园散步", "你好，世界！", "東京は日本の首都です", "안녕하세요 세계", "Привет, мир",
        "مرحبا بالعالم",
        "🍕", "👨‍👩‍👧‍👦", "I ❤️ 🇫🇷 and 👍🏽!", "😀😀😀😀😀", "mixed: abc中文123ñ😀é",
        "a  b   c    d", "tab\there", "\t\t\tindent", "line1\nline2", "\n\n\n", "crlf\r\nnext\r\n",
        "\r\n\r\n", " \n \n ", "spaces then newline   \n  x", "end with newline\n",
        "1234567890123456789", "3.14159 2024-06-01 1,000,000", "x=42;y=-7", "007",
        "don't", "I'LL", "she's", "they've we'd you're I'm", "DON'T STOP", "rock 'n' roll'",
        "def f(x):\n    return x ** 2  # square\n", "{\"key\": [1, 2, 3]}", "a<b>c</b>",
        "\u00a0nbsp\u00a0", "zero\u200bwidth", "\x00nul\x01ctl\x7f", "\u3000ideographic space",
    ]
    for sp in specials:
        s += [sp, "a" + sp + "b", "text " + sp + " more", sp + sp, "x" + sp[:-1], sp + "\n" + sp]
    s.append("<|im_start|>user\nHello, 世界!<|im_end|>\n<|im_start|>assistant\n")
    s.append("<|endoftext|>caf\u0301e")
    s.append("<|endoftext|>\u0301")
    rnd = random.Random(99)
    pool = list("abcdefghijklmnopqrstuvwxyz ABC  \t\n\r'0123456789.,!?-_()éèüößñçà")
    pool += list("我们世界日本안녕Привет") + ["😀", "👍", "\u200d", "\u0301", "🇫", "🇷", "<|endoftext|>"]
    for _ in range(60):
        s.append("".join(rnd.choice(pool) for _ in range(rnd.randint(1, 40))))
    # Code points from many blocks, including the whitespace edge cases where regex engines
    # disagree (U+0085 is White_Space, U+180E no longer is): HF's engine is the reference.
    s += ["\u180e's", "a\u0085b  \u180e x", "x \u180e\u180e y\u0085\u0085'LL", "\u2028\u2029 z"]
    blocks = [(0x20, 0x7e), (0x9, 0xd), (0xa0, 0x24f), (0x300, 0x36f), (0x370, 0x4ff),
              (0x590, 0x6ff), (0x900, 0x97f), (0xe00, 0xe7f), (0x1100, 0x11ff), (0x1680, 0x1680),
              (0x180e, 0x180e), (0x2000, 0x206f), (0x20a0, 0x214f), (0x2460, 0x24ff),
              (0x3000, 0x30ff), (0x4e00, 0x4fff), (0xac00, 0xacff), (0xff00, 0xffef),
              (0x1f300, 0x1f6ff), (0x1f900, 0x1f9ff), (0x10000, 0x1007f), (0x1d400, 0x1d7ff),
              (0xe0000, 0xe007f), (0x85, 0x85)]
    extras = [" ", "  ", "\n", "'s", "'LL", "123", "<|endoftext|>", "\r\n", "\t"]
    for _ in range(150):
        out = []
        for _ in range(rnd.randint(1, 40)):
            lo, hi = rnd.choice(blocks)
            out.append(chr(rnd.randint(lo, hi)))
            if rnd.random() < 0.2:
                out.append(rnd.choice(extras))
        s.append("".join(out))
    s.append(EN + "\n" + FR + "\n" + ZH + "\n" + EMOJI)
    return s


def write_strmerges(path_in, path_out):
    with open(path_in, encoding="utf-8") as f:
        js = json.load(f)
    merges = js["model"]["merges"]
    if merges and isinstance(merges[0], list):
        js["model"]["merges"] = [a + " " + b for a, b in merges]
    else:
        js["model"]["merges"] = [m.split(" ", 1) for m in merges]
    os.makedirs(os.path.dirname(path_out), exist_ok=True)
    with open(path_out, "w", encoding="utf-8") as f:
        json.dump(js, f, ensure_ascii=False, indent=1)


def ids_col(ids):
    return " ".join(map(str, ids)) if ids else "-"


def write_expected(name, tok, texts, path):
    rows = []
    for t in texts:
        tok.encode_special_tokens = False
        ids = tok.encode(t, add_special_tokens=False).ids
        tok.encode_special_tokens = True
        ids_plain = tok.encode(t, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        dec = tok.decode(ids, skip_special_tokens=False)
        dec_skip = tok.decode(ids, skip_special_tokens=True)
        rows.append("\t".join([t.encode("utf-8").hex(), ids_col(ids), ids_col(ids_plain),
                               dec.encode("utf-8").hex(), dec_skip.encode("utf-8").hex()]))
    with open(path, "w", encoding="utf-8") as f:
        f.write("# tandem-tokenizer-fixture v1 tokenizers=%s tokenizer=%s cases=%d\n"
                % (tokenizers.__version__, name, len(rows)))
        for r in rows:
            f.write(r + "\n")


def main():
    lines = corpus()
    for name, train, specials in [
        ("gpt2", train_gpt2, ["<|endoftext|>"]),
        ("qwen2", train_qwen2, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>",
                                "<mask>", "<sep>"]),
    ]:
        tok = train(lines)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "tokenizer.json")
        tok.save(path, pretty=True)
        alt = os.path.join(OUT, name + "-strmerges", "tokenizer.json")
        write_strmerges(path, alt)
        texts = hard_strings(specials)
        # The converted file must be the same tokenizer to HF before it is a fixture.
        tok2 = Tokenizer.from_file(alt)
        for t in texts:
            a = tok.encode(t, add_special_tokens=False).ids
            b = tok2.encode(t, add_special_tokens=False).ids
            if a != b:
                sys.exit("merge-format conversion changed the encoding of %r" % t)
        write_expected(name, tok, texts, os.path.join(d, "expected.tsv"))
        if name == "gpt2":
            # Llama-3 style flag: a pre-token that is a whole vocabulary entry skips the merges.
            with open(path, encoding="utf-8") as f:
                js = json.load(f)
            js["model"]["ignore_merges"] = True
            d3 = os.path.join(OUT, name + "-ignoremerges")
            os.makedirs(d3, exist_ok=True)
            with open(os.path.join(d3, "tokenizer.json"), "w", encoding="utf-8") as f:
                json.dump(js, f, ensure_ascii=False, indent=1)
            tok3 = Tokenizer.from_file(os.path.join(d3, "tokenizer.json"))
            write_expected(name + "-ignoremerges", tok3, texts, os.path.join(d3, "expected.tsv"))
        print("%s: vocab %d, %d cases -> %s" % (name, tok.get_vocab_size(), len(texts), d))


if __name__ == "__main__":
    main()
