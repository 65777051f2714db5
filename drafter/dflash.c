/* dflash.c - the DFlash drafter (dflash.h): config, target checks, weight binding, the context
 * cache and the one-forward block draft, all on backend ops. */
#include "drafter/dflash.h"
#include "drafter/draft.h"

#include "kernels/quant.h"
#include "model/tensor_source.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dl_layer {
    td_weight_t in_norm, wq, wk, wv, wo, post_norm, gate, up, down;
} dl_layer_t;

struct td_dflash {
    td_dflash_config_t cfg;
    td_model_t *target;
    td_backend_t *be;
    td_tensor_source_t *src;
    const td_weight_t *embd, *lm_head;
    td_weight_t fc, hidden_norm, norm;
    dl_layer_t *layers;
    const void **uploads;
    int n_uploads;
    /* draft_vocab: the ids the drafter may propose, ascending, and the target LM head's rows for
     * them (sub_head, built at load; host copy sub_host), or n_sub = 0: the whole head */
    int32_t *vocab;
    int n_sub;
    td_weight_t sub_head;
    void *sub_host;
    float *sub_logits; /* host [rows, n_sub] */
    size_t sub_cap;
    /* host logits of a draft [host_rows, n_vocab] and one row of scratch, kept between drafts (a
     * fresh 1-3 MB buffer per draft cost page faults every round) */
    float *host, *qrow;
    int host_rows;
    int n_vocab, fdim;
    /* scratch (backend memory), grown on demand */
    int cap_rows;
    float *x, *h, *q, *k, *v, *att, *g, *u, *fin, *logits;
};

struct td_dflash_ctx {
    td_dflash_t *d;
    int n_ctx, len;
    float **k, **v; /* [n_layer] -> [n_ctx, n_kv_head * head_dim] backend memory */
    float *last;    /* anchor_feature: the context row of position len - 1 [hidden] */
};

/* --- config ------------------------------------------------------------------------------------
 */

static int s_int(const cJSON *o, const char *key, int *out, const char *file, td_err_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
        v->valuedouble > 1e9)
        return td_err_set(err, TD_ERR_FORMAT, "%s: '%s' is missing or not a non-negative integer",
                          file, key);
    *out = (int)v->valuedouble;
    return TD_OK;
}

static int s_float(const cJSON *o, const char *key, float *out, const char *file, td_err_t *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0))
        return td_err_set(err, TD_ERR_FORMAT, "%s: '%s' is missing or not a positive number", file,
                          key);
    *out = (float)v->valuedouble;
    return TD_OK;
}

