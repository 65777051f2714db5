/* test_gguf.c - GGUF reader, GGUF config, GGUF model loading and the commands on .gguf files.
 *
 * No GGUF fixture is committed: a small GGUF writer below converts the bundled tiny safetensors
 * checkpoints (tests/data/models/<family>) into GGUF files in a temporary directory, naming and
 * laying out the tensors as llama.cpp's converter does (llama.cpp names; dims fastest first;
 * GPT-2 Conv1D weights transposed to [out, in]; for `llama`, the Q/K rows of each head permuted
 * from HF's rotate-half order to adjacent pairs). Then:
 *   - qwen2 (F32 and BF16, tied and untied): logits bitwise equal to the safetensors model, over a
 *     prefill and greedy decode steps (same tokens, same log-probs);
 *   - llama with permuted Q/K: the interleaved RoPE layout makes it equal to the unpermuted
 *     safetensors model (up to float summation order in q.k: tolerance 1e-4, same greedy tokens),
 *     and it is far from equal when the layout is forced back to rotate-half (the test can fail);
 *   - gpt2 (fused, transposed QKV as row slices): tolerance 1e-4, same greedy tokens;
 *   - every header field: a hand-built file with one field broken at a time must be refused with
 *     an error naming the field and the file; every truncation of a valid file is refused;
 *   - metadata -> td_config_t, refused architectures, typed getters;
 *   - `tandem inspect` on a .gguf; the real SmolLM2 Q4_1 file when models/smollm2 holds it. */
#include "kernels/backend.h"
#include "model/chat.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/tensor_source.h"
#include "tests/tdtest.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define SMOLLM2_GGUF "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

static const char *s_bin(void) {
    const char *b = getenv("TD_TANDEM_BIN");
    return b && *b ? b : "build/bin/tandem";
}

/* --- a byte buffer and a small GGUF writer -----------------------------------------------------
 */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf_t;

static void b_put(buf_t *b, const void *src, size_t n) {
    if (n == 0) return;
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void b_u32(buf_t *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    b_put(b, x, 4);
}
static void b_u64(buf_t *b, uint64_t v) {
    b_u32(b, (uint32_t)v);
    b_u32(b, (uint32_t)(v >> 32));
}
static void b_str(buf_t *b, const char *s) {
    b_u64(b, strlen(s));
    b_put(b, s, strlen(s));
}
static void b_pad(buf_t *b, size_t align) {
    static const uint8_t z[64] = {0};
    while (b->n % align) b_put(b, z, 1);
}

/* A GGUF under construction: the metadata and tensor-info sections, and the data section. */
typedef struct gw {
    buf_t kv, info, data;
    uint64_t n_kv, n_t;
} gw_t;

static void gw_kv_str(gw_t *w, const char *k, const char *v) {
    b_str(&w->kv, k), b_u32(&w->kv, TD_GGUF_STRING), b_str(&w->kv, v), w->n_kv++;
}
static void gw_kv_u32(gw_t *w, const char *k, uint32_t v) {
    b_str(&w->kv, k), b_u32(&w->kv, TD_GGUF_U32), b_u32(&w->kv, v), w->n_kv++;
}
static void gw_kv_f32(gw_t *w, const char *k, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    b_str(&w->kv, k), b_u32(&w->kv, TD_GGUF_F32), b_u32(&w->kv, u), w->n_kv++;
}
static void gw_kv_bool(gw_t *w, const char *k, int v) {
    uint8_t b = (uint8_t)(v != 0);
    b_str(&w->kv, k), b_u32(&w->kv, TD_GGUF_BOOL), b_put(&w->kv, &b, 1), w->n_kv++;
}
static void gw_kv_arr_str(gw_t *w, const char *k, char **v, int64_t n) {
    b_str(&w->kv, k), b_u32(&w->kv, TD_GGUF_ARRAY), b_u32(&w->kv, TD_GGUF_STRING);
    b_u64(&w->kv, (uint64_t)n);
    for (int64_t i = 0; i < n; i++) b_str(&w->kv, v[i]);
    w->n_kv++;
}
static void gw_kv_arr_i32(gw_t *w, const char *k, const int32_t *v, int64_t n) {
    b_str(&w->kv, k), b_u32(&w->kv, TD_GGUF_ARRAY), b_u32(&w->kv, TD_GGUF_I32);
    b_u64(&w->kv, (uint64_t)n);
    for (int64_t i = 0; i < n; i++) b_u32(&w->kv, (uint32_t)v[i]);
    w->n_kv++;
}
static void gw_tensor(gw_t *w, const char *name, uint32_t ggml_type, int nd, const int64_t *ne,
                      const void *data, size_t nbytes) {
    b_pad(&w->data, 32);
    b_str(&w->info, name);
    b_u32(&w->info, (uint32_t)nd);
    for (int d = 0; d < nd; d++) b_u64(&w->info, (uint64_t)ne[d]);
    b_u32(&w->info, ggml_type);
    b_u64(&w->info, w->data.n);
    b_put(&w->data, data, nbytes);
    w->n_t++;
}
/* The whole file: header, metadata, tensor infos, padding to 32, data. */
static buf_t gw_finish(gw_t *w) {
    buf_t f = {0};
    b_u32(&f, 0x46554747u);
    b_u32(&f, 3);
    b_u64(&f, w->n_t);
    b_u64(&f, w->n_kv);
    b_put(&f, w->kv.p, w->kv.n);
    b_put(&f, w->info.p, w->info.n);
    b_pad(&f, 32);
    b_put(&f, w->data.p, w->data.n);
    free(w->kv.p), free(w->info.p), free(w->data.p);
    memset(w, 0, sizeof *w);
    return f;
}

static int s_write_file(const char *path, const buf_t *f) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t n = fwrite(f->p, 1, f->n, fp);
    return fclose(fp) == 0 && n == f->n ? 0 : -1;
}

/* --- safetensors checkpoint -> GGUF, as llama.cpp's converter lays it out --------------------- */

static char s_tmpdir[256];

static const char *s_tmp(void) {
    if (!s_tmpdir[0]) {
        snprintf(s_tmpdir, sizeof s_tmpdir, "/tmp/td_test_gguf_XXXXXX");
        if (!mkdtemp(s_tmpdir)) s_tmpdir[0] = 0;
    }
    return s_tmpdir;
}

static uint32_t s_ggml_type(td_dtype_t t) {
    return t == TD_DTYPE_F32 ? 0 : t == TD_DTYPE_F16 ? 1 : 30;
}

