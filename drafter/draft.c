/* draft.c - diffusion block drafting (T denoising steps, four unmasking orders, prefix cache or
 * exact recomputation, Dream's logit shift), Fast-dLLM v1 threshold decoding, AR drafting, and
 * the sparse top-K forms of distributions and logits for the wire. */
#include "drafter/draft.h"

#include <limits.h>
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

/* The batch rows of one forward over prefix + block (or the part of the prefix not cached) into
 * tok/pos/sq/lf (room for cap rows), logits wanted for every block position j with want[j] (in
 * increasing j, *n_out of them). first: the first step for this block (the prefix tail may be
 * missing from the cache; a cache longer than the prefix is cropped). Returns the row count or
 * TD_ERR_ARG (err set) past cap. */
static int s_fill(s_run_t *r, const int32_t *prefix, int n_prefix, const int32_t *block, int g,
                  const uint8_t *want, int first, int cap, int32_t *tok, int32_t *pos, int32_t *sq,
                  uint8_t *lf, int *n_out, td_err_t *err) {
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
    if (n > cap) return td_err_set(err, TD_ERR_ARG, "batch of %d tokens exceeds %d", n, cap);
    for (int i = 0; i < n; i++) {
        int p = start + i;
        tok[i] = p < n_prefix ? prefix[p] : block[p - n_prefix];
        pos[i] = p;
        sq[i] = r->seq;
        lf[i] = 0;
    }
    *n_out = 0;
    for (int j = 0; j < g; j++)
        if (want[j]) {
            lf[n_prefix + j - r->shift - start] = 1;
            ++*n_out;
        }
    return n;
}

/* The mask token is never drafted: its logit in each of the n_out rows becomes -inf. */
static void s_mask_rows(const s_run_t *r, float *rows, int n_out) {
    if (r->mask_id >= 0 && r->mask_id < r->V)
        for (int i = 0; i < n_out; i++) rows[(size_t)i * r->V + r->mask_id] = -INFINITY;
}

/* One forward over prefix + block (s_fill's rows), returning into rows the logits predicting
 * block position j for every j with want[j] (in increasing j), the mask token's logit -inf. */
static int s_forward(s_run_t *r, const int32_t *prefix, int n_prefix, const int32_t *block, int g,
                     const uint8_t *want, int first, float *rows, td_err_t *err) {
    int n_out = 0;
    int n = s_fill(r, prefix, n_prefix, block, g, want, first, r->cap, r->tok, r->pos, r->sq, r->lf,
                   &n_out, err);
    if (n < 0) return n;
    if (n_out == 0) return TD_OK;
    td_batch_t b = {.n = n,
                    .tokens = r->tok,
                    .pos = r->pos,
                    .seq = r->sq,
                    .attn = TD_ATTN_BIDIR,
                    .logits_for = r->lf};
    int rc = td_model_forward(r->m, r->kv, &b, rows, err);
    if (rc != TD_OK) return rc;
    s_mask_rows(r, rows, n_out);
    return TD_OK;
}

/* Several jobs' rows of one step in one batch (tok/pos/sq/lf, job g's rows from grow[g] to
 * grow[g+1]-1, all on cache kvs[g]), run in as few forwards as keep every row bitwise what it is
 * alone: consecutive jobs share a forward while they use the same cache and their rows fit
 * td_model_invariant_rows (a job over that bound runs alone, as it does alone). The logits of the
 * rows with lf set land in logits, in batch order. *forwards (optional) counts the forwards. */