static int s_parse(const cJSON *o, td_dflash_config_t *c, const char *file, td_err_t *err) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "architecture");
    if (!cJSON_IsString(a) || strcmp(a->valuestring, "dflash"))
        return td_err_set(err, TD_ERR_FORMAT, "%s: \"architecture\" is not \"dflash\"", file);
    const cJSON *tl = cJSON_GetObjectItemCaseSensitive(o, "target_layers");
    int n = cJSON_GetArraySize(tl);
    if (!cJSON_IsArray(tl) || n < 1 || n > TD_DFLASH_MAX_TARGET_LAYERS)
        return td_err_set(err, TD_ERR_FORMAT, "%s: 'target_layers' must be a list of 1..%d ids",
                          file, TD_DFLASH_MAX_TARGET_LAYERS);
    c->n_target_layers = n;
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(tl, i);
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 100000 ||
            e->valuedouble != floor(e->valuedouble))
            return td_err_set(err, TD_ERR_FORMAT, "%s: target_layers[%d] is not a layer id", file,
                              i);
        c->target_layers[i] = (int)e->valuedouble;
    }
    int mask = 0, rc;
    if ((rc = s_int(o, "block_size", &c->block_size, file, err)) ||
        (rc = s_int(o, "mask_token_id", &mask, file, err)) ||
        (rc = s_int(o, "hidden_size", &c->hidden, file, err)) ||
        (rc = s_int(o, "num_hidden_layers", &c->n_layer, file, err)) ||
        (rc = s_int(o, "num_attention_heads", &c->n_head, file, err)) ||
        (rc = s_int(o, "num_key_value_heads", &c->n_kv_head, file, err)) ||
        (rc = s_int(o, "head_dim", &c->head_dim, file, err)) ||
        (rc = s_int(o, "intermediate_size", &c->n_ff, file, err)) ||
        (rc = s_float(o, "rms_norm_eps", &c->eps, file, err)) ||
        (rc = s_float(o, "rope_theta", &c->rope_theta, file, err)))
        return rc;
    c->mask_token_id = mask;
    const cJSON *af = cJSON_GetObjectItemCaseSensitive(o, "anchor_feature");
    if (af && !cJSON_IsBool(af))
        return td_err_set(err, TD_ERR_FORMAT, "%s: 'anchor_feature' is not true or false", file);
    c->anchor_feature = cJSON_IsTrue(af);
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(o, "block_sizes");
    int nb = bs ? cJSON_GetArraySize(bs) : 0;
    if (bs && (!cJSON_IsArray(bs) || nb < 1 || nb > TD_DFLASH_MAX_BLOCK_SIZES))
        return td_err_set(err, TD_ERR_FORMAT, "%s: 'block_sizes' must be a list of 1..%d sizes",
                          file, TD_DFLASH_MAX_BLOCK_SIZES);
    c->n_block_sizes = bs ? nb : 1;
    c->block_sizes[0] = c->block_size;
    for (int i = 0; i < nb; i++) {
        const cJSON *e = cJSON_GetArrayItem(bs, i);
        if (!cJSON_IsNumber(e) || e->valuedouble < 2 || e->valuedouble > 1024 ||
            e->valuedouble != floor(e->valuedouble) ||
            (i > 0 && e->valuedouble <= c->block_sizes[i - 1]))
            return td_err_set(err, TD_ERR_FORMAT,
                              "%s: block_sizes[%d] is not a size in 2..1024 above the one before",
                              file, i);
        c->block_sizes[i] = (int)e->valuedouble;
    }
    if (c->block_size < 2 || c->n_layer < 1 || c->n_head < 1 || c->n_kv_head < 1 ||
        c->n_head % c->n_kv_head || c->head_dim < 2 || c->head_dim % 2 || c->hidden < 1 ||
        c->n_ff < 1)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: inconsistent shape (block_size %d, layers %d, heads %d/%d, "
                          "head_dim %d, hidden %d, intermediate %d)",
                          file, c->block_size, c->n_layer, c->n_head, c->n_kv_head, c->head_dim,
                          c->hidden, c->n_ff);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "target");
    if (!cJSON_IsObject(t))
        return td_err_set(err, TD_ERR_FORMAT, "%s: 'target' object is missing", file);
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(t, "name");
    snprintf(c->target_name, sizeof c->target_name, "%s",
             cJSON_IsString(nm) ? nm->valuestring : "?");
    if ((rc = s_int(t, "n_layer", &c->target_n_layer, file, err)) ||
        (rc = s_int(t, "hidden_size", &c->target_hidden, file, err)) ||
        (rc = s_int(t, "vocab_size", &c->target_vocab, file, err)))
        return rc;
    const cJSON *fps = cJSON_GetObjectItemCaseSensitive(t, "fingerprints");
    if (fps && !cJSON_IsArray(fps))
        return td_err_set(err, TD_ERR_FORMAT, "%s: target.fingerprints is not a list", file);
    int nf = fps ? cJSON_GetArraySize(fps) : 0;
    if (nf > TD_DFLASH_MAX_FINGERPRINTS)
        return td_err_set(err, TD_ERR_FORMAT, "%s: more than %d target fingerprints", file,
                          TD_DFLASH_MAX_FINGERPRINTS);
    c->n_fingerprints = nf;
    for (int i = 0; i < nf; i++) {
        const cJSON *e = cJSON_GetArrayItem(fps, i);
        char *end = NULL;
        if (!cJSON_IsString(e) || strncmp(e->valuestring, "0x", 2) ||
            (c->fingerprints[i] = strtoull(e->valuestring + 2, &end, 16), *end) ||
            end == e->valuestring + 2)
            return td_err_set(err, TD_ERR_FORMAT,
                              "%s: target.fingerprints[%d] is not a \"0x...\" hex string", file, i);
    }
    return TD_OK;
}

int td_dflash_block_for(const td_dflash_config_t *c, int gamma) {
    for (int i = 0; i < c->n_block_sizes; i++)
        if (c->block_sizes[i] >= gamma + 1) return c->block_sizes[i];
    return gamma + 1;
}

int td_dflash_config_load(const char *dir, td_dflash_config_t *c, td_err_t *err) {
    char path[4096], *text = NULL;
    size_t len = 0;
    int rc = td_read_json_file(dir, "config.json", path, sizeof path, &text, &len, err);
    if (rc != TD_OK) return rc;
    cJSON *o = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return td_err_set(err, TD_ERR_FORMAT, "%s: not a JSON object", path);
    }
    td_dflash_config_t tmp;
    memset(&tmp, 0, sizeof tmp);
    rc = s_parse(o, &tmp, path, err);
    cJSON_Delete(o);
    if (rc == TD_OK) *c = tmp;
    return rc;
}

static void s_layers_str(const int *l, int n, char *out, size_t cap) {
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < n && o + 16 < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%d", i ? "," : "", l[i]);
}

