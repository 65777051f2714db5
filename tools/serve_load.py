#!/usr/bin/env python3
"""serve_load.py - a load generator for OpenAI-compatible servers (tandem serve, llama-server).

N concurrent clients send streamed chat (or completion) requests with prompts from a file, each
client one request at a time, and measure per request the time to first token (first non-empty
content), the inter-token latency ((last chunk - first chunk) / (tokens - 1), tokens from the usage
chunk) and, over the run, the aggregate completion tokens per second. Standard library only.

  python3 tools/serve_load.py --url http://127.0.0.1:8080 --clients 8 --requests 16 \
      --max-tokens 128 --prompts bench/prompts.txt [--completions] [--api-key K] [--json]
Malformed-request mode (--malformed N): N bad bodies from a separate thread while the clients
run; every one must get a 4xx JSON error and every well-formed request must still complete.
"""
import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(host, port, path, headers, body):
    """Streams one request; returns (ttft, itl, tokens, ok, err)."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", path, body=json.dumps(body), headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        data = resp.read()
        conn.close()
        return None, None, 0, False, "HTTP %d: %s" % (resp.status, data[:200])
    t_first = t_last = None
    tokens = 0
    chunks = 0
    done = False
    buf = b""
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        payload = line[6:]
        if payload == b"[DONE]":
            done = True
            break
        try:
            j = json.loads(payload)
        except ValueError:
            continue
        if j.get("usage"):
            tokens = j["usage"].get("completion_tokens", tokens)
        for c in j.get("choices") or []:
            text = c.get("text")
            if text is None:
                text = (c.get("delta") or {}).get("content")
            if text:
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                t_last = now
                chunks += 1
    conn.close()
    if t_first is None:
        return None, None, tokens, done, None if done else "no [DONE]"
    if not tokens:
        tokens = chunks
    itl = (t_last - t_first) / (tokens - 1) if tokens > 1 else None
    return t_first - t0, itl, tokens, done, None if done else "no [DONE]"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--requests", type=int, default=0, help="total requests (default 2 per client)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompts", default="bench/prompts.txt")
    ap.add_argument("--completions", action="store_true", help="/v1/completions instead of chat")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--model", default="default")
    ap.add_argument("--extra", default=None, help="JSON merged into every body")
    ap.add_argument("--malformed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname, u.port or 80
    prompts = [l.rstrip("\n") for l in open(a.prompts) if l.strip() and not l.startswith("#")]
    total = a.requests or 2 * a.clients
    headers = {"Content-Type": "application/json"}
    if a.api_key:
        headers["Authorization"] = "Bearer " + a.api_key
    path = "/v1/completions" if a.completions else "/v1/chat/completions"
    extra = json.loads(a.extra) if a.extra else {}
    lock = threading.Lock()
    next_i = [0]
    results = []

    def client():
        while True:
            with lock:
                i = next_i[0]
                if i >= total:
                    return
                next_i[0] += 1
            p = prompts[i % len(prompts)]
            body = {"model": a.model, "max_tokens": a.max_tokens, "temperature": a.temperature,
                    "seed": i, "stream": True, "stream_options": {"include_usage": True}}
            if a.completions:
                body["prompt"] = p
            else:
                body["messages"] = [{"role": "user", "content": p}]
            body.update(extra)
            try:
                r = one_request(host, port, path, headers, body)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                r = (None, None, 0, False, repr(e))
            with lock:
                results.append(r)

    bad_stats = {"sent": 0, "4xx": 0, "other": []}

    def malformed():
        rnd = random.Random(1)
        good = json.dumps({"model": a.model, "messages": [{"role": "user", "content": "hi"}]})
        for k in range(a.malformed):
            kind = k % 5
            if kind == 0:
                b = good[: rnd.randrange(1, len(good))]
            elif kind == 1:
                b = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200)))
            elif kind == 2:
                b = json.dumps({"messages": rnd.choice([5, "x", [], [1], [{"role": 3}]])})
            elif kind == 3:
                b = json.dumps({"messages": [{"role": "user", "content": "x"}],
                                "temperature": rnd.choice(["hot", -1, 99, None, []]), "n": 2})
            else:
                b = "{" * rnd.randrange(1, 5000)
            try:
                c = http.client.HTTPConnection(host, port, timeout=60)
                c.request("POST", path, body=b, headers=headers)
                r = c.getresponse()
                data = r.read()
                c.close()
                bad_stats["sent"] += 1
                if 400 <= r.status < 500 and b'"error"' in data:
                    bad_stats["4xx"] += 1
                else:
                    bad_stats["other"].append(r.status)
            except Exception as e:  # noqa: BLE001
                bad_stats["other"].append(repr(e))

    t0 = time.perf_counter()
    ths = [threading.Thread(target=client) for _ in range(a.clients)]
    if a.malformed:
        ths.append(threading.Thread(target=malformed))
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[3]]
    errs = [r[4] for r in results if not r[3]]
    toks = sum(r[2] for r in ok)
    ttft = [r[0] for r in ok if r[0] is not None]
    itl = [r[1] for r in ok if r[1] is not None]
    out = {
        "clients": a.clients, "requests": total, "completed": len(ok), "failed": len(errs),
        "completion_tokens": toks, "wall_s": round(wall, 3),
        "aggregate_tok_s": round(toks / wall, 2) if wall > 0 else None,
        "ttft_p50_ms": round(1000 * percentile(ttft, 50), 1),
        "ttft_p99_ms": round(1000 * percentile(ttft, 99), 1),
        "itl_mean_ms": round(1000 * sum(itl) / len(itl), 2) if itl else None,
        "itl_p50_ms": round(1000 * percentile(itl, 50), 2),
        "itl_p99_ms": round(1000 * percentile(itl, 99), 2),
    }
    if a.malformed:
        out["malformed_sent"] = bad_stats["sent"]
        out["malformed_4xx"] = bad_stats["4xx"]
        out["malformed_other"] = bad_stats["other"][:10]
    if errs:
        out["errors"] = errs[:5]
    if a.json:
        print(json.dumps(out))
    else:
        print("%2d clients: %3d/%d ok, %6d tok in %7.2f s = %8.1f tok/s aggregate; TTFT p50 %7.1f "
              "ms p99 %7.1f ms; ITL mean %s ms p99 %s ms" % (
                  a.clients, len(ok), total, toks, wall, out["aggregate_tok_s"] or 0,
                  out["ttft_p50_ms"], out["ttft_p99_ms"], out["itl_mean_ms"], out["itl_p99_ms"]))
        if a.malformed:
            print("   malformed: %d sent, %d answered 4xx with an error body, other: %s" % (
                bad_stats["sent"], bad_stats["4xx"], bad_stats["other"][:10]))
        for e in errs[:5]:
            print("   error:", e)
    bad = errs or (a.malformed and bad_stats["4xx"] != a.malformed)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
