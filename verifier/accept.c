/* accept.c - acceptance rules for speculative decoding: Leviathan rejection sampling (dense and
 * sparse-q), sample-and-match, greedy match, and APD's mixture rule with exact sparse decisions.
 *
 * The rng is consumed in one fixed order by the rejection rules (a uniform per tested position,
 * then one td_sample_probs draw for the final token), so the dense and the sparse variant give the
 * same tokens from the same seed, and a sparse call that has to stop for a full row can rewind
 * the rng and be replayed. */
#include "verifier/accept.h"

#include <math.h>
#include <stdlib.h>

static int s_check_draft(const int32_t *draft, int gamma, int V) {
    for (int j = 0; j < gamma; j++)
        if (draft[j] < 0 || draft[j] >= V) return TD_ERR_ARG;
    return TD_OK;
}

static inline float s_clean(float x) { return isnan(x) ? -INFINITY : x; }

int td_accept_residual(const float *p, const float *q, int V, td_rng_t *rng) {
    if (!p || !q || !rng || V <= 0) return TD_ERR_ARG;
    float *r = malloc((size_t)V * sizeof *r);
    if (!r) return TD_ERR_NOMEM;
    double mass = 0.0;
    for (int t = 0; t < V; t++) {
        float d = p[t] - q[t];
        r[t] = d > 0.0f ? d : 0.0f;
        mass += r[t];
    }
    int id = mass > 0.0 ? td_sample_probs(rng, r, V) : td_sample_probs(rng, p, V);
    free(r);
    return id;
}

/* The acceptance test: one uniform, accept with probability min(1, px / qx); qx <= 0 rejects. */
static int s_accept_test(td_rng_t *rng, float px, float qx) {
    double u = td_rng_uniform(rng);
    if (!(qx > 0.0f)) return 0;
    return u * (double)qx < (double)px;
}

int td_accept_rejection(const float *p, const float *q, const int32_t *draft, int gamma, int V,
                        td_rng_t *rng, int32_t *out, int *n_accepted) {
    if (!p || (!q && gamma > 0) || (!draft && gamma > 0) || !rng || !out || !n_accepted ||
        gamma < 0 || V <= 0)
        return TD_ERR_ARG;
    if (s_check_draft(draft, gamma, V) != TD_OK) return TD_ERR_ARG;
    for (int j = 0; j < gamma; j++) {
        const float *pj = p + (size_t)j * V, *qj = q + (size_t)j * V;
        int x = draft[j];
        if (s_accept_test(rng, pj[x], qj[x])) {
            out[j] = x;
            continue;
        }
        int id = td_accept_residual(pj, qj, V, rng);
        if (id < 0) return id;
        out[j] = id;
        *n_accepted = j;
        return TD_OK;
    }
    int id = td_sample_probs(rng, p + (size_t)gamma * V, V);
    if (id < 0) return id;
    out[gamma] = id;
    *n_accepted = gamma;
    return TD_OK;
}

/* q_j(t) from a sparse row: 1 found (value in *v), 0 known zero (complete row), -1 unknown. */
static int s_sparse_lookup(const td_sparse_row_t *r, int t, float *v) {
    for (int i = 0; i < r->k; i++)
        if (r->ids[i] == t) {
            *v = r->probs[i];
            return 1;
        }
    *v = 0.0f;
    return r->rest > 0.0f ? -1 : 0;
}

