/* model.c - architecture adapters (tensor names -> weights), the batched forward pass, the KV
 * cache.
 *
 * One forward serves every family: the RMSNorm/RoPE/SwiGLU stack (Qwen2, LLaMA, Dream, LLaDA) and
 * the LayerNorm/learned-position/GELU stack (GPT-2, DiffuGPT). Weights are borrowed from the
 * safetensors mmap in their stored dtype; the model only ever calls backend ops, so the same code
 * runs on the CPU and the CUDA backend. */
#include "model/model.h"

#include "model/tensor_source.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct td_layer {
    td_weight_t attn_norm, attn_norm_b; /* [C] */
    td_weight_t wq, wk, wv;             /* [nh*hd, C], [nkv*hd, C], [nkv*hd, C] */
    td_weight_t bq, bk, bv;             /* biases (data NULL when absent) */
    td_weight_t wo, bo;                 /* [C, nh*hd] */
    td_weight_t ffn_norm, ffn_norm_b;   /* [C] */
    td_weight_t w_gate, w_up, w_down;   /* [F, C], [F, C], [C, F]; GPT-2: w_up = c_fc, no gate */
    td_weight_t b_up, b_down;
} td_layer_t;

struct td_model {
    td_config_t cfg;
    td_backend_t *be;
    td_tensor_source_t *src; /* NULL for synthetic models */
    void *synthetic;         /* owned weight memory of a synthetic model */
    td_dtype_t dtype;
    int64_t n_params;
    uint64_t weight_bytes;
    td_weight_t tok_embd; /* [V, C] */
    td_weight_t pos_embd; /* [n_ctx_train, C] (learned positions) */
    td_weight_t out_norm, out_norm_b;
    td_weight_t lm_head; /* [V, C] */
    td_layer_t *layers;
    const void **uploads; /* what td_backend_weights returned, released on destroy */
    int n_uploads, cap_uploads;
    /* scratch in backend memory, grown on demand */
    int cap_n, cap_out;
    float *x, *h, *q, *k, *v, *att, *f1, *f2, *hsel, *logits;
    float *pos_tmp;
};

struct td_kv_cache {
    td_model_t *m;
    int n_seq, n_ctx;
    int32_t *len;  /* [n_seq] host */
    void **k, **v; /* [n_layer] -> [n_seq, n_ctx, nkv, hd] backend memory, float32 or f16 */
    int f16;       /* elements are IEEE halves (td_kv_cache_new says when) */
    size_t bytes;
};

/* --- weight binding -------------------------------------------------------------------------- */

typedef struct binder {
    td_model_t *m;
    td_err_t *err;
    int failed;
} binder_t;

static int s_is_float(td_dtype_t t) {
    return t == TD_DTYPE_F32 || t == TD_DTYPE_F16 || t == TD_DTYPE_BF16;
}

/* Remembers a weight placed by td_backend_weights, to release it with the model. */
static int s_track(td_model_t *m, const void *p) {
    if (m->n_uploads == m->cap_uploads) {
        int cap = m->cap_uploads ? 2 * m->cap_uploads : 64;
        const void **u = realloc(m->uploads, (size_t)cap * sizeof *u);
        if (!u) return -1;
        m->uploads = u;
        m->cap_uploads = cap;
    }
    m->uploads[m->n_uploads++] = p;
    return 0;
}

/* Lets the backend regroup every matrix for its kernels (td_backend_prepare_weight); a tied
 * lm_head shares tok_embd's. Each new block is released with the model. */
