/* draft.c - diffusion block drafting (T denoising steps, four unmasking orders, prefix cache or
 * exact recomputation, Dream's logit shift), Fast-dLLM v1 threshold decoding, AR drafting, and
 * the sparse top-K forms of distributions and logits for the wire. */
#include "drafter/draft.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const s_order_names[TD_ORDER_COUNT] = {"left-to-right", "confidence", "entropy",
                                                          "margin"};

const char *td_unmask_order_name(td_unmask_order_t o) {
    return o >= 0 && o < TD_ORDER_COUNT ? s_order_names[o] : "?";
}

int td_unmask_order_parse(const char *s) {
    for (int i = 0; s && i < TD_ORDER_COUNT; i++)
        if (strcmp(s, s_order_names[i]) == 0) return i;
    return -1;
}

int td_draft_step_count(int gamma, int steps, int step, int remaining) {
    if (steps > gamma) steps = gamma;
    if (steps < 1) steps = 1;
    if (step >= steps - 1) return remaining;
    return remaining / (steps - step);
}

/* ---- top-K selection ---- */

static inline float s_clean(float x) { return isnan(x) ? -INFINITY : x; }

/* a ranks above b: larger value, ties to the lower id. */
static inline int s_above(float va, int ia, float vb, int ib) {
    return va > vb || (va == vb && ia < ib);
}

/* The m = min(k, count of eligible) best entries of x[n] (eligible: x > floor when strict, any
 * otherwise), best first. Uses a size-k min-heap (the root is the worst kept), then sorts it. */
static int s_topk(const float *x, int n, int k, int positive_only, int32_t *ids, float *vals) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        float v = s_clean(x[i]);
        if (positive_only && !(v > 0.0f)) continue;
        if (m < k) {
            int j = m++;
            while (j > 0) { /* sift up; the root is the worst kept entry */
                int p = (j - 1) / 2;
                if (!s_above(vals[p], ids[p], v, i)) break;
                vals[j] = vals[p];
                ids[j] = ids[p];
                j = p;
            }
            vals[j] = v;
            ids[j] = i;
        } else if (k > 0 && s_above(v, i, vals[0], ids[0])) {
            int j = 0;
            for (;;) {
                int l = 2 * j + 1, r = l + 1, w = j;
                float wv = v;
                int wi = i;
                if (l < m && s_above(wv, wi, vals[l], ids[l])) w = l, wv = vals[l], wi = ids[l];
                if (r < m && s_above(wv, wi, vals[r], ids[r])) w = r, wv = vals[r], wi = ids[r];
                if (w == j) break;
                vals[j] = vals[w];
                ids[j] = ids[w];
                j = w;
            }
            vals[j] = v;
            ids[j] = i;
        }
    }
    /* heap sort: repeatedly move the worst to the end */
    for (int end = m - 1; end > 0; end--) {
        float tv = vals[0];
        int32_t ti = ids[0];
        vals[0] = vals[end];
        ids[0] = ids[end];
        vals[end] = tv;
        ids[end] = ti;
        int j = 0;
        for (;;) {
            int l = 2 * j + 1, r = l + 1, w = j;
            if (l < end && s_above(vals[w], ids[w], vals[l], ids[l])) w = l;
            if (r < end && s_above(vals[w], ids[w], vals[r], ids[r])) w = r;
            if (w == j) break;
            float sv = vals[j];
            int32_t si = ids[j];
            vals[j] = vals[w];
            ids[j] = ids[w];
            vals[w] = sv;
            ids[w] = si;
            j = w;
        }
    }
    return m;
}

int td_draft_sample(const td_sampling_t *sp, td_rng_t *rng, const float *row, int V, float *q,
                    float *qrow, int j, int32_t *draft, const char *prefix, td_err_t *err) {
    int id = td_sample(sp, rng, row, V, q ? q + (size_t)j * V : qrow);
    if (id < 0) return td_err_set(err, id, "%ssampling failed at draft position %d", prefix, j);
    draft[j] = id;
    return TD_OK;
}

