#!/usr/bin/env python3
"""llama_greedy_check.py - llama.cpp's greedy tokens on a GGUF fidelity fixture's prompts.

Sends each greedy run's prompt_ids (token ids, no re-tokenization) of tests/data/gguf/<x>-fidelity.json to a
running llama-server (`/completion`, temperature 0, n_predict = the fixture's length) and reports how many
leading tokens match HF transformers' greedy tokens, and the HF top-2 margin where they first differ.
Standard library only. Start the server first, e.g.
    build/peer/bin/llama-server -m models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -t 1 --port 18677 &
    python3 tools/peer/llama_greedy_check.py tests/data/gguf/smollm2-q4_1-fidelity.json --url http://127.0.0.1:18677
"""
import argparse
import json
import sys
import urllib.request


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("fixture")
    ap.add_argument("--url", default="http://127.0.0.1:18677")
    a = ap.parse_args()
    fx = json.load(open(a.fixture))
    if fx.get("magic") != "TDGGUFFID" or fx.get("version") != 1:
        sys.exit("%s: not a TDGGUFFID v1 fixture" % a.fixture)
    same = 0
    for g in fx["greedy"]:
        body = {"prompt": g["prompt_ids"], "n_predict": len(g["ids"]), "temperature": 0, "top_k": 1,
                "cache_prompt": False, "return_tokens": True, "samplers": ["top_k"]}
        req = urllib.request.Request(a.url + "/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        got = json.load(urllib.request.urlopen(req, timeout=300)).get("tokens", [])
        n = 0
        while n < min(len(got), len(g["ids"])) and got[n] == g["ids"][n]:
            n += 1
        ok = n == len(g["ids"]) or (n == len(got) and got and got[-1] == fx["eos_id"])
        # llama-server stops at end-of-generation without returning it: count that as equal
        if not ok and n == len(got) and n == len(g["ids"]) - 1 and g["ids"][-1] == fx["eos_id"]:
            ok = True
        same += ok
        print("%-16s HF %2d tokens, llama.cpp %2d; equal prefix %2d%s" %
              (g["name"], len(g["ids"]), len(got), n,
               "" if ok else "; HF top-2 margin there %.4f" % g["margins"][n]))
    print("%d of %d greedy runs equal (model %s)" % (same, len(fx["greedy"]), fx["model"]))


if __name__ == "__main__":
    main()
