#!/usr/bin/env python3
"""make_chat_fixtures.py - chat template fixtures for tests/test_chat.c.

For each template family tandem knows, writes tests/data/chat/<family>/tokenizer_config.json
holding a jinja chat template written for this project to behave like that family's published
template on plain system/user/assistant conversations (Qwen2.5, Dream, a generic ChatML without a
default system prompt, LLaDA-8B-Instruct, LLaMA 3), and tests/data/chat/<family>/cases.json with
conversations rendered by transformers' own renderer (transformers.utils.chat_template_utils.
render_jinja_template: the jinja environment apply_chat_template uses, with bos_token/eos_token
passed as apply_chat_template passes them). tests/data/chat/families.json lists every directory
with the kind, default system prompt and BOS that td_chat_format_detect must find there,
including directories with no template, an unknown template family and malformed JSON.

Usage: python tools/make_chat_fixtures.py   (from the repository root)
"""
import json
import os

from transformers.utils.chat_template_utils import render_jinja_template

OUT = os.path.join("tests", "data", "chat")

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
DREAM_SYSTEM = "You are a helpful assistant."


def qwen_like(default_system):
    """ChatML with a default system prompt, structured as Qwen2.5's template (a tools branch that
    names the prompt as a bare literal, then the non-tools branch with the full system turn)."""
    return (
        "{%- if tools %}\n"
        "    {{- '<|im_start|>system\\n' }}\n"
        "    {%- if messages[0]['role'] == 'system' %}\n"
        "        {{- messages[0]['content'] }}\n"
        "    {%- else %}\n"
        "        {{- '" + default_system + "' }}\n"
        "    {%- endif %}\n"
        "    {{- '\\n\\n# Tools\\n' }}\n"
        "    {%- for tool in tools %}{{- '\\n' + tool | tojson }}{%- endfor %}\n"
        "    {{- '<|im_end|>\\n' }}\n"
        "{%- else %}\n"
        "    {%- if messages[0]['role'] == 'system' %}\n"
        "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "    {%- else %}\n"
        "        {{- '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) "
        "or message.role == 'assistant' %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"
    )


CHATML_PLAIN = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A default system prompt written with jinja escapes (\' and \u00e9), kept in chat_template.jinja.
ESCAPED_SYSTEM_SRC = "You are Tandem\\'s caf\\u00e9 assistant.\\tBe brief."
ESCAPED_SYSTEM = "You are Tandem's caf\u00e9 assistant.\tBe brief."

LLAMA3 = (
    "{%- for message in messages %}\n"
    "{%- set turn = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' %}\n"
    "{%- if loop.index0 == 0 %}{%- set turn = bos_token + turn %}{%- endif %}\n"
    "{{- turn }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}\n"
)

GEMMA_LIKE = (
    "{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + "
    "message['content'] + '<end_of_turn>\\n' }}{% endfor %}"
)

PLAIN = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "system", "content": "You are a pirate."},
      {"role": "user", "content": "Where is the treasure?"},
      {"role": "assistant", "content": "Arr, under the palm tree."},
      {"role": "user", "content": "And the map?"}], True),
    ([{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], False),
    ([{"role": "user", "content": "  padded \n\t"},
      {"role": "assistant", "content": "\u3000 full-width space and NBSP\u00a0"},
      {"role": "user", "content": "multi\nline\n\n{{ braces }} and 'quotes' and \"dq\" \\n"}], True),
    ([{"role": "user", "content": ""}], True),
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "late system message"},
      {"role": "user", "content": "ok"}], False),
    ([{"role": "user", "content": "h\u00e9llo w\u00f6rld \u2014 \u4f60\u597d \U0001f642"}], True),
    ([{"role": "user", "content": " \u2028\u00a0 \n"}, {"role": "assistant", "content": "\u0085x\u200b"}],
     True),
]
# Roles other than system/user/assistant: Qwen2.5's own template drops them (or, for "tool",
# rewrites them), so they are only rendered for the generic families.
FREE_ROLES = [
    ([{"role": "system", "content": "s"}, {"role": "developer", "content": "be terse"},
      {"role": "user", "content": "x"}], True),
    ([{"role": "tool", "content": "{\"result\": 4}"}], False),
]


