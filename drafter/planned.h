/* planned.h - planned diffusion (Israel et al., "Planned Diffusion"): an autoregressive planner
 * writes a short plan of spans (topic + length), a diffusion LM fills every span of a stage in
 * parallel under block-sparse attention, and <sync/> starts a new stage that sees everything.
 *
 * Plan format (as the reference checkpoints): per span `<promise>-<topic> TOPIC N </topic>` with
 * N the span length in units of 10 tokens (1 or 2 digits, not 0); a stage ends with `<sync/>`
 * (another planning stage follows) or EOS (the answer ends). Free text outside promises is allowed
 * and kept. The scaffold of a stage is `<async> MASK * 10N </async>` per span, appended after the
 * stage's plan (its terminator removed); `<sync/>` is appended back after the filled scaffold.
 * Attention (td_pd_row_t): prompt and planner rows are causal; span rows see everything before
 * the stage's scaffold plus their own span (tags included), or the whole scaffold when dense;
 * nothing before a scaffold ever sees it. Output: the raw sequence without the promises
 * (`<promise>-<topic>` .. `</topic>` inclusive), the async tags, `<sync/>`, `[PAD]` and EOS.
 * Tag ids come from the tokenizer by their strings. See docs/planned.md. */
#ifndef TD_PLANNED_H
#define TD_PLANNED_H

#include "model/model.h"
#include "model/sampler.h"
#include "model/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TD_PLAN_MAX_SPANS 64

/* Tag ids and the digit classes of the vocabulary. */
typedef struct td_plan_tags {
    int32_t async_open;  /* "<async>" */
    int32_t async_close; /* "</async>" */
    int32_t promise;     /* "<promise>-<topic>" */
    int32_t topic_close; /* "</topic>" */
    int32_t sync;        /* "<sync/>" (or "<sync>") */
    int32_t pad;         /* "[PAD]" */
    int32_t eos;         /* the answer's end (the caller's EOS id) */
    int n_vocab;
    /* per id: 0 other, 1 whitespace only, 2 ASCII digits only, 3 whitespace then digits */
    uint8_t *kind;
    uint8_t *ndigits; /* digits in the token, capped at 3 */
    uint8_t *value;   /* their value when ndigits <= 2 */
} td_plan_tags_t;

/* Reads the tag ids from tok and classifies every id's bytes. eos: the id ending an answer (e.g.
 * the model config's eos_token_id; -1 for none). Returns TD_OK, TD_ERR_UNSUPPORTED when any tag
 * is missing (the message names them and says to fall back to plain decoding: that decision is
 * the caller's), or TD_ERR_NOMEM. Free with td_plan_tags_free. */
int td_plan_tags_init(td_plan_tags_t *t, const td_tokenizer_t *tok, int32_t eos, td_err_t *err);
void td_plan_tags_free(td_plan_tags_t *t);

#define TD_PLAN_MAX_TAG_IDS 7
/* The ids of the planning control tags tok has (`<async>`, `</async>`, `<promise>-<topic>`,
 * `</topic>`, `<sync/>`, `<sync>`, `[PAD]`; any subset, so a tokenizer with only some of them is
 * covered too), except eos, into ids[TD_PLAN_MAX_TAG_IDS]. Returns how many (0 without tok or
 * without tags). The plain decoding that stands in for `planned` (the fallback of `tandem
 * generate` / `tandem bench`) suppresses them (td_diffusion_params_t / td_gen_params_t
 * suppress_ids), so its tokens never hold a tag that the detokenised text would hide. */
int td_plan_tag_ids(const td_tokenizer_t *tok, int32_t eos, int32_t *ids);

typedef struct td_plan_span {
    int promise_at; /* index of `<promise>-<topic>` in the parsed tokens */
    int close_at;   /* index of its `</topic>` */
    int units;      /* N */
    int length;     /* 10 * N tokens */
} td_plan_span_t;

typedef enum td_plan_end {
    TD_PLAN_END_NONE = 0, /* the tokens ran out (planner stopped by a limit) */
    TD_PLAN_END_SYNC,     /* `<sync/>`: another stage follows */
    TD_PLAN_END_EOS       /* EOS: the answer ends after this stage */
} td_plan_end_t;

