/* score.h - likelihood of a text under a model: per-token log-probabilities for causal LMs, the
 * masked-token log-likelihood at a given mask ratio for diffusion LMs. */
#ifndef TD_SCORE_H
#define TD_SCORE_H

#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Causal scoring of ids[n] in non-overlapping windows of `window` tokens (0 = one window of n),
 * each window scored from its own start (no context carried across windows): logprobs[i] receives
 * log p(ids[i] | ids[window start .. i-1]) for every i that is not the first token of a window,
 * and NAN for first tokens. Returns TD_OK; *n_scored (optional) counts the non-NAN entries. */
int td_score_causal(td_model_t *m, const int32_t *ids, int n, int window, float *logprobs,
                    int *n_scored, td_err_t *err);

/* Masked-diffusion scoring: for each of n_draws draws (seeded), a random set of
 * max(1, round(ratio * eligible)) positions is replaced by the mask token and the whole sequence
 * is run once with bidirectional attention; the log-probability of each true token at a masked
 * position is accumulated. Eligible positions are all positions, except position 0 for models
 * with a logit shift (it has no previous hidden state to be predicted from). Outputs the total
 * log-probability and the count of scored tokens (so exp(-total/count) is a masked perplexity). */
int td_score_masked(td_model_t *m, const int32_t *ids, int n, float ratio, int n_draws,
                    uint64_t seed, double *total_logprob, int64_t *n_scored, td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
