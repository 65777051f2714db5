#!/usr/bin/env python3
"""DFlash training data (issue 13), step 1 of the pipeline: self-distillation.

Two sub-commands, both resumable (a killed run continues where it stopped):

  answers   for each training prompt, the target's own greedy answer AS TANDEM RUNS IT:
            `tandem generate --verifier <Q4_1 gguf> --method ar --chat auto --json` (the GGUF's
            template, its default system message); the prompt ids are `tandem tokenize` of the
            same ChatML text rendered here (checked against the prompt_tokens count tandem
            reports; --chat none would not parse the special tokens of a rendered prompt). One JSON line per prompt in answers.jsonl;
            prompts already there are skipped.
  features  HF transformers loads the same GGUF (dequantized, float32), runs prompt+answer ids
            with output_hidden_states and stores the boundaries in --target-layers as bf16
            shards (feat_XXXXX.pt: one dict per prompt). Also stores the frozen target embedding
            (= tied LM head) once (target_embed.pt) and reports how often HF's greedy argmax over
            the stored answer agrees with tandem's tokens.

    python3 tools/train/dflash/gen_data.py answers  --n 150 [--max-tokens 192]
    python3 tools/train/dflash/gen_data.py features
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
GGUF = os.path.join(ROOT, "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TARGET_LAYERS = [1, 8, 15, 22, 29]


def render_chat(prompt):
    """ChatML exactly as the GGUF's chat template renders one user turn (+ generation prompt)."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")


