/* selfspec.h - self-speculative diffusion decoding (SSD / FreeDave style) and the decoder it is
 * lossless against: a diffusion LM's own one-token-per-step greedy decoding.
 *
 * Both decoders see the same trajectory of states. A state is the prompt, the committed text and
 * a canvas of block_size positions after it (semi-autoregressive blocks as in LLaDA / Fast-dLLM),
 * some of them masks. The stepwise greedy step at a state runs the model over prompt + committed
 * text + canvas (bidirectional, the Dream/DiffuGPT logit shift honoured; NO cache: every forward
 * recomputes the whole sequence, so a state's logits are a function of the state alone) and
 * commits exactly one token: the masked position of highest confidence (max probability of
 * softmax(logits), the mask token's logit set to -inf; ties to the leftmost), set to its argmax
 * (ties to the lowest id). When the canvas is complete a new canvas of masks follows.
 *
 * The self-speculative decoder drafts the next K commits from one state's logits (its K most
 * confident masked positions, best first, each set to its argmax), builds the chain of states
 * S_i = S + d_1..d_i, runs all of them in ONE batched forward (state i in KV-cache sequence slot
 * i-1), and accepts the longest prefix d_1..d_j such that the stepwise greedy choice at S_i equals
 * d_{i+1} for every i < j (d_1 is the greedy choice at S by construction). The logits of S_j come
 * out of the same forward, so the next drafts need no extra pass. Every accepted commit is the one
 * the stepwise decoder would make, so the output is token-for-token identical whenever the
 * backend computes a state's logits independently of what else is in the batch (true of the
 * reference CPU backend; the fast paths are checked by the tests). See docs/selfspec.md. */
#ifndef TD_SELFSPEC_H
#define TD_SELFSPEC_H

#include "model/model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TD_SELFSPEC_MAX_K 16

typedef struct td_selfspec_params {
    int max_tokens;          /* generated tokens at most (default 128) */
    int block_size;          /* canvas size (default 32); <= 0: one canvas of max_tokens */
    int draft_k;             /* chain depth K: commits drafted per forward, 1..TD_SELFSPEC_MAX_K
                                (default 4); ignored by td_stepwise_greedy_generate */
    const int32_t *stop_ids; /* generation ends at the first of these (kept in the output) */
    int n_stop;
    int stop_at_eos;      /* also stop at the config's eos_token_id (default 1) */
    int accept_unchecked; /* TESTS ONLY: accept whole chains without the greedy check (wrong on
                             purpose, to show the check matters); 0 in real use */
} td_selfspec_params_t;

/* max_tokens 128, block 32, K 4, stop at EOS. */
td_selfspec_params_t td_selfspec_params_default(void);

typedef struct td_selfspec_stats {
    int generated;          /* output tokens */
    int commits;            /* tokens committed (>= generated: a stop drops the canvas after it) */
    int forwards;           /* sequential forward passes (the critical path) */
    int blocks;             /* canvases started */
    int stopped_at_stop_id; /* 1 when a stop id ended it */
    int64_t forward_tokens; /* tokens run through the model, all slots (compute, not latency) */
    int rounds;             /* draft-verify rounds (selfspec) */
    int drafted;            /* drafts placed in chains, d_1 included */
    /* depth_checked[d]: rounds whose chain had a draft d (d >= 2) checked against the greedy
     * choice; depth_accepted[d]: of those, rounds where draft d was accepted. accepted_hist[j]:
     * rounds that committed exactly j drafts. Index 0/1 of the depth arrays: d_1, always taken. */
    int depth_checked[TD_SELFSPEC_MAX_K + 1];
    int depth_accepted[TD_SELFSPEC_MAX_K + 1];
    int accepted_hist[TD_SELFSPEC_MAX_K + 1];
    /* two processes (td_selfspec_generate_remote): chain states evaluated by the drafter process,
     * forwards it ran for them (concurrent with this side's: not on the critical path), rounds
     * whose remote evaluation failed and was redone here, seconds spent waiting for it */
    int remote_states;
    int remote_forwards;
    int remote_fallbacks;
    double remote_s;
} td_selfspec_stats_t;

/* The reference: stepwise greedy decoding of the diffusion LM m after prompt[n_prompt] (>= 1),
 * one forward (prompt + committed + canvas, exact recomputation) and one commit per step, as
 * described at the top of this file. Generation stops once a stop id is committed with every
 * canvas position before it committed (the stop id is kept, the rest of the canvas dropped), at
 * max_tokens, or at the model's context (n_ctx_train caps prompt + max_tokens). out[max_tokens]
 * receives the tokens, st (optional) the counts (forwards = commits). This is the same decoder as
 * td_diffusion_generate with threshold > 1, exact = 1, temperature 0. Returns TD_OK, or TD_ERR_ARG
 * (a model that is not a masked-diffusion LM, bad arguments, a prompt that fills the context). */