static int s_forward_jobs(td_model_t *m, td_kv_cache_t *const *kvs, const int *grow, int n_groups,
                          int32_t *tok, int32_t *pos, int32_t *sq, uint8_t *lf, td_attn_kind_t attn,
                          float *logits, int *forwards, td_err_t *err) {
    int max_pass = td_model_invariant_rows(m);
    if (max_pass <= 1) max_pass = INT_MAX; /* no promise: as the driver does, one forward */
    const size_t V = (size_t)td_model_config(m)->n_vocab;
    int out = 0;
    for (int g0 = 0; g0 < n_groups;) {
        int g1 = g0 + 1;
        while (g1 < n_groups && kvs[g1] == kvs[g0] && grow[g1 + 1] - grow[g0] <= max_pass) g1++;
        const int r0 = grow[g0], n = grow[g1] - r0;
        td_batch_t b = {.n = n,
                        .tokens = tok + r0,
                        .pos = pos + r0,
                        .seq = sq + r0,
                        .attn = attn,
                        .logits_for = lf + r0};
        int rc = td_model_forward(m, kvs[g0], &b, logits + (size_t)out * V, err);
        if (rc != TD_OK) return rc;
        if (forwards) ++*forwards;
        for (int i = r0; i < r0 + n; i++) out += lf[i] != 0;
        g0 = g1;
    }
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

/* One diffusion job's state between the forwards of td_diffusion_draft_many. */
typedef struct s_dj {
    td_diffusion_job_t *J;
    td_draft_opts_t o;
    s_run_t r;
    int inited, steps, step, remaining, k, n_out, out0, forwards;
    float *dist, *qrow;
    double *score;
    int *rowof;
    uint8_t *masked, *want, *pick;
} s_dj_t;

static int s_dj_init(s_dj_t *D, td_model_t *m, td_kv_cache_t *kv, td_diffusion_job_t *J,
                     td_err_t *err) {
    memset(D, 0, sizeof *D);
    D->J = J;
    if (!J->prefix || J->n_prefix < 1 || J->gamma < 1 || !J->sp || !J->rng || !J->draft ||
        J->order < 0 || J->order >= TD_ORDER_COUNT)
        return td_err_set(err, TD_ERR_ARG, "diffusion draft: bad arguments (n_prefix %d, gamma %d)",
                          J->n_prefix, J->gamma);
    D->o = J->opts ? *J->opts : (td_draft_opts_t){0};
    int exact = D->o.exact || !kv;
    if (!exact) {
        if (J->seq < 0 || J->seq >= td_kv_cache_n_seq(kv))
            return td_err_set(err, TD_ERR_ARG, "cache slot %d out of range", J->seq);
        if (J->n_prefix + J->gamma > td_kv_cache_n_ctx(kv))
            return td_err_set(err, TD_ERR_ARG, "prefix %d + gamma %d exceeds the cache (%d)",
                              J->n_prefix, J->gamma, td_kv_cache_n_ctx(kv));
    }
    const int gamma = J->gamma, V = td_model_config(m)->n_vocab;
    D->steps = J->steps > gamma ? gamma : J->steps < 1 ? 1 : J->steps;
    for (int i = 0; i < J->n_prefix; i++)
        if (J->prefix[i] < 0 || J->prefix[i] >= V)
            return td_err_set(err, TD_ERR_ARG, "prefix token %d out of range", J->prefix[i]);
    int rc = s_run_init(&D->r, m, kv, J->seq, exact, J->n_prefix + gamma, J->n_prefix + gamma, err);
    if (rc != TD_OK) return rc;
    D->inited = 1;
    D->dist = malloc((size_t)V * sizeof *D->dist);
    D->qrow = malloc((size_t)V * sizeof *D->qrow);
    D->score = malloc((size_t)gamma * sizeof *D->score);
    D->rowof = malloc((size_t)gamma * sizeof *D->rowof);
    D->masked = malloc((size_t)gamma), D->want = malloc((size_t)gamma);
    D->pick = malloc((size_t)gamma);
    if (!D->dist || !D->qrow || !D->score || !D->rowof || !D->masked || !D->want || !D->pick)
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    for (int j = 0; j < gamma; j++) {
        J->draft[j] = D->r.mask_id;
        D->masked[j] = 1;
    }
    D->remaining = gamma;
    return TD_OK;
}

/* Whether the job runs another step; if so, which rows it wants (every mask for scored orders,
 * the k leftmost for left-to-right). */
static int s_dj_plan(s_dj_t *D) {
    const td_diffusion_job_t *J = D->J;
    if (D->step >= D->steps || D->remaining == 0) return 0;
    D->k = td_draft_step_count(J->gamma, D->steps, D->step, D->remaining);
    int c = 0;
    for (int j = 0; j < J->gamma; j++) {
        D->want[j] = D->masked[j] && (J->order != TD_ORDER_LEFT_TO_RIGHT || c < D->k);
        if (D->want[j]) D->rowof[j] = c++;
        D->pick[j] = 0;
    }
    return 1;
}

/* After the step's forward (rows: its logits rows, mask token already -inf): chooses the k
 * positions by order and samples them. */
static int s_dj_take(s_dj_t *D, const float *rows, td_err_t *err) {
    td_diffusion_job_t *J = D->J;
    const int V = D->r.V, gamma = J->gamma;
    D->forwards++;
    if (J->order == TD_ORDER_LEFT_TO_RIGHT) {
        for (int j = 0; j < gamma; j++) D->pick[j] = D->want[j];
    } else {
        for (int j = 0; j < gamma; j++)
            if (D->want[j]) {
                s_score_dist(J->sp, rows + (size_t)D->rowof[j] * V, V, D->dist);
                D->score[j] = s_score(J->order, D->dist, V);
            }
        for (int n = 0; n < D->k; n++) {
            int best = -1;
            for (int j = 0; j < gamma; j++)
                if (D->want[j] && !D->pick[j] && (best < 0 || D->score[j] > D->score[best]))
                    best = j;
            D->pick[best] = 1;
        }
    }
    for (int j = 0; j < gamma; j++) {
        if (!D->pick[j]) continue;
        const float *lrow = rows + (size_t)D->rowof[j] * V;
        int rc = td_draft_sample(J->sp, J->rng, lrow, V, J->q, D->qrow, j, J->draft, "", err);
        if (rc != TD_OK) return rc;
        D->masked[j] = 0;
        D->remaining--;
        if (D->o.logits) memcpy(D->o.logits + (size_t)j * V, lrow, (size_t)V * sizeof *lrow);
        if (D->o.step_of) D->o.step_of[j] = D->step;
    }
    D->step++;
    return TD_OK;
}

static void s_dj_free(s_dj_t *D, int ok) {
    if (D->inited) {
        if (ok && D->o.n_forwards) *D->o.n_forwards = D->forwards;
        if (!D->r.exact && td_kv_cache_len(D->r.kv, D->r.seq) > D->J->n_prefix)
            td_kv_cache_crop(D->r.kv, D->r.seq, D->J->n_prefix);
        s_run_free(&D->r);
    }
    free(D->dist);
    free(D->qrow);
    free(D->score);
    free(D->rowof);
    free(D->masked);
    free(D->want);
    free(D->pick);
}

int td_diffusion_draft_many(td_model_t *m, td_kv_cache_t *kv, td_diffusion_job_t *jobs, int n_jobs,
                            int *n_forwards, td_err_t *err) {
    int rc = td_diffusion_check_model(m, err);
    if (rc != TD_OK) return rc;
    if (n_jobs < 0 || (n_jobs > 0 && !jobs))
        return td_err_set(err, TD_ERR_ARG, "diffusion draft: bad job list");
    if (n_forwards) *n_forwards = 0;
    if (n_jobs == 0) return TD_OK;
    s_dj_t *D = calloc((size_t)n_jobs, sizeof *D);
    td_kv_cache_t **kvs = calloc((size_t)n_jobs, sizeof *kvs);
    int *grow = calloc((size_t)n_jobs + 1, sizeof *grow);
    s_dj_t **act = calloc((size_t)n_jobs, sizeof *act);
    int32_t *tok = NULL;
    uint8_t *lf = NULL;
    float *logits = NULL;
    if (!D || !kvs || !grow || !act) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t cap = 0, out_cap = 0;
    for (int i = 0; i < n_jobs; i++) {
        if ((rc = s_dj_init(&D[i], m, kv, &jobs[i], err)) != TD_OK) goto done;
        for (int l = 0; l < i; l++)
            if (!D[i].r.exact && !D[l].r.exact && jobs[l].seq == jobs[i].seq) {
                rc = td_err_set(err, TD_ERR_ARG, "diffusion draft: slot %d twice", jobs[i].seq);
                goto done;
            }
        cap += (size_t)jobs[i].n_prefix + (size_t)jobs[i].gamma;
        out_cap += (size_t)jobs[i].gamma;
    }
    const size_t V = (size_t)td_model_config(m)->n_vocab;
    tok = malloc(cap * 3 * sizeof *tok);
    lf = malloc(cap);
    logits = malloc(out_cap * V * sizeof *logits);
    if (!tok || !lf || !logits) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto done;
    }
    int32_t *pos = tok + cap, *sq = tok + 2 * cap;
    /* step j of every job still denoising in one batch (each job's rows as it would run them
     * alone), forwarded in passes of whole jobs, then each job picks and samples on its rows */
    for (;;) {
        int g = 0, n = 0, out = 0;
        for (int i = 0; i < n_jobs; i++) {
            s_dj_t *d = &D[i];
            if (!s_dj_plan(d)) continue;
            const td_diffusion_job_t *J = d->J;
            int k =
                s_fill(&d->r, J->prefix, J->n_prefix, J->draft, J->gamma, d->want, d->step == 0,
                       (int)(cap - (size_t)n), tok + n, pos + n, sq + n, lf + n, &d->n_out, err);
            if (k < 0) {
                rc = k;
                goto done;
            }
            d->out0 = out;
            out += d->n_out;
            kvs[g] = d->r.kv;
            grow[g] = n;
            act[g++] = d;
            n += k;
        }
        if (!g) break;
        grow[g] = n;
        if ((rc = s_forward_jobs(m, kvs, grow, g, tok, pos, sq, lf, TD_ATTN_BIDIR, logits,
                                 n_forwards, err)) != TD_OK)
            goto done;
        for (int a = 0; a < g; a++) {
            float *rows = logits + (size_t)act[a]->out0 * V;
            s_mask_rows(&act[a]->r, rows, act[a]->n_out);
            if ((rc = s_dj_take(act[a], rows, err)) != TD_OK) goto done;
        }
    }
done:
    for (int i = 0; D && i < n_jobs; i++) s_dj_free(&D[i], rc == TD_OK);
    free(D);
    free(kvs);
    free(grow);
    free(act);
    free(tok);
    free(lf);
    free(logits);
    return rc;
}