/* GGUF name of an HF tensor name (NULL: not written). */
static int s_gguf_name(const char *hf, int gpt2, char *out, size_t cap, int *transpose) {
    int layer;
    char rest[200];
    *transpose = 0;
    if (gpt2) {
        static const char *const top[][2] = {{"wte.weight", "token_embd.weight"},
                                             {"wpe.weight", "position_embd.weight"},
                                             {"ln_f.weight", "output_norm.weight"},
                                             {"ln_f.bias", "output_norm.bias"}};
        const char *h = strncmp(hf, "transformer.", 12) == 0 ? hf + 12 : hf;
        for (size_t i = 0; i < sizeof top / sizeof *top; i++)
            if (!strcmp(h, top[i][0])) return snprintf(out, cap, "%s", top[i][1]), 1;
        if (sscanf(h, "h.%d.%199s", &layer, rest) != 2) return 0;
        static const char *const lay[][3] = {{"ln_1.weight", "attn_norm.weight", ""},
                                             {"ln_1.bias", "attn_norm.bias", ""},
                                             {"attn.c_attn.weight", "attn_qkv.weight", "T"},
                                             {"attn.c_attn.bias", "attn_qkv.bias", ""},
                                             {"attn.c_proj.weight", "attn_output.weight", "T"},
                                             {"attn.c_proj.bias", "attn_output.bias", ""},
                                             {"ln_2.weight", "ffn_norm.weight", ""},
                                             {"ln_2.bias", "ffn_norm.bias", ""},
                                             {"mlp.c_fc.weight", "ffn_up.weight", "T"},
                                             {"mlp.c_fc.bias", "ffn_up.bias", ""},
                                             {"mlp.c_proj.weight", "ffn_down.weight", "T"},
                                             {"mlp.c_proj.bias", "ffn_down.bias", ""}};
        for (size_t i = 0; i < sizeof lay / sizeof *lay; i++)
            if (!strcmp(rest, lay[i][0])) {
                *transpose = lay[i][2][0] == 'T';
                return snprintf(out, cap, "blk.%d.%s", layer, lay[i][1]), 1;
            }
        return 0;
    }
    static const char *const top[][2] = {{"model.embed_tokens.weight", "token_embd.weight"},
                                         {"model.norm.weight", "output_norm.weight"},
                                         {"lm_head.weight", "output.weight"}};
    for (size_t i = 0; i < sizeof top / sizeof *top; i++)
        if (!strcmp(hf, top[i][0])) return snprintf(out, cap, "%s", top[i][1]), 1;
    if (sscanf(hf, "model.layers.%d.%199s", &layer, rest) != 2) return 0;
    static const char *const lay[][2] = {{"input_layernorm.weight", "attn_norm.weight"},
                                         {"self_attn.q_proj.weight", "attn_q.weight"},
                                         {"self_attn.k_proj.weight", "attn_k.weight"},
                                         {"self_attn.v_proj.weight", "attn_v.weight"},
                                         {"self_attn.q_proj.bias", "attn_q.bias"},
                                         {"self_attn.k_proj.bias", "attn_k.bias"},
                                         {"self_attn.v_proj.bias", "attn_v.bias"},
                                         {"self_attn.o_proj.weight", "attn_output.weight"},
                                         {"post_attention_layernorm.weight", "ffn_norm.weight"},
                                         {"mlp.gate_proj.weight", "ffn_gate.weight"},
                                         {"mlp.up_proj.weight", "ffn_up.weight"},
                                         {"mlp.down_proj.weight", "ffn_down.weight"}};
    for (size_t i = 0; i < sizeof lay / sizeof *lay; i++)
        if (!strcmp(rest, lay[i][0])) return snprintf(out, cap, "blk.%d.%s", layer, lay[i][1]), 1;
    return 0;
}

/* llama.cpp's Q/K permutation: within each of n_heads heads of hd rows, the row at s*hd/2 + i
 * (s = 0, 1: the rotate-half pair) moves to 2*i + s (adjacent pair). rows x row_bytes. */
static void s_permute_rows(uint8_t *dst, const uint8_t *src, int64_t rows, size_t row_bytes,
                           int n_heads) {
    int64_t hd = rows / n_heads;
    for (int64_t h = 0; h < n_heads; h++)
        for (int64_t i = 0; i < hd / 2; i++)
            for (int s = 0; s < 2; s++)
                memcpy(dst + (size_t)(h * hd + 2 * i + s) * row_bytes,
                       src + (size_t)(h * hd + s * hd / 2 + i) * row_bytes, row_bytes);
}

/* The tokenizer.ggml.* arrays of DIR/tokenizer.json (byte-level BPE) and the chat template of
 * DIR/tokenizer_config.json, as llama.cpp's converter writes them: every id below n_vocab gets a
 * token ("[PAD<i>]" for holes, type 5 unused), added tokens type 3 (control, special) or 4 (user
 * defined), the others 1 (normal); merges as "left right". Returns 0 when DIR has no tokenizer. */
static int s_add_tokenizer(gw_t *w, const char *dir, const char *pre, int n_vocab) {
    char path[512], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (td_read_file(path, &text, &len, NULL) != TD_OK) return 0;
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    if (!j) return -1;
    char **toks = calloc((size_t)n_vocab, sizeof *toks);
    int32_t *types = calloc((size_t)n_vocab, sizeof *types);
    const cJSON *vocab = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "vocab"), *e;
    cJSON_ArrayForEach(e, vocab) {
        int id = e->valueint;
        if (id >= 0 && id < n_vocab && !toks[id]) toks[id] = strdup(e->string), types[id] = 1;
    }
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "added_tokens")) {
        int id = cJSON_GetObjectItem(e, "id")->valueint;
        if (id < 0 || id >= n_vocab) continue;
        free(toks[id]);
        toks[id] = strdup(cJSON_GetObjectItem(e, "content")->valuestring);
        types[id] = cJSON_IsTrue(cJSON_GetObjectItem(e, "special")) ? 3 : 4;
    }
    for (int i = 0; i < n_vocab; i++)
        if (!toks[i]) {
            char b[32];
            snprintf(b, sizeof b, "[PAD%d]", i);
            toks[i] = strdup(b), types[i] = 5;
        }
    const cJSON *merges = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "merges");
    int nm = cJSON_GetArraySize(merges), k = 0;
    char **mv = calloc((size_t)nm + 1, sizeof *mv);
    cJSON_ArrayForEach(e, merges) {
        char b[512];
        if (cJSON_IsString(e))
            snprintf(b, sizeof b, "%s", e->valuestring);
        else
            snprintf(b, sizeof b, "%s %s", cJSON_GetArrayItem(e, 0)->valuestring,
                     cJSON_GetArrayItem(e, 1)->valuestring);
        mv[k++] = strdup(b);
    }
    gw_kv_str(w, "tokenizer.ggml.model", "gpt2");
    gw_kv_str(w, "tokenizer.ggml.pre", pre);
    gw_kv_arr_str(w, "tokenizer.ggml.tokens", toks, n_vocab);
    gw_kv_arr_i32(w, "tokenizer.ggml.token_type", types, n_vocab);
    gw_kv_arr_str(w, "tokenizer.ggml.merges", mv, k);
    gw_kv_bool(w, "tokenizer.ggml.add_bos_token", 0);
    for (int i = 0; i < n_vocab; i++) free(toks[i]);
    for (int i = 0; i < k; i++) free(mv[i]);
    free(toks), free(types), free(mv);
    cJSON_Delete(j);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (td_read_file(path, &text, &len, NULL) == TD_OK) {
        cJSON *c = cJSON_ParseWithLength(text, len);
        free(text);
        const cJSON *t = c ? cJSON_GetObjectItem(c, "chat_template") : NULL;
        if (cJSON_IsString(t)) gw_kv_str(w, "tokenizer.chat_template", t->valuestring);
        cJSON_Delete(c);
    }
    return 0;
}

