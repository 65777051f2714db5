/* draft.h - drafting policies: a diffusion LM drafting a block of gamma tokens in T denoising
 * steps (left-to-right chunks, confidence, entropy or margin order), the dLLM-only decoder
 * (Fast-dLLM v1 confidence-threshold parallel unmasking), and autoregressive drafts for spec-ar.
 *
 * Everything takes and returns plain C arrays (token ids, probability rows) so the drafter worker
 * can put them on the wire; the acceptance rules live in verifier/accept.h. Each drafted token is
 * SAMPLED from td_sampling_dist of the row it is unmasked from, at the step it is unmasked
 * (greedy at temperature 0), and q[j] is exactly that distribution - what makes rejection
 * sampling exact for left-to-right unmasking and for steps = 1 (docs/methods.md). */
#ifndef TD_DRAFT_H
#define TD_DRAFT_H

#include "model/model.h"
#include "model/sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum td_unmask_order {
    TD_ORDER_LEFT_TO_RIGHT = 0, /* the leftmost masks each step */
    TD_ORDER_CONFIDENCE,        /* the largest max probability */
    TD_ORDER_ENTROPY,           /* the lowest entropy */
    TD_ORDER_MARGIN,            /* the largest top1 - top2 probability gap */
    TD_ORDER_COUNT
} td_unmask_order_t;

/* "left-to-right", "confidence", "entropy", "margin". */
const char *td_unmask_order_name(td_unmask_order_t o);
/* The order named s (the names above), or -1. */
int td_unmask_order_parse(const char *s);

/* Tokens unmasked at step i (0-based) of a draft of gamma tokens in steps steps (clamped to
 * 1..gamma): floor(remaining / (steps - i)), all remaining at the last step. This is Dream's
 * schedule int(masked * (1 - s/t)) on linear timesteps without the eps, and every step unmasks
 * at least one token. */
int td_draft_step_count(int gamma, int steps, int step, int remaining);

/* Extra inputs and outputs of a diffusion draft; zero-initialise and set what you need. */
typedef struct td_draft_opts {
    int exact;     /* 1: no cache reuse; every step runs prefix + block from scratch (kv unused) */
    float *logits; /* [gamma][n_vocab] or NULL: the logits row each token was drawn from (the
                      mask token's entry is -inf), for APD's top-K + bound */
    int *step_of;  /* [gamma] or NULL: the step at which position j was unmasked */
    int *n_forwards; /* or NULL: forward passes run (= steps after clamping) */
} td_draft_opts_t;

/* The diffusion LM m drafts gamma tokens after prefix[n_prefix] (n_prefix >= 1): the block of
 * gamma mask tokens at positions n_prefix .. n_prefix+gamma-1 is denoised in steps steps (clamped
 * to 1..gamma) with bidirectional attention; at each step td_draft_step_count positions are
 * chosen by order and their tokens sampled with sp and rng. Scores for the orders come from the
 * sampling distribution when sp->temperature > 0 and from softmax(logits) at temperature 0; they
 * never depend on a sampled token, so a committed token is distributed exactly as its q row.
 * Ties go to the leftmost position. The mask token is never drafted (its logit is set to -inf).
 * With the model's logit shift (Dream, DiffuGPT), position p is predicted from row p-1: the last
 * prefix row is part of every step's forward.
 *
 * Cache (kv non-NULL and not opts->exact): positions 0 .. min(len, n_prefix)-1 of slot seq must
 * hold the keys/values of prefix[0..] (crop the slot yourself where the prefix diverged);
 * anything at or past n_prefix is dropped. The first step runs the missing prefix tail plus the
 * block; later steps run only the block (plus the last prefix token under the shift), rewritten
 * in place, attending to the cached prefix. Like Fast-dLLM's prefix cache this is approximate for
 * a bidirectional model: cached prefix keys/values are not recomputed to see the current block
 * (the exact mode recomputes them at every step). On return the slot holds n_prefix positions
 * (the tail computed here is kept for the next round). kv needs n_ctx >= n_prefix + gamma.
 * Exact mode (kv NULL or opts->exact): a private cache, everything recomputed each step.
 *
 * Writes draft[gamma] and, when q is non-NULL, q[j] = td_sampling_dist of the row x_j was drawn
 * from. Returns TD_OK or a negative TD_ERR_* (TD_ERR_ARG for a model that is not a diffusion LM,
 * bad sizes or a cache too small); on error the outputs are unspecified and the slot is cropped
 * to at most n_prefix. */