int td_dist_topk(const float *p, int n, int k, int32_t *ids, float *probs, float *rest) {
    if (!p || n <= 0 || k < 0 || (k > 0 && (!ids || !probs)) || !rest) return TD_ERR_ARG;
    if (k > n) k = n;
    int m = s_topk(p, n, k, 1, ids, probs);
    double total = 0.0;
    for (int i = 0; i < n; i++)
        if (p[i] > 0.0f) total += p[i];
    /* sum the left-out entries directly so a complete list gives exactly 0 */
    double r = 0.0;
    if (m > 0 && m < n) {
        float last = probs[m - 1];
        int32_t lid = ids[m - 1];
        for (int i = 0; i < n; i++) {
            float v = p[i];
            if (!(v > 0.0f)) continue;
            if (s_above(v, i, last, lid) || (v == last && i == lid)) continue; /* a kept one */
            r += v;
        }
    } else if (m == 0) {
        r = total;
    }
    *rest = (float)r;
    return m;
}

int td_logits_topk(const float *logits, int n, int k, int32_t *ids, float *vals, float *bound) {
    if (!logits || n <= 0 || k < 0 || (k > 0 && (!ids || !vals)) || !bound) return TD_ERR_ARG;
    if (k > n) k = n;
    int m = s_topk(logits, n, k, 0, ids, vals);
    float b = -INFINITY;
    if (m < n) {
        float last = m > 0 ? vals[m - 1] : INFINITY;
        int lid = m > 0 ? ids[m - 1] : -1;
        for (int i = 0; i < n; i++) {
            float v = s_clean(logits[i]);
            if (m > 0 && (s_above(v, i, last, lid) || i == lid)) continue;
            if (v > b) b = v;
        }
    }
    *bound = b;
    return m;
}

/* ---- the denoising runner ---- */

typedef struct s_run {
    td_model_t *m;
    int V, shift, mask_id;
    td_kv_cache_t *kv; /* the cache used (the caller's or a private one) */
    td_kv_cache_t *own;
    int seq, exact;
    int cap;      /* capacity of the batch buffers (tokens) */
    int32_t *tok; /* [cap] */
    int32_t *pos; /* [cap] */
    int32_t *sq;  /* [cap] */
    uint8_t *lf;  /* [cap] */
} s_run_t;

static void s_run_free(s_run_t *r) {
    td_kv_cache_destroy(&r->own);
    free(r->tok);
    free(r->pos);
    free(r->sq);
    free(r->lf);
}