int td_dflash_check_target(const td_dflash_config_t *c, const td_config_t *t,
                           uint64_t target_fingerprint, int any_target, td_err_t *err) {
    if (c->target_n_layer != t->n_layer || c->target_hidden != t->n_embd ||
        c->target_vocab != t->n_vocab)
        return td_err_set(err, TD_ERR_ARG,
                          "dflash drafter was trained for %s (n_layer %d, hidden %d, vocab %d); "
                          "the target has n_layer %d, hidden %d, vocab %d",
                          c->target_name, c->target_n_layer, c->target_hidden, c->target_vocab,
                          t->n_layer, t->n_embd, t->n_vocab);
    for (int i = 0; i < c->n_target_layers; i++)
        if (c->target_layers[i] < 1 || c->target_layers[i] > t->n_layer) {
            char s[512];
            s_layers_str(c->target_layers, c->n_target_layers, s, sizeof s);
            return td_err_set(err, TD_ERR_ARG,
                              "dflash drafter target_layers [%s]: layer %d is outside the "
                              "target's 1..%d",
                              s, c->target_layers[i], t->n_layer);
        }
    if (c->hidden != t->n_embd)
        return td_err_set(err, TD_ERR_ARG,
                          "dflash drafter width %d differs from the target's hidden size %d (it "
                          "uses the target's embedding and LM head)",
                          c->hidden, t->n_embd);
    if (c->mask_token_id < 0 || c->mask_token_id >= t->n_vocab)
        return td_err_set(err, TD_ERR_ARG,
                          "dflash drafter mask_token_id %d is outside the target's vocabulary "
                          "(%d)",
                          c->mask_token_id, t->n_vocab);
    if (any_target) return TD_OK;
    for (int i = 0; i < c->n_fingerprints; i++)
        if (c->fingerprints[i] == target_fingerprint) return TD_OK;
    char list[TD_DFLASH_MAX_FINGERPRINTS * 24 + 8] = "";
    size_t o = 0;
    for (int i = 0; i < c->n_fingerprints; i++)
        o += (size_t)snprintf(list + o, sizeof list - o, "%s0x%016llx", i ? ", " : "",
                              (unsigned long long)c->fingerprints[i]);
    return td_err_set(err, TD_ERR_ARG,
                      "dflash drafter was trained for %s (fingerprints [%s]); the target's "
                      "fingerprint is 0x%016llx (pass --dflash-any-target to pair anyway)",
                      c->target_name, list, (unsigned long long)target_fingerprint);
}

/* --- loading -----------------------------------------------------------------------------------
 */

static int s_bind(td_dflash_t *d, td_weight_t *w, int64_t d0, int64_t d1, td_err_t *err,
                  const char *fmt, int layer) {
    char name[128];
    snprintf(name, sizeof name, fmt, layer);
    memset(w, 0, sizeof *w);
    td_tensor_info_t t;
    if (!td_tensor_source_find(d->src, name, &t))
        return td_err_set(err, TD_ERR_FORMAT, "%s: tensor '%s' is missing (dflash drafter)",
                          td_tensor_source_path(d->src), name);
    if (t.dtype != TD_DTYPE_F32 && t.dtype != TD_DTYPE_F16 && t.dtype != TD_DTYPE_BF16)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "%s: tensor '%s' has dtype %s (need F32, F16 "
                          "or BF16)",
                          t.file, name, td_dtype_name(t.dtype));
    int ok = d1 ? (t.ndim == 2 && t.shape[0] == d0 && t.shape[1] == d1)
                : (t.ndim == 1 && t.shape[0] == d0);
    if (!ok)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: tensor '%s' has the wrong shape (expected [%lld%s%lld])", t.file,
                          name, (long long)d0, d1 ? ", " : "", d1 ? (long long)d1 : 0LL);
    const void *p = td_backend_weights(d->be, t.data, t.nbytes);
    if (!p) return td_err_set(err, TD_ERR_NOMEM, "cannot place tensor '%s'", name);
    d->uploads[d->n_uploads++] = p;
    w->data = p;
    w->dtype = t.dtype;
    w->rows = d1 ? d0 : 1;
    w->cols = d1 ? d1 : d0;
    return TD_OK;
}

/* The optional I32 tensor draft_vocab: the ids this drafter may propose. Their rows of the
 * target's LM head are gathered once into sub_head (Q8_0 when the head is quantized: a Q8_0
 * head's rows come back bit for bit; the head's own dtype when it is a float type), so a draft
 * scores those ids only: a smaller LM head product, the other ids at -inf (never drafted; the
 * proposal's distribution stays the one the verifier corrects, so nothing changes in what is
 * accepted but the drafter's cost). */
