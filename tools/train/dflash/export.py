#!/usr/bin/env python3
"""Exports the trained DFlash drafter (issue 13) as the checkpoint directory the C drafter reads
(spec: /work/briefs/dflash-spec.md, docs): config.json + model.safetensors (BF16, the drafter's
own weights only: fc, hidden_norm, layers.*, norm; nothing of the target's).

target.fingerprints: taken from `build/bin/tandem inspect --json <target>` ("fingerprint") for
every --target file; when the binary does not print one yet (the C side adds it) the list stays
empty and a warning says so.

    python3 tools/train/dflash/export.py [--ckpt build/dflash-train/best.pt] [--out models/dflash-smollm2]
"""
import argparse
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def fingerprint(tandem, path):
    try:
        r = subprocess.run([tandem, "inspect", "--json", path], capture_output=True, check=True)
        fp = json.loads(r.stdout).get("fingerprint")
    except (OSError, subprocess.CalledProcessError, ValueError) as e:
        print(f"export: tandem inspect failed on {path}: {e}", file=sys.stderr)
        return None
    return fp


def draft_vocab(data, pad_to=16):
    """Every id of the training sequences (prompt and answer ids of the prompts trained on: those
    with a feature shard, not held out) - the ids train.py's loss ranges over - padded to a multiple
    of pad_to with the smallest ids missing; and the share of held-out answer tokens it covers."""
    sys.path.insert(0, HERE)
    from gen_data import iter_answers
    from train import is_heldout
    ids, held, held_in = set(), [], 0
    for r in iter_answers(data):
        if not os.path.exists(os.path.join(data, f"feat_{r['idx']:05d}.pt")):
            continue
        if is_heldout(r["idx"]):
            held.extend(r["answer_ids"])
        else:
            ids.update(r["prompt_ids"])
            ids.update(r["answer_ids"])
    v = 0
    while len(ids) % pad_to:
        if v not in ids:
            ids.add(v)
        v += 1
    held_in = sum(t in ids for t in held)
    return sorted(ids), held_in / max(1, len(held))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=os.path.join(ROOT, "build/dflash-train/best.pt"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models/dflash-smollm2"))
    ap.add_argument("--tandem", default=os.path.join(ROOT, "build/bin/tandem"))
    ap.add_argument("--data", default=os.path.join(ROOT, "build/dflash-data"),
                    help="the training data (gen_data.py): its ids make the draft vocabulary")
    ap.add_argument("--no-draft-vocab", action="store_true",
                    help="score the whole vocabulary (no draft_vocab tensor)")
    ap.add_argument("--target", nargs="+",
                    default=[os.path.join(ROOT, f"models/smollm2/SmolLM2-135M-Instruct.{q}.gguf")
                             for q in ("Q4_1", "BF16")],
                    help="target files whose fingerprints the drafter accepts (missing ones are skipped; "
                         "the BF16 one comes from tools/peer/make-variants.sh)")
    args = ap.parse_args()

    ck = torch.load(args.ckpt, weights_only=False)
    cfg = json.loads(json.dumps(ck["cfg"]))
    fps = []
    for t in args.target:
        if not os.path.exists(t):
            print(f"export: {t} is absent; its fingerprint is not listed", file=sys.stderr)
            continue
        fp = fingerprint(args.tandem, t)
        if fp:
            fps.append(fp)
        else:
            print(f"export: WARNING: no fingerprint for {t} (tandem inspect --json has no "
                  f"'fingerprint' yet); target.fingerprints left without it", file=sys.stderr)
    cfg["target"]["fingerprints"] = fps
    # the block sizes it was trained for (train.py --p8: a share of the blocks of size 8): the C
    # drafter runs a draft of gamma tokens in the smallest of them that holds it
    p8 = ck.get("training", {}).get("args", {}).get("p8", 0)
    cfg["block_sizes"] = sorted({8, cfg["block_size"]}) if p8 > 0 else [cfg["block_size"]]
    ev = ck.get("eval", {})
    tr = ck.get("training", {})
    cfg["training"] = {
        "data": "self-distillation: greedy answers of the Q4_1 GGUF as `tandem generate --method ar` "
                "runs it, prompts tools/train/dflash/prompts.txt (idx % 10 == 9 held out); features by "
                "HF transformers on the same GGUF, bf16",
        "train_sequences": tr.get("train_sequences"), "heldout_sequences": tr.get("heldout_sequences"),
        "step": tr.get("step"), "train_seconds": round(tr.get("train_s", 0.0), 1), "seed": tr.get("seed"),
        "loss": "CE on block rows 1..B-1, weight exp(-(i-1)/gamma), gamma 7 (B=16) / 4 (B=8); "
                "25% of blocks of size 8",
        "heldout_tokens_per_verify_block16": ev.get("eval16", {}).get("tokens_per_verify") if ev.get("eval16") else None,
        "heldout_tokens_per_verify_block8": ev.get("eval8", {}).get("tokens_per_verify") if ev.get("eval8") else None,
        "script": "tools/train/dflash (make dflash-drafter)",
    }
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in ck["model"].items()}
    assert not any(k.startswith("embed") for k in sd), "target weights must not be exported"
    if not args.no_draft_vocab:
        vocab, cover = draft_vocab(args.data)
        sd["draft_vocab"] = torch.tensor(vocab, dtype=torch.int32)
        cfg["training"]["draft_vocab"] = {"ids": len(vocab), "heldout_answer_tokens_covered": round(cover, 5),
                                          "what": "every id of the training sequences, padded to a multiple of 16"}
        print(f"export: draft vocabulary of {len(vocab)} ids covers {100 * cover:.2f}% of the held-out "
              f"answer tokens")
    os.makedirs(args.out, exist_ok=True)
    save_file(sd, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(f"export: {args.out}: {len(sd)} tensors, {sum(v.numel() for v in sd.values()) / 1e6:.2f}M params, "
          f"{size / 1e6:.1f} MB; fingerprints {fps}; held-out tokens/verify "
          f"b16 {cfg['training']['heldout_tokens_per_verify_block16']} "
          f"b8 {cfg['training']['heldout_tokens_per_verify_block8']}")
    assert size <= 20 * 1000 * 1000, "drafter over 20 MB"


if __name__ == "__main__":
    main()