static int s_prepare(td_model_t *m, int layers, td_err_t *err) {
    const int tied = m->lm_head.data == m->tok_embd.data && m->lm_head.dtype == m->tok_embd.dtype;
    for (int l = -1; l < (layers ? m->cfg.n_layer : 0); l++) {
        td_layer_t *L = l >= 0 ? &m->layers[l] : NULL;
        td_weight_t *ws[7] = {&m->tok_embd, tied ? NULL : &m->lm_head};
        if (L) {
            td_weight_t *lw[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
            memcpy(ws, lw, sizeof ws);
        }
        for (int i = 0; i < 7; i++) {
            td_weight_t *w = ws[i];
            if (!w || !w->data) continue;
            const void *before = w->data;
            if (td_backend_prepare_weight(m->be, w) != TD_OK ||
                (w->data != before && s_track(m, w->data)))
                return td_err_set(err, TD_ERR_NOMEM,
                                  "out of memory regrouping a %lldx%lld %s matrix for the %s backend",
                                  (long long)w->rows, (long long)w->cols, td_dtype_name(w->dtype),
                                  td_backend_name(m->be));
            /* the file's copy is not read again: out of resident memory (it stays ~1x) */
            if (w->data != before)
                td_tensor_source_release(m->src, before,
                                         (size_t)w->rows * td_dtype_row_bytes(w->dtype, w->cols));
        }
    }
    if (tied) m->lm_head = m->tok_embd;
    return TD_OK;
}

/* Binds tensor `name` expecting shape [d0] (d1 == 0) or [d0, d1] (HF order, from the tensor
 * source). Missing optional tensors leave w->data NULL; anything else wrong records an error
 * naming file and tensor. Matrices may be block-quantized (rows of whole blocks); vectors are
 * F32, F16 or BF16. */
static void s_bind(binder_t *b, td_weight_t *w, const char *name, int64_t d0, int64_t d1,
                   int optional) {
    memset(w, 0, sizeof *w);
    if (b->failed) return;
    td_tensor_info_t t;
    if (!td_tensor_source_find(b->m->src, name, &t)) {
        if (optional) return;
        b->failed = 1;
        td_err_set(b->err, TD_ERR_FORMAT, "%s: tensor '%s' is missing (architecture %s)",
                   td_tensor_source_path(b->m->src), name, td_arch_name(b->m->cfg.arch));
        return;
    }
    const char *file = t.file;
    if (!s_is_float(t.dtype) && !(d1 && td_dtype_is_quantized(t.dtype))) {
        b->failed = 1;
        td_err_set(b->err, TD_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (need %s)", file, name,
                   td_dtype_name(t.dtype),
                   d1 ? "F32, F16, BF16 or a block-quantized type" : "F32, F16 or BF16");
        return;
    }
    int ok = d1 ? (t.ndim == 2 && t.shape[0] == d0 && t.shape[1] == d1)
                : (t.ndim == 1 && t.shape[0] == d0);
    if (ok && d1 && td_dtype_is_quantized(t.dtype) && d1 % td_dtype_block_elems(t.dtype)) ok = 0;
    if (!ok) {
        char got[128] = "", *p = got;
        for (int i = 0; i < t.ndim && p < got + 100; i++)
            p += snprintf(p, (size_t)(got + sizeof got - p), "%s%lld", i ? ", " : "",
                          (long long)t.shape[i]);
        b->failed = 1;
        if (d1)
            td_err_set(b->err, TD_ERR_FORMAT,
                       "%s: tensor '%s' has shape [%s], expected [%lld, %lld]", file, name, got,
                       (long long)d0, (long long)d1);
        else
            td_err_set(b->err, TD_ERR_FORMAT, "%s: tensor '%s' has shape [%s], expected [%lld]",
                       file, name, got, (long long)d0);
        return;
    }
    w->data = td_backend_weights(b->m->be, t.data, t.nbytes);
    if (!w->data || s_track(b->m, w->data)) {
        b->failed = 1;
        td_err_set(b->err, TD_ERR_NOMEM, "%s: cannot place tensor '%s' (%llu bytes) in %s memory",
                   file, name, (unsigned long long)t.nbytes, td_backend_name(b->m->be));
        return;
    }
    w->dtype = t.dtype;
    w->rows = d1 ? d0 : 1;
    w->cols = d1 ? d1 : d0;
    b->m->n_params += d1 ? d0 * d1 : d0;
    b->m->weight_bytes += t.nbytes;
}

static void s_bindf(binder_t *b, td_weight_t *w, int64_t d0, int64_t d1, int optional,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void s_bindf(binder_t *b, td_weight_t *w, int64_t d0, int64_t d1, int optional,
                    const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    s_bind(b, w, name, d0, d1, optional);
}

/* Makes w a column slice [c0, c0 + n) of a Conv1D weight stored [in, out] (transposed). */
static td_weight_t s_conv1d_slice(const td_weight_t *full, int64_t c0, int64_t n) {
    td_weight_t w = *full;
    size_t es = td_dtype_size(full->dtype);
    w.data = (const char *)full->data + (size_t)c0 * es;
    w.rows = n;
    w.cols = full->rows;
    w.transposed = 1;
    w.ld = full->cols;
    return w;
}

static td_weight_t s_conv1d(const td_weight_t *full) { return s_conv1d_slice(full, 0, full->cols); }

/* Makes w rows [r0, r0 + n) of a dense [rows, cols] matrix (any dtype, quantized included). */
static td_weight_t s_row_slice(const td_weight_t *full, int64_t r0, int64_t n) {
    td_weight_t w = *full;
    w.data = (const char *)full->data + (size_t)r0 * td_dtype_row_bytes(full->dtype, full->cols);
    w.rows = n;
    return w;
}

static td_weight_t s_vec_slice(const td_weight_t *full, int64_t c0, int64_t n) {
    td_weight_t w = *full;
    w.data = (const char *)full->data + (size_t)c0 * td_dtype_size(full->dtype);
    w.cols = n;
    return w;
}

/* GPT-2's fused c_attn: Q, K, V are the three C-wide parts of qkv (taken by slice, a column
 * slice of a Conv1D weight or a row slice of a dense one) and of the bias bqkv. */
static void s_split_qkv(td_layer_t *L, const td_weight_t *qkv, const td_weight_t *bqkv, int64_t C,
                        td_weight_t (*slice)(const td_weight_t *, int64_t, int64_t)) {
    L->wq = slice(qkv, 0, C);
    L->wk = slice(qkv, C, C);
    L->wv = slice(qkv, 2 * C, C);
    L->bq = s_vec_slice(bqkv, 0, C);
    L->bk = s_vec_slice(bqkv, C, C);
    L->bv = s_vec_slice(bqkv, 2 * C, C);
}

/* Tensor names of the RMSNorm/RoPE/SwiGLU stack, per naming scheme: the binder is one function
 * driven by these tables (HF's names, LLaDA's OLMo names, llama.cpp's GGUF names) rather than a
 * rewrite of one scheme into another. Layer entries are printf formats taking the layer index. */
typedef struct llama_names {
    const char *emb, *out_norm, *lm_head;
    const char *attn_norm, *wq, *wk, *wv, *bq, *bk, *bv, *wo, *bo, *ffn_norm, *gate, *up, *down;
} llama_names_t;

static const llama_names_t s_names_hf = {
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    "model.layers.%d.input_layernorm.weight",
    "model.layers.%d.self_attn.q_proj.weight",
    "model.layers.%d.self_attn.k_proj.weight",
    "model.layers.%d.self_attn.v_proj.weight",
    "model.layers.%d.self_attn.q_proj.bias",
    "model.layers.%d.self_attn.k_proj.bias",
    "model.layers.%d.self_attn.v_proj.bias",
    "model.layers.%d.self_attn.o_proj.weight",
    "model.layers.%d.self_attn.o_proj.bias",
    "model.layers.%d.post_attention_layernorm.weight",
    "model.layers.%d.mlp.gate_proj.weight",
    "model.layers.%d.mlp.up_proj.weight",
    "model.layers.%d.mlp.down_proj.weight",
};

static const llama_names_t s_names_llada = {
    "model.transformer.wte.weight",
    "model.transformer.ln_f.weight",
    "model.transformer.ff_out.weight",
    "model.transformer.blocks.%d.attn_norm.weight",
    "model.transformer.blocks.%d.q_proj.weight",
    "model.transformer.blocks.%d.k_proj.weight",
    "model.transformer.blocks.%d.v_proj.weight",
    "model.transformer.blocks.%d.q_proj.bias",
    "model.transformer.blocks.%d.k_proj.bias",
    "model.transformer.blocks.%d.v_proj.bias",
    "model.transformer.blocks.%d.attn_out.weight",
    NULL, /* no output bias */
    "model.transformer.blocks.%d.ff_norm.weight",
    "model.transformer.blocks.%d.ff_proj.weight",
    "model.transformer.blocks.%d.up_proj.weight",
    "model.transformer.blocks.%d.ff_out.weight",
};

static const llama_names_t s_names_gguf = {
    "token_embd.weight",       "output_norm.weight",        "output.weight",
    "blk.%d.attn_norm.weight", "blk.%d.attn_q.weight",      "blk.%d.attn_k.weight",
    "blk.%d.attn_v.weight",    "blk.%d.attn_q.bias",        "blk.%d.attn_k.bias",
    "blk.%d.attn_v.bias",      "blk.%d.attn_output.weight", "blk.%d.attn_output.bias",
    "blk.%d.ffn_norm.weight",  "blk.%d.ffn_gate.weight",    "blk.%d.ffn_up.weight",
    "blk.%d.ffn_down.weight",
};

/* the formats are the tables' own, each with exactly one %d */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static void s_bind_llama_like(binder_t *b) {
    td_model_t *m = b->m;
    const td_config_t *c = &m->cfg;
    const int64_t C = c->n_embd, Q = (int64_t)c->n_head * c->head_dim,
                  KV = (int64_t)c->n_kv_head * c->head_dim, F = c->n_ff, V = c->n_vocab;
    const llama_names_t *nm = td_tensor_source_format(m->src) == TD_FORMAT_GGUF ? &s_names_gguf
                              : c->arch == TD_ARCH_LLADA                        ? &s_names_llada
                                                                                : &s_names_hf;
    s_bind(b, &m->tok_embd, nm->emb, V, C, 0);
    for (int i = 0; i < c->n_layer && !b->failed; i++) {
        td_layer_t *L = &m->layers[i];
        s_bindf(b, &L->attn_norm, C, 0, 0, nm->attn_norm, i);
        s_bindf(b, &L->wq, Q, C, 0, nm->wq, i);
        s_bindf(b, &L->wk, KV, C, 0, nm->wk, i);
        s_bindf(b, &L->wv, KV, C, 0, nm->wv, i);
        s_bindf(b, &L->bq, Q, 0, !c->qkv_bias, nm->bq, i);
        s_bindf(b, &L->bk, KV, 0, !c->qkv_bias, nm->bk, i);
        s_bindf(b, &L->bv, KV, 0, !c->qkv_bias, nm->bv, i);
        s_bindf(b, &L->wo, C, Q, 0, nm->wo, i);
        if (nm->bo) s_bindf(b, &L->bo, C, 0, 1, nm->bo, i);
        s_bindf(b, &L->ffn_norm, C, 0, 0, nm->ffn_norm, i);
        s_bindf(b, &L->w_gate, F, C, 0, nm->gate, i);
        s_bindf(b, &L->w_up, F, C, 0, nm->up, i);
        s_bindf(b, &L->w_down, C, F, 0, nm->down, i);
    }
    s_bind(b, &m->out_norm, nm->out_norm, C, 0, 0);
    if (c->tie_embeddings)
        m->lm_head = m->tok_embd;
    else
        s_bind(b, &m->lm_head, nm->lm_head, V, C, 0);
}
#pragma GCC diagnostic pop

static void s_bind_gpt2(binder_t *b) {
    td_model_t *m = b->m;
    const td_config_t *c = &m->cfg;
    const int64_t C = c->n_embd, F = c->n_ff, V = c->n_vocab;
    td_tensor_info_t probe;
    const char *pre =
        td_tensor_source_find(m->src, "transformer.wte.weight", &probe) ? "transformer." : "";
    s_bindf(b, &m->tok_embd, V, C, 0, "%swte.weight", pre);
    s_bindf(b, &m->pos_embd, c->n_ctx_train, C, 0, "%swpe.weight", pre);
    for (int i = 0; i < c->n_layer && !b->failed; i++) {
        td_layer_t *L = &m->layers[i];
        td_weight_t qkv, bqkv, wo, fc, proj;
        s_bindf(b, &L->attn_norm, C, 0, 0, "%sh.%d.ln_1.weight", pre, i);
        s_bindf(b, &L->attn_norm_b, C, 0, 0, "%sh.%d.ln_1.bias", pre, i);
        s_bindf(b, &qkv, C, 3 * C, 0, "%sh.%d.attn.c_attn.weight", pre, i);
        s_bindf(b, &bqkv, 3 * C, 0, 0, "%sh.%d.attn.c_attn.bias", pre, i);
        s_bindf(b, &wo, C, C, 0, "%sh.%d.attn.c_proj.weight", pre, i);
        s_bindf(b, &L->bo, C, 0, 0, "%sh.%d.attn.c_proj.bias", pre, i);
        s_bindf(b, &L->ffn_norm, C, 0, 0, "%sh.%d.ln_2.weight", pre, i);
        s_bindf(b, &L->ffn_norm_b, C, 0, 0, "%sh.%d.ln_2.bias", pre, i);
        s_bindf(b, &fc, C, F, 0, "%sh.%d.mlp.c_fc.weight", pre, i);
        s_bindf(b, &L->b_up, F, 0, 0, "%sh.%d.mlp.c_fc.bias", pre, i);
        s_bindf(b, &proj, F, C, 0, "%sh.%d.mlp.c_proj.weight", pre, i);
        s_bindf(b, &L->b_down, C, 0, 0, "%sh.%d.mlp.c_proj.bias", pre, i);
        if (b->failed) break;
        if (td_dtype_is_quantized(qkv.dtype) || td_dtype_is_quantized(wo.dtype) ||
            td_dtype_is_quantized(fc.dtype) || td_dtype_is_quantized(proj.dtype)) {
            b->failed = 1;
            td_err_set(b->err, TD_ERR_UNSUPPORTED,
                       "%s: layer %d: quantized GPT-2 Conv1D weights are not supported",
                       td_tensor_source_path(m->src), i);
            break;
        }
        /* Conv1D stores [in, out]: as seen by matmul, rows = out, cols = in, transposed. */
        s_split_qkv(L, &qkv, &bqkv, C, s_conv1d_slice);
        L->wo = s_conv1d(&wo);
        L->w_up = s_conv1d(&fc);
        L->w_down = s_conv1d(&proj);
    }
    s_bindf(b, &m->out_norm, C, 0, 0, "%sln_f.weight", pre);
    s_bindf(b, &m->out_norm_b, C, 0, 0, "%sln_f.bias", pre);
    m->lm_head = m->tok_embd;
}

/* GPT-2 from GGUF: llama.cpp's converter stores the Conv1D weights transposed to the usual
 * [out, in] orientation and keeps c_attn fused (attn_qkv, [3C, C]): Q, K, V are row slices. */
static void s_bind_gpt2_gguf(binder_t *b) {
    td_model_t *m = b->m;
    const td_config_t *c = &m->cfg;
    const int64_t C = c->n_embd, F = c->n_ff, V = c->n_vocab;
    s_bind(b, &m->tok_embd, "token_embd.weight", V, C, 0);
    s_bind(b, &m->pos_embd, "position_embd.weight", c->n_ctx_train, C, 0);
    for (int i = 0; i < c->n_layer && !b->failed; i++) {
        td_layer_t *L = &m->layers[i];
        td_weight_t qkv, bqkv;
        s_bindf(b, &L->attn_norm, C, 0, 0, "blk.%d.attn_norm.weight", i);
        s_bindf(b, &L->attn_norm_b, C, 0, 0, "blk.%d.attn_norm.bias", i);
        s_bindf(b, &qkv, 3 * C, C, 0, "blk.%d.attn_qkv.weight", i);
        s_bindf(b, &bqkv, 3 * C, 0, 0, "blk.%d.attn_qkv.bias", i);
        s_bindf(b, &L->wo, C, C, 0, "blk.%d.attn_output.weight", i);
        s_bindf(b, &L->bo, C, 0, 0, "blk.%d.attn_output.bias", i);
        s_bindf(b, &L->ffn_norm, C, 0, 0, "blk.%d.ffn_norm.weight", i);
        s_bindf(b, &L->ffn_norm_b, C, 0, 0, "blk.%d.ffn_norm.bias", i);
        s_bindf(b, &L->w_up, F, C, 0, "blk.%d.ffn_up.weight", i);
        s_bindf(b, &L->b_up, F, 0, 0, "blk.%d.ffn_up.bias", i);
        s_bindf(b, &L->w_down, C, F, 0, "blk.%d.ffn_down.weight", i);
        s_bindf(b, &L->b_down, C, 0, 0, "blk.%d.ffn_down.bias", i);
        if (b->failed) break;
        s_split_qkv(L, &qkv, &bqkv, C, s_row_slice);
    }
    s_bind(b, &m->out_norm, "output_norm.weight", C, 0, 0);
    s_bind(b, &m->out_norm_b, "output_norm.bias", C, 0, 0);
    if (c->tie_embeddings)
        m->lm_head = m->tok_embd;
    else
        s_bind(b, &m->lm_head, "output.weight", V, C, 0);
}

static int s_is_gpt2(const td_config_t *c) {
    return c->arch == TD_ARCH_GPT2 || c->arch == TD_ARCH_DIFFUGPT;
}

static td_model_t *s_load(const char *path, td_backend_t *be, int layers, td_err_t *err);
td_model_t *td_model_load(const char *path, td_backend_t *be, td_err_t *err) {
    return s_load(path, be, 1, err);
}
td_model_t *td_model_load_head_only(const char *path, td_backend_t *be, td_err_t *err) {
    return s_load(path, be, 0, err);
}

static td_model_t *s_load(const char *path, td_backend_t *be, int layers, td_err_t *err) {
    td_model_t *m = calloc(1, sizeof *m);
    if (!m) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    m->be = be;
    if (td_path_is_gguf(path)) {
        m->src = td_tensor_source_open(path, err);
        if (!m->src) goto fail;
        if (td_config_from_gguf(td_tensor_source_gguf(m->src), &m->cfg, err) != TD_OK) goto fail;
    } else {
        if (td_config_load(path, &m->cfg, err) != TD_OK) goto fail;
        m->src = td_tensor_source_open(path, err);
        if (!m->src) goto fail;
    }
    m->layers = calloc((size_t)m->cfg.n_layer, sizeof *m->layers);
    if (!m->layers) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    binder_t b = {m, err, 0};
    int gguf = td_tensor_source_format(m->src) == TD_FORMAT_GGUF;
    if (s_is_gpt2(&m->cfg))
        gguf ? s_bind_gpt2_gguf(&b) : s_bind_gpt2(&b);
    else
        s_bind_llama_like(&b);
    if (b.failed) goto fail;
    m->dtype = m->layers[0].wq.dtype;
    if (s_prepare(m, layers, err) != TD_OK) goto fail;
    return m;
fail:
    td_model_destroy(&m);
    return NULL;
}

/* --- synthetic weights ----------------------------------------------------------------------- */

typedef struct synth {
    td_model_t *m;
    char *mem;
    size_t off, cap;
    uint64_t rng;
} synth_t;

static void s_synth(synth_t *s, td_weight_t *w, int64_t rows, int64_t cols, float scale,
                    float bias) {
    size_t es = td_dtype_size(s->m->dtype), n = (size_t)(rows * cols);
    w->data = s->mem + s->off;
    w->dtype = s->m->dtype;
    w->rows = rows;
    w->cols = cols;
    w->transposed = 0;
    w->ld = 0;
    s->off += (n * es + 63) & ~(size_t)63;
    s->m->n_params += (int64_t)n;
    s->m->weight_bytes += n * es;
    uint64_t x = s->rng;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        float u = ((float)(x >> 40) / (float)(1 << 24) - 0.5f) * 2.0f * scale + bias;
        if (s->m->dtype == TD_DTYPE_F32)
            ((float *)w->data)[i] = u;
        else if (s->m->dtype == TD_DTYPE_BF16)
            ((uint16_t *)w->data)[i] = td_f32_to_bf16(u);
        else
            ((uint16_t *)w->data)[i] = td_f32_to_f16(u);
    }
    s->rng = x;
}

td_model_t *td_model_new_synthetic(const td_config_t *cfg, td_dtype_t dtype, uint64_t seed,
                                   td_backend_t *be, td_err_t *err) {
    if (s_is_gpt2(cfg)) {
        td_err_set(err, TD_ERR_UNSUPPORTED,
                   "synthetic weights are implemented for the Qwen2/LLaMA family only");
        return NULL;
    }
    if (dtype != TD_DTYPE_F32 && dtype != TD_DTYPE_BF16 && dtype != TD_DTYPE_F16) {
        td_err_set(err, TD_ERR_ARG, "synthetic weights need F32, F16 or BF16");
        return NULL;
    }
    td_model_t *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->cfg = *cfg;
    m->be = be;
    m->dtype = dtype;
    const int64_t C = cfg->n_embd, Q = (int64_t)cfg->n_head * cfg->head_dim,
                  KV = (int64_t)cfg->n_kv_head * cfg->head_dim, F = cfg->n_ff, V = cfg->n_vocab;
    size_t es = td_dtype_size(dtype);
    int64_t per_layer =
        2 * C + Q * C + 2 * KV * C + (cfg->qkv_bias ? Q + 2 * KV : 0) + C * Q + 3 * F * C;
    size_t cap =
        (size_t)(cfg->n_layer * per_layer + V * C * (cfg->tie_embeddings ? 1 : 2) + C) * es +
        64 * (size_t)(cfg->n_layer * 16 + 8);
    m->layers = calloc((size_t)cfg->n_layer, sizeof *m->layers);
    if (!m->layers || posix_memalign(&m->synthetic, 64, cap) != 0) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory allocating %zu bytes of synthetic weights",
                   cap);
        m->synthetic = NULL;
        td_model_destroy(&m);
        return NULL;
    }
    synth_t s = {m, m->synthetic, 0, cap, seed * 0x9E3779B97F4A7C15ull + 1};
    float ws = 1.0f / sqrtf((float)C);
    s_synth(&s, &m->tok_embd, V, C, 1.0f, 0);
    for (int i = 0; i < cfg->n_layer; i++) {
        td_layer_t *L = &m->layers[i];
        s_synth(&s, &L->attn_norm, 1, C, 0.1f, 1.0f);
        s_synth(&s, &L->wq, Q, C, ws, 0);
        s_synth(&s, &L->wk, KV, C, ws, 0);
        s_synth(&s, &L->wv, KV, C, ws, 0);
        if (cfg->qkv_bias) {
            s_synth(&s, &L->bq, 1, Q, 0.1f, 0);
            s_synth(&s, &L->bk, 1, KV, 0.1f, 0);
            s_synth(&s, &L->bv, 1, KV, 0.1f, 0);
        }
        s_synth(&s, &L->wo, C, Q, ws, 0);
        s_synth(&s, &L->ffn_norm, 1, C, 0.1f, 1.0f);
        s_synth(&s, &L->w_gate, F, C, ws, 0);
        s_synth(&s, &L->w_up, F, C, ws, 0);
        s_synth(&s, &L->w_down, C, F, 1.0f / sqrtf((float)F), 0);
    }
    s_synth(&s, &m->out_norm, 1, C, 0.1f, 1.0f);
    if (cfg->tie_embeddings)
        m->lm_head = m->tok_embd;
    else
        s_synth(&s, &m->lm_head, V, C, ws, 0);
    /* place the whole block on the backend once and rebase every weight into it */
    const char *host = m->synthetic;
    const char *dev = td_backend_weights(be, host, s.off);
    if (!dev || s_track(m, dev)) {
        td_err_set(err, TD_ERR_NOMEM, "cannot place %zu bytes of synthetic weights in %s memory",
                   s.off, td_backend_name(be));
        td_model_destroy(&m);
        return NULL;
    }
    if (dev != host) {
        td_weight_t *all[] = {&m->tok_embd, &m->out_norm, &m->lm_head};
        for (size_t i = 0; i < 3; i++) all[i]->data = dev + ((const char *)all[i]->data - host);
        for (int i = 0; i < cfg->n_layer; i++) {
            td_layer_t *L = &m->layers[i];
            td_weight_t *lw[] = {&L->attn_norm, &L->wq,     &L->wk,   &L->wv,
                                 &L->bq,        &L->bk,     &L->bv,   &L->wo,
                                 &L->ffn_norm,  &L->w_gate, &L->w_up, &L->w_down};
            for (size_t j = 0; j < sizeof lw / sizeof lw[0]; j++)
                if (lw[j]->data) lw[j]->data = dev + ((const char *)lw[j]->data - host);
        }
        free(m->synthetic);
        m->synthetic = NULL;
    }
    if (s_prepare(m, 1, err) != TD_OK) {
        td_model_destroy(&m);
        return NULL;
    }
    return m;
}

