/* accept.h - acceptance rules for speculative decoding, as pure functions over probability rows.
 *
 * The verifier scores gamma drafted tokens x_0..x_{gamma-1} in one pass and gets gamma+1 rows:
 * p_j (j = 0..gamma) is its sampling distribution (td_sampling_dist) for position j given the
 * prefix and x_<j; p_gamma is the bonus row. The drafter sent x_j and, per position, the
 * distribution q_j it sampled x_j from. The rules here decide how many drafted tokens to keep and
 * which token follows them; none of them touches a model, a socket or the heap beyond scratch.
 *
 *   rejection (Leviathan et al.): exact when each q_j depends only on the prefix and x_<j.
 *   match (sample-and-compare):   exact for ANY draft procedure (q is not needed at all).
 *   greedy (argmax-compare):      exact for a greedy (temperature 0) target.
 *   APD mixture:                  lossy by design; decided exactly from top-K drafter logits plus
 *                                 a bound, asking for a full row only when the bound cannot decide.
 *
 * Shapes: p is [gamma+1][V] and q is [gamma][V], row-major, float; draft is [gamma]. Every rule
 * that outputs tokens writes n_accepted + 1 ids into out (the accepted draft prefix, then the
 * resampled or bonus token), so out needs gamma + 1 entries. See docs/methods.md for the proofs. */
#ifndef TD_ACCEPT_H
#define TD_ACCEPT_H

#include "common/td_common.h"
#include "model/sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Leviathan rejection sampling. For j = 0..gamma-1: draw u ~ U[0,1); accept x_j when
 * u * q_j(x_j) < p_j(x_j) (probability min(1, p/q)); on the first rejection draw the output token
 * from norm(max(0, p_j - q_j)) (from p_j itself when that residual has no mass) and stop. When all
 * gamma are accepted the bonus token is drawn from p_gamma. A drafted token with q_j(x_j) <= 0
 * (which an honest drafter never sends) is rejected. Writes *n_accepted and n_accepted+1 ids into
 * out. Consumes rng in a fixed order (one uniform per tested position, then one draw), so a seeded
 * run replays exactly. Returns TD_OK, or TD_ERR_ARG (nothing written, rng untouched) for NULL
 * pointers, gamma < 0, V <= 0 or a draft id outside [0, V). */
int td_accept_rejection(const float *p /*[gamma+1][V]*/, const float *q /*[gamma][V]*/,
                        const int32_t *draft /*[gamma]*/, int gamma, int V, td_rng_t *rng,
                        int32_t *out /*[gamma+1]*/, int *n_accepted);

/* One drafter distribution row in the sparse wire form: k (id, prob) pairs (distinct ids) and
 * rest = the probability mass of every id not listed. rest == 0 means the list IS the whole
 * distribution (drafter sampled with top_k <= K, or greedily, or its support fits in K). */
typedef struct td_sparse_row {
    int k;
    const int32_t *ids; /* [k] */
    const float *probs; /* [k] */
    float rest;         /* mass outside ids, >= 0 */
} td_sparse_row_t;

/* Rejection sampling with q in sparse form, exactly equal to td_accept_rejection on the full
 * rows (same tokens, same rng consumption). The acceptance test at j needs only q_j(x_j); the
 * residual at a rejected j needs q_j everywhere. When row j is incomplete (rest > 0) and the rule
 * needs a value it does not have (x_j not listed, or the residual of a rejected j), and
 * q_full[j] is NULL (q_full itself may be NULL), it stops with *need_full = j, leaves *rng
 * exactly as it was on entry and writes nothing meaningful to out: the caller fetches the
 * drafter's full row j, sets q_full[j], and calls again with the same rng. Otherwise *need_full =
 * -1 and out / *n_accepted are as in td_accept_rejection. Returns TD_OK or TD_ERR_ARG (bad
 * pointers, sizes, ids, negative k or rest). */