static int s_run_init(s_run_t *r, td_model_t *m, td_kv_cache_t *kv, int seq, int exact, int cap,
                      int n_ctx, td_err_t *err) {
    const td_config_t *c = td_model_config(m);
    memset(r, 0, sizeof *r);
    r->m = m;
    r->V = c->n_vocab;
    r->shift = c->logit_shift ? 1 : 0;
    r->mask_id = c->mask_token_id;
    r->exact = exact || !kv;
    r->cap = cap;
    if (r->exact) {
        r->own = td_kv_cache_new(m, 1, n_ctx, err);
        if (!r->own) return err && err->code ? err->code : TD_ERR_NOMEM;
        r->kv = r->own;
        r->seq = 0;
    } else {
        r->kv = kv;
        r->seq = seq;
    }
    r->tok = malloc((size_t)cap * sizeof *r->tok);
    r->pos = malloc((size_t)cap * sizeof *r->pos);
    r->sq = malloc((size_t)cap * sizeof *r->sq);
    r->lf = malloc((size_t)cap);
    if (!r->tok || !r->pos || !r->sq || !r->lf) {
        s_run_free(r);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    return TD_OK;
}

/* One forward over prefix + block (or the part of the prefix not cached), returning into rows
 * the logits predicting block position j for every j with want[j] (in increasing j), with the
 * mask token's logit set to -inf. first: the first step for this block (the prefix tail may be
 * missing from the cache). */
static int s_forward(s_run_t *r, const int32_t *prefix, int n_prefix, const int32_t *block, int g,
                     const uint8_t *want, int first, float *rows, td_err_t *err) {
    int start;
    if (r->exact) {
        td_kv_cache_crop(r->kv, r->seq, 0);
        start = 0;
    } else {
        int L = td_kv_cache_len(r->kv, r->seq);
        if (first && L > n_prefix) {
            td_kv_cache_crop(r->kv, r->seq, n_prefix);
            L = n_prefix;
        }
        start = n_prefix - r->shift;
        if (first && L < start) start = L;
    }
    int n = n_prefix - start + g;
    if (n > r->cap) return td_err_set(err, TD_ERR_ARG, "batch of %d tokens exceeds %d", n, r->cap);
    for (int i = 0; i < n; i++) {
        int p = start + i;
        r->tok[i] = p < n_prefix ? prefix[p] : block[p - n_prefix];
        r->pos[i] = p;
        r->sq[i] = r->seq;
        r->lf[i] = 0;
    }
    int n_out = 0;
    for (int j = 0; j < g; j++)
        if (want[j]) {
            r->lf[n_prefix + j - r->shift - start] = 1;
            n_out++;
        }
    if (n_out == 0) return TD_OK;
    td_batch_t b = {.n = n,
                    .tokens = r->tok,
                    .pos = r->pos,
                    .seq = r->sq,
                    .attn = TD_ATTN_BIDIR,
                    .logits_for = r->lf};
    int rc = td_model_forward(r->m, r->kv, &b, rows, err);
    if (rc != TD_OK) return rc;
    if (r->mask_id >= 0 && r->mask_id < r->V)
        for (int i = 0; i < n_out; i++) rows[(size_t)i * r->V + r->mask_id] = -INFINITY;
    return TD_OK;
}

/* The distribution the order scores are computed from: the sampling distribution when
 * temperature > 0, softmax(logits) at temperature 0. */
static void s_score_dist(const td_sampling_t *sp, const float *logits, int V, float *out) {
    if (sp->temperature > 0.0f) {
        td_sampling_dist(sp, logits, V, out);
        return;
    }
    td_log_softmax(out, logits, V);
    for (int t = 0; t < V; t++) out[t] = expf(out[t]);
}

/* Higher is unmasked earlier. */
static double s_score(td_unmask_order_t order, const float *d, int V) {
    double best = 0.0, second = 0.0, h = 0.0;
    for (int t = 0; t < V; t++) {
        double v = d[t];
        if (v > best) {
            second = best;
            best = v;
        } else if (v > second) {
            second = v;
        }
        if (v > 0.0) h -= v * log(v);
    }
    switch (order) {
    case TD_ORDER_ENTROPY:
        return -h;
    case TD_ORDER_MARGIN:
        return best - second;
    default:
        return best;
    }
}

int td_diffusion_check_model(const td_model_t *m, td_err_t *err) {
    if (!m) return td_err_set(err, TD_ERR_ARG, "no model");
    const td_config_t *c = td_model_config(m);
    if (!c->is_diffusion || c->causal || c->mask_token_id < 0)
        return td_err_set(err, TD_ERR_ARG,
                          "%s is not a masked-diffusion LM (no mask token or causal)",
                          td_arch_name(c->arch));
    return TD_OK;
}

int td_diffusion_draft_ex(td_model_t *m, td_kv_cache_t *kv, int seq, const int32_t *prefix,
                          int n_prefix, int gamma, int steps, td_unmask_order_t order,
                          const td_sampling_t *sp, td_rng_t *rng, int32_t *draft, float *q,
                          const td_draft_opts_t *opts, td_err_t *err) {
    int rc = td_diffusion_check_model(m, err);
    if (rc != TD_OK) return rc;
    if (!prefix || n_prefix < 1 || gamma < 1 || !sp || !rng || !draft || order < 0 ||
        order >= TD_ORDER_COUNT)
        return td_err_set(err, TD_ERR_ARG, "diffusion draft: bad arguments (n_prefix %d, gamma %d)",
                          n_prefix, gamma);
    td_draft_opts_t o = opts ? *opts : (td_draft_opts_t){0};
    int exact = o.exact || !kv;
    if (!exact) {
        if (seq < 0 || seq >= td_kv_cache_n_seq(kv))
            return td_err_set(err, TD_ERR_ARG, "cache slot %d out of range", seq);
        if (n_prefix + gamma > td_kv_cache_n_ctx(kv))
            return td_err_set(err, TD_ERR_ARG, "prefix %d + gamma %d exceeds the cache (%d)",
                              n_prefix, gamma, td_kv_cache_n_ctx(kv));
    }
    if (steps > gamma) steps = gamma;
    if (steps < 1) steps = 1;
    const int V = td_model_config(m)->n_vocab, mask_id = td_model_config(m)->mask_token_id;
    for (int i = 0; i < n_prefix; i++)
        if (prefix[i] < 0 || prefix[i] >= V)
            return td_err_set(err, TD_ERR_ARG, "prefix token %d out of range", prefix[i]);

    s_run_t r;
    rc = s_run_init(&r, m, kv, seq, exact, n_prefix + gamma, n_prefix + gamma, err);
    if (rc != TD_OK) return rc;
    float *rows = malloc((size_t)gamma * V * sizeof *rows);
    float *dist = malloc((size_t)V * sizeof *dist);
    float *qrow = malloc((size_t)V * sizeof *qrow);
    double *score = malloc((size_t)gamma * sizeof *score);
    int *rowof = malloc((size_t)gamma * sizeof *rowof);
    uint8_t *masked = malloc((size_t)gamma), *want = malloc((size_t)gamma),
            *pick = malloc((size_t)gamma);
    if (!rows || !dist || !qrow || !score || !rowof || !masked || !want || !pick) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int j = 0; j < gamma; j++) {
        draft[j] = mask_id;
        masked[j] = 1;
    }
    int remaining = gamma, forwards = 0;
    for (int step = 0; step < steps && remaining > 0; step++) {
        int k = td_draft_step_count(gamma, steps, step, remaining);
        /* which rows to compute: every mask for scored orders, the k leftmost for left-to-right */
        int c = 0;
        for (int j = 0; j < gamma; j++) {
            want[j] = masked[j] && (order != TD_ORDER_LEFT_TO_RIGHT || c < k);
            if (want[j]) rowof[j] = c++;
            pick[j] = 0;
        }
        rc = s_forward(&r, prefix, n_prefix, draft, gamma, want, step == 0, rows, err);
        if (rc != TD_OK) goto done;
        forwards++;
        if (order == TD_ORDER_LEFT_TO_RIGHT) {
            for (int j = 0; j < gamma; j++) pick[j] = want[j];
        } else {
            for (int j = 0; j < gamma; j++)
                if (want[j]) {
                    s_score_dist(sp, rows + (size_t)rowof[j] * V, V, dist);
                    score[j] = s_score(order, dist, V);
                }
            for (int n = 0; n < k; n++) {
                int best = -1;
                for (int j = 0; j < gamma; j++)
                    if (want[j] && !pick[j] && (best < 0 || score[j] > score[best])) best = j;
                pick[best] = 1;
            }
        }
        for (int j = 0; j < gamma; j++) {
            if (!pick[j]) continue;
            const float *lrow = rows + (size_t)rowof[j] * V;
            if ((rc = td_draft_sample(sp, rng, lrow, V, q, qrow, j, draft, "", err))) goto done;
            masked[j] = 0;
            remaining--;
            if (o.logits) memcpy(o.logits + (size_t)j * V, lrow, (size_t)V * sizeof *lrow);
            if (o.step_of) o.step_of[j] = step;
        }
    }
    if (o.n_forwards) *o.n_forwards = forwards;
done:
    if (!r.exact && td_kv_cache_len(r.kv, r.seq) > n_prefix)
        td_kv_cache_crop(r.kv, r.seq, n_prefix);
    s_run_free(&r);
    free(rows);
    free(dist);
    free(qrow);
    free(score);
    free(rowof);
    free(masked);
    free(want);
    free(pick);
    return rc;
}