void td_model_destroy(td_model_t **self_p) {
    if (!self_p || !*self_p) return;
    td_model_t *m = *self_p;
    td_backend_t *be = m->be;
    float *bufs[] = {m->x, m->h, m->q, m->k, m->v, m->att, m->f1, m->f2, m->hsel, m->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) td_backend_free(be, bufs[i]);
    for (int i = 0; i < m->n_uploads; i++) td_backend_free_weights(be, m->uploads[i]);
    free(m->uploads);
    free(m->layers);
    free(m->synthetic);
    td_tensor_source_destroy(&m->src);
    free(m);
    *self_p = NULL;
}

const td_config_t *td_model_config(const td_model_t *m) { return &m->cfg; }

static int s_min_rows(const td_model_t *m, const td_weight_t *w, int cur) {
    if (!w->data) return cur;
    int r = td_backend_invariant_rows(m->be, w->dtype);
    return r < cur ? r : cur;
}

int td_model_invariant_rows(const td_model_t *m) {
    int r = s_min_rows(m, &m->lm_head, INT_MAX);
    for (int l = 0; l < m->cfg.n_layer; l++) {
        const td_layer_t *L = &m->layers[l];
        const td_weight_t *ws[] = {&L->wq,     &L->wk,   &L->wv,    &L->wo,
                                   &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) r = s_min_rows(m, ws[i], r);
    }
    return r;
}
td_backend_t *td_model_backend(const td_model_t *m) { return m->be; }
int64_t td_model_n_params(const td_model_t *m) { return m->n_params; }
uint64_t td_model_weight_bytes(const td_model_t *m) { return m->weight_bytes; }
td_dtype_t td_model_dtype(const td_model_t *m) { return m->dtype; }
const td_weight_t *td_model_tok_embd(const td_model_t *m) { return &m->tok_embd; }
const td_weight_t *td_model_lm_head(const td_model_t *m) { return &m->lm_head; }

