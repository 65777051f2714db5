#!/usr/bin/env python3
"""make_gguf_seeds.py - small GGUF files written by the `gguf` package (llama.cpp's own writer),
used as seeds of fuzz/fuzz_gguf.c and as a cross-check that model/gguf.c reads what the reference
writer produces.

    /work/venv/bin/python tools/make_gguf_seeds.py [OUT_DIR]   (default fuzz/seeds/fuzz_gguf)

Seeds: every metadata value type and arrays (strings, ints, floats, bools); F32/F16/BF16 tensors;
block-quantized tensors (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, raw bytes); a non-default
general.alignment; a tiny llama-shaped model header. Each file is a few KB."""
import os
import sys

import numpy as np
import gguf

out = sys.argv[1] if len(sys.argv) > 1 else "fuzz/seeds/fuzz_gguf"
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)


def write(name, fill, arch="llama", **kw):
    path = os.path.join(out, name)
    w = gguf.GGUFWriter(path, arch, **kw)
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(path, os.path.getsize(path))


def meta(w):
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 700)
    w.add_int16("t.i16", -700)
    w.add_uint32("t.u32", 70000)
    w.add_int32("t.i32", -70000)
    w.add_float32("t.f32", 1.5)
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", 2.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.strs", ["a", "bc", "", "Ġt"])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.0])
    w.add_array("t.bools", [True, False])
    w.add_tensor("plain.f32", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("plain.f16", rng.standard_normal((2, 8)).astype(np.float16))


def quant(w):
    # raw block bytes with the right shapes: (rows, bytes per row); ne0 = blocks * block elems
    for qt in ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "BF16"]:
        t = gguf.GGMLQuantizationType[qt]
        be, bb = gguf.GGML_QUANT_SIZES[t]
        cols = 256 if be > 1 else 8
        raw = rng.integers(0, 255, size=(2, cols // be * bb), dtype=np.uint8)
        w.add_tensor("q." + qt.lower(), raw, raw_dtype=t)


def model(w):
    C, L, H, KV, F, V = 16, 1, 2, 1, 32, 8
    w.add_context_length(64)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa", "c"])
    w.add_token_merges(["a b", "Ġ a"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}")
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    w.add_tensor("token_embd.weight", f(V, C))
    w.add_tensor("blk.0.attn_norm.weight", f(C))
    w.add_tensor("blk.0.attn_q.weight", f(C, C))
    w.add_tensor("blk.0.attn_k.weight", f(C // H * KV, C))
    w.add_tensor("blk.0.attn_v.weight", f(C // H * KV, C))
    w.add_tensor("blk.0.attn_output.weight", f(C, C))
    w.add_tensor("blk.0.ffn_norm.weight", f(C))
    w.add_tensor("blk.0.ffn_gate.weight", f(F, C))
    w.add_tensor("blk.0.ffn_up.weight", f(F, C))
    w.add_tensor("blk.0.ffn_down.weight", f(C, F))
    w.add_tensor("output_norm.weight", f(C))


write("metadata.gguf", meta)
write("quantized.gguf", quant)
write("aligned64.gguf", lambda w: (w.add_custom_alignment(64), meta(w)))
write("tiny-llama.gguf", model)