typedef struct td_plan {
    int n_spans;
    td_plan_span_t spans[TD_PLAN_MAX_SPANS];
    td_plan_end_t end;
    int n_used; /* tokens parsed, the terminator included */
} td_plan_t;

/* Parses one stage of planner output tokens[n] (from the prompt or the previous `<sync/>` up to
 * and including this stage's `<sync/>` or EOS, which must be the last token when present).
 * Strict: TD_ERR_FORMAT with a message naming the token index for a `</topic>` without an open
 * promise, a promise inside a promise, `<async>`/`</async>` in a plan (only scaffolds carry them),
 * a promise left open (by `<sync/>`, EOS or the end of the tokens), a promise without a length, a
 * digit run that is not a length (more than 2 digits, or 0), a promise with two numbers, tokens
 * after the terminator, more than TD_PLAN_MAX_SPANS spans. A length is a run of digit tokens
 * (a token of whitespace then digits starts a new run). `[PAD]` is ignored. Zero spans is a valid
 * plan (the planner answered directly). */
int td_plan_parse(const int32_t *tokens, int n, const td_plan_tags_t *tags, td_plan_t *plan,
                  td_err_t *err);

/* Visibility of one query row: key position k is visible iff k < pre or lo <= k < hi. A causal
 * row at position i is {i + 1, 0, 0}. */
typedef struct td_pd_row {
    int32_t pre, lo, hi;
} td_pd_row_t;

/* mask[i * stride + k] = visibility of key k (k < stride) for rows[i], i < n. */
void td_pd_rows_mask(const td_pd_row_t *rows, int n, uint8_t *mask, int64_t stride);

/* The scaffold of plan placed at position start: `<async>`, length masks, `</async>` per span, into
 * tokens[] with their rows (span rows: pre = start, [lo, hi) = the span's tags and masks, or the
 * whole scaffold when dense). Returns its length, or TD_ERR_ARG when it exceeds cap. */
int td_planned_scaffold(const td_plan_t *plan, const td_plan_tags_t *tags, int32_t mask_id,
                        int start, int dense, int32_t *tokens, td_pd_row_t *rows, int cap);

typedef struct td_planned_params {
    int max_tokens;         /* raw tokens after the prompt at most: plan, scaffolds, syncs (256) */
    int max_plan_tokens;    /* planner tokens per stage at most (128) */
    float steps_ratio;      /* denoising steps per stage = int(longest span * ratio), >= 1 (1.0) */
    int dense;              /* 1: spans of a stage see each other (full-attention checkpoints) */
    td_sampling_t sampling; /* planner and filler (default greedy) */
    uint64_t seed;
    int only_span; /* TESTS: -1 (default) fills every span; k fills span k only */
} td_planned_params_t;

/* max_tokens 256, max_plan_tokens 128, steps_ratio 1, sparse, greedy, seed 0, only_span -1. */
td_planned_params_t td_planned_params_default(void);

typedef struct td_planned_stats {
    int plan_tokens; /* tokens written by the planner, terminators included */
    int stages;      /* stages with at least one span */
    int spans;
    int span_tokens; /* span positions filled (10 N each) */
    int span_steps;  /* sum over spans of the steps in which the span had masks */
    int max_span_steps;
    int ar_forwards;        /* planner forward passes */
    int diffusion_forwards; /* filler forward passes (one per denoising step of a stage) */
    int critical_path;      /* ar_forwards + diffusion_forwards: sequential passes */
    int raw_tokens;         /* raw sequence after the prompt (tags included) */
    int output_tokens;      /* after td_planned_clean */
    int stopped_at_eos;     /* 1 when the planner ended the answer */
} td_planned_stats_t;