/* --- fingerprint ------------------------------------------------------------------------------ */

#define S_FNV_BASIS 0xcbf29ce484222325ull
#define S_FNV_PRIME 0x100000001b3ull

static uint64_t s_fnv_bytes(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * S_FNV_PRIME;
    return h;
}

static uint64_t s_fnv_u32(uint64_t h, uint32_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    return s_fnv_bytes(h, b, 4);
}

static uint64_t s_fnv_u64(uint64_t h, uint64_t v) {
    h = s_fnv_u32(h, (uint32_t)v);
    return s_fnv_u32(h, (uint32_t)(v >> 32));
}

static uint64_t s_fnv_str(uint64_t h, const char *s) {
    size_t n = s ? strlen(s) : 0;
    h = s_fnv_u32(h, (uint32_t)n);
    return s_fnv_bytes(h, s, n);
}

/* Whole little-endian 64-bit words, then the tail bytes (x86-64 is little-endian; memcpy keeps
 * it alignment-safe). */
static uint64_t s_fnv_words(uint64_t h, const void *p, uint64_t n) {
    const unsigned char *b = p;
    uint64_t nw = n / 8;
    for (uint64_t i = 0; i < nw; i++) {
        uint64_t w;
        memcpy(&w, b + 8 * i, 8);
        h = (h ^ w) * S_FNV_PRIME;
    }
    return s_fnv_bytes(h, b + 8 * nw, (size_t)(n - 8 * nw));
}