/* Writes DIR's checkpoint as a GGUF of architecture arch ("qwen2", "llama" or "gpt2") to path. */
static int s_convert(const char *dir, const char *arch, const char *path) {
    td_err_t err = {0};
    td_config_t c;
    if (td_config_load(dir, &c, &err) != TD_OK) {
        td_test_fail(__FILE__, __LINE__, "%s", err.msg);
        return -1;
    }
    td_safetensors_t *st = td_safetensors_open(dir, &err);
    if (!st) {
        td_test_fail(__FILE__, __LINE__, "%s", err.msg);
        return -1;
    }
    const int gpt2 = !strcmp(arch, "gpt2"), llama = !strcmp(arch, "llama");
    gw_t w = {0};
    char k[128];
    gw_kv_str(&w, "general.architecture", arch);
    gw_kv_str(&w, "general.name", "tandem test model");
#define K(s) (snprintf(k, sizeof k, "%s." s, arch), k)
    gw_kv_u32(&w, K("context_length"), (uint32_t)c.n_ctx_train);
    gw_kv_u32(&w, K("embedding_length"), (uint32_t)c.n_embd);
    gw_kv_u32(&w, K("block_count"), (uint32_t)c.n_layer);
    gw_kv_u32(&w, K("feed_forward_length"), (uint32_t)c.n_ff);
    gw_kv_u32(&w, K("attention.head_count"), (uint32_t)c.n_head);
    if (gpt2) {
        gw_kv_f32(&w, K("attention.layer_norm_epsilon"), c.norm_eps);
    } else {
        gw_kv_u32(&w, K("attention.head_count_kv"), (uint32_t)c.n_kv_head);
        gw_kv_f32(&w, K("attention.layer_norm_rms_epsilon"), c.norm_eps);
        gw_kv_f32(&w, K("rope.freq_base"), c.rope_theta);
        if (c.head_dim != c.n_embd / c.n_head)
            gw_kv_u32(&w, K("attention.key_length"), (uint32_t)c.head_dim);
    }
    gw_kv_u32(&w, K("vocab_size"), (uint32_t)c.n_vocab);
#undef K
    if (c.bos_token_id >= 0) gw_kv_u32(&w, "tokenizer.ggml.bos_token_id", (uint32_t)c.bos_token_id);
    if (c.eos_token_id >= 0) gw_kv_u32(&w, "tokenizer.ggml.eos_token_id", (uint32_t)c.eos_token_id);
    if (s_add_tokenizer(&w, dir, arch, c.n_vocab) != 0) {
        td_safetensors_destroy(&st);
        return -1;
    }
    for (int i = 0; i < td_safetensors_count(st); i++) {
        const td_st_tensor_t *t = td_safetensors_at(st, i);
        char name[160];
        int tr;
        if (!s_gguf_name(t->name, gpt2, name, sizeof name, &tr)) continue;
        if (!gpt2 && c.tie_embeddings && !strcmp(name, "output.weight")) continue;
        size_t es = td_dtype_size(t->dtype);
        uint8_t *d = malloc(t->nbytes);
        int64_t ne[2];
        if (t->ndim == 1) {
            memcpy(d, t->data, t->nbytes);
            ne[0] = t->shape[0];
        } else if (tr) { /* Conv1D [in, out] -> [out, in] */
            const int64_t in = t->shape[0], out = t->shape[1];
            for (int64_t r = 0; r < out; r++)
                for (int64_t cc = 0; cc < in; cc++)
                    memcpy(d + (size_t)(r * in + cc) * es,
                           (const uint8_t *)t->data + (size_t)(cc * out + r) * es, es);
            ne[0] = in, ne[1] = out;
        } else {
            ne[0] = t->shape[1], ne[1] = t->shape[0];
            int is_q = strstr(name, "attn_q.") != NULL, is_k = strstr(name, "attn_k.") != NULL;
            if (llama && (is_q || is_k))
                s_permute_rows(d, t->data, t->shape[0], (size_t)t->shape[1] * es,
                               is_q ? c.n_head : c.n_kv_head);
            else
                memcpy(d, t->data, t->nbytes);
        }
        if (llama && t->ndim == 1 && (strstr(name, "attn_q.bias") || strstr(name, "attn_k.bias")))
            s_permute_rows(d, t->data, t->shape[0], es,
                           strstr(name, "attn_q.") ? c.n_head : c.n_kv_head);
        gw_tensor(&w, name, s_ggml_type(t->dtype), t->ndim, ne, d, t->nbytes);
        free(d);
    }
    td_safetensors_destroy(&st);
    buf_t f = gw_finish(&w);
    int rc = s_write_file(path, &f);
    free(f.p);
    return rc;
}

/* --- running both models -----------------------------------------------------------------------
 */

#define N_PROMPT 9
#define N_STEPS 4
static const int32_t s_prompt[N_PROMPT] = {3, 17, 42, 99, 5, 150, 7, 64, 128};

/* Prefill then N_STEPS greedy steps; logits of every row [N_PROMPT + N_STEPS, vocab], tokens. */
static float *s_run(td_model_t *m, int32_t *toks) {
    td_err_t err = {0};
    const int V = td_model_config(m)->n_vocab;
    float *lg = calloc((size_t)(N_PROMPT + N_STEPS) * (size_t)V, sizeof *lg);
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, 32, &err);
    if (!kv || !lg) return free(lg), NULL;
    td_batch_t b = {0};
    b.n = N_PROMPT;
    b.tokens = s_prompt;
    int rc = td_model_forward(m, kv, &b, lg, &err);
    int32_t cur = 0;
    for (int s = 0; s < N_STEPS && rc == TD_OK; s++) {
        const float *row = lg + (size_t)(N_PROMPT - 1 + s) * V;
        cur = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > row[cur]) cur = v;
        toks[s] = cur;
        b.n = 1;
        b.tokens = &toks[s];
        rc = td_model_forward(m, kv, &b, lg + (size_t)(N_PROMPT + s) * V, &err);
    }
    td_kv_cache_destroy(&kv);
    if (rc != TD_OK) {
        td_test_fail(__FILE__, __LINE__, "forward: %s", err.msg);
        free(lg);
        return NULL;
    }
    return lg;
}

