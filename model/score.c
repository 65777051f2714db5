/* score.c - causal and masked-diffusion scoring on top of td_model_forward. */
#include "model/score.h"

#include "model/sampler.h"

#include <math.h>
#include <stdlib.h>

int td_score_causal(td_model_t *m, const int32_t *ids, int n, int window, float *logprobs,
                    int *n_scored, td_err_t *err) {
    const td_config_t *c = td_model_config(m);
    if (n <= 0) return td_err_set(err, TD_ERR_ARG, "nothing to score");
    if (window <= 0 || window > n) window = n;
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, window, err);
    if (!kv) return err ? err->code : TD_ERR;
    /* rows per forward: large enough to amortise weight conversion, bounded so the logits buffer
     * stays near 32 MB whatever the vocabulary */
    int chunk = (int)((8 << 20) / c->n_vocab);
    if (chunk < 16) chunk = 16;
    if (chunk > 256) chunk = 256;
    float *logits = malloc((size_t)chunk * (size_t)c->n_vocab * sizeof(float));
    if (!logits) {
        td_kv_cache_destroy(&kv);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    int rc = TD_OK, scored = 0;
    for (int w0 = 0; w0 < n && rc == TD_OK; w0 += window) {
        int wn = n - w0 < window ? n - w0 : window;
        td_kv_cache_crop(kv, 0, 0);
        logprobs[w0] = NAN;
        for (int s = 0; s < wn && rc == TD_OK; s += chunk) {
            int cn = wn - s < chunk ? wn - s : chunk;
            td_batch_t b = {.n = cn, .tokens = ids + w0 + s, .attn = TD_ATTN_CAUSAL};
            rc = td_model_forward(m, kv, &b, logits, err);
            for (int i = 0; rc == TD_OK && i < cn; i++) {
                int next = w0 + s + i + 1;
                if (next >= w0 + wn) break;
                float *row = logits + (size_t)i * c->n_vocab;
                td_log_softmax(row, row, c->n_vocab);
                logprobs[next] = row[ids[next]];
                scored++;
            }
        }
    }
    if (n_scored) *n_scored = scored;
    free(logits);
    td_kv_cache_destroy(&kv);
    return rc;
}

int td_score_masked(td_model_t *m, const int32_t *ids, int n, float ratio, int n_draws,
                    uint64_t seed, double *total_logprob, int64_t *n_scored, td_err_t *err) {
    const td_config_t *c = td_model_config(m);
    if (c->mask_token_id < 0 || c->mask_token_id >= c->n_vocab)
        return td_err_set(err, TD_ERR_ARG,
                          "model has no mask token: masked scoring needs a diffusion LM");
    if (!(ratio > 0.0f && ratio <= 1.0f))
        return td_err_set(err, TD_ERR_ARG, "mask ratio must be in (0, 1], got %g", ratio);
    const int first = c->logit_shift ? 1 : 0, eligible = n - first;
    if (eligible <= 0) return td_err_set(err, TD_ERR_ARG, "text too short to score");
    int k = (int)lroundf(ratio * (float)eligible);
    if (k < 1) k = 1;
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, n, err);
    if (!kv) return err ? err->code : TD_ERR;
    int32_t *x = malloc((size_t)n * sizeof *x), *perm = malloc((size_t)eligible * sizeof *perm);
    uint8_t *want = calloc((size_t)n, 1);
    float *logits = malloc((size_t)n * (size_t)c->n_vocab * sizeof(float));
    int rc = TD_OK;
    if (!x || !perm || !want || !logits) rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
    td_rng_t rng;
    td_rng_seed(&rng, seed);
    double total = 0;
    int64_t count = 0;
    for (int d = 0; rc == TD_OK && d < n_draws; d++) {
        for (int i = 0; i < n; i++) x[i] = ids[i];
        for (int i = 0; i < eligible; i++) perm[i] = first + i;
        for (int i = 0; i < k; i++) { /* partial Fisher-Yates: the first k are the masked set */
            int j = i + (int)(td_rng_uniform(&rng) * (eligible - i));
            int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
            x[perm[i]] = c->mask_token_id;
        }
        /* rows whose logits we need: p itself, or p-1 under the logit shift */
        for (int i = 0; i < n; i++) want[i] = 0;
        for (int i = 0; i < k; i++) want[perm[i] - first] = 1;
        td_kv_cache_crop(kv, 0, 0);
        td_batch_t b = {.n = n, .tokens = x, .attn = TD_ATTN_BIDIR, .logits_for = want};
        rc = td_model_forward(m, kv, &b, logits, err);
        int row = 0;
        for (int i = 0; rc == TD_OK && i < n; i++) {
            if (!want[i]) continue;
            float *r = logits + (size_t)row++ * c->n_vocab;
            td_log_softmax(r, r, c->n_vocab);
            total += r[ids[i + first]];
            count++;
        }
    }
    if (rc == TD_OK) {
        *total_logprob = total;
        *n_scored = count;
    }
    free(x);
    free(perm);
    free(want);
    free(logits);
    td_kv_cache_destroy(&kv);
    return rc;
}