int td_accept_rejection_sparse(const float *p, const td_sparse_row_t *q, const float *const *q_full,
                               const int32_t *draft, int gamma, int V, td_rng_t *rng, int32_t *out,
                               int *n_accepted, int *need_full) {
    if (!p || (gamma > 0 && (!q || !draft)) || !rng || !out || !n_accepted || !need_full ||
        gamma < 0 || V <= 0)
        return TD_ERR_ARG;
    if (s_check_draft(draft, gamma, V) != TD_OK) return TD_ERR_ARG;
    for (int j = 0; j < gamma; j++) {
        const td_sparse_row_t *r = &q[j];
        if (r->k < 0 || r->k > V || (r->k > 0 && (!r->ids || !r->probs)) || !(r->rest >= 0.0f))
            return TD_ERR_ARG;
        for (int i = 0; i < r->k; i++)
            if (r->ids[i] < 0 || r->ids[i] >= V || !(r->probs[i] >= 0.0f)) return TD_ERR_ARG;
    }
    td_rng_t saved = *rng;
    *need_full = -1;
    for (int j = 0; j < gamma; j++) {
        const float *pj = p + (size_t)j * V;
        const float *full = q_full ? q_full[j] : NULL;
        int x = draft[j];
        float qx;
        if (full)
            qx = full[x];
        else if (s_sparse_lookup(&q[j], x, &qx) < 0) {
            *rng = saved;
            *need_full = j;
            return TD_OK;
        }
        if (s_accept_test(rng, pj[x], qx)) {
            out[j] = x;
            continue;
        }
        int id;
        if (full) {
            id = td_accept_residual(pj, full, V, rng);
        } else if (q[j].rest > 0.0f) {
            *rng = saved;
            *need_full = j;
            return TD_OK;
        } else {
            float *dense = calloc((size_t)V, sizeof *dense);
            if (!dense) {
                *rng = saved;
                return TD_ERR_NOMEM;
            }
            for (int i = 0; i < q[j].k; i++) dense[q[j].ids[i]] = q[j].probs[i];
            id = td_accept_residual(pj, dense, V, rng);
            free(dense);
        }
        if (id < 0) {
            *rng = saved;
            return id;
        }
        out[j] = id;
        *n_accepted = j;
        return TD_OK;
    }
    int id = td_sample_probs(rng, p + (size_t)gamma * V, V);
    if (id < 0) {
        *rng = saved;
        return id;
    }
    out[gamma] = id;
    *n_accepted = gamma;
    return TD_OK;
}

int td_accept_match(const float *p, const int32_t *draft, int gamma, int V, td_rng_t *rng,
                    int32_t *out, int *n_accepted) {
    if (!p || (!draft && gamma > 0) || !rng || !out || !n_accepted || gamma < 0 || V <= 0)
        return TD_ERR_ARG;
    if (s_check_draft(draft, gamma, V) != TD_OK) return TD_ERR_ARG;
    for (int j = 0; j <= gamma; j++) {
        int y = td_sample_probs(rng, p + (size_t)j * V, V);
        if (y < 0) return y;
        out[j] = y;
        if (j == gamma || y != draft[j]) {
            *n_accepted = j;
            return TD_OK;
        }
    }
    return TD_OK; /* not reached */
}

int td_accept_greedy(const float *p, const int32_t *draft, int gamma, int V, int32_t *out,
                     int *n_accepted) {
    if (!p || (!draft && gamma > 0) || !out || !n_accepted || gamma < 0 || V <= 0)
        return TD_ERR_ARG;
    if (s_check_draft(draft, gamma, V) != TD_OK) return TD_ERR_ARG;
    for (int j = 0; j <= gamma; j++) {
        int y = td_argmax(p + (size_t)j * V, V);
        out[j] = y;
        if (j == gamma || y != draft[j]) {
            *n_accepted = j;
            return TD_OK;
        }
    }
    return TD_OK; /* not reached */
}

/* ---- APD ---- */

/* R * ld + (1 - R) * la in double: both products of floats are exact in double and the sum is
 * rounded once, so the result is monotone in ld and independent of FMA contraction; this is what
 * makes "bound in, bound out" comparisons safe. A zero weight drops its term (no 0 * inf). */
static double s_apd_score(float R, float W, float ld, float la) {
    double s = 0.0;
    if (R != 0.0f) s += (double)R * (double)s_clean(ld);
    if (W != 0.0f) s += (double)W * (double)s_clean(la);
    return s;
}

