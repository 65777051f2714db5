/* sampler.h - seeded token sampling: temperature, top-k, top-p, Gumbel-max.
 *
 * Owned by kernels/ because td_op_sample (backend.h) uses it as its reference and fallback; the
 * layers above include it through model/sampler.h or directly.
 *
 * The sampler owns its RNG (xoshiro256**), so a run replays exactly from its seed. It can return
 * the exact distribution it sampled from (after temperature, top-k and top-p truncation and
 * renormalisation): speculative sampling needs q and p, not just a token. */
#ifndef TD_SAMPLER_H
#define TD_SAMPLER_H

#include "common/td_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_sampling {
    float temperature; /* 0 = greedy (argmax, ties to the lowest id) */
    int top_k;         /* 0 = off */
    float top_p;       /* 1 = off */
} td_sampling_t;

typedef struct td_rng {
    uint64_t s[4];
} td_rng_t;
void td_rng_seed(td_rng_t *r, uint64_t seed);
uint64_t td_rng_next(td_rng_t *r);
double td_rng_uniform(td_rng_t *r); /* [0, 1) with 53 random bits */

/* Writes the exact distribution that td_sample draws from into probs[n] (zeros outside the kept
 * set; sums to 1). Greedy puts probability 1 on the argmax. Returns the number of kept ids.
 * Semantics are HF generate()'s warpers, in its order: logits / T (float), TopK (keeps every id
 * equal to the k-th largest value), TopP (HF's rule over a stable ascending sort: among tied ids
 * cut by the boundary, the lower ids go first), then softmax in double. top_k <= 0 or >= n: off;
 * top_p >= 1: off; top_p <= 0 keeps one id. NaN logits count as -inf and -inf ids are never kept;
 * with no finite logit the result is one-hot on td_argmax. O(n) average time, no full sort.
 * Negative TD_ERR_ARG / TD_ERR_NOMEM (probs untouched) on bad arguments / allocation failure. */
int td_sampling_dist(const td_sampling_t *sp, const float *logits, int n, float *probs);

/* Draws one id from td_sampling_dist(sp, logits) with rng. When probs is non-NULL it receives that
 * distribution. Returns the id (>= 0). Gumbel-max: one uniform per kept id, in id order; greedy
 * settings draw nothing from rng. Negative TD_ERR_ARG / TD_ERR_NOMEM as td_sampling_dist. */
int td_sample(const td_sampling_t *sp, td_rng_t *rng, const float *logits, int n, float *probs);

/* The counter-based random bits of td_sample_seeded: splitmix64's i-th output from state seed,
 * (seed + (i + 1) * golden) mixed. kernels/cuda/sample.cu computes the same bits on the device. */
static inline uint64_t td_sample_bits(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Draws one id from td_sampling_dist(sp, logits) with counter-based noise (the reference of
 * td_op_sample, kernels/backend.h): Gumbel-max over the kept ids with U_i = (top 53 bits of
 * td_sample_bits(seed, i) + 0.5) * 2^-53, so every id's noise depends only on (seed, i) and a
 * device can draw in parallel. Same distribution as td_sample, another stream: for one seed the
 * ids differ from td_sample's. Greedy settings and inputs with no finite logit return td_argmax.
 * *prob (optional) receives td_sampling_dist's probs[id] bit for bit (1 for greedy), *n_kept
 * (optional) its return value. Returns the id, or TD_ERR_ARG / TD_ERR_NOMEM (negative). */
int td_sample_seeded(const td_sampling_t *sp, uint64_t seed, const float *logits, int n,
                     float *prob, int *n_kept);

/* Draws from an explicit distribution probs[n] (need not be normalised; sum > 0) by inverse CDF
 * with one uniform; never returns a zero-weight id (negative/NaN weights count as 0). Returns
 * TD_ERR_ARG when the sum is not positive. */
int td_sample_probs(td_rng_t *rng, const float *probs, int n);

/* First index of the maximum, NaN counting as -inf (0 when nothing beats -inf; -1 when n <= 0). */
int td_argmax(const float *x, int n);

/* log-softmax of logits[n] into out[n] (out may equal logits), summed in double. NaN counts as
 * -inf; if some logits are +inf they share the mass; with no finite logit every out[i] is -inf. */
void td_log_softmax(float *out, const float *logits, int n);

#ifdef __cplusplus
}
#endif
#endif
