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

#ifdef __cplusplus
}
#endif
#endif
