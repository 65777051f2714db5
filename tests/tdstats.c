/* tdstats.c - chi-square p-values for the exactness tests (see tdstats.h). */
#include "tests/tdstats.h"

#include <math.h>
#include <stdlib.h>

/* ---- chi-square p-value: Q(df/2, x/2), regularized upper incomplete gamma ---- */

/* Lower series P(a, x) for x < a + 1. */
static double s_gamma_p_series(double a, double x) {
    double term = 1.0 / a, sum = term;
    for (int n = 1; n < 10000; n++) {
        term *= x / (a + n);
        sum += term;
        if (fabs(term) < fabs(sum) * 1e-15) break;
    }
    return sum * exp(-x + a * log(x) - lgamma(a));
}

/* Upper continued fraction Q(a, x) for x >= a + 1 (modified Lentz). */
static double s_gamma_q_cf(double a, double x) {
    const double tiny = 1e-300;
    double b = x + 1.0 - a, c = 1.0 / tiny, d = 1.0 / b, h = d;
    for (int i = 1; i < 10000; i++) {
        double an = -i * (i - a);
        b += 2.0;
        d = an * d + b;
        if (fabs(d) < tiny) d = tiny;
        c = b + an / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        double del = d * c;
        h *= del;
        if (fabs(del - 1.0) < 1e-15) break;
    }
    return exp(-x + a * log(x) - lgamma(a)) * h;
}

double td_gamma_q(double a, double x) {
    if (x <= 0.0) return 1.0;
    if (x < a + 1.0) return 1.0 - s_gamma_p_series(a, x);
    return s_gamma_q_cf(a, x);
}

/* Chi-square goodness of fit of counts obs[n] to probabilities expp[n] over total draws.
 * Cells with expected count < 5 are pooled; an observation in a zero-probability cell gives 0. */
double td_chisq_pvalue(const long *obs, const double *expp, int n, long total, int *df_out) {
    double stat = 0.0, pool_e = 0.0;
    long pool_o = 0;
    int cells = 0;
    for (int i = 0; i < n; i++) {
        double e = expp[i] * (double)total;
        if (expp[i] <= 0.0) {
            if (obs[i] > 0) return 0.0;
            continue;
        }
        if (e < 5.0) {
            pool_e += e;
            pool_o += obs[i];
            continue;
        }
        stat += ((double)obs[i] - e) * ((double)obs[i] - e) / e;
        cells++;
    }
    if (pool_e > 0.0) {
        stat += ((double)pool_o - pool_e) * ((double)pool_o - pool_e) / pool_e;
        cells++;
    }
    int df = cells - 1;
    if (df_out) *df_out = df;
    if (df <= 0) return 1.0;
    return td_gamma_q(0.5 * df, 0.5 * stat);
}

double td_chi2_sf(double stat, int df) { return td_gamma_q(0.5 * df, 0.5 * stat); }

void td_exact_joint2(td_model_t *v, const td_sampling_t *sp, const int32_t *prompt, int np,
                     int32_t *t1s, int32_t *t2s, double *pj, int *n) {
    const int V = td_model_config(v)->n_vocab;
    td_err_t err = {0};
    float *logits = malloc(sizeof(float) * (size_t)V), *p1 = malloc(sizeof(float) * (size_t)V),
          *p2 = malloc(sizeof(float) * (size_t)V);
    uint8_t *last = calloc((size_t)np, 1);
    td_kv_cache_t *kv = td_kv_cache_new(v, 1, np + 4, &err);
    last[np - 1] = 1;
    td_batch_t b = {.n = np, .tokens = prompt, .attn = TD_ATTN_CAUSAL, .logits_for = last};
    td_model_forward(v, kv, &b, logits, &err);
    td_sampling_dist(sp, logits, V, p1);
    *n = 0;
    for (int a = 0; a < V; a++) {
        if (p1[a] <= 0) continue;
        td_kv_cache_crop(kv, 0, np);
        int32_t tok = a;
        td_batch_t b2 = {.n = 1, .tokens = &tok, .attn = TD_ATTN_CAUSAL};
        td_model_forward(v, kv, &b2, logits, &err);
        td_sampling_dist(sp, logits, V, p2);
        for (int c = 0; c < V; c++)
            if (p2[c] > 0) t1s[*n] = a, t2s[*n] = c, pj[*n] = (double)p1[a] * p2[c], (*n)++;
    }
    td_kv_cache_destroy(&kv);
    free(last), free(logits), free(p1), free(p2);
}