static uint64_t s_fp_head(const td_config_t *cfg, uint64_t tokenizer_hash) {
    uint64_t h = s_fnv_bytes(S_FNV_BASIS, "td-fp-v1", 8);
    h = s_fnv_u64(h, tokenizer_hash);
    h = s_fnv_str(h, td_arch_name(cfg->arch));
    h = s_fnv_u32(h, (uint32_t)cfg->n_layer);
    h = s_fnv_u32(h, (uint32_t)cfg->n_embd);
    return s_fnv_u32(h, (uint32_t)cfg->n_vocab);
}

uint64_t td_fingerprint_tensors(const struct td_tensor_source *src, const td_config_t *cfg,
                                uint64_t tokenizer_hash) {
    uint64_t h = s_fp_head(cfg, tokenizer_hash);
    td_tensor_info_t t;
    for (int64_t i = 0; src && td_tensor_source_at(src, i, &t); i++) {
        h = s_fnv_str(h, t.name);
        h = s_fnv_u32(h, (uint32_t)t.dtype);
        h = s_fnv_u32(h, (uint32_t)t.ndim);
        for (int d = 0; d < t.ndim; d++) h = s_fnv_u64(h, (uint64_t)t.shape[d]);
        h = s_fnv_u64(h, t.nbytes);
        h = s_fnv_words(h, t.data, t.nbytes);
    }
    return h ? h : 1;
}

uint64_t td_model_fingerprint(const td_model_t *m, uint64_t tokenizer_hash) {
    return td_fingerprint_tensors(m->src, &m->cfg, tokenizer_hash);
}

/* --- KV cache -------------------------------------------------------------------------------- */

/* Whether a new cache of m holds halves: TD_KV_TYPE=f32|f16 when set (benchmarks, tests), else
 * f16 exactly when the layers' weights are block-quantized (their products already round the
 * activations to int8 per 32, far coarser than a half's 11 bits) and the backend can. */