/* Converts tests/data/models/<fam> to GGUF arch, runs both, compares. tol < 0: bitwise. */
static void s_compare(const char *fam, const char *arch, double tol, int reference) {
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "%s/models/%s", td_test_data(), fam);
    snprintf(path, sizeof path, "%s/%s-%s.gguf", s_tmp(), fam, arch);
    if (s_convert(dir, arch, path) != 0) {
        td_test_fail(__FILE__, __LINE__, "cannot write %s", path);
        return;
    }
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, reference, &err);
    td_model_t *a = td_model_load(dir, be, &err);
    CHECK_MSG(a, "%s", err.msg);
    td_model_t *g = td_model_load(path, be, &err);
    CHECK_MSG(g, "%s: %s", fam, err.msg);
    if (a && g) {
        const td_config_t *ca = td_model_config(a), *cg = td_model_config(g);
        CHECK_EQ_INT(cg->n_vocab, ca->n_vocab);
        CHECK_EQ_INT(cg->n_layer, ca->n_layer);
        CHECK_EQ_INT(cg->head_dim, ca->head_dim);
        CHECK_EQ_INT(cg->tie_embeddings, ca->tie_embeddings);
        CHECK_EQ_INT(cg->qkv_bias, ca->qkv_bias);
        CHECK_EQ_INT(td_model_n_params(g), td_model_n_params(a));
        CHECK_EQ_INT(td_model_dtype(g), td_model_dtype(a));
        CHECK_EQ_INT(cg->rope_layout, !strcmp(arch, "llama") ? TD_ROPE_INTERLEAVED : TD_ROPE_HALF);
        int32_t ta[N_STEPS], tg[N_STEPS];
        float *la = s_run(a, ta), *lgg = s_run(g, tg);
        if (la && lgg) {
            const size_t n = (size_t)(N_PROMPT + N_STEPS) * (size_t)ca->n_vocab;
            for (int s = 0; s < N_STEPS; s++) CHECK_EQ_INT(tg[s], ta[s]);
            if (tol < 0) {
                CHECK_MSG(memcmp(la, lgg, n * sizeof *la) == 0,
                          "%s as GGUF %s: logits not bitwise equal", fam, arch);
            } else {
                double worst = 0;
                for (size_t i = 0; i < n; i++)
                    if (fabs((double)la[i] - lgg[i]) > worst) worst = fabs((double)la[i] - lgg[i]);
                CHECK_MSG(worst <= tol, "%s as GGUF %s: max |diff| %.3g > %.3g", fam, arch, worst,
                          tol);
            }
        }
        free(la), free(lgg);
    }
    td_model_destroy(&a);
    td_model_destroy(&g);
    td_backend_destroy(&be);
}

TD_TEST(qwen2_f32_bitwise) { s_compare("qwen2", "qwen2", -1, 0); }
TD_TEST(qwen2_bf16_bitwise) { s_compare("qwen2-bf16", "qwen2", -1, 0); }
TD_TEST(qwen2_untied_bf16_bitwise) { s_compare("qwen2-untied-bf16", "qwen2", -1, 0); }
/* the tied qwen2 model has q/k/v biases: as llama, they are permuted with the rows */
TD_TEST(llama_permuted_interleaved_rope) {
    s_compare("llama", "llama", 1e-4, 0);
    s_compare("llama-bf16", "llama", 1e-4, 0);
    s_compare("llama", "llama", 1e-4, 1);
    s_compare("qwen2", "llama", 1e-4, 0);
}
TD_TEST(gpt2_fused_qkv) {
    s_compare("gpt2", "gpt2", 1e-4, 0);
    s_compare("gpt2-bf16", "gpt2", 1e-4, 0);
}

/* The permutation alone, without the interleaved layout, must change the logits: proves that the
 * llama test above depends on the layout (and that the permutation is not a no-op). */
TD_TEST(llama_permutation_needs_layout) {
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "%s/models/llama", td_test_data());
    snprintf(path, sizeof path, "%s/llama-perm-check.gguf", s_tmp());
    REQUIRE(s_convert(dir, "llama", path) == 0);
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    td_model_t *a = td_model_load(dir, be, &err), *g = td_model_load(path, be, &err);
    REQUIRE(a && g);
    ((td_config_t *)td_model_config(g))->rope_layout = TD_ROPE_HALF; /* undo the fix */
    int32_t ta[N_STEPS], tg[N_STEPS];
    float *la = s_run(a, ta), *lg = s_run(g, tg);
    REQUIRE(la && lg);
    double worst = 0;
    for (int i = 0; i < (N_PROMPT + N_STEPS) * td_model_config(a)->n_vocab; i++)
        if (fabs((double)la[i] - lg[i]) > worst) worst = fabs((double)la[i] - lg[i]);
    CHECK_MSG(worst > 1e-3, "permuted weights with rotate-half RoPE: max |diff| only %.3g", worst);
    free(la), free(lg);
    td_model_destroy(&a);
    td_model_destroy(&g);
    td_backend_destroy(&be);
}

/* --- header validation -------------------------------------------------------------------------
 */

/* Knobs of the hand-built file; 0 = leave as is (values are stored +1 where 0 is meaningful). */
typedef struct knobs {
    uint32_t magic, version;
    uint64_t n_tensors, n_kv; /* counts written instead of the real ones */
    uint64_t key0_len;        /* length field of the first key */
    uint32_t type1;           /* value type of the second kv (an i32 array) */
    uint32_t arr_type, arr_len_set;
    uint64_t arr_len;
    uint8_t bool_val_set, bool_val;
    uint32_t ndims_set, ndims;
    uint64_t dim0_set, dim0, dim1;
    uint32_t type_b_set, type_b; /* ggml type of tensor "b" */
    uint64_t cols_b;             /* columns of tensor "b" (Q8_0) */
    uint64_t off_b_set, off_b;
    int dup_key, dup_tensor;
    int align_kind; /* 1: u32 24, 2: a string, 3: u32 64 */
} knobs_t;

static buf_t s_hand(const knobs_t *k) {
    buf_t f = {0};
    b_u32(&f, k->magic ? k->magic : 0x46554747u);
    b_u32(&f, k->version ? k->version : 3);
    b_u64(&f, k->n_tensors ? k->n_tensors : 2);
    b_u64(&f, k->n_kv ? k->n_kv : (k->align_kind ? 4 : 3));
    /* kv 0: general.architecture = "llama" */
    b_u64(&f, k->key0_len ? k->key0_len : 20);
    b_put(&f, "general.architecture", 20);
    b_u32(&f, TD_GGUF_STRING);
    b_str(&f, "llama");
    /* kv 1: test.ints = [i32 x 3] */
    b_str(&f, k->dup_key ? "general.architecture" : "test.ints");
    b_u32(&f, k->type1 ? k->type1 : TD_GGUF_ARRAY);
    b_u32(&f, k->arr_type ? k->arr_type : TD_GGUF_I32);
    b_u64(&f, k->arr_len_set ? k->arr_len : 3);
    b_u32(&f, 1), b_u32(&f, (uint32_t)-2), b_u32(&f, 3);
    /* kv 2: test.flag = true */
    b_str(&f, "test.flag");
    b_u32(&f, TD_GGUF_BOOL);
    uint8_t bv = k->bool_val_set ? k->bool_val : 1;
    b_put(&f, &bv, 1);
    if (k->align_kind) {
        b_str(&f, "general.alignment");
        if (k->align_kind == 2)
            b_u32(&f, TD_GGUF_STRING), b_str(&f, "32");
        else
            b_u32(&f, TD_GGUF_U32), b_u32(&f, k->align_kind == 1 ? 24 : 64);
    }
    const uint64_t align = k->align_kind == 3 ? 64 : 32;
    /* tensor a: F32 [2 rows, 4 cols] at 0 */
    b_str(&f, "a");
    b_u32(&f, k->ndims_set ? k->ndims : 2);
    b_u64(&f, k->dim0_set ? k->dim0 : 4);
    b_u64(&f, k->dim0_set ? k->dim1 : 2);
    b_u32(&f, 0);
    b_u64(&f, 0);
    /* tensor b: Q8_0 [32] after a */
    uint64_t cols_b = k->cols_b ? k->cols_b : 32;
    b_str(&f, k->dup_tensor ? "a" : "b");
    b_u32(&f, 1);
    b_u64(&f, cols_b);
    b_u32(&f, k->type_b_set ? k->type_b : 8);
    b_u64(&f, k->off_b_set ? k->off_b : align);
    b_pad(&f, align);
    uint8_t data[128];
    for (int i = 0; i < 128; i++) data[i] = (uint8_t)i;
    b_put(&f, data, align + 34); /* a (32 bytes) padded, then b's one block */
    return f;
}