def render(tmpl, msgs, gen, bos, eos):
    out, _ = render_jinja_template(conversations=[msgs], chat_template=tmpl,
                                   add_generation_prompt=gen, bos_token=bos, eos_token=eos)
    return out[0]


def write_family(name, config, jinja=None, convs=(), bos=None, eos=None, raw=None):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        if raw is not None:
            f.write(raw)
        else:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")
    if jinja is not None:
        with open(os.path.join(d, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(jinja)
    if not convs:
        return
    tmpl = jinja if jinja is not None else config["chat_template"]
    if isinstance(tmpl, list):
        tmpl = next(t["template"] for t in tmpl if t["name"] == "default")
    cases = [{"messages": m, "add_generation_prompt": g, "expected": render(tmpl, m, g, bos, eos)}
             for m, g in convs]
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"version": 1, "family": name, "cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"  {name}: {len(cases)} cases")


def main():
    os.makedirs(OUT, exist_ok=True)
    fams = {}

    write_family("qwen2.5", {"bos_token": None, "eos_token": "<|im_end|>",
                             "chat_template": qwen_like(QWEN_SYSTEM)},
                 convs=PLAIN, eos="<|im_end|>")
    fams["qwen2.5"] = {"kind": "chatml", "default_system": QWEN_SYSTEM, "bos": "", "builtin": True}

    write_family("dream", {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>",
                           "chat_template": qwen_like(DREAM_SYSTEM)},
                 convs=PLAIN, bos="<|beginoftext|>", eos="<|endoftext|>")
    fams["dream"] = {"kind": "chatml", "default_system": DREAM_SYSTEM, "bos": ""}

    # chat_template as a list of named templates (the format HF uses for several templates)
    write_family("chatml_nosys", {"eos_token": "<|im_end|>", "chat_template": [
        {"name": "tool_use", "template": "{{ 'unused' }}"},
        {"name": "default", "template": CHATML_PLAIN}]},
                 convs=PLAIN + FREE_ROLES, eos="<|im_end|>")
    fams["chatml_nosys"] = {"kind": "chatml", "default_system": None, "bos": ""}

    escaped_tmpl = qwen_like(ESCAPED_SYSTEM_SRC)
    write_family("jinja_file", {"bos_token": None, "eos_token": "<|im_end|>"}, jinja=escaped_tmpl,
                 convs=PLAIN)
    fams["jinja_file"] = {"kind": "chatml", "default_system": ESCAPED_SYSTEM, "bos": ""}

    write_family("llada", {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                           "chat_template": LLAMA3},
                 convs=PLAIN + FREE_ROLES, bos="<|startoftext|>", eos="<|endoftext|>")
    fams["llada"] = {"kind": "llama3", "default_system": None, "bos": "<|startoftext|>",
                     "builtin": True}

    # bos_token in the older AddedToken form
    write_family("llama3", {"bos_token": {"content": "<|begin_of_text|>", "lstrip": False,
                                          "normalized": False, "rstrip": False,
                                          "single_word": False, "__type": "AddedToken"},
                            "eos_token": "<|eot_id|>", "chat_template": LLAMA3},
                 convs=PLAIN + FREE_ROLES, bos="<|begin_of_text|>", eos="<|eot_id|>")
    fams["llama3"] = {"kind": "llama3", "default_system": None, "bos": "<|begin_of_text|>"}

    write_family("no_template", {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})
    fams["no_template"] = {"kind": "none", "default_system": None, "bos": ""}

    write_family("other_family", {"bos_token": "<bos>", "chat_template": GEMMA_LIKE})
    fams["other_family"] = {"kind": "none", "default_system": None, "bos": ""}

    write_family("malformed", None, raw='{"chat_template": "<|im_start|>", "bos_token": ')
    fams["malformed"] = {"kind": "none", "default_system": None, "bos": "", "error": "format"}

    with open(os.path.join(OUT, "families.json"), "w", encoding="utf-8") as f:
        json.dump({"version": 1, "families": fams}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}/families.json ({len(fams)} directories)")


if __name__ == "__main__":
    main()