int td_diffusion_draft(td_model_t *m, td_kv_cache_t *kv, int seq, const int32_t *prefix,
                       int n_prefix, int gamma, int steps, td_unmask_order_t order,
                       const td_sampling_t *sp, td_rng_t *rng, int32_t *draft, float *q,
                       td_err_t *err) {
    return td_diffusion_draft_ex(m, kv, seq, prefix, n_prefix, gamma, steps, order, sp, rng, draft,
                                 q, NULL, err);
}

/* ---- AR drafts ---- */

int td_ar_draft_many(td_model_t *m, td_kv_cache_t *kv, td_ar_job_t *jobs, int n_jobs,
                     td_err_t *err) {
    const td_config_t *c = td_model_config(m);
    if (!c->causal) return td_err_set(err, TD_ERR_ARG, "AR draft needs a causal model");
    const int V = c->n_vocab;
    int rows = 0, max_gamma = 0;
    for (int k = 0; k < n_jobs; k++) {
        td_ar_job_t *J = &jobs[k];
        if (!J->prefix || J->n_prefix < 1 || J->gamma < 1 || !J->sp || !J->rng || !J->draft)
            return td_err_set(err, TD_ERR_ARG, "AR draft: bad arguments (n_prefix %d, gamma %d)",
                              J->n_prefix, J->gamma);
        for (int i = 0; i < J->n_prefix; i++)
            if (J->prefix[i] < 0 || J->prefix[i] >= V)
                return td_err_set(err, TD_ERR_ARG, "prefix token %d out of range", J->prefix[i]);
        if (J->seq < 0 || J->seq >= td_kv_cache_n_seq(kv) ||
            J->n_prefix + J->gamma - 1 > td_kv_cache_n_ctx(kv))
            return td_err_set(err, TD_ERR_ARG,
                              "AR draft: slot %d or length %d does not fit the cache", J->seq,
                              J->n_prefix + J->gamma - 1);
        for (int l = 0; l < k; l++)
            if (jobs[l].seq == J->seq) return td_err_set(err, TD_ERR_ARG, "AR draft: slot twice");
        int L = td_kv_cache_len(kv, J->seq);
        rows += J->n_prefix - (L < J->n_prefix - 1 ? L : J->n_prefix - 1);
        if (J->gamma > max_gamma) max_gamma = J->gamma;
    }
    if (rows < n_jobs) rows = n_jobs;
    int32_t *tok = malloc((size_t)rows * 3 * sizeof *tok);
    uint8_t *lf = calloc((size_t)rows, 1);
    float *logits = malloc((size_t)n_jobs * (size_t)V * sizeof *logits);
    int rc = TD_OK;
    if (!tok || !lf || !logits) rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
    int32_t *pos = tok + rows, *sq = tok + 2 * (size_t)rows;
    /* step j: every job still drafting adds its rows (step 0: the prefix its slot lacks, logits
     * for the last), one forward for all, then each samples its draft j from its own row */
    for (int j = 0; rc == TD_OK && j < max_gamma; j++) {
        int n = 0;
        for (int k = 0; k < n_jobs; k++) {
            td_ar_job_t *J = &jobs[k];
            if (j >= J->gamma) continue;
            if (j == 0) {
                int L = td_kv_cache_len(kv, J->seq);
                if (L > J->n_prefix - 1) td_kv_cache_crop(kv, J->seq, L = J->n_prefix - 1);
                for (int i = L; i < J->n_prefix; i++, n++)
                    tok[n] = J->prefix[i], pos[n] = i, sq[n] = J->seq, lf[n] = 0;
            } else {
                tok[n] = J->draft[j - 1], pos[n] = J->n_prefix + j - 1, sq[n] = J->seq;
                lf[n++] = 0;
            }
            lf[n - 1] = 1;
        }
        td_batch_t b = {
            .n = n, .tokens = tok, .pos = pos, .seq = sq, .attn = TD_ATTN_CAUSAL, .logits_for = lf};
        if ((rc = td_model_forward(m, kv, &b, logits, err)) != TD_OK) break;
        for (int k = 0, r = 0; k < n_jobs; k++) {
            td_ar_job_t *J = &jobs[k];
            if (j >= J->gamma) continue;
            float *qj = J->q ? J->q + (size_t)j * V : NULL;
            int id = td_sample(J->sp, J->rng, logits + (size_t)r++ * V, V, qj);
            if (id < 0) {
                rc = td_err_set(err, id, "sampling failed at draft position %d", j);
                break;
            }
            J->draft[j] = id;
        }
    }
    free(tok);
    free(lf);
    free(logits);
    return rc;
}