/* Parses the file with knobs k; it must fail with code and a message naming the file and
 * containing want. */
static void s_refused(const knobs_t *k, int code, const char *want, int line) {
    buf_t f = s_hand(k);
    td_err_t err = {0};
    td_gguf_t *g = td_gguf_from_memory(f.p, f.n, "bad.gguf", &err);
    if (g) {
        td_test_fail(__FILE__, line, "accepted a file that should fail with '%s'", want);
        td_gguf_destroy(&g);
    } else {
        if (err.code != code)
            td_test_fail(__FILE__, line, "code %d, expected %d (%s)", err.code, code, err.msg);
        if (!strstr(err.msg, want) || !strstr(err.msg, "bad.gguf"))
            td_test_fail(__FILE__, line, "message '%s' does not name '%s' and the file", err.msg,
                         want);
    }
    free(f.p);
}

TD_TEST(header_valid_file_and_getters) {
    knobs_t k = {0};
    buf_t f = s_hand(&k);
    td_err_t err = {0};
    td_gguf_t *g = td_gguf_from_memory(f.p, f.n, "ok.gguf", &err);
    REQUIRE(g);
    CHECK_EQ_INT(td_gguf_version(g), 3);
    CHECK_EQ_INT(td_gguf_alignment(g), 32);
    CHECK_EQ_INT(td_gguf_n_kv(g), 3);
    CHECK_EQ_INT(td_gguf_n_tensors(g), 2);
    const char *s = NULL;
    CHECK_EQ_INT(td_gguf_get_str(g, "general.architecture", &s, &err), TD_OK);
    CHECK_STR(s, "llama");
    int64_t iv = 0;
    CHECK_EQ_INT(td_gguf_get_int(g, "nope", &iv, &err), 1);
    CHECK_EQ_INT(td_gguf_get_int(g, "general.architecture", &iv, &err), TD_ERR_FORMAT);
    CHECK(strstr(err.msg, "general.architecture") && strstr(err.msg, "ok.gguf"));
    int bv = 0;
    CHECK_EQ_INT(td_gguf_get_bool(g, "test.flag", &bv, &err), TD_OK);
    CHECK_EQ_INT(bv, 1);
    const td_gguf_kv_t *arr = NULL;
    CHECK_EQ_INT(td_gguf_get_arr(g, "test.ints", TD_GGUF_STRING, &arr, &err), TD_ERR_FORMAT);
    CHECK_EQ_INT(td_gguf_get_arr(g, "test.ints", TD_GGUF_I64, &arr, &err), TD_OK);
    REQUIRE(arr && arr->n == 3);
    CHECK_EQ_INT(td_gguf_arr_int(arr, 0), 1);
    CHECK_EQ_INT(td_gguf_arr_int(arr, 1), -2);
    CHECK_NEAR(td_gguf_arr_float(arr, 2), 3.0, 0);
    const td_gguf_tensor_t *a = td_gguf_find_tensor(g, "a"), *b = td_gguf_find_tensor(g, "b");
    REQUIRE(a && b);
    CHECK_EQ_INT(a->dtype, TD_DTYPE_F32);
    CHECK_EQ_INT(a->ne[0], 4);
    CHECK_EQ_INT(a->ne[1], 2);
    CHECK_EQ_INT(a->nbytes, 32);
    CHECK_EQ_INT(b->dtype, TD_DTYPE_Q8_0);
    CHECK_EQ_INT(b->nbytes, 34);
    CHECK((const uint8_t *)b->data == f.p + td_gguf_data_offset(g) + 32);
    CHECK(td_gguf_find_tensor(g, "c") == NULL);
    /* the tensor source reports GGUF dims in HF order */
    td_tensor_source_t *src = td_tensor_source_from_gguf(g, &err);
    REQUIRE(src);
    td_tensor_info_t ti;
    CHECK(td_tensor_source_find(src, "a", &ti));
    CHECK_EQ_INT(ti.ndim, 2);
    CHECK_EQ_INT(ti.shape[0], 2);
    CHECK_EQ_INT(ti.shape[1], 4);
    CHECK_STR(td_tensor_source_metadata(src, "general.architecture"), "llama");
    td_tensor_source_destroy(&src);
    /* every truncation is refused, naming the file */
    for (size_t n = 0; n < f.n; n++) {
        td_err_t e2 = {0};
        td_gguf_t *t = td_gguf_from_memory(f.p, n, "cut.gguf", &e2);
        CHECK_MSG(!t, "a file cut to %zu of %zu bytes was accepted", n, f.n);
        td_gguf_destroy(&t);
        CHECK_MSG(strstr(e2.msg, "cut.gguf"), "cut to %zu: '%s'", n, e2.msg);
    }
    free(f.p);
    /* alignment 64 is honoured */
    k.align_kind = 3;
    f = s_hand(&k);
    g = td_gguf_from_memory(f.p, f.n, "a64.gguf", &err);
    CHECK_MSG(g, "%s", err.msg);
    if (g) CHECK_EQ_INT(td_gguf_alignment(g), 64);
    td_gguf_destroy(&g);
    free(f.p);
}