int td_diffusion_draft_ex(td_model_t *m, td_kv_cache_t *kv, int seq, const int32_t *prefix,
                          int n_prefix, int gamma, int steps, td_unmask_order_t order,
                          const td_sampling_t *sp, td_rng_t *rng, int32_t *draft /*[gamma]*/,
                          float *q /*[gamma][n_vocab] or NULL*/, const td_draft_opts_t *opts,
                          td_err_t *err);

/* Several diffusion drafts at once, each exactly td_diffusion_draft_ex's with the same arguments
 * (its own slot, prefix, gamma, steps, order, sampling, rng and options; same cache contract per
 * slot): denoising step s of every job that still has a step to run goes into ONE batch, forwarded
 * in passes of whole jobs that keep each row bitwise what it is alone (td_model_invariant_rows
 * rows per pass; a job over it alone, as it runs alone); a job that finished its steps drops out
 * of later batches. Slots of the cached jobs must differ. kv NULL (or a job's opts->exact): that
 * job runs exact on a private cache, in passes of its own. *n_forwards (optional) receives the
 * forwards run in all. TD_OK or the first error (every job's outputs are then unspecified and each
 * cached slot holds at most its n_prefix positions). */
typedef struct td_diffusion_job {
    int seq;
    const int32_t *prefix;
    int n_prefix, gamma, steps;
    td_unmask_order_t order;
    const td_sampling_t *sp;
    td_rng_t *rng;
    int32_t *draft;              /* [gamma] */
    float *q;                    /* [gamma][n_vocab] or NULL */
    const td_draft_opts_t *opts; /* or NULL */
} td_diffusion_job_t;
int td_diffusion_draft_many(td_model_t *m, td_kv_cache_t *kv, td_diffusion_job_t *jobs, int n_jobs,
                            int *n_forwards, td_err_t *err);

/* td_diffusion_draft_ex with no options (exact mode when kv is NULL). */
int td_diffusion_draft(td_model_t *m, td_kv_cache_t *kv, int seq, const int32_t *prefix,
                       int n_prefix, int gamma, int steps, td_unmask_order_t order,
                       const td_sampling_t *sp, td_rng_t *rng, int32_t *draft /*[gamma]*/,
                       float *q /*[gamma][n_vocab] or NULL*/, td_err_t *err);

/* The causal LM m drafts gamma tokens after prefix[n_prefix] (n_prefix >= 1), one forward per
 * token, each sampled with sp and rng (td_sample; the same draws as td_generate_ar from the same
 * rng), q[j] = its sampling distribution. Cache contract as for the diffusion draft: positions
 * 0 .. min(len, n_prefix)-1 of slot seq hold the prefix; on return the slot holds
 * n_prefix + gamma - 1 positions (prefix and draft[0..gamma-2], exact for a causal model: crop to
 * the accepted length). kv NULL: a private cache. Returns TD_OK or TD_ERR_*. */
int td_ar_draft(td_model_t *m, td_kv_cache_t *kv, int seq, const int32_t *prefix, int n_prefix,
                int gamma, const td_sampling_t *sp, td_rng_t *rng, int32_t *draft /*[gamma]*/,
                float *q /*[gamma][n_vocab] or NULL*/, td_err_t *err);

/* Several AR drafts at once, each exactly td_ar_draft's (same cache contract per slot, same
 * draws from its own rng): step j runs every job still drafting in ONE batch (step 0 carries
 * each slot's missing prefix), forwarded in passes of whole jobs as td_diffusion_draft_many does.
 * Slots must differ; kv must not be NULL. The CPU kernels are batch-invariant, so a job's draft
 * does not depend on the others. TD_OK or the first error (the outputs of every job are then
 * unspecified). */
typedef struct td_ar_job {
    int seq;
    const int32_t *prefix;
    int n_prefix, gamma;
    const td_sampling_t *sp;
    td_rng_t *rng;
    int32_t *draft; /* [gamma] */
    float *q;       /* [gamma][n_vocab] or NULL */
} td_ar_job_t;
int td_ar_draft_many(td_model_t *m, td_kv_cache_t *kv, td_ar_job_t *jobs, int n_jobs,
                     td_err_t *err);