int td_diffusion_draft_ex(td_model_t *m, td_kv_cache_t *kv, int seq, const int32_t *prefix,
                          int n_prefix, int gamma, int steps, td_unmask_order_t order,
                          const td_sampling_t *sp, td_rng_t *rng, int32_t *draft, float *q,
                          const td_draft_opts_t *opts, td_err_t *err) {
    td_diffusion_job_t job = {.seq = seq, .prefix = prefix, .n_prefix = n_prefix, .gamma = gamma};
    job.steps = steps, job.order = order, job.sp = sp, job.rng = rng;
    job.draft = draft, job.q = q, job.opts = opts;
    return td_diffusion_draft_many(m, kv, &job, 1, NULL, err);
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
    int *grow = malloc(((size_t)n_jobs + 1) * sizeof *grow);
    td_kv_cache_t **kvs = calloc((size_t)n_jobs, sizeof *kvs);
    int rc = TD_OK;
    if (!tok || !lf || !logits || !grow || !kvs)
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
    int32_t *pos = tok + rows, *sq = tok + 2 * (size_t)rows;
    /* step j: every job still drafting adds its rows (step 0: the prefix its slot lacks, logits
     * for the last), one forward for all, then each samples its draft j from its own row */
    for (int j = 0; rc == TD_OK && j < max_gamma; j++) {
        int n = 0, g = 0;
        for (int k = 0; k < n_jobs; k++) {
            td_ar_job_t *J = &jobs[k];
            if (j >= J->gamma) continue;
            kvs[g] = kv, grow[g++] = n;
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
        grow[g] = n;
        if ((rc = s_forward_jobs(m, kvs, grow, g, tok, pos, sq, lf, TD_ATTN_CAUSAL, logits, NULL,
                                 err)) != TD_OK)
            break;
        for (int k = 0, r = 0; k < n_jobs; k++) {
            td_ar_job_t *J = &jobs[k];
            if (j >= J->gamma) continue;
            rc = td_draft_sample(J->sp, J->rng, logits + (size_t)r++ * V, V, J->q, NULL, j,
                                 J->draft, "", err);
            if (rc != TD_OK) break;
        }
    }
    free(tok);
    free(lf);
    free(logits);
    free(grow);
    free(kvs);
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