int td_ar_draft(td_model_t *m, td_kv_cache_t *kv, int seq, const int32_t *prefix, int n_prefix,
                int gamma, const td_sampling_t *sp, td_rng_t *rng, int32_t *draft, float *q,
                td_err_t *err) {
    if (!m || !prefix || n_prefix < 1 || gamma < 1 || !sp || !rng || !draft)
        return td_err_set(err, TD_ERR_ARG, "AR draft: bad arguments (n_prefix %d, gamma %d)",
                          n_prefix, gamma);
    if (!td_model_config(m)->causal)
        return td_err_set(err, TD_ERR_ARG, "AR draft needs a causal model");
    td_kv_cache_t *own = NULL;
    if (!kv) {
        if (!(own = td_kv_cache_new(m, 1, n_prefix + gamma, err)))
            return err && err->code ? err->code : TD_ERR_NOMEM;
        kv = own, seq = 0;
    }
    td_ar_job_t job = {.seq = seq, .prefix = prefix, .n_prefix = n_prefix, .gamma = gamma};
    job.sp = sp, job.rng = rng, job.draft = draft, job.q = q;
    int rc = td_ar_draft_many(m, kv, &job, 1, err);
    td_kv_cache_destroy(&own);
    return rc;
}

/* ---- dLLM-only decoding ---- */