/* TD_OK when m is a masked-diffusion LM (bidirectional, with a mask token); else TD_ERR_ARG naming
 * its architecture (no model: TD_ERR_ARG too). */
int td_diffusion_check_model(const td_model_t *m, td_err_t *err);

/* Samples draft position j from its logits row (V wide) under sp: the id into draft[j], the
 * distribution it was drawn from into row j of q ([positions, V]) or, when q is NULL, into the
 * scratch row qrow. Returns TD_OK, or the sampler's error (in err, after PREFIX, naming j). */
int td_draft_sample(const td_sampling_t *sp, td_rng_t *rng, const float *row, int V, float *q,
                    float *qrow, int j, int32_t *draft, const char *prefix, td_err_t *err);

/* Sparse form of a probability row for the wire: the (up to) k largest entries of p[n] that are
 * > 0, largest first (ties to the lowest id), into ids/probs, and *rest = the total of every
 * entry not written (exactly 0 when the written ones are the whole support). Returns the number
 * written (0..k), or TD_ERR_ARG. */
int td_dist_topk(const float *p, int n, int k, int32_t *ids, float *probs, float *rest);

/* APD's sparse logits: the min(k, n) largest logits[n] (NaN as -inf), largest first (ties to the
 * lowest id), into ids/vals, and *bound = the largest logit not written (-inf when none is left),
 * so every logit left out is <= *bound <= every one written. Returns the number written. */
int td_logits_topk(const float *logits, int n, int k, int32_t *ids, float *vals, float *bound);

/* --- dLLM-only decoding (method `diffusion`, Fast-dLLM v1) ------------------------------------ */

typedef struct td_diffusion_params {
    int max_tokens;         /* generated tokens at most */
    int block_size;         /* tokens per block (default 32) */
    float threshold;        /* unmask every mask with confidence >= threshold (default 0.9) */
    td_sampling_t sampling; /* temperature 0 = greedy */
    uint64_t seed;
    const int32_t *stop_ids; /* generation ends at the first of these (kept in the output) */
    int n_stop;
    int stop_at_eos; /* also stop at the config's eos_token_id (default 1) */
    int exact;       /* 1: recompute the whole sequence every step (no prefix cache) */
    /* ids never generated (their logits are -inf before scoring and sampling, like HF's
     * suppress_tokens; ids outside the vocabulary are ignored); NULL / 0: none. `planned`'s
     * fallback passes the checkpoint's plan tags (td_plan_tag_ids). */
    const int32_t *suppress_ids;
    int n_suppress;
} td_diffusion_params_t;

/* Defaults: block 32, threshold 0.9, greedy, stop at EOS, prefix cache on, max_tokens 128, no
 * suppressed ids. */
td_diffusion_params_t td_diffusion_params_default(void);

typedef struct td_diffusion_stats {
    int generated;
    int forwards; /* sequential forward passes */
    int blocks;
    int stopped_at_stop_id; /* 1 when a stop id ended it, 0 at max_tokens / context end */
} td_diffusion_stats_t;

/* Generates after prompt[n_prompt] (>= 1) with the diffusion LM m: blocks of block_size masks
 * appended after the committed text (the last block may be shorter; the context is capped at
 * the model's n_ctx_train); within a block each step forwards prefix + block (bidirectional,
 * logit shift honoured) and unmasks every mask whose confidence (max probability, as the draft's
 * CONFIDENCE score) is >= threshold - always at least the single most confident one (leftmost on
 * ties) - sampling each token with the sampling settings. A threshold above 1 unmasks exactly
 * one token per step. Generation stops once a stop id is committed with every position before
 * it committed (the stop id is kept), or at max_tokens. The prefix cache keeps the committed
 * text's keys/values between blocks and steps (each block's tokens are recomputed once, at the
 * next block's first step); exact recomputes everything each step. out[max_tokens] receives the
 * tokens. No position is ever unmasked to a suppressed id (p->suppress_ids) while another id has a
 * finite logit. Returns TD_OK or TD_ERR_*. */
int td_diffusion_generate(td_model_t *m, const int32_t *prompt, int n_prompt,
                          const td_diffusion_params_t *p, int32_t *out, td_diffusion_stats_t *st,
                          td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