static int s_sub_head(td_dflash_t *d, td_err_t *err) {
    td_tensor_info_t t;
    if (!td_tensor_source_find(d->src, "draft_vocab", &t)) return TD_OK;
    if (t.dtype != TD_DTYPE_I32 || t.ndim != 1 || t.shape[0] < 1 || t.shape[0] > d->n_vocab)
        return td_err_set(err, TD_ERR_FORMAT,
                          "%s: tensor 'draft_vocab' must be I32 [n] with 1 <= n <= %d (the "
                          "target's vocabulary)",
                          t.file, d->n_vocab);
    const int n = (int)t.shape[0], H = d->cfg.hidden;
    if (!(d->vocab = malloc((size_t)n * sizeof *d->vocab)))
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    memcpy(d->vocab, t.data, (size_t)n * sizeof *d->vocab);
    for (int i = 0; i < n; i++)
        if (d->vocab[i] < 0 || d->vocab[i] >= d->n_vocab || (i && d->vocab[i] <= d->vocab[i - 1]))
            return td_err_set(err, TD_ERR_FORMAT,
                              "%s: draft_vocab[%d] = %d is outside the vocabulary (%d) or not above "
                              "the id before it",
                              t.file, i, d->vocab[i], d->n_vocab);
    const td_dtype_t hd = d->lm_head->dtype;
    const td_dtype_t dt = td_dtype_is_quantized(hd) ? (H % 32 ? TD_DTYPE_F32 : TD_DTYPE_Q8_0) : hd;
    const size_t rb = td_dtype_row_bytes(dt, H);
    float *dev = td_backend_alloc(d->be, (size_t)n * H * sizeof(float));
    float *rows = malloc((size_t)n * H * sizeof(float));
    d->sub_host = malloc((size_t)n * rb);
    int rc = TD_OK;
    if (!dev || !rows || !d->sub_host) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory for the draft vocabulary's head");
        goto done;
    }
    td_op_get_rows(d->be, dev, d->lm_head, d->vocab, n);
    td_backend_get(d->be, rows, dev, (size_t)n * H * sizeof(float));
    if ((rc = td_backend_status(d->be, err))) goto done;
    for (int i = 0; i < n; i++) {
        const float *x = rows + (size_t)i * H;
        uint8_t *o = (uint8_t *)d->sub_host + (size_t)i * rb;
        for (int c = 0; c < H && (dt == TD_DTYPE_BF16 || dt == TD_DTYPE_F16); c++) {
            uint16_t v = dt == TD_DTYPE_BF16 ? td_f32_to_bf16(x[c]) : td_f32_to_f16(x[c]);
            memcpy(o + 2 * c, &v, 2);
        }
        if (dt == TD_DTYPE_F32) memcpy(o, x, rb);
        if (dt == TD_DTYPE_Q8_0) td_quantize_row(dt, x, o, H);
    }
    const void *p = td_backend_weights(d->be, d->sub_host, (size_t)n * rb);
    if (!p) {
        rc = td_err_set(err, TD_ERR_NOMEM, "cannot place the draft vocabulary's head");
        goto done;
    }
    d->uploads[d->n_uploads++] = p;
    td_weight_t w = {.data = p, .dtype = dt, .rows = n, .cols = H};
    if (td_backend_prepare_weight(d->be, &w) != TD_OK) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory regrouping the draft vocabulary's head");
        goto done;
    }
    if (w.data != p) d->uploads[d->n_uploads++] = w.data;
    d->sub_head = w;
    d->n_sub = n;
done:
    if (dev) td_backend_free(d->be, dev);
    free(rows);
    return rc;
}

int td_dflash_draft_vocab(const td_dflash_t *d) { return d->n_sub; }

td_dflash_t *td_dflash_load(const char *dir, td_model_t *target, uint64_t target_fingerprint,
                            int any_target, td_err_t *err) {
    td_dflash_config_t c;
    if (td_dflash_config_load(dir, &c, err) != TD_OK) return NULL;
    const td_config_t *t = td_model_config(target);
    if (td_dflash_check_target(&c, t, target_fingerprint, any_target, err) != TD_OK) return NULL;
    td_dflash_t *d = calloc(1, sizeof *d);
    if (!d) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    d->cfg = c;
    d->target = target;
    d->be = td_model_backend(target);
    d->embd = td_model_tok_embd(target);
    d->lm_head = td_model_lm_head(target);
    d->n_vocab = t->n_vocab;
    d->fdim = c.n_target_layers * t->n_embd;
    d->layers = calloc((size_t)c.n_layer, sizeof *d->layers);
    d->uploads = calloc((size_t)(5 + 9 * c.n_layer), sizeof *d->uploads);
    char path[4096];
    td_path_join(path, sizeof path, dir, "model.safetensors");
    d->src = td_tensor_source_open(path, err);
    if (!d->layers || !d->uploads || !d->src) {
        if (!d->layers || !d->uploads) td_err_set(err, TD_ERR_NOMEM, "out of memory");
        td_dflash_destroy(&d);
        return NULL;
    }
    const int64_t H = c.hidden, Q = (int64_t)c.n_head * c.head_dim,
                  KV = (int64_t)c.n_kv_head * c.head_dim, F = c.n_ff;
    int rc = s_bind(d, &d->fc, H, d->fdim, err, "fc.weight", 0);
    if (!rc) rc = s_bind(d, &d->hidden_norm, H, 0, err, "hidden_norm.weight", 0);
    if (!rc) rc = s_bind(d, &d->norm, H, 0, err, "norm.weight", 0);
    for (int i = 0; i < c.n_layer && !rc; i++) {
        dl_layer_t *L = &d->layers[i];
        if ((rc = s_bind(d, &L->in_norm, H, 0, err, "layers.%d.input_layernorm.weight", i)) ||
            (rc = s_bind(d, &L->wq, Q, H, err, "layers.%d.self_attn.q_proj.weight", i)) ||
            (rc = s_bind(d, &L->wk, KV, H, err, "layers.%d.self_attn.k_proj.weight", i)) ||
            (rc = s_bind(d, &L->wv, KV, H, err, "layers.%d.self_attn.v_proj.weight", i)) ||
            (rc = s_bind(d, &L->wo, H, Q, err, "layers.%d.self_attn.o_proj.weight", i)) ||
            (rc = s_bind(d, &L->post_norm, H, 0, err, "layers.%d.post_attention_layernorm.weight",
                         i)) ||
            (rc = s_bind(d, &L->gate, F, H, err, "layers.%d.mlp.gate_proj.weight", i)) ||
            (rc = s_bind(d, &L->up, F, H, err, "layers.%d.mlp.up_proj.weight", i)) ||
            (rc = s_bind(d, &L->down, H, F, err, "layers.%d.mlp.down_proj.weight", i)))
            break;
    }
    if (!rc) rc = s_sub_head(d, err);
    if (rc) {
        td_dflash_destroy(&d);
        return NULL;
    }
    return d;
}