/* t (score st) ranks above x (score sx) in argmax-with-lowest-id-ties order. */
static inline int s_beats(double st, int t, double sx, int x) {
    return st > sx || (st == sx && t < x);
}

/* Decision for one position: 1 accept, 0 reject, -1 undecidable from the sparse row. */
static int s_apd_decide(const td_apd_row_t *d, const float *full, const float *ar, int x, int V,
                        float R, float W) {
    if (R == 0.0f) { /* the drafter's logits do not enter the score: any row decides */
        double sx = s_apd_score(R, W, 0.0f, ar[x]);
        for (int t = 0; t < V; t++)
            if (t != x && s_beats(s_apd_score(R, W, 0.0f, ar[t]), t, sx, x)) return 0;
        return 1;
    }
    if (full) {
        double sx = s_apd_score(R, W, full[x], ar[x]);
        for (int t = 0; t < V; t++)
            if (t != x && s_beats(s_apd_score(R, W, full[t], ar[t]), t, sx, x)) return 0;
        return 1;
    }
    int listed = -1;
    for (int i = 0; i < d->k; i++)
        if (d->ids[i] == x) listed = i;
    if (listed < 0) {
        /* s_x <= up_x; a listed t that beats up_x beats x whatever x's logit is. */
        double upx = s_apd_score(R, W, d->bound, ar[x]);
        for (int i = 0; i < d->k; i++) {
            int t = d->ids[i];
            if (s_beats(s_apd_score(R, W, d->logits[i], ar[t]), t, upx, x)) return 0;
        }
        return -1;
    }
    double sx = s_apd_score(R, W, d->logits[listed], ar[x]);
    for (int i = 0; i < d->k; i++) {
        int t = d->ids[i];
        if (t != x && s_beats(s_apd_score(R, W, d->logits[i], ar[t]), t, sx, x)) return 0;
    }
    /* Listed t have logit >= bound, so their upper score is <= their true one, which does not
     * beat x: scanning every t with the bound raises no false alarm. */
    if (R > 0.0f && s_clean(d->bound) == -INFINITY) return 1;
    for (int t = 0; t < V; t++)
        if (t != x && s_beats(s_apd_score(R, W, d->bound, ar[t]), t, sx, x)) return -1;
    return 1;
}

int td_apd_accept(const td_apd_row_t *d, const float *const *d_full, const float *ar_logits,
                  const int32_t *draft, int n, int V, float R, int *n_accept, int *need_full) {
    if (!n_accept || !need_full || n < 0 || V <= 0 || !(R >= 0.0f && R <= 1.0f)) return TD_ERR_ARG;
    *need_full = -1;
    *n_accept = 0;
    if (n == 0) return TD_OK;
    if (!ar_logits || !draft || (!d && !d_full)) return TD_ERR_ARG;
    if (s_check_draft(draft, n, V) != TD_OK) return TD_ERR_ARG;
    for (int j = 1; j < n; j++) {
        if (d_full && d_full[j]) continue;
        if (!d) return TD_ERR_ARG;
        const td_apd_row_t *r = &d[j];
        if (r->k < 0 || r->k > V || (r->k > 0 && (!r->ids || !r->logits))) return TD_ERR_ARG;
        for (int i = 0; i < r->k; i++)
            if (r->ids[i] < 0 || r->ids[i] >= V || s_clean(r->logits[i]) < s_clean(r->bound))
                return TD_ERR_ARG;
    }
    float W = 1.0f - R;
    int k = 1;
    for (int j = 1; j < n; j++) {
        const float *full = d_full ? d_full[j] : NULL;
        int dec =
            s_apd_decide(full ? NULL : &d[j], full, ar_logits + (size_t)j * V, draft[j], V, R, W);
        if (dec < 0) {
            *n_accept = k;
            *need_full = j;
            return TD_OK;
        }
        if (!dec) break;
        k++;
    }
    *n_accept = k;
    return TD_OK;
}