def read_prompts(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                out.append(line)
    return out


def tandem_bin(args):
    return args.tandem or os.path.join(ROOT, "build/bin/tandem")


def tokenize(args, text):
    r = subprocess.run([tandem_bin(args), "tokenize", "--model", args.gguf, "--text", "-", "--json"],
                       input=text.encode(), capture_output=True, check=True)
    return json.loads(r.stdout)["ids"]


def cmd_answers(args):
    os.makedirs(args.data, exist_ok=True)
    out_path = os.path.join(args.data, "answers.jsonl")
    done = set()
    if os.path.exists(out_path):
        with open(out_path, encoding="utf-8") as f:
            for line in f:
                try:
                    done.add(json.loads(line)["idx"])
                except (ValueError, KeyError):
                    pass  # a line cut by a kill: that prompt is redone
    prompts = read_prompts(args.prompts)[:args.n]
    t0 = time.time()
    n_new = 0
    with open(out_path, "a", encoding="utf-8") as fo:
        for idx, p in enumerate(prompts):
            if idx in done or idx % args.shards != args.shard:
                continue
            text = render_chat(p)
            pids = tokenize(args, text)
            r = subprocess.run([tandem_bin(args), "generate", "--verifier", args.gguf, "--method", "ar",
                                "--chat", "auto", "--temperature", "0", "--max-tokens",
                                str(args.max_tokens), "--threads", str(args.threads), "--json",
                                "--prompt-file", "-"], input=p.encode(), capture_output=True)
            if r.returncode != 0:
                print(f"[{idx}] tandem failed: {r.stderr.decode()[-400:]}", file=sys.stderr)
                continue
            j = json.loads(r.stdout)
            if j["prompt_tokens"] != len(pids):
                print(f"[{idx}] prompt ids mismatch: tandem {j['prompt_tokens']} vs tokenize {len(pids)}",
                      file=sys.stderr)
                continue
            rec = {"idx": idx, "prompt": p, "prompt_ids": pids, "answer_ids": j["tokens"],
                   "stop": j["stats"]["stop"], "tok_s": j["stats"]["tokens_per_second"]}
            fo.write(json.dumps(rec) + "\n")
            fo.flush()
            n_new += 1
            print(f"[{idx}] {len(j['tokens'])} tokens stop={j['stats']['stop']} "
                  f"({n_new} new, {time.time() - t0:.0f}s)", flush=True)


def iter_answers(data):
    """Every record of data/answers.jsonl in file order (a line that is not JSON is passed over:
    the last one, when a run was cut off while writing it)."""
    with open(os.path.join(data, "answers.jsonl"), encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def load_answers(data):
    recs = {}
    for r in iter_answers(data):
        recs[r["idx"]] = r
    return [recs[k] for k in sorted(recs)]


def load_hf_target(gguf_path):
    import torch
    from transformers import AutoModelForCausalLM
    d, fn = os.path.split(os.path.abspath(gguf_path))
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=fn, torch_dtype=torch.float32)
    m.eval()
    return m


def cmd_features(args):
    import torch
    torch.set_num_threads(args.threads)
    model = load_hf_target(args.gguf)
    while True:
        n = features_pass(args, model)
        if not args.follow:
            break
        if n == 0:
            time.sleep(30)  # --follow: wait for the answers still being generated


def features_pass(args, model):
    import torch
    recs = load_answers(args.data)
    emb_path = os.path.join(args.data, "target_embed.pt")
    if not os.path.exists(emb_path):
        emb = model.get_input_embeddings().weight.detach().clone()
        torch.save({"embed": emb, "rms_norm_eps": model.config.rms_norm_eps,
                    "n_layer": model.config.num_hidden_layers}, emb_path + f".tmp{args.shard}")
        os.replace(emb_path + f".tmp{args.shard}", emb_path)  # two shards may both write it
    agree = tot = 0
    t0 = time.time()
    n_new = 0
    for r in recs:
        fp = os.path.join(args.data, f"feat_{r['idx']:05d}.pt")
        if os.path.exists(fp) or r["idx"] % args.shards != args.shard:
            continue
        ids = r["prompt_ids"] + r["answer_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            o = model(x, output_hidden_states=True)
        feats = torch.cat([o.hidden_states[l][0] for l in args.target_layers], dim=-1)
        # HF greedy argmax at positions predicting the answer tokens vs tandem's tokens
        P = len(r["prompt_ids"])
        pred = o.logits[0, P - 1:len(ids) - 1].argmax(-1).tolist()
        a = sum(int(u == v) for u, v in zip(pred, r["answer_ids"]))
        agree += a
        tot += len(r["answer_ids"])
        torch.save({"idx": r["idx"], "ids": torch.tensor(ids, dtype=torch.int32), "prompt_len": P,
                    "feats": feats.to(torch.bfloat16), "hf_agree": a}, fp + ".tmp")
        os.replace(fp + ".tmp", fp)
        n_new += 1
        if n_new % 10 == 0:
            print(f"features: {n_new} new ({time.time() - t0:.0f}s), HF argmax agreement so far "
                  f"{100.0 * agree / max(tot, 1):.2f}% of {tot}", flush=True)
    # agreement over everything stored (including shards made by earlier runs)
    agree = tot = 0
    for r in recs:
        fp = os.path.join(args.data, f"feat_{r['idx']:05d}.pt")
        if os.path.exists(fp):
            d = torch.load(fp)
            agree += d["hf_agree"]
            tot += len(r["answer_ids"])
    s = {"sequences": len(recs), "answer_tokens": tot, "hf_tandem_greedy_agreement": agree / max(tot, 1)}
    with open(os.path.join(args.data, "features_summary.json"), "w") as f:
        json.dump(s, f, indent=1)
    print(f"features done: {json.dumps(s)}", flush=True)
    return n_new


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["answers", "features"])
    ap.add_argument("--prompts", default=os.path.join(HERE, "prompts.txt"))
    ap.add_argument("--data", default=os.path.join(ROOT, "build/dflash-data"))
    ap.add_argument("--gguf", default=GGUF)
    ap.add_argument("--tandem", default=None, help="tandem binary (default build/bin/tandem)")
    ap.add_argument("--n", type=int, default=800, help="first N prompts of the set")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shard", type=int, default=0, help="this process does the prompts with idx %% shards == shard (answers and features)")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--follow", action="store_true", help="features: keep polling for new answers")
    ap.add_argument("--target-layers", type=int, nargs="+", default=TARGET_LAYERS)
    args = ap.parse_args()
    if args.cmd == "answers":
        cmd_answers(args)
    else:
        cmd_features(args)


if __name__ == "__main__":
    main()