static void s_free_scratch(td_dflash_t *d) {
    float **all[] = {&d->x, &d->h, &d->q, &d->k, &d->v, &d->att, &d->g, &d->u, &d->fin, &d->logits};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        if (*all[i]) td_backend_free(d->be, *all[i]);
        *all[i] = NULL;
    }
    d->cap_rows = 0;
}

void td_dflash_destroy(td_dflash_t **self_p) {
    if (!self_p || !*self_p) return;
    td_dflash_t *d = *self_p;
    s_free_scratch(d);
    for (int i = 0; i < d->n_uploads; i++) td_backend_free_weights(d->be, d->uploads[i]);
    free(d->uploads);
    free(d->layers);
    free(d->vocab);
    free(d->sub_host);
    free(d->sub_logits);
    free(d->host);
    free(d->qrow);
    td_tensor_source_destroy(&d->src);
    free(d);
    *self_p = NULL;
}

const td_dflash_config_t *td_dflash_config(const td_dflash_t *d) { return &d->cfg; }
int td_dflash_feature_dim(const td_dflash_t *d) { return d->fdim; }

/* Scratch for n rows. */
static int s_scratch(td_dflash_t *d, int n, td_err_t *err) {
    if (n <= d->cap_rows) return TD_OK;
    s_free_scratch(d);
    const td_dflash_config_t *c = &d->cfg;
    size_t H = (size_t)c->hidden, Q = (size_t)c->n_head * c->head_dim,
           KV = (size_t)c->n_kv_head * c->head_dim, F = (size_t)c->n_ff, N = (size_t)n;
    d->x = td_backend_alloc(d->be, N * H * 4);
    d->h = td_backend_alloc(d->be, N * H * 4);
    d->q = td_backend_alloc(d->be, N * Q * 4);
    d->k = td_backend_alloc(d->be, N * KV * 4);
    d->v = td_backend_alloc(d->be, N * KV * 4);
    d->att = td_backend_alloc(d->be, N * Q * 4);
    d->g = td_backend_alloc(d->be, N * F * 4);
    d->u = td_backend_alloc(d->be, N * F * 4);
    d->fin = td_backend_alloc(d->be, N * (size_t)d->fdim * 4);
    d->logits = td_backend_alloc(d->be, N * (size_t)d->n_vocab * 4);
    if (!d->x || !d->h || !d->q || !d->k || !d->v || !d->att || !d->g || !d->u || !d->fin ||
        !d->logits) {
        s_free_scratch(d);
        return td_err_set(err, TD_ERR_NOMEM, "dflash: cannot allocate scratch for %d rows", n);
    }
    d->cap_rows = n;
    return TD_OK;
}

/* --- context cache -----------------------------------------------------------------------------
 */

td_dflash_ctx_t *td_dflash_ctx_new(td_dflash_t *d, int n_ctx, td_err_t *err) {
    if (n_ctx < d->cfg.block_size) {
        td_err_set(err, TD_ERR_ARG, "dflash context of %d positions is smaller than a block (%d)",
                   n_ctx, d->cfg.block_size);
        return NULL;
    }
    td_dflash_ctx_t *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->d = d;
    c->n_ctx = n_ctx;
    c->k = calloc((size_t)d->cfg.n_layer, sizeof *c->k);
    c->v = calloc((size_t)d->cfg.n_layer, sizeof *c->v);
    if (!c->k || !c->v) goto nomem;
    if (d->cfg.anchor_feature &&
        !(c->last = td_backend_alloc(d->be, (size_t)d->cfg.hidden * sizeof(float))))
        goto nomem;
    size_t row = (size_t)d->cfg.n_kv_head * d->cfg.head_dim * sizeof(float);
    for (int l = 0; l < d->cfg.n_layer; l++) {
        c->k[l] = td_backend_alloc(d->be, (size_t)n_ctx * row);
        c->v[l] = td_backend_alloc(d->be, (size_t)n_ctx * row);
        if (!c->k[l] || !c->v[l]) goto nomem;
    }
    return c;
nomem:
    td_dflash_ctx_destroy(&c);
    td_err_set(err, TD_ERR_NOMEM, "dflash: cannot allocate a context of %d positions", n_ctx);
    return NULL;
}