td_diffusion_params_t td_diffusion_params_default(void) {
    return (td_diffusion_params_t){.max_tokens = 128,
                                   .block_size = 32,
                                   .threshold = 0.9f,
                                   .sampling = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f},
                                   .seed = 0,
                                   .stop_ids = NULL,
                                   .n_stop = 0,
                                   .stop_at_eos = 1,
                                   .exact = 0,
                                   .suppress_ids = NULL,
                                   .n_suppress = 0};
}

static int s_is_stop(const td_diffusion_params_t *p, int eos, int32_t id) {
    return td_is_stop_id(p->stop_ids, p->n_stop, p->stop_at_eos ? eos : -1, id);
}

int td_diffusion_generate(td_model_t *m, const int32_t *prompt, int n_prompt,
                          const td_diffusion_params_t *p, int32_t *out, td_diffusion_stats_t *st,
                          td_err_t *err) {
    int rc = td_diffusion_check_model(m, err);
    if (rc != TD_OK) return rc;
    if (!prompt || n_prompt < 1 || !p || p->max_tokens < 0 || (p->max_tokens > 0 && !out) ||
        p->block_size < 1 || (p->n_stop > 0 && !p->stop_ids) ||
        (p->n_suppress > 0 && !p->suppress_ids))
        return td_err_set(err, TD_ERR_ARG, "diffusion generate: bad arguments");
    const td_config_t *c = td_model_config(m);
    const int V = c->n_vocab, mask_id = c->mask_token_id;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= V)
            return td_err_set(err, TD_ERR_ARG, "prompt token %d out of range", prompt[i]);
    int n_ctx = 0;
    if ((rc = td_config_fit_ctx(c, n_prompt, p->max_tokens, 0, &n_ctx, err)) != TD_OK) return rc;
    td_diffusion_stats_t s = {0};
    if (n_ctx == n_prompt) {
        if (st) *st = s;
        return TD_OK;
    }
    td_kv_cache_t *kv = NULL;
    if (!p->exact) {
        kv = td_kv_cache_new(m, 1, n_ctx, err);
        if (!kv) return err && err->code ? err->code : TD_ERR_NOMEM;
    }
    s_run_t r;
    rc = s_run_init(&r, m, kv, 0, p->exact, n_ctx, n_ctx, err);
    if (rc != TD_OK) {
        td_kv_cache_destroy(&kv);
        return rc;
    }
    const int B = p->block_size;
    int32_t *seqbuf = malloc((size_t)n_ctx * sizeof *seqbuf);
    float *rows = malloc((size_t)B * V * sizeof *rows);
    float *dist = malloc((size_t)V * sizeof *dist);
    double *conf = malloc((size_t)B * sizeof *conf);
    int *rowof = malloc((size_t)B * sizeof *rowof);
    uint8_t *masked = malloc((size_t)B), *pick = malloc((size_t)B);
    if (!seqbuf || !rows || !dist || !conf || !rowof || !masked || !pick) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto done;
    }
    memcpy(seqbuf, prompt, (size_t)n_prompt * sizeof *seqbuf);
    td_rng_t rng;
    td_rng_seed(&rng, p->seed);
    int cur = n_prompt, stop = 0;
    while (!stop && cur < n_ctx) {
        int g = n_ctx - cur < B ? n_ctx - cur : B;
        int32_t *block = seqbuf + cur;
        for (int j = 0; j < g; j++) {
            block[j] = mask_id;
            masked[j] = 1;
        }
        int remaining = g, end = g; /* end: committed length of this block once a stop is found */
        for (int step = 0; remaining > 0 && !stop; step++) {
            int c2 = 0;
            for (int j = 0; j < g; j++) {
                if (masked[j]) rowof[j] = c2++;
                pick[j] = 0;
            }
            rc = s_forward(&r, seqbuf, cur, block, g, masked, step == 0, rows, err);
            if (rc != TD_OK) goto done;
            s.forwards++;
            for (int k = 0; k < p->n_suppress; k++) {
                const int32_t id = p->suppress_ids[k];
                if (id < 0 || id >= V) continue;
                for (int i = 0; i < c2; i++) rows[(size_t)i * V + id] = -INFINITY;
            }
            int best = -1, any = 0;
            for (int j = 0; j < g; j++) {
                if (!masked[j]) continue;
                s_score_dist(&p->sampling, rows + (size_t)rowof[j] * V, V, dist);
                conf[j] = s_score(TD_ORDER_CONFIDENCE, dist, V);
                if (best < 0 || conf[j] > conf[best]) best = j;
                if (conf[j] >= (double)p->threshold) pick[j] = 1, any = 1;
            }
            if (!any) pick[best] = 1;
            for (int j = 0; j < g; j++) {
                if (!pick[j]) continue;
                int id = td_sample(&p->sampling, &rng, rows + (size_t)rowof[j] * V, V, NULL);
                if (id < 0) {
                    rc = td_err_set(err, id, "sampling failed");
                    goto done;
                }
                block[j] = id;
                masked[j] = 0;
                remaining--;
            }
            /* a stop id with everything before it committed ends generation */
            for (int j = 0; j < g && !masked[j]; j++)
                if (s_is_stop(p, c->eos_token_id, block[j])) {
                    stop = 1;
                    end = j + 1;
                    break;
                }
        }
        s.blocks++;
        /* the block's keys/values were computed while it was partly masked: drop them so the
         * next block's first step recomputes them as committed prefix */
        if (!r.exact) td_kv_cache_crop(r.kv, r.seq, cur);
        cur += end;
    }
    s.generated = cur - n_prompt;
    s.stopped_at_stop_id = stop;
    memcpy(out, seqbuf + n_prompt, (size_t)s.generated * sizeof *out);
    if (st) *st = s;
done:
    s_run_free(&r);
    td_kv_cache_destroy(&kv);
    free(seqbuf);
    free(rows);
    free(dist);
    free(conf);
    free(rowof);
    free(masked);
    free(pick);
    return rc;
}