TD_TEST(header_fields_refused) {
    knobs_t k;
#define REFUSED(code, want, ...)                                                                   \
    do {                                                                                           \
        k = (knobs_t){__VA_ARGS__};                                                                \
        s_refused(&k, code, want, __LINE__);                                                       \
    } while (0)
    REFUSED(TD_ERR_FORMAT, "bad magic", .magic = 0x46554746u);
    REFUSED(TD_ERR_UNSUPPORTED, "version 1", .version = 1);
    REFUSED(TD_ERR_UNSUPPORTED, "version 4", .version = 4);
    REFUSED(TD_ERR_UNSUPPORTED, "big-endian", .version = 0x03000000u);
    REFUSED(TD_ERR_FORMAT, "metadata count", .n_kv = 1ull << 40);
    REFUSED(TD_ERR_FORMAT, "tensor count", .n_tensors = 1ull << 40);
    REFUSED(TD_ERR_FORMAT, "metadata key 0", .key0_len = 1ull << 50);
    REFUSED(TD_ERR_FORMAT, "unknown value type 13", .type1 = 13);
    REFUSED(TD_ERR_FORMAT, "nested arrays", .arr_type = TD_GGUF_ARRAY);
    REFUSED(TD_ERR_FORMAT, "unknown element type 77", .arr_type = 77);
    REFUSED(TD_ERR_FORMAT, "array 'test.ints' claims", .arr_len_set = 1, .arr_len = 1ull << 61);
    REFUSED(TD_ERR_FORMAT, "'test.flag' holds 2", .bool_val_set = 1, .bool_val = 2);
    REFUSED(TD_ERR_FORMAT, "n_dims 0", .ndims_set = 1, .ndims = 0);
    REFUSED(TD_ERR_FORMAT, "n_dims 5", .ndims_set = 1, .ndims = 5);
    REFUSED(TD_ERR_FORMAT, "tensor 'a' dim 0 is 0", .dim0_set = 1, .dim0 = 0, .dim1 = 2);
    REFUSED(TD_ERR_FORMAT, "overflows", .dim0_set = 1, .dim0 = 1ull << 40, .dim1 = 1ull << 40);
    REFUSED(TD_ERR_UNSUPPORTED, "type IQ2_XXS", .type_b_set = 1, .type_b = 16);
    REFUSED(TD_ERR_UNSUPPORTED, "type Q2_K", .type_b_set = 1, .type_b = 10);
    REFUSED(TD_ERR_FORMAT, "unknown ggml type 200", .type_b_set = 1, .type_b = 200);
    REFUSED(TD_ERR_FORMAT, "not a multiple of its block", .cols_b = 33);
    REFUSED(TD_ERR_FORMAT, "not a multiple of the alignment", .off_b_set = 1, .off_b = 40);
    REFUSED(TD_ERR_FORMAT, "outside the data section", .off_b_set = 1, .off_b = 1 << 20);
    REFUSED(TD_ERR_FORMAT, "overlap", .off_b_set = 1, .off_b = 0);
    REFUSED(TD_ERR_FORMAT, "metadata key 'general.architecture' appears twice", .dup_key = 1);
    REFUSED(TD_ERR_FORMAT, "tensor 'a' appears twice", .dup_tensor = 1);
    REFUSED(TD_ERR_FORMAT, "general.alignment", .align_kind = 1);
    REFUSED(TD_ERR_FORMAT, "general.alignment", .align_kind = 2);
#undef REFUSED
}

/* --- metadata -> config ------------------------------------------------------------------------
 */

static td_gguf_t *s_meta_file(buf_t *f, const char *arch, int drop_blocks, int bad_type) {
    gw_t w = {0};
    gw_kv_str(&w, "general.architecture", arch);
    gw_kv_u32(&w, "llama.context_length", 2048);
    gw_kv_u32(&w, "llama.embedding_length", 64);
    if (!drop_blocks) gw_kv_u32(&w, "llama.block_count", 3);
    gw_kv_u32(&w, "llama.feed_forward_length", 96);
    gw_kv_u32(&w, "llama.attention.head_count", 4);
    gw_kv_u32(&w, "llama.attention.head_count_kv", 2);
    if (bad_type)
        gw_kv_str(&w, "llama.attention.layer_norm_rms_epsilon", "1e-5");
    else
        gw_kv_f32(&w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gw_kv_f32(&w, "llama.rope.freq_base", 500000.0f);
    gw_kv_u32(&w, "llama.vocab_size", 100);
    gw_kv_u32(&w, "tokenizer.ggml.bos_token_id", 1);
    gw_kv_u32(&w, "tokenizer.ggml.eos_token_id", 2);
    *f = gw_finish(&w);
    td_err_t err = {0};
    return td_gguf_from_memory(f->p, f->n, "meta.gguf", &err);
}

TD_TEST(config_from_metadata) {
    buf_t f;
    td_err_t err = {0};
    td_config_t c;
    td_gguf_t *g = s_meta_file(&f, "llama", 0, 0);
    REQUIRE(g);
    REQUIRE(td_config_from_gguf(g, &c, &err) == TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_LLAMA);
    CHECK_EQ_INT(c.n_ctx_train, 2048);
    CHECK_EQ_INT(c.n_embd, 64);
    CHECK_EQ_INT(c.n_layer, 3);
    CHECK_EQ_INT(c.n_ff, 96);
    CHECK_EQ_INT(c.n_head, 4);
    CHECK_EQ_INT(c.n_kv_head, 2);
    CHECK_EQ_INT(c.head_dim, 16);
    CHECK_EQ_INT(c.n_vocab, 100);
    CHECK_NEAR(c.norm_eps, 1e-5f, 0);
    CHECK_NEAR(c.rope_theta, 500000.0, 0);
    CHECK_EQ_INT(c.rope_layout, TD_ROPE_INTERLEAVED);
    CHECK_EQ_INT(c.tie_embeddings, 1); /* no output.weight */
    CHECK_EQ_INT(c.qkv_bias, 0);
    CHECK_EQ_INT(c.bos_token_id, 1);
    CHECK_EQ_INT(c.eos_token_id, 2);
    CHECK_EQ_INT(c.pad_token_id, -1);
    td_gguf_destroy(&g);
    free(f.p);
    g = s_meta_file(&f, "mamba", 0, 0);
    REQUIRE(g);
    CHECK_EQ_INT(td_config_from_gguf(g, &c, &err), TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "'mamba'") != NULL);
    td_gguf_destroy(&g);
    free(f.p);
    g = s_meta_file(&f, "llama", 1, 0);
    REQUIRE(g);
    CHECK_EQ_INT(td_config_from_gguf(g, &c, &err), TD_ERR_FORMAT);
    CHECK(strstr(err.msg, "llama.block_count") && strstr(err.msg, "missing"));
    td_gguf_destroy(&g);
    free(f.p);
    g = s_meta_file(&f, "llama", 0, 1);
    REQUIRE(g);
    CHECK_EQ_INT(td_config_from_gguf(g, &c, &err), TD_ERR_FORMAT);
    CHECK(strstr(err.msg, "layer_norm_rms_epsilon") && strstr(err.msg, "string"));
    td_gguf_destroy(&g);
    free(f.p);
}

/* --- commands on .gguf files -------------------------------------------------------------------
 */

TD_TEST(inspect_gguf) {
    char dir[256], path[512], cmd[1024], out[1 << 16];
    snprintf(dir, sizeof dir, "%s/models/llama-bf16", td_test_data());
    snprintf(path, sizeof path, "%s/inspect.gguf", s_tmp());
    REQUIRE(s_convert(dir, "llama", path) == 0);
    snprintf(cmd, sizeof cmd, "%s inspect %s --tensors", s_bin(), path);
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 0);
    CHECK(strstr(out, "GGUF v3") && strstr(out, "interleaved") && strstr(out, "BF16"));
    CHECK(strstr(out, "blk.1.attn_q.weight") && strstr(out, "llama.block_count"));
    snprintf(cmd, sizeof cmd, "%s inspect %s --json", s_bin(), path);
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 0);
    CHECK(strstr(out, "\"rope_layout\":") && strstr(out, "\"gguf\":"));
    /* a broken file: exit 1, the error names the file */
    FILE *fp = fopen(path, "r+b");
    REQUIRE(fp);
    fseek(fp, 4, SEEK_SET);
    fputc(9, fp); /* version 9 */
    fclose(fp);
    snprintf(cmd, sizeof cmd, "%s inspect %s 2>&1", s_bin(), path);
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 1);
    CHECK(strstr(out, "version 9") && strstr(out, "inspect.gguf"));
}