void td_dflash_ctx_destroy(td_dflash_ctx_t **self_p) {
    if (!self_p || !*self_p) return;
    td_dflash_ctx_t *c = *self_p;
    for (int l = 0; c->d && l < c->d->cfg.n_layer; l++) {
        if (c->k && c->k[l]) td_backend_free(c->d->be, c->k[l]);
        if (c->v && c->v[l]) td_backend_free(c->d->be, c->v[l]);
    }
    if (c->last) td_backend_free(c->d->be, c->last);
    free(c->k);
    free(c->v);
    free(c);
    *self_p = NULL;
}

int td_dflash_ctx_len(const td_dflash_ctx_t *c) { return c->len; }
int td_dflash_ctx_capacity(const td_dflash_ctx_t *c) { return c->n_ctx; }
void td_dflash_ctx_reset(td_dflash_ctx_t *c) { c->len = 0; }

/* y[n] = x[n] W^T in pieces of at most td_backend_invariant_rows rows for w's dtype, so every row
 * is bitwise what it is alone (a block drafted in a batch of blocks equals the block alone); one
 * call when the backend makes no promise (as the driver does). */
static void s_mm(td_dflash_t *d, float *y, const float *x, const td_weight_t *w, int n) {
    int chunk = td_backend_invariant_rows(d->be, w->dtype);
    if (chunk <= 1) chunk = n;
    for (int r0 = 0; r0 < n; r0 += chunk) {
        int k = n - r0 < chunk ? n - r0 : chunk;
        td_op_matmul(d->be, y + (size_t)r0 * w->rows, x + (size_t)r0 * w->cols, w, NULL, k);
    }
}

/* Keys (RoPE'd at pos) and values of layer l from the normed rows x[n, H] into the scratch
 * d->k / d->v (in pieces within the backend's batch-invariant rows). */
static void s_kv_proj(td_dflash_t *d, int l, const float *x, const int32_t *pos, int n) {
    const td_dflash_config_t *cf = &d->cfg;
    const dl_layer_t *L = &d->layers[l];
    s_mm(d, d->k, x, &L->wk, n);
    s_mm(d, d->v, x, &L->wv, n);
    td_op_rope(d->be, d->k, pos, n, cf->n_kv_head, cf->head_dim, cf->head_dim, cf->rope_theta,
               TD_ROPE_HALF);
}

/* Scratch key/value rows row0 .. row0+n-1 into rows idx[0..n) of layer l of c's cache. */
static void s_kv_store(td_dflash_ctx_t *c, int l, int row0, const int64_t *idx, int n) {
    td_dflash_t *d = c->d;
    const int KV = d->cfg.n_kv_head * d->cfg.head_dim;
    td_op_scatter_rows(d->be, c->k[l], KV, d->k + (size_t)row0 * KV, idx, n, KV);
    td_op_scatter_rows(d->be, c->v[l], KV, d->v + (size_t)row0 * KV, idx, n, KV);
}

int td_dflash_ctx_append(td_dflash_ctx_t *c, const float *features, int rows, td_err_t *err) {
    td_dflash_t *d = c->d;
    if (rows < 0 || (rows > 0 && !features))
        return td_err_set(err, TD_ERR_ARG, "dflash: bad feature rows (%d)", rows);
    if ((int64_t)c->len + rows + d->cfg.block_size > c->n_ctx)
        return td_err_set(err, TD_ERR_ARG,
                          "dflash: context of %d positions cannot take %d more feature rows after "
                          "%d (plus a block of %d)",
                          c->n_ctx, rows, c->len, d->cfg.block_size);
    const int chunk = 64;
    for (int r0 = 0; r0 < rows; r0 += chunk) {
        int n = rows - r0 < chunk ? rows - r0 : chunk;
        int rc = s_scratch(d, n, err);
        if (rc) return rc;
        int32_t pos[64];
        int64_t idx[64];
        for (int i = 0; i < n; i++) pos[i] = c->len + r0 + i, idx[i] = pos[i];
        td_backend_set(d->be, d->fin, features + (size_t)r0 * d->fdim,
                       (size_t)n * d->fdim * sizeof(float));
        td_op_matmul(d->be, d->x, d->fin, &d->fc, NULL, n);
        td_op_rmsnorm(d->be, d->x, d->x, &d->hidden_norm, n, d->cfg.hidden, d->cfg.eps);
        if (c->last)
            td_backend_copy(d->be, c->last, d->x + (size_t)(n - 1) * d->cfg.hidden,
                            (size_t)d->cfg.hidden * sizeof(float));
        for (int l = 0; l < d->cfg.n_layer; l++) {
            s_kv_proj(d, l, d->x, pos, n);
            s_kv_store(c, l, 0, idx, n);
        }
    }
    int rc = td_backend_status(d->be, err);
    if (rc) return rc;
    c->len += rows;
    return TD_OK;
}