static int s_kv_f16(const td_model_t *m, int *f16, td_err_t *err) {
    const char *e = getenv("TD_KV_TYPE");
    const int can = td_backend_kv_f16(m->be);
    if (e && *e) {
        if (strcmp(e, "f32") && strcmp(e, "f16"))
            return td_err_set(err, TD_ERR_ARG, "TD_KV_TYPE is f32 or f16 (got '%s')", e);
        *f16 = !strcmp(e, "f16");
        if (*f16 && !can)
            return td_err_set(err, TD_ERR_UNSUPPORTED,
                              "TD_KV_TYPE=f16: the %s backend keeps float32 caches only",
                              td_backend_name(m->be));
        return TD_OK;
    }
    *f16 = can && m->cfg.n_layer > 0 && td_dtype_is_quantized(m->layers[0].wq.dtype) &&
           td_dtype_is_quantized(m->layers[0].w_down.dtype);
    return TD_OK;
}

td_kv_cache_t *td_kv_cache_new(td_model_t *m, int n_seq, int n_ctx, td_err_t *err) {
    const td_config_t *c = &m->cfg;
    int f16 = 0;
    if (s_kv_f16(m, &f16, err) != TD_OK) return NULL;
    if (n_seq <= 0 || n_ctx <= 0) {
        td_err_set(err, TD_ERR_ARG, "KV cache needs n_seq > 0 and n_ctx > 0 (got %d, %d)", n_seq,
                   n_ctx);
        return NULL;
    }
    if (s_is_gpt2(c) && n_ctx > c->n_ctx_train) {
        td_err_set(err, TD_ERR_ARG, "context %d exceeds the %d learned positions of this model",
                   n_ctx, c->n_ctx_train);
        return NULL;
    }
    td_kv_cache_t *kv = calloc(1, sizeof *kv);
    if (!kv) return NULL;
    kv->m = m;
    kv->n_seq = n_seq;
    kv->n_ctx = n_ctx;
    kv->f16 = f16;
    kv->len = calloc((size_t)n_seq, sizeof *kv->len);
    kv->k = calloc((size_t)c->n_layer, sizeof *kv->k);
    kv->v = calloc((size_t)c->n_layer, sizeof *kv->v);
    size_t per = (size_t)n_seq * (size_t)n_ctx * (size_t)c->n_kv_head * (size_t)c->head_dim *
                 (f16 ? sizeof(uint16_t) : sizeof(float));
    int ok = kv->len && kv->k && kv->v;
    for (int l = 0; ok && l < c->n_layer; l++) {
        kv->k[l] = td_backend_alloc(m->be, per);
        kv->v[l] = td_backend_alloc(m->be, per);
        ok = kv->k[l] && kv->v[l];
    }
    kv->bytes = per * 2 * (size_t)c->n_layer;
    if (!ok) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory allocating a KV cache of %zu bytes",
                   kv->bytes);
        td_kv_cache_destroy(&kv);
    }
    return kv;
}

