#!/usr/bin/env python3
"""Plan-annotated training data for the bundled tiny planned-diffusion model (models/tiny-planned).

  python3 tools/train/planned_data.py [--out build/train/planned] [--check]

Source: build/train/corpus/train.txt only (the training books; the held-out books are not in it).
It is split into chapters (blank lines, `<|endoftext|>` between books); within a chapter, verse v
is the prompt and the next k verses (k = 1, 2 or 3, uniform) are the answer, one span per verse.

Token layout of one example (ids; the tokenizer is models/tiny-verifier/tokenizer.json with the six
planned-diffusion tags appended as special added tokens 4096..4101):

  PROMPT  = encode(verse v)                                   (no newline; nothing added)
  per answer verse j (topic T_j, span S_j):
    S_j   = encode("\\n" + verse)                             (its own line in the cleaned output)
    N_j   = ceil(len(S_j) / 10)                               (1..MAX_UNITS)
    T_j   = the verse's first 3 words, trailing punctuation stripped (digits removed)
    PLAN_j = <promise>-<topic> + encode(" " + T_j + " " + str(N_j)) + </topic>
  sequence = PROMPT PLAN_1..PLAN_k  [<async> S_j [PAD]*(10 N_j - len S_j) </async>]_j  EOS

Digits: the Qwen2 pre-tokenizer splits every digit into its own pre-token and never joins a space to
a digit, so " 3" is the tokens " " (whitespace) and "3" (a digit); "12" is "1" "2": exactly one
digit run per promise, as td_plan_parse requires. A verse whose opening words hold a digit would
give two numbers; digits are removed from topics (KJV verses have none anyway).

How the runtime reads it (drafter/planned.c): the planner writes PLAN tokens then EOS (the stage's
terminator); EOS is removed and the scaffold is placed right after the plan, so at inference the
scaffold starts at the position of the first `<async>` above, and the EOS the planner emits is
predicted by the row of the last `</topic>`. The trailing EOS of the stored sequence is therefore a
label only: train_planned.py uses it as the AR target of the last plan token (`plan_end - 1`) and
never feeds it as an input.

Examples are kept when the whole sequence fits SEQ_CAP tokens and every span fits MAX_UNITS tens.
Output: <out>/train.pt with a list of dicts {ids: int32 tensor (the sequence without the final
EOS), n_prompt, plan_end, spans: [(lo, hi)] (lo = `<async>` index, hi = one past `</async>`)} and
<out>/samples.txt (a few decoded examples). --check runs the round trip: every example's plan is
parsed by a Python mirror of td_plan_parse and must give exactly the spans that were written.
"""
import argparse
import math
import os
import re
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TAGS = ["<async>", "</async>", "<promise>-<topic>", "</topic>", "<sync/>", "[PAD]"]
EOS_ID = 0
MASK_ID = 3
MAX_UNITS = 6       # spans of at most 60 tokens
SEQ_CAP = 256       # the drafter was trained on 256-token windows
TOPIC_WORDS = 3


def load_tokenizer(path=None):
    """The verifier's tokenizer with the six tags appended (ids 4096..4101)."""
    from tokenizers import AddedToken, Tokenizer
    tok = Tokenizer.from_file(path or os.path.join(ROOT, "models", "tiny-verifier", "tokenizer.json"))
    base = tok.get_vocab_size()
    if tok.token_to_id(TAGS[0]) is None:
        tok.add_special_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False,
                                           normalized=False, special=True) for t in TAGS])
    ids = [tok.token_to_id(t) for t in TAGS]
    assert ids == list(range(4096, 4102)) and base in (4096, 4102), (ids, base)
    return tok


def tag_ids(tok):
    return {t: tok.token_to_id(t) for t in TAGS}


