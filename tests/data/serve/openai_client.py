"""openai_client.py - drives a running `tandem serve` with the official openai package (run by
tests/test_serve.c, e2e_openai_client). Usage: openai_client.py BASE_URL [API_KEY].
Prints "ALL OK" when every check passed; exits 1 with the failed check otherwise."""
import sys

import openai

base = sys.argv[1]
client = openai.OpenAI(base_url=base, api_key=sys.argv[2] if len(sys.argv) > 2 else "none",
                       max_retries=0, timeout=60)


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        sys.exit(1)


models = client.models.list()
check(len(models.data) == 1 and models.data[0].id, "models.list")
model = models.data[0].id

# chat, not streamed
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                   max_tokens=8, temperature=0.7, seed=5)
check(r.object == "chat.completion", "chat object")
c = r.choices[0]
check(c.message.role == "assistant" and isinstance(c.message.content, str), "chat message")
check(c.finish_reason in ("stop", "length"), "finish_reason")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage sum")
check(0 < r.usage.completion_tokens <= 8, "completion_tokens")
full = c.message.content

# the same request streamed, with usage: the same text (same seed)
s = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                   max_tokens=8, temperature=0.7, seed=5, stream=True,
                                   stream_options={"include_usage": True})
text, usage, finish = "", None, None
for ch in s:
    if ch.usage:
        usage = ch.usage
    for cc in ch.choices:
        if cc.delta.content:
            text += cc.delta.content
        if cc.finish_reason:
            finish = cc.finish_reason
check(text == full, "streamed text %r == %r" % (text, full))
check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, "stream usage")
check(finish == c.finish_reason, "stream finish_reason")

# completions, seed replay, the tandem extension in and out
kw = dict(model=model, prompt="And God said", max_tokens=10, temperature=1.0, seed=77,
          extra_body={"tandem": {"method": "ar"}})
a = client.completions.create(**kw)
b = client.completions.create(**kw)
check(a.choices[0].text == b.choices[0].text, "seed replay")
extra = a.model_extra or {}
check(extra.get("tandem", {}).get("stats", {}).get("method") == "ar", "tandem stats in response")

# stop strings
g = client.completions.create(model=model, prompt="And God said", max_tokens=12, temperature=0)
t = g.choices[0].text
if len(t) > 6:
    stop = t[3:6]
    h = client.completions.create(model=model, prompt="And God said", max_tokens=12,
                                  temperature=0, stop=[stop])
    check(h.choices[0].text == t[:t.index(stop)], "stop string")
    check(h.choices[0].finish_reason == "stop", "stop finish_reason")

# errors come back as the client's exceptions
try:
    client.completions.create(model=model, prompt="x", n=2)
    check(False, "n=2 accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400, "n=2 status")
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                   max_tokens=100000)
    check(False, "context overflow accepted")
except openai.BadRequestError as e:
    check(e.code == "context_length_exceeded", "context error code")
print("ALL OK")