/* Fills one stage. ctx[n_ctx] is everything before the scaffold with ctx_rows (NULL: all
 * causal); the scaffold of plan is written at position n_ctx into scaffold[cap] / sc_rows[cap]
 * and denoised by the diffusion LM m: every step is ONE forward over the spans (the first also
 * computes ctx, which never sees the scaffold, so it is exact to compute it once); per step and
 * span, max(1, int(masked * (1 - s/t))) most confident masks (negative entropy of the score
 * distribution: softmax(logits) at temperature 0, else the sampling distribution; ties to the
 * leftmost) are sampled with p->sampling and rng, all remaining at the last step; t, s from
 * linspace(1, 1e-3, steps + 1). The mask token is never produced. Counts go to st (added).
 * Returns the scaffold length, or TD_ERR_ARG (not a diffusion LM, the scaffold does not fit the
 * model's context or cap, a span of length 0) / TD_ERR_NOMEM. */
int td_planned_fill(td_model_t *m, const td_plan_tags_t *tags, const int32_t *ctx,
                    const td_pd_row_t *ctx_rows, int n_ctx, const td_plan_t *plan,
                    const td_planned_params_t *p, td_rng_t *rng, int32_t *scaffold,
                    td_pd_row_t *sc_rows, int cap, td_planned_stats_t *st, td_err_t *err);

/* raw[n] without promises, async tags, sync, PAD and EOS, into out (may equal raw). Returns the
 * count. */
int td_planned_clean(const td_plan_tags_t *tags, const int32_t *raw, int n, int32_t *out);

/* The whole method after prompt[n_prompt]: planner (a causal LM, or a diffusion LM run causally:
 * with the logit shift the last row predicts the next token, without it a mask token is appended
 * and its row read) writes a stage's plan one token per forward until `<sync/>`, EOS (tags->eos)
 * or a limit; the plan is parsed (errors are returned: the caller may fall back to plain
 * decoding); filler (a diffusion LM; may be the same model) fills the stage's spans with
 * td_planned_fill; after `<sync/>` the planner continues seeing the filled spans (with the span
 * rows when it is a diffusion LM). Writes the cleaned answer into out[p->max_tokens] (*n_out) and,
 * when raw is non-NULL, the raw sequence into raw[p->max_tokens] (*n_raw). Returns TD_OK,
 * TD_ERR_FORMAT (unparseable plan), TD_ERR_ARG (bad arguments, a model/tag mismatch, spans that
 * do not fit the context) or TD_ERR_NOMEM. */
int td_planned_generate(td_model_t *planner, td_model_t *filler, const td_plan_tags_t *tags,
                        const int32_t *prompt, int n_prompt, const td_planned_params_t *p,
                        int32_t *out, int *n_out, int32_t *raw, int *n_raw, td_planned_stats_t *st,
                        td_err_t *err);

/* ---- two processes: the planner here, the spans filled by a drafter process ----
 * fill does what td_planned_fill does (same arguments; the scaffold's rows are computed by the
 * caller with td_planned_scaffold, so only its tokens come back): fills the stage's spans with
 * p's schedule and sampling, continuing rng (so a sampled run equals the one-process run with the
 * same seed), writes the filled scaffold into scaffold[cap], adds its counts to st
 * (td_planned_stats_add_fill) and returns the scaffold length or a negative TD_ERR_*. */
typedef struct td_planned_remote {
    int (*fill)(void *ud, const td_plan_tags_t *tags, const int32_t *ctx,
                const td_pd_row_t *ctx_rows, int n_ctx, const td_plan_t *plan,
                const td_planned_params_t *p, td_rng_t *rng, int32_t *scaffold, int cap,
                td_planned_stats_t *st, td_err_t *err);
    void *ud;
} td_planned_remote_t;

/* td_planned_generate with the filler behind remote (the planner runs here). Same output as the
 * one-process call with the same checkpoint, parameters and seed. */
int td_planned_generate_remote(td_model_t *planner, const td_planned_remote_t *remote,
                               const td_plan_tags_t *tags, const int32_t *prompt, int n_prompt,
                               const td_planned_params_t *p, int32_t *out, int *n_out, int32_t *raw,
                               int *n_raw, td_planned_stats_t *st, td_err_t *err);

/* The counts td_planned_fill adds for one stage of plan (forwards = its denoising steps). */
void td_planned_stats_add_fill(td_planned_stats_t *st, const td_plan_t *plan, int forwards,
                               int span_steps);

#ifdef __cplusplus
}
#endif
#endif