/* --- draft -------------------------------------------------------------------------------------
 */

/* The block rows a job scores and draws. */
static int s_rows(const td_dflash_job_t *J) { return J->n_draft ? J->n_draft : J->block - 1; }

int td_dflash_draft_many(td_dflash_job_t *jobs, int n_jobs, td_err_t *err) {
    if (n_jobs < 1 || !jobs || !jobs[0].ctx)
        return td_err_set(err, TD_ERR_ARG, "dflash: bad job list");
    td_dflash_t *d = jobs[0].ctx->d;
    const td_dflash_config_t *cf = &d->cfg;
    const int H = cf->hidden, V = d->n_vocab, Q = cf->n_head * cf->head_dim;
    int N = 0, M = 0;
    for (int j = 0; j < n_jobs; j++) {
        td_dflash_job_t *J = &jobs[j];
        const int B = J->block;
        if (!J->ctx || J->ctx->d != d || B < 2 || B > 1024 || !J->draft || J->anchor < 0 ||
            J->anchor >= V || J->n_draft < 0 || J->n_draft > B - 1)
            return td_err_set(err, TD_ERR_ARG, "dflash: bad draft (block %d, anchor %d)", B,
                              J->anchor);
        if (J->ctx->len + B > J->ctx->n_ctx)
            return td_err_set(err, TD_ERR_ARG,
                              "dflash: context full (%d rows + block %d > %d positions)",
                              J->ctx->len, B, J->ctx->n_ctx);
        if (!J->rng && J->sp && J->sp->temperature > 0)
            return td_err_set(err, TD_ERR_ARG, "dflash: sampling needs an rng");
        for (int i = 0; i < j; i++)
            if (jobs[i].ctx == J->ctx)
                return td_err_set(err, TD_ERR_ARG, "dflash: one context twice in a batch");
        N += B, M += s_rows(J);
    }
    int rc = s_scratch(d, N, err);
    if (rc) return rc;
    int32_t *ids = malloc((size_t)N * sizeof *ids), *pos = malloc((size_t)N * sizeof *pos),
            *seq = calloc((size_t)N, sizeof *seq),
            *kv_len = malloc((size_t)n_jobs * sizeof *kv_len);
    int64_t *idx = malloc((size_t)N * sizeof *idx);
    if (M > d->host_rows) {
        free(d->host);
        d->host = malloc((size_t)M * V * sizeof *d->host);
        d->host_rows = d->host ? M : 0;
    }
    if (!d->qrow) d->qrow = malloc((size_t)V * sizeof *d->qrow);
    float *host = d->host, *qrow = d->qrow;
    if (!ids || !pos || !seq || !kv_len || !idx || !host || !qrow) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto done;
    }
    /* every block's rows one after the other: [anchor, mask x (B-1)] at its context's end */
    for (int j = 0, r = 0; j < n_jobs; j++) {
        const td_dflash_job_t *J = &jobs[j];
        for (int i = 0; i < J->block; i++, r++) {
            ids[r] = i ? cf->mask_token_id : J->anchor;
            pos[r] = J->ctx->len + i;
            idx[r] = pos[r];
        }
        kv_len[j] = J->ctx->len + J->block;
    }
    td_op_get_rows(d->be, d->h, d->embd, ids, N);
    /* anchor_feature: every row of a block also gets its context's last row (none yet: nothing) */
    for (int j = 0, r0 = 0; j < n_jobs; r0 += jobs[j++].block)
        if (jobs[j].ctx->last && jobs[j].ctx->len > 0)
            for (int i = 0; i < jobs[j].block; i++)
                td_op_add(d->be, d->h + (size_t)(r0 + i) * H, jobs[j].ctx->last, H);
    td_attn_desc_t ad = {.n_head = cf->n_head, .n_kv_head = cf->n_kv_head, .kind = TD_ATTN_BIDIR};
    ad.head_dim = cf->head_dim, ad.scale = 1.0f / sqrtf((float)cf->head_dim);
    for (int l = 0; l < cf->n_layer; l++) {
        const dl_layer_t *L = &d->layers[l];
        td_op_rmsnorm(d->be, d->x, d->h, &L->in_norm, N, H, cf->eps);
        s_mm(d, d->q, d->x, &L->wq, N);
        td_op_rope(d->be, d->q, pos, N, cf->n_head, cf->head_dim, cf->head_dim, cf->rope_theta,
                   TD_ROPE_HALF);
        s_kv_proj(d, l, d->x, pos, N);
        /* each block's keys/values sit past its own context (rewritten each draft); its queries
         * see that context and the whole block */
        for (int j = 0, r0 = 0; j < n_jobs; r0 += jobs[j++].block) {
            td_dflash_ctx_t *c = jobs[j].ctx;
            s_kv_store(c, l, r0, idx + r0, jobs[j].block);
            ad.n = jobs[j].block, ad.n_ctx = c->n_ctx, ad.kv_len = &kv_len[j];
            ad.pos = pos + r0, ad.seq = seq + r0;
            td_op_attention(d->be, d->att + (size_t)r0 * Q, d->q + (size_t)r0 * Q, c->k[l], c->v[l],
                            &ad);
        }
        s_mm(d, d->x, d->att, &L->wo, N);
        td_op_add(d->be, d->h, d->x, (int64_t)N * H);
        td_op_rmsnorm(d->be, d->x, d->h, &L->post_norm, N, H, cf->eps);
        s_mm(d, d->g, d->x, &L->gate, N);
        s_mm(d, d->u, d->x, &L->up, N);
        td_op_swiglu(d->be, d->g, d->g, d->u, (int64_t)N * cf->n_ff);
        s_mm(d, d->x, d->g, &L->down, N);
        td_op_add(d->be, d->h, d->x, (int64_t)N * H);
    }
    /* rows 1..n_draft of every block through the final norm, packed, then one LM head product */
    for (int j = 0, r0 = 0, o0 = 0; j < n_jobs; r0 += jobs[j].block, o0 += s_rows(&jobs[j++]))
        td_op_rmsnorm(d->be, d->x + (size_t)o0 * H, d->h + (size_t)(r0 + 1) * H, &d->norm,
                      s_rows(&jobs[j]), H, cf->eps);
    if (!d->n_sub) {
        s_mm(d, d->logits, d->x, d->lm_head, M);
        td_backend_get(d->be, host, d->logits, (size_t)M * V * sizeof *host);
    } else { /* the draft vocabulary's logits, the other ids at -inf */
        const size_t ns = (size_t)d->n_sub;
        if (d->sub_cap < (size_t)M * ns) {
            free(d->sub_logits);
            d->sub_cap = (d->sub_logits = malloc((size_t)M * ns * sizeof(float))) ? M * ns : 0;
        }
        if (!d->sub_logits) {
            rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
            goto done;
        }
        s_mm(d, d->logits, d->x, &d->sub_head, M);
        td_backend_get(d->be, d->sub_logits, d->logits, (size_t)M * ns * sizeof(float));
        for (int r = 0; r < M; r++) {
            float *row = host + (size_t)r * V;
            for (int i = 0; i < V; i++) row[i] = -INFINITY;
            for (size_t i = 0; i < ns; i++) row[d->vocab[i]] = d->sub_logits[(size_t)r * ns + i];
        }
    }
    if ((rc = td_backend_status(d->be, err))) goto done;
    for (int j = 0, o0 = 0; j < n_jobs; o0 += s_rows(&jobs[j++])) {
        td_dflash_job_t *J = &jobs[j];
        td_rng_t greedy_rng; /* td_sample wants one; greedy settings draw nothing from it */
        td_rng_seed(&greedy_rng, 0);
        td_rng_t *rng = J->rng ? J->rng : &greedy_rng;
        for (int i = 0; i < s_rows(J); i++) {
            const float *row = host + (size_t)(o0 + i) * V;
            if ((rc =
                     td_draft_sample(J->sp, rng, row, V, J->q, qrow, i, J->draft, "dflash: ", err)))
                goto done;
        }
        if (J->logits)
            memcpy(J->logits, host + (size_t)o0 * V, (size_t)s_rows(J) * V * sizeof *host);
    }
done:
    free(ids);
    free(pos);
    free(seq);
    free(kv_len);
    free(idx);
    return rc;
}

int td_dflash_draft(td_dflash_ctx_t *c, int32_t anchor, int block, const td_sampling_t *sp,
                    td_rng_t *rng, int32_t *draft, float *q, float *logits, td_err_t *err) {
    td_dflash_job_t job = {.ctx = c, .anchor = anchor, .block = block, .sp = sp, .rng = rng};
    job.draft = draft, job.q = q, job.logits = logits;
    return td_dflash_draft_many(&job, 1, err);
}

/* --- features ----------------------------------------------------------------------------------
 */

void td_feature_round(float *x, int64_t n, td_feature_type_t type) {
    if (type == TD_FEATURE_BF16)
        for (int64_t i = 0; i < n; i++) x[i] = td_bf16_to_f32(td_f32_to_bf16(x[i]));
    else if (type == TD_FEATURE_F16)
        for (int64_t i = 0; i < n; i++) x[i] = td_f16_to_f32(td_f32_to_f16(x[i]));
}