def chapters(train_txt):
    """Lists of verses, one list per chapter (blank line between chapters, EOS line between books)."""
    out, cur = [], []
    with open(train_txt, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip() or line.strip() == "<|endoftext|>":
                if cur:
                    out.append(cur)
                cur = []
            else:
                cur.append(line)
    if cur:
        out.append(cur)
    return out


def topic_of(verse):
    words = re.sub(r"[0-9]", "", verse).split()[:TOPIC_WORDS]
    t = " ".join(words).rstrip(".,;:!?'\"()")
    return t if t else "verse"


def make_example(tok, tags, prompt_verse, answer_verses):
    """(dict, None) or (None, reason)."""
    prompt = tok.encode(prompt_verse).ids
    plan, spans_tok, units = [], [], []
    for v in answer_verses:
        s = tok.encode("\n" + v).ids
        n = math.ceil(len(s) / 10)
        if n > MAX_UNITS:
            return None, "long span"
        body = tok.encode(" %s %d" % (topic_of(v), n)).ids
        plan += [tags["<promise>-<topic>"]] + body + [tags["</topic>"]]
        spans_tok.append(s)
        units.append(n)
    seq = list(prompt) + plan
    plan_end = len(seq)
    spans = []
    for s, n in zip(spans_tok, units):
        lo = len(seq)
        seq += [tags["<async>"]] + s + [tags["[PAD]"]] * (10 * n - len(s)) + [tags["</async>"]]
        spans.append((lo, len(seq)))
    if len(seq) + 1 > SEQ_CAP:
        return None, "too long"
    return {"ids": torch.tensor(seq, dtype=torch.int32), "n_prompt": len(prompt), "plan_end": plan_end,
            "spans": spans, "units": units}, None


def build(tok, train_txt, seed, per_chapter_cap=None):
    rng = np.random.RandomState(seed)
    tags = tag_ids(tok)
    examples, skipped = [], {}
    for ch in chapters(train_txt):
        for v in range(len(ch) - 1):
            k = int(rng.randint(1, 4))
            k = min(k, len(ch) - 1 - v)
            ex, why = make_example(tok, tags, ch[v], ch[v + 1:v + 1 + k])
            if ex is None and k > 1:  # try fewer verses before giving up
                ex, why = make_example(tok, tags, ch[v], ch[v + 1:v + 2])
            if ex is None:
                skipped[why] = skipped.get(why, 0) + 1
                continue
            examples.append(ex)
    return examples, skipped


# ------------------------------------------------------------------ mirror of td_plan_parse
class PlanError(Exception):
    pass


def token_kinds(tok):
    """Per id: (kind, ndigits, value) as td_plan_tags_init classifies the token's bytes (added
    tokens are never digits)."""
    from tokenizers import decoders
    dec = decoders.ByteLevel()
    added = set(tok.get_added_tokens_decoder().keys())
    kinds = {}
    for tid in range(tok.get_vocab_size()):
        if tid in added:
            kinds[tid] = (0, 0, 0)
            continue
        piece = tok.id_to_token(tid)
        b = dec.decode([piece]).encode("utf-8", "surrogateescape")
        i = 0
        while i < len(b) and b[i:i + 1] in (b" ", b"\t", b"\n", b"\r"):
            i += 1
        ws = i
        nd = v = 0
        while i < len(b) and b[i:i + 1].isdigit():
            if nd < 3:
                v = v * 10 + (b[i] - 48)
            nd += 1
            i += 1
        if i != len(b) or len(b) == 0:
            kinds[tid] = (0, 0, 0)
        elif nd == 0:
            kinds[tid] = (1, 0, 0)
        else:
            kinds[tid] = (3 if ws else 2, min(nd, 3), v if nd <= 2 else 0)
    return kinds


def _length(toks, a, b, kinds):
    runs = digits = value = 0
    prev = False
    cur_d = cur_v = 0
    for i in range(a, b + 1):
        k, nd, v = kinds.get(toks[i], (0, 0, 0)) if i < b else (0, 0, 0)
        cont = k == 2 and prev
        if prev and not cont:
            runs += 1
            digits, value = cur_d, cur_v
        if k in (2, 3):
            if not cont:
                cur_d = cur_v = 0
                if runs >= 1:
                    raise PlanError("two numbers at %d" % i)
            cur_d += nd
            if cur_d <= 2:
                cur_v = cur_v * (100 if nd == 2 else 10) + v
            prev = True
        else:
            prev = False
    if runs == 0:
        raise PlanError("no length")
    if digits > 2 or value == 0:
        raise PlanError("bad length")
    return value


def parse_plan(toks, tags, kinds, eos=EOS_ID):
    """Returns ([units], end) with end in {'none', 'sync', 'eos'}; raises PlanError like the C parser."""
    units, open_at = [], -1
    for i, t in enumerate(toks):
        if t in (tags["<async>"], tags["</async>"]):
            raise PlanError("async tag in plan at %d" % i)
        if t == tags["<promise>-<topic>"]:
            if open_at >= 0:
                raise PlanError("nested promise at %d" % i)
            open_at = i
            continue
        if t == tags["</topic>"]:
            if open_at < 0:
                raise PlanError("</topic> without promise at %d" % i)
            if len(units) >= 64:
                raise PlanError("too many spans")
            units.append(_length(toks, open_at + 1, i, kinds))
            open_at = -1
            continue
        if t == tags["<sync/>"] or t == eos:
            if open_at >= 0:
                raise PlanError("unterminated promise")
            if i != len(toks) - 1:
                raise PlanError("tokens after terminator")
            return units, "sync" if t == tags["<sync/>"] else "eos"
    if open_at >= 0:
        raise PlanError("unterminated promise at end")
    return units, "none"


def check(tok, examples):
    tags, kinds = tag_ids(tok), token_kinds(tok)
    # the parser mirror itself on hand-made cases (the C tests' accept/reject rules)
    P, C = tags["<promise>-<topic>"], tags["</topic>"]
    enc = lambda s: tok.encode(s).ids  # noqa: E731
    assert parse_plan([P] + enc(" And God said 3") + [C, EOS_ID], tags, kinds) == ([3], "eos")
    assert parse_plan([P] + enc(" x 12") + [C, tags["<sync/>"]], tags, kinds) == ([12], "sync")
    for bad in ([P] + enc(" x 0") + [C], [P] + enc(" x 123") + [C], [P] + enc(" x 1 2") + [C],
                [P] + enc(" x") + [C], [P, P], [C], [P] + enc(" x 1"), [tags["<async>"]],
                [P] + enc(" x 1") + [C, EOS_ID, 5]):
        try:
            parse_plan(bad, tags, kinds)
        except PlanError:
            continue
        raise SystemExit("parser mirror accepted a bad plan: %s" % bad)
    for n, ex in enumerate(examples):
        ids = ex["ids"].tolist()
        stage = ids[ex["n_prompt"]:ex["plan_end"]] + [EOS_ID]  # what the planner must write
        units, end = parse_plan(stage, tags, kinds)
        assert end == "eos" and units == ex["units"], (n, units, ex["units"])
        at = ex["plan_end"]
        for (lo, hi), u in zip(ex["spans"], units):  # the scaffold td_planned_scaffold builds
            assert lo == at and hi - lo == 10 * u + 2 and ids[lo] == tags["<async>"] and \
                ids[hi - 1] == tags["</async>"], n
            body = ids[lo + 1:hi - 1]
            assert all(t not in tags.values() or t == tags["[PAD]"] for t in body), n
            at = hi
        assert at == len(ids), n
    return len(examples)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=os.path.join(ROOT, "build", "train", "corpus", "train.txt"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "train", "planned"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--check", action="store_true", help="round-trip every plan through the parser mirror")
    a = ap.parse_args()
    if not os.path.exists(a.corpus):
        raise SystemExit("%s missing: run python3 tools/train/prepare_corpus.py" % a.corpus)
    tok = load_tokenizer()
    examples, skipped = build(tok, a.corpus, a.seed)
    os.makedirs(a.out, exist_ok=True)
    torch.save({"examples": examples, "seed": a.seed, "skipped": skipped}, os.path.join(a.out, "train.pt"))
    lens = [len(e["ids"]) for e in examples]
    nsp = [len(e["spans"]) for e in examples]
    print("examples %d (skipped %s), tokens %d, mean length %.1f, spans per example 1/2/3: %s" % (
        len(examples), skipped, sum(lens), float(np.mean(lens)), [nsp.count(i) for i in (1, 2, 3)]))
    with open(os.path.join(a.out, "samples.txt"), "w") as f:
        for ex in examples[:: max(1, len(examples) // 5)][:5]:
            f.write(tok.decode(ex["ids"].tolist() + [EOS_ID], skip_special_tokens=False) + "\n\n")
    if a.check:
        print("round trip ok: %d plans parsed back to their spans" % check(tok, examples))


if __name__ == "__main__":
    sys.exit(main())