void td_kv_cache_destroy(td_kv_cache_t **self_p) {
    if (!self_p || !*self_p) return;
    td_kv_cache_t *kv = *self_p;
    for (int l = 0; l < kv->m->cfg.n_layer; l++) {
        if (kv->k) td_backend_free(kv->m->be, kv->k[l]);
        if (kv->v) td_backend_free(kv->m->be, kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    free(kv->len);
    free(kv);
    *self_p = NULL;
}

int td_kv_cache_n_seq(const td_kv_cache_t *kv) { return kv->n_seq; }
int td_kv_cache_n_ctx(const td_kv_cache_t *kv) { return kv->n_ctx; }
int td_kv_cache_len(const td_kv_cache_t *kv, int seq) {
    return seq >= 0 && seq < kv->n_seq ? kv->len[seq] : 0;
}
size_t td_kv_cache_bytes(const td_kv_cache_t *kv) { return kv->bytes; }
int td_kv_cache_f16(const td_kv_cache_t *kv) { return kv->f16; }

void td_kv_cache_crop(td_kv_cache_t *kv, int seq, int n) {
    if (seq < 0 || seq >= kv->n_seq || n < 0) return;
    if (n < kv->len[seq]) kv->len[seq] = n;
}

int td_kv_cache_copy_seq(td_kv_cache_t *kv, int src, int dst, int len) {
    if (src < 0 || dst < 0 || src >= kv->n_seq || dst >= kv->n_seq || len < 0 || len > kv->len[src])
        return TD_ERR_ARG;
    if (src == dst) {
        kv->len[dst] = len;
        return TD_OK;
    }
    const td_config_t *c = &kv->m->cfg;
    /* bytes of one position's keys (or values) and of one sequence */
    const size_t row = (size_t)c->n_kv_head * (size_t)c->head_dim *
                       (kv->f16 ? sizeof(uint16_t) : sizeof(float)),
                 seq = (size_t)kv->n_ctx * row;
    for (int l = 0; l < c->n_layer; l++) {
        char *k = kv->k[l], *v = kv->v[l];
        td_backend_copy(kv->m->be, k + (size_t)dst * seq, k + (size_t)src * seq, (size_t)len * row);
        td_backend_copy(kv->m->be, v + (size_t)dst * seq, v + (size_t)src * seq, (size_t)len * row);
    }
    kv->len[dst] = len;
    return TD_OK;
}

/* --- forward --------------------------------------------------------------------------------- */

static int s_reserve(td_model_t *m, int n, int n_out) {
    const td_config_t *c = &m->cfg;
    if (n > m->cap_n) {
        int cap = n < 16 ? 16 : n;
        float **bufs[] = {&m->x, &m->h, &m->q, &m->k, &m->v, &m->att, &m->f1, &m->f2};
        size_t sizes[] = {(size_t)c->n_embd,
                          (size_t)c->n_embd,
                          (size_t)c->n_head * c->head_dim,
                          (size_t)c->n_kv_head * c->head_dim,
                          (size_t)c->n_kv_head * c->head_dim,
                          (size_t)c->n_head * c->head_dim,
                          (size_t)c->n_ff,
                          (size_t)c->n_ff};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            td_backend_free(m->be, *bufs[i]);
            *bufs[i] = td_backend_alloc(m->be, sizes[i] * (size_t)cap * sizeof(float));
            if (!*bufs[i]) {
                m->cap_n = 0;
                return TD_ERR_NOMEM;
            }
        }
        m->cap_n = cap;
    }
    if (n_out > m->cap_out) {
        int cap = n_out < 4 ? 4 : n_out;
        td_backend_free(m->be, m->hsel);
        td_backend_free(m->be, m->logits);
        m->hsel = td_backend_alloc(m->be, (size_t)c->n_embd * (size_t)cap * sizeof(float));
        m->logits = td_backend_alloc(m->be, (size_t)c->n_vocab * (size_t)cap * sizeof(float));
        if (!m->hsel || !m->logits) {
            m->cap_out = 0;
            return TD_ERR_NOMEM;
        }
        m->cap_out = cap;
    }
    return TD_OK;
}

static const td_weight_t *s_opt(const td_weight_t *w) { return w->data ? w : NULL; }

/* Copies the residual stream m->x of the n_out selected rows to the host slots of every asked
 * hidden layer equal to L (td_batch_t.hidden_layers). */
static void s_take_hidden(td_model_t *m, const td_batch_t *b, const int32_t *sel, int n_out,
                          int L) {
    const size_t C = (size_t)m->cfg.n_embd, nh = (size_t)b->n_hidden_layers;
    for (size_t k = 0; k < nh; k++) {
        if (b->hidden_layers[k] != L) continue;
        for (int i = 0; i < n_out; i++)
            td_backend_get(m->be, b->hidden_out + ((size_t)i * nh + k) * C,
                           m->x + (size_t)sel[i] * C, C * sizeof(float));
    }
}

/* The forward pass of td_model_forward; logits == NULL leaves the selected rows' logits in
 * m->logits (backend memory) for td_model_forward_sample. */
static int s_forward(td_model_t *m, td_kv_cache_t *kv, const td_batch_t *b, float *logits,
                     td_err_t *err) {
    const td_config_t *c = &m->cfg;
    const int n = b->n;
    if (n <= 0) return td_err_set(err, TD_ERR_ARG, "empty batch");
    if (kv->m != m) return td_err_set(err, TD_ERR_ARG, "KV cache belongs to another model");
    if (b->attn == TD_ATTN_BLOCK_CAUSAL && b->block_size <= 0)
        return td_err_set(err, TD_ERR_ARG, "block-causal attention needs block_size > 0");
    if (b->attn == TD_ATTN_EXPLICIT && !b->mask)
        return td_err_set(err, TD_ERR_ARG, "explicit attention needs a mask");
    if (!b->tokens && !b->embd)
        return td_err_set(err, TD_ERR_ARG, "a batch needs tokens or input embeddings");
    if (b->n_hidden_layers < 0 || (b->n_hidden_layers > 0 && (!b->hidden_layers || !b->hidden_out)))
        return td_err_set(
            err, TD_ERR_ARG, "hidden states: %d layers asked, layer list %s, output %s",
            b->n_hidden_layers, b->hidden_layers ? "set" : "NULL", b->hidden_out ? "set" : "NULL");
    for (int k = 0; k < b->n_hidden_layers; k++)
        if (b->hidden_layers[k] < 0 || b->hidden_layers[k] > c->n_layer)
            return td_err_set(err, TD_ERR_ARG, "hidden state of layer %d: outside 0..%d",
                              b->hidden_layers[k], c->n_layer);

    int32_t *pos = malloc((size_t)n * sizeof *pos), *seq = malloc((size_t)n * sizeof *seq);
    int32_t *new_len = malloc((size_t)kv->n_seq * sizeof *new_len);
    int64_t *idx = malloc((size_t)n * sizeof *idx);
    int32_t *sel = malloc((size_t)n * sizeof *sel);
    uint8_t *covered = NULL;
    int rc = TD_OK;
    if (!pos || !seq || !new_len || !idx || !sel) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto done;
    }
    /* validate everything before touching the cache */
    memcpy(new_len, kv->len, (size_t)kv->n_seq * sizeof *new_len);
    for (int i = 0; i < n; i++) {
        int s = b->seq ? b->seq[i] : 0;
        if (s < 0 || s >= kv->n_seq) {
            rc = td_err_set(err, TD_ERR_ARG, "token %d: sequence slot %d out of range [0, %d)", i,
                            s, kv->n_seq);
            goto done;
        }
        seq[i] = s;
        if (!b->embd && (b->tokens[i] < 0 || b->tokens[i] >= c->n_vocab)) {
            rc = td_err_set(err, TD_ERR_ARG, "token %d: id %d out of range [0, %d)", i,
                            b->tokens[i], c->n_vocab);
            goto done;
        }
    }
    for (int i = 0; i < n; i++) {
        int p;
        if (b->pos)
            p = b->pos[i];
        else
            p = new_len[seq[i]]; /* append in order */
        if (p < 0 || p >= kv->n_ctx) {
            rc = td_err_set(err, TD_ERR_ARG, "token %d: position %d outside the context [0, %d)", i,
                            p, kv->n_ctx);
            goto done;
        }
        pos[i] = p;
        if (!b->pos && p + 1 > new_len[seq[i]]) new_len[seq[i]] = p + 1;
    }
    if (b->pos) {
        /* new positions must extend each sequence without a hole */
        covered = calloc((size_t)kv->n_seq * (size_t)kv->n_ctx, 1);
        if (!covered) {
            rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int i = 0; i < n; i++) {
            covered[(size_t)seq[i] * kv->n_ctx + pos[i]] = 1;
            if (pos[i] + 1 > new_len[seq[i]]) new_len[seq[i]] = pos[i] + 1;
        }
        for (int s = 0; s < kv->n_seq; s++)
            for (int p = kv->len[s]; p < new_len[s]; p++)
                if (!covered[(size_t)s * kv->n_ctx + p]) {
                    rc = td_err_set(
                        err, TD_ERR_ARG,
                        "sequence %d: position %d would be left empty (cache length %d, batch "
                        "reaches %d)",
                        s, p, kv->len[s], new_len[s]);
                    goto done;
                }
    }
    if (b->attn == TD_ATTN_EXPLICIT)
        for (int i = 0; i < n; i++)
            if (b->mask_stride < new_len[seq[i]]) {
                rc = td_err_set(
                    err, TD_ERR_ARG,
                    "explicit mask rows have %lld entries but sequence %d reaches length %d",
                    (long long)b->mask_stride, seq[i], new_len[seq[i]]);
                goto done;
            }
    int n_out = 0;
    for (int i = 0; i < n; i++)
        if (!b->logits_for || b->logits_for[i]) sel[n_out++] = i;
    if (s_reserve(m, n, n_out) != TD_OK) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory for activations of %d tokens", n);
        goto done;
    }
    for (int i = 0; i < n; i++) idx[i] = (int64_t)seq[i] * kv->n_ctx + pos[i];
    memcpy(kv->len, new_len, (size_t)kv->n_seq * sizeof *new_len);

    td_backend_t *be = m->be;
    const int C = c->n_embd, hd = c->head_dim, nh = c->n_head, nkv = c->n_kv_head, F = c->n_ff;
    const int gpt2 = s_is_gpt2(c);
    if (b->embd)
        td_backend_set(be, m->x, b->embd, (size_t)n * C * sizeof(float));
    else
        td_op_get_rows(be, m->x, &m->tok_embd, b->tokens, n);
    if (gpt2) {
        td_op_get_rows(be, m->h, &m->pos_embd, pos, n);
        td_op_add(be, m->x, m->h, (int64_t)n * C);
    }
    s_take_hidden(m, b, sel, n_out, 0);
    td_attn_desc_t ad = {.n = n,
                         .n_head = nh,
                         .n_kv_head = nkv,
                         .head_dim = hd,
                         .n_ctx = kv->n_ctx,
                         .pos = pos,
                         .seq = seq,
                         .kv_len = kv->len,
                         .kind = b->attn,
                         .block_size = b->block_size,
                         .mask = b->mask,
                         .mask_stride = b->mask_stride,
                         .scale = 1.0f / sqrtf((float)hd),
                         .kv_f16 = kv->f16};
    for (int l = 0; l < c->n_layer; l++) {
        const td_layer_t *L = &m->layers[l];
        if (gpt2)
            td_op_layernorm(be, m->h, m->x, &L->attn_norm, s_opt(&L->attn_norm_b), n, C,
                            c->norm_eps);
        else
            td_op_rmsnorm(be, m->h, m->x, &L->attn_norm, n, C, c->norm_eps);
        td_op_matmul(be, m->q, m->h, &L->wq, s_opt(&L->bq), n);
        td_op_matmul(be, m->k, m->h, &L->wk, s_opt(&L->bk), n);
        td_op_matmul(be, m->v, m->h, &L->wv, s_opt(&L->bv), n);
        if (!gpt2) {
            td_op_rope(be, m->q, pos, n, nh, hd, hd, c->rope_theta, c->rope_layout);
            td_op_rope(be, m->k, pos, n, nkv, hd, hd, c->rope_theta, c->rope_layout);
        }
        if (kv->f16) {
            td_op_scatter_rows_f16(be, kv->k[l], (int64_t)nkv * hd, m->k, idx, n, nkv * hd);
            td_op_scatter_rows_f16(be, kv->v[l], (int64_t)nkv * hd, m->v, idx, n, nkv * hd);
        } else {
            td_op_scatter_rows(be, kv->k[l], (int64_t)nkv * hd, m->k, idx, n, nkv * hd);
            td_op_scatter_rows(be, kv->v[l], (int64_t)nkv * hd, m->v, idx, n, nkv * hd);
        }
        td_op_attention(be, m->att, m->q, kv->k[l], kv->v[l], &ad);
        td_op_matmul(be, m->h, m->att, &L->wo, s_opt(&L->bo), n);
        td_op_add(be, m->x, m->h, (int64_t)n * C);
        if (gpt2) {
            td_op_layernorm(be, m->h, m->x, &L->ffn_norm, s_opt(&L->ffn_norm_b), n, C, c->norm_eps);
            td_op_matmul(be, m->f1, m->h, &L->w_up, s_opt(&L->b_up), n);
            td_op_gelu_tanh(be, m->f1, (int64_t)n * F);
        } else {
            td_op_rmsnorm(be, m->h, m->x, &L->ffn_norm, n, C, c->norm_eps);
            td_op_matmul(be, m->f1, m->h, &L->w_gate, NULL, n);
            td_op_matmul(be, m->f2, m->h, &L->w_up, NULL, n);
            td_op_swiglu(be, m->f1, m->f1, m->f2, (int64_t)n * F);
        }
        td_op_matmul(be, m->h, m->f1, &L->w_down, s_opt(&L->b_down), n);
        td_op_add(be, m->x, m->h, (int64_t)n * C);
        s_take_hidden(m, b, sel, n_out, l + 1);
    }
    if (n_out > 0) {
        for (int i = 0; i < n_out; i++)
            if (sel[i] != i || n_out != n)
                td_backend_copy(be, m->hsel + (size_t)i * C, m->x + (size_t)sel[i] * C,
                                (size_t)C * sizeof(float));
        const float *hx = n_out == n ? m->x : m->hsel;
        if (gpt2)
            td_op_layernorm(be, m->hsel, hx, &m->out_norm, s_opt(&m->out_norm_b), n_out, C,
                            c->norm_eps);
        else
            td_op_rmsnorm(be, m->hsel, hx, &m->out_norm, n_out, C, c->norm_eps);
        td_op_matmul(be, m->logits, m->hsel, &m->lm_head, NULL, n_out);
        if (logits)
            td_backend_get(be, logits, m->logits, (size_t)n_out * c->n_vocab * sizeof(float));
    }
    /* ops cannot fail on the CPU; a device backend reports here what went wrong during the pass
     * (the cache rows written by this batch are then unreliable: the caller must not reuse them) */
    rc = td_backend_status(be, err);