int td_stepwise_greedy_generate(td_model_t *m, const int32_t *prompt, int n_prompt,
                                const td_selfspec_params_t *p, int32_t *out,
                                td_selfspec_stats_t *st, td_err_t *err);

/* Self-speculative decoding with chains of up to p->draft_k states per batched forward (a KV
 * cache of draft_k slots, each holding a full recomputation). Same stop rules, same output as
 * td_stepwise_greedy_generate (see the top of the file), st->forwards <= st->commits + 1 and
 * typically far fewer. Returns TD_OK or TD_ERR_*. */
int td_selfspec_generate(td_model_t *m, const int32_t *prompt, int n_prompt,
                         const td_selfspec_params_t *p, int32_t *out, td_selfspec_stats_t *st,
                         td_err_t *err);

/* ---- two processes: the drafter process evaluates part of every chain with the same dLLM ----
 *
 * Each round's chain states S_1..S_n are split: this side evaluates S_1..S_{n - n/2} in its own
 * forward while the drafter process evaluates the deepest n/2 (rounded down) in its forward, at
 * the same time. From each evaluated state only its draft list is needed (the min(K, masks) most
 * confident masks, best first, with their argmax: the first entry is the stepwise greedy choice
 * that checks the next draft, the list is the next round's drafts when the chain stops there), so
 * that is what comes back. Both sides run the same decision code on their own logits; with the
 * same checkpoint (td_selfspec_fingerprint) the output equals td_selfspec_generate's. */

/* The remote side, as two calls around this side's forward. start sends the n states (state i =
 * prefix[0..n_prefix) + tails[i][0..tail_lens[i]), masks as the mask token, canvas from
 * canvas_starts[i] to its end); finish receives counts[n] and pos/ids[i * k + d] (canvas index
 * and token of draft d of state i). Return TD_OK; TD_ERR_UNSUPPORTED aborts the generation (a
 * configuration error such as a different checkpoint; err says why); any other error, or an
 * answer that is not a possible draft list, makes this side evaluate those states itself
 * (remote_fallbacks), so the output never depends on the drafter being healthy. */
typedef struct td_selfspec_remote {
    int (*start)(void *ud, const int32_t *prefix, int n_prefix, const int32_t *const *tails,
                 const int *tail_lens, const int *canvas_starts, int n, int k, td_err_t *err);
    int (*finish)(void *ud, int n, int k, int *counts, int32_t *pos, int32_t *ids, td_err_t *err);
    void *ud;
} td_selfspec_remote_t;

/* td_selfspec_generate with the chain split between m (this process) and remote (the drafter
 * process, same checkpoint). Same output, same forwards on this side's critical path. */
int td_selfspec_generate_remote(td_model_t *m, const int32_t *prompt, int n_prompt,
                                const td_selfspec_params_t *p, const td_selfspec_remote_t *remote,
                                int32_t *out, td_selfspec_stats_t *st, td_err_t *err);

/* The drafter side: evaluates explicit states in one batched forward and returns their draft
 * lists (the same code as the in-process decoder). Scratch grows as needed. */
typedef struct td_selfspec_evaluator td_selfspec_evaluator_t;
/* NULL with TD_ERR_UNSUPPORTED when m is not a masked-diffusion LM. */
td_selfspec_evaluator_t *td_selfspec_evaluator_new(td_model_t *m, td_err_t *err);
void td_selfspec_evaluator_destroy(td_selfspec_evaluator_t **e_p);
/* n in [1, 16] states as in td_selfspec_remote_t.start (tails concatenated), k in [1, 16]; writes
 * counts[n], pos[n * k], ids[n * k]. TD_ERR_ARG for a state without a masked canvas position or
 * a token outside the vocabulary, TD_ERR_UNSUPPORTED for one longer than the model's context. */
int td_selfspec_evaluate(td_selfspec_evaluator_t *e, const int32_t *prefix, int n_prefix,
                         const int32_t *tails, const int *tail_lens, const int *canvas_starts,
                         int n, int k, int *counts, int32_t *pos, int32_t *ids, td_err_t *err);

/* A fingerprint of a checkpoint as selfspec sees it: its config (architecture, vocabulary, mask
 * and EOS ids, logit shift, context), parameter count, weight dtype and the argmax of every row
 * of one fixed 8-token probe forward (so two checkpoints of one shape with different weights
 * differ). Never 0. Costs one small forward. */
uint64_t td_selfspec_fingerprint(td_model_t *m);

#ifdef __cplusplus
}
#endif
#endif