int td_accept_rejection_sparse(const float *p /*[gamma+1][V]*/,
                               const td_sparse_row_t *q /*[gamma]*/,
                               const float *const *q_full /*[gamma] or NULL*/,
                               const int32_t *draft /*[gamma]*/, int gamma, int V, td_rng_t *rng,
                               int32_t *out /*[gamma+1]*/, int *n_accepted, int *need_full);

/* Draws the rejection-sampling replacement token from norm(max(0, p - q)), or from p when that
 * has no mass: one td_sample_probs draw. Returns the id (>= 0) or TD_ERR_ARG. */
int td_accept_residual(const float *p /*[V]*/, const float *q /*[V]*/, int V, td_rng_t *rng);

/* Sample-and-match: for j = 0..gamma-1 draw y_j ~ p_j; accept while y_j == x_j; the first
 * mismatching y_j is the output token; when all match the bonus y_gamma ~ p_gamma. Exact for any
 * draft procedure, including drafts whose token j depends on later positions. Returns TD_OK or
 * TD_ERR_ARG (nothing written). */
int td_accept_match(const float *p /*[gamma+1][V]*/, const int32_t *draft /*[gamma]*/, int gamma,
                    int V, td_rng_t *rng, int32_t *out /*[gamma+1]*/, int *n_accepted);

/* Greedy: accept while x_j == argmax p_j (ties to the lowest id, as td_argmax); the output token
 * is the argmax at the first mismatch, or argmax p_gamma. p may be probabilities or logits.
 * Returns TD_OK or TD_ERR_ARG. */
int td_accept_greedy(const float *p /*[gamma+1][V]*/, const int32_t *draft /*[gamma]*/, int gamma,
                     int V, int32_t *out /*[gamma+1]*/, int *n_accepted);

/* --- APD ---------------------------------------------------------------------------------------
 * The drafter's RAW logits for one drafted position, sparse: k (id, logit) pairs and a bound that
 * every logit not listed is <= to (the largest logit left out: td_logits_topk writes it). Every
 * listed logit must be >= bound. */
typedef struct td_apd_row {
    int k;
    const int32_t *ids;  /* [k] */
    const float *logits; /* [k] */
    float bound;         /* >= every logit not listed; -INFINITY when k == V */
} td_apd_row_t;

/* APD acceptance (Israel et al.): x_0 is always accepted; for j = 1..n-1, x_j is accepted while
 * x_j == argmax_t score_j(t), score_j(t) = R * logit_D_j[t] + (1 - R) * logit_AR_j[t] (ties to the
 * lowest id), computed in double. Raw logits and log-softmax outputs give the same argmax (they
 * differ by a per-row constant), so either may be passed as long as a row's listed logits and
 * bound use the same one; no temperature is applied. ar_logits row j is the AR verifier's
 * prediction for position j given the prefix and x_<j. Drafter row j is read from d_full[j] when
 * that is non-NULL (full [V] row), else from the sparse d[j]. A sparse decision is exact: a
 * non-listed t can only beat x_j when R*bound + (1-R)*logit_AR_j[t] could; when some such t could
 * and no listed t already beats x_j (or x_j itself is not listed and no listed t beats its
 * bound), the decision is undecidable from the sparse row: *need_full = j and *n_accept = j (the
 * prefix decided so far); fetch the full row, set d_full[j], call again. Otherwise *need_full = -1
 * and *n_accept = k in 1..n. n = 0 gives *n_accept = 0. Returns TD_OK or TD_ERR_ARG (bad
 * pointers/ids, R outside [0, 1], a listed logit below its bound). */
int td_apd_accept(const td_apd_row_t *d /*[n]*/, const float *const *d_full /*[n] or NULL*/,
                  const float *ar_logits /*[n][V]*/, const int32_t *draft /*[n]*/, int n, int V,
                  float R, int *n_accept, int *need_full);

#ifdef __cplusplus
}
#endif
#endif