done:
    free(pos);
    free(seq);
    free(new_len);
    free(idx);
    free(sel);
    free(covered);
    return rc;
}

int td_model_forward(td_model_t *m, td_kv_cache_t *kv, const td_batch_t *b, float *logits,
                     td_err_t *err) {
    return s_forward(m, kv, b, logits, err);
}

int td_model_forward_sample(td_model_t *m, td_kv_cache_t *kv, const td_batch_t *b,
                            const td_sampling_t *sp, td_rng_t *rng, int32_t *ids, float *probs,
                            td_err_t *err) {
    if (!m || !kv || !b || !sp || !ids)
        return td_err_set(err, TD_ERR_ARG, "td_model_forward_sample: missing argument");
    const int greedy = !(sp->temperature > 0.0f);
    if (!greedy && !rng)
        return td_err_set(err, TD_ERR_ARG, "td_model_forward_sample: sampling needs an RNG");
    if (sp->temperature == INFINITY)
        return td_err_set(err, TD_ERR_ARG, "td_model_forward_sample: temperature must be finite");
    if (b->n <= 0) return td_err_set(err, TD_ERR_ARG, "empty batch");
    int n_out = 0;
    for (int i = 0; i < b->n; i++) n_out += !b->logits_for || b->logits_for[i];
    uint64_t *seeds = NULL;
    td_sample_result_t *res = NULL;
    if (n_out > 0) {
        seeds = malloc((size_t)n_out * sizeof *seeds);
        res = malloc((size_t)n_out * sizeof *res);
        if (!seeds || !res) {
            free(seeds);
            free(res);
            return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        }
    }
    int rc = s_forward(m, kv, b, NULL, err);
    if (rc == TD_OK && n_out > 0) {
        /* one draw of the caller's generator per row, and only when sampling (td_sample draws
         * nothing for greedy settings either) */
        for (int r = 0; r < n_out; r++) seeds[r] = greedy ? 0 : td_rng_next(rng);
        const td_sample_desc_t d = {sp->temperature, sp->top_k, sp->top_p};
        rc = td_op_sample(m->be, m->logits, n_out, m->cfg.n_vocab, &d, seeds, res, err);
        if (rc == TD_OK)
            for (int r = 0; r < n_out; r++) {
                ids[r] = res[r].id;
                if (probs) probs[r] = res[r].prob;
            }
    }
    free(seeds);
    free(res);
    return rc;
}