/* --- tokenizer arrays, chat template and the commands on a GGUF with a vocabulary --------------
 */

#define E2E "tests/data/e2e/qwen2-chat"

static int s_e2e_gguf(char *path, size_t cap) {
    snprintf(path, cap, "%s/qwen2-chat.gguf", s_tmp());
    return access(path, R_OK) == 0 ? 0 : s_convert(E2E, "qwen2", path);
}

TD_TEST(vocab_and_chat_template_from_gguf) {
    char path[512];
    REQUIRE(s_e2e_gguf(path, sizeof path) == 0);
    td_err_t err = {0};
    td_gguf_t *g = td_gguf_open(path, &err);
    REQUIRE(g);
    td_gguf_vocab_t v;
    REQUIRE(td_gguf_vocab_read(g, &v, &err) == TD_OK);
    CHECK_STR(v.model, "gpt2");
    CHECK_STR(v.pre, "qwen2");
    CHECK_EQ_INT(v.n_tokens, 1123);
    CHECK_EQ_INT(v.n_merges, 861);
    CHECK_EQ_INT(v.eos_id, 2);
    CHECK_EQ_INT(v.bos_id, -1);
    CHECK_EQ_INT(v.add_bos, 0);
    CHECK_EQ_INT(v.add_eos, -1);
    REQUIRE(v.token_type);
    CHECK_EQ_INT(td_gguf_arr_int(v.token_type, 1), 3);
    /* every token is the tokenizer.json piece of its id */
    td_tokenizer_t *tok = td_tokenizer_load(E2E, &err);
    REQUIRE(tok);
    int bad = 0;
    for (int i = 0; i < td_tokenizer_n_vocab(tok); i++) {
        const char *p = td_tokenizer_piece(tok, i);
        if (p && (strlen(p) != v.tokens[i].len || memcmp(p, v.tokens[i].s, v.tokens[i].len))) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    td_tokenizer_destroy(&tok);
    td_gguf_destroy(&g);
    /* the chat format from tokenizer.chat_template equals the directory's */
    td_chat_format_t fd, fg;
    REQUIRE(td_chat_format_detect(E2E, &fd, &err) == TD_OK);
    REQUIRE(td_chat_format_detect(path, &fg, &err) == TD_OK);
    CHECK_EQ_INT(fg.kind, TD_CHAT_CHATML);
    CHECK_EQ_INT(fg.kind, fd.kind);
    CHECK_EQ_INT(fg.has_default_system, fd.has_default_system);
    CHECK_STR(fg.default_system, fd.default_system);
    CHECK_STR(fg.default_system, "You are a helpful assistant.");
    /* the tokenizer goes through one function; a broken vocabulary is refused by key */
    snprintf(path, sizeof path, "%s/models/llama", td_test_data());
    char p2[512];
    snprintf(p2, sizeof p2, "%s/novocab.gguf", s_tmp());
    REQUIRE(s_convert(path, "llama", p2) == 0);
    CHECK(td_checkpoint_tokenizer(p2, &err) == NULL);
    CHECK(strstr(err.msg, "tokenizer.ggml.model") && strstr(err.msg, "novocab.gguf"));
}

/* Runs `tandem ARGS` with the directory and with the GGUF; both must give the same output. */
static void s_same_cli(const char *fmt) {
    char gg[512], a1[1024], a2[1024], cmd[2048];
    static char o1[1 << 16], o2[1 << 16];
    REQUIRE(s_e2e_gguf(gg, sizeof gg) == 0);
    snprintf(a1, sizeof a1, fmt, E2E);
    snprintf(a2, sizeof a2, fmt, gg);
    snprintf(cmd, sizeof cmd, "%s %s 2>/dev/null", s_bin(), a1);
    CHECK_EQ_INT(td_test_run(cmd, o1, sizeof o1), 0);
    snprintf(cmd, sizeof cmd, "%s %s 2>/dev/null", s_bin(), a2);
    int rc = td_test_run(cmd, o2, sizeof o2);
    if (rc != 0) { /* again with stderr, for the message */
        snprintf(cmd, sizeof cmd, "%s %s 2>&1", s_bin(), a2);
        td_test_run(cmd, o2, sizeof o2);
    }
    CHECK_MSG(rc == 0, "tandem %s: exit %d: %s", a2, rc, o2);
    CHECK_MSG(!strcmp(o1, o2), "tandem %s differs from the directory's output:\n%s\nvs\n%s", a2, o2,
              o1);
}

TD_TEST(commands_take_gguf) {
    s_same_cli("generate --verifier %s --max-tokens 8 --temperature 0 --prompt 'hi'");
    s_same_cli("generate --verifier %s --chat none --max-tokens 8 --temperature 0 --prompt 'And "
               "God'");
    s_same_cli("score --model %s --text 'And God said let there be light'");
    s_same_cli("tokenize --model %s --text 'And God said'");
}

/* --- the real model ----------------------------------------------------------------------------
 */

TD_TEST(smollm2_q4_1) {
    if (access(SMOLLM2_GGUF, R_OK) != 0) {
        td_test_skip(SMOLLM2_GGUF " absent (make models)");
        return;
    }
    td_err_t err = {0};
    td_gguf_t *g = td_gguf_open(SMOLLM2_GGUF, &err);
    REQUIRE(g);
    td_config_t c;
    REQUIRE(td_config_from_gguf(g, &c, &err) == TD_OK);
    CHECK_EQ_INT(c.arch, TD_ARCH_LLAMA);
    CHECK_EQ_INT(c.n_layer, 30);
    CHECK_EQ_INT(c.n_embd, 576);
    CHECK_EQ_INT(c.n_head, 9);
    CHECK_EQ_INT(c.n_kv_head, 3);
    CHECK_EQ_INT(c.n_ff, 1536);
    CHECK_EQ_INT(c.n_vocab, 49152);
    CHECK_EQ_INT(c.tie_embeddings, 1);
    CHECK_EQ_INT(c.rope_layout, TD_ROPE_INTERLEAVED);
    CHECK_NEAR(c.rope_theta, 100000.0, 0);
    CHECK_EQ_INT(td_gguf_n_tensors(g), 272);
    const td_gguf_tensor_t *e = td_gguf_find_tensor(g, "token_embd.weight");
    REQUIRE(e);
    CHECK_EQ_INT(e->dtype, TD_DTYPE_Q8_0);
    CHECK_EQ_INT(td_gguf_find_tensor(g, "blk.0.attn_q.weight")->dtype, TD_DTYPE_Q4_1);
    td_gguf_destroy(&g);
    /* binding accepts the quantized matrices (no forward here: quantized kernels elsewhere) */
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    td_model_t *m = td_model_load(SMOLLM2_GGUF, be, &err);
    CHECK_MSG(m, "%s", err.msg);
    if (m) CHECK_EQ_INT(td_model_dtype(m), TD_DTYPE_Q4_1);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

/* td_model_load_head_only (a DFlash drafter's target) leaves the layers in the file's layout and
 * places only the embedding and LM head in the backend's tiles: a forward on it gives bitwise the
 * full model's logits, prefill and a decode step (the layouts compute the same arithmetic). */
TD_TEST(smollm2_head_only_same_logits) {
    if (access(SMOLLM2_GGUF, R_OK) != 0) {
        td_test_skip(SMOLLM2_GGUF " absent (make models)");
        return;
    }
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    REQUIRE(be);
    td_model_t *m[2] = {td_model_load(SMOLLM2_GGUF, be, &err),
                        td_model_load_head_only(SMOLLM2_GGUF, be, &err)};
    CHECK_MSG(m[0] && m[1], "%s", err.msg);
    REQUIRE(m[0] && m[1]);
    const int nv = td_model_config(m[0])->n_vocab;
    int32_t toks[6] = {1, 9690, 198, 2683, 359, 253};
    float *lg[2];
    for (int i = 0; i < 2; i++) {
        lg[i] = malloc(sizeof(float) * 6 * (size_t)nv);
        REQUIRE(lg[i]);
        td_kv_cache_t *kv = td_kv_cache_new(m[i], 1, 16, &err);
        REQUIRE(kv);
        td_batch_t b = {0};
        b.n = 5, b.tokens = toks;
        CHECK(td_model_forward(m[i], kv, &b, lg[i], &err) == TD_OK);
        b.n = 1, b.tokens = toks + 5;
        CHECK(td_model_forward(m[i], kv, &b, lg[i] + 5 * (size_t)nv, &err) == TD_OK);
        td_kv_cache_destroy(&kv);
    }
    CHECK_MSG(!memcmp(lg[0], lg[1], sizeof(float) * 6 * (size_t)nv),
              "head-only model's logits differ from the full model's");
    for (int i = 0; i < 2; i++) free(lg[i]), td_model_destroy(&m[i]);
    td_backend_destroy(&be);
}

/* --- files written by llama.cpp's own writer (the gguf package: tools/make_gguf_seeds.py) ------
 */

TD_TEST(reference_writer_files) {
    td_err_t err = {0};
    char path[512];
    snprintf(path, sizeof path, "fuzz/seeds/fuzz_gguf/metadata.gguf");
    td_gguf_t *g = td_gguf_open(path, &err);
    REQUIRE(g);
    int64_t iv = 0;
    double fv = 0;
    int bv = 0;
    const char *sv = NULL;
    CHECK(td_gguf_get_int(g, "t.u8", &iv, &err) == TD_OK && iv == 7);
    CHECK(td_gguf_get_int(g, "t.i8", &iv, &err) == TD_OK && iv == -7);
    CHECK(td_gguf_get_int(g, "t.i16", &iv, &err) == TD_OK && iv == -700);
    CHECK(td_gguf_get_int(g, "t.u32", &iv, &err) == TD_OK && iv == 70000);
    CHECK(td_gguf_get_int(g, "t.i32", &iv, &err) == TD_OK && iv == -70000);
    CHECK(td_gguf_get_int(g, "t.u64", &iv, &err) == TD_OK && iv == 1LL << 40);
    CHECK(td_gguf_get_int(g, "t.i64", &iv, &err) == TD_OK && iv == -(1LL << 40));
    CHECK(td_gguf_get_float(g, "t.f32", &fv, &err) == TD_OK && fv == 1.5);
    CHECK(td_gguf_get_float(g, "t.f64", &fv, &err) == TD_OK && fv == 2.25);
    CHECK(td_gguf_get_bool(g, "t.bool", &bv, &err) == TD_OK && bv == 1);
    CHECK(td_gguf_get_str(g, "t.str", &sv, &err) == TD_OK && !strcmp(sv, "h\xc3\xa9llo"));
    const td_gguf_kv_t *a = NULL;
    REQUIRE(td_gguf_get_arr(g, "t.strs", TD_GGUF_STRING, &a, &err) == TD_OK && a->n == 4);
    uint64_t len = 9;
    CHECK(td_gguf_arr_str(a, 2, &len) && len == 0);
    CHECK(td_gguf_arr_str(a, 1, &len) && len == 2 && !memcmp(td_gguf_arr_str(a, 1, &len), "bc", 2));
    CHECK(td_gguf_arr_str(a, 4, &len) == NULL);
    REQUIRE(td_gguf_get_arr(g, "t.floats", TD_GGUF_F32, &a, &err) == TD_OK);
    CHECK(td_gguf_arr_float(a, 1) == -1.0);
    REQUIRE(td_gguf_get_arr(g, "t.bools", TD_GGUF_BOOL, &a, &err) == TD_OK);
    CHECK(td_gguf_arr_int(a, 0) == 1 && td_gguf_arr_int(a, 1) == 0);
    const td_gguf_tensor_t *t = td_gguf_find_tensor(g, "plain.f16");
    REQUIRE(t);
    CHECK(t->dtype == TD_DTYPE_F16 && t->ne[0] == 8 && t->ne[1] == 2 && t->nbytes == 32);
    td_gguf_destroy(&g);
    /* block-quantized tensors: sizes as the reference writer laid them out back to back */
    g = td_gguf_open("fuzz/seeds/fuzz_gguf/quantized.gguf", &err);
    REQUIRE(g);
    CHECK_EQ_INT(td_gguf_n_tensors(g), 9);
    for (int64_t i = 0; i + 1 < td_gguf_n_tensors(g); i++) {
        const td_gguf_tensor_t *x = td_gguf_tensor_at(g, i), *y = td_gguf_tensor_at(g, i + 1);
        CHECK_MSG(y->offset - x->offset == ((x->nbytes + 31) / 32) * 32, "%s: %llu bytes", x->name,
                  (unsigned long long)x->nbytes);
    }
    td_gguf_destroy(&g);
    /* a tiny llama written by the reference writer loads and runs */
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    td_model_t *m = td_model_load("fuzz/seeds/fuzz_gguf/tiny-llama.gguf", be, &err);
    CHECK_MSG(m, "%s", err.msg);
    if (m) {
        CHECK_EQ_INT(td_model_config(m)->n_vocab, 8);
        td_kv_cache_t *kv = td_kv_cache_new(m, 1, 8, &err);
        int32_t toks[3] = {0, 4, 6};
        float lg[3 * 8];
        td_batch_t b = {0};
        b.n = 3;
        b.tokens = toks;
        CHECK(kv && td_model_forward(m, kv, &b, lg, &err) == TD_OK);
        for (int i = 0; i < 24; i++) CHECK(isfinite(lg[i]));
        td_kv_cache_destroy(&kv);
    }
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

static void s_cleanup(void) {
    if (!s_tmpdir[0]) return;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", s_tmpdir);
}

int main(int argc, char **argv) {
    int rc = td_test_main(argc, argv);
    s_cleanup();
    return rc;
}
