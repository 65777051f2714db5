/* dflash.h - the DFlash drafter: a few transformer layers that draft a whole block in one forward,
 * conditioned on the target's own hidden features (docs/dflash.md, issue 13).
 *
 * A drafter directory holds config.json and model.safetensors with the drafter's own weights
 * (fc, hidden_norm, layers.*, norm; F32, F16 or BF16). The token embedding and the LM head are the
 * TARGET's, borrowed from its td_model_t (td_model_tok_embd / td_model_lm_head: no copy), so a
 * drafter is always loaded against a target model and refuses a target it was not trained for.
 *
 * The math (per the shared spec): context rows c_j = RMSNorm_hidden(W_fc f_j) of the committed
 * positions j = 0..L-2 give each layer's context keys/values (W_k c_j with RoPE at j, W_v c_j; no
 * input_layernorm on them), cached append-only in a td_dflash_ctx_t; the block is the anchor's
 * embedding at position L-1 plus B-1 mask-token embeddings, every block query sees all context
 * positions and the whole block (bidirectional); logits of block rows 1..B-1 come from the
 * drafter's final norm and the target's LM head. Computed with the backend ops only (CPU and CUDA
 * alike); td_model_forward is not reused because context rows skip the input norm and carry no
 * residual stream. */
#ifndef TD_DFLASH_H
#define TD_DFLASH_H

#include "model/model.h"
#include "model/sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TD_DFLASH_MAX_TARGET_LAYERS 64
#define TD_DFLASH_MAX_FINGERPRINTS 16
#define TD_DFLASH_MAX_BLOCK_SIZES 8

typedef struct td_dflash_config {
    int n_target_layers;
    int target_layers[TD_DFLASH_MAX_TARGET_LAYERS]; /* boundaries, model.h's hidden_layers */
    int block_size;                                 /* B: gamma = B - 1 */
    /* the block sizes it was trained for, ascending ("block_sizes"; default {block_size}) */
    int n_block_sizes;
    int block_sizes[TD_DFLASH_MAX_BLOCK_SIZES];
    int32_t mask_token_id;                          /* a target vocabulary id */
    /* "anchor_feature": every block row starts as its token's embedding plus the context row of
     * the position before the anchor (the last feature the drafter holds; nothing when none) */
    int anchor_feature;
    int hidden, n_layer, n_head, n_kv_head, head_dim, n_ff;
    float eps, rope_theta;
    /* the target it was trained for */
    char target_name[128];
    int target_n_layer, target_hidden, target_vocab;
    int n_fingerprints;
    uint64_t fingerprints[TD_DFLASH_MAX_FINGERPRINTS];
} td_dflash_config_t;

/* Parses DIR/config.json ("architecture": "dflash"). TD_ERR_FORMAT naming the file and the field
 * for anything missing, mistyped or out of range. */
int td_dflash_config_load(const char *dir, td_dflash_config_t *c, td_err_t *err);

/* Checks that the target (its config and td_model_fingerprint) is one the drafter may pair with:
 * always n_layer, hidden size, vocabulary, layer ids (each in 1..n_layer), drafter width ==
 * target width and the mask token inside the vocabulary; the fingerprint must be listed unless
 * any_target. TD_OK or TD_ERR_ARG with a message naming both sides. */
int td_dflash_check_target(const td_dflash_config_t *c, const td_config_t *target,
                           uint64_t target_fingerprint, int any_target, td_err_t *err);

/* The block a draft of gamma tokens runs in: the smallest trained block size (block_sizes) that
 * holds the anchor and gamma masks, or gamma + 1 past the largest. A block is never shorter than
 * one the drafter was trained for (a shorter one changes what its bidirectional rows see); only
 * rows 1..gamma of it are scored (td_dflash_job_t.n_draft). */
int td_dflash_block_for(const td_dflash_config_t *c, int gamma);

typedef struct td_dflash td_dflash_t;

/* Loads the drafter in dir against target (td_dflash_check_target with target_fingerprint and
 * any_target first). The drafter computes on the target's backend and borrows its embedding and
 * LM head: target must outlive it. NULL with err set on failure. */
td_dflash_t *td_dflash_load(const char *dir, td_model_t *target, uint64_t target_fingerprint,
                            int any_target, td_err_t *err);
void td_dflash_destroy(td_dflash_t **self_p); /* safe on NULL and twice */
const td_dflash_config_t *td_dflash_config(const td_dflash_t *d);
int td_dflash_feature_dim(const td_dflash_t *d); /* k * H: floats per feature row */
/* Ids in the drafter's draft vocabulary (model.safetensors' optional I32 tensor "draft_vocab":
 * the only ids it proposes, scored through those rows of the target's LM head; the rest of a
 * logits row is -inf), or 0 when it scores the whole vocabulary. */
int td_dflash_draft_vocab(const td_dflash_t *d);

/* --- per-session context cache -----------------------------------------------------------------
 */

/* A session's context keys/values (every drafter layer), for up to n_ctx positions including the
 * block (context rows + B <= n_ctx). Several may exist per drafter (one per session). */
typedef struct td_dflash_ctx td_dflash_ctx_t;
td_dflash_ctx_t *td_dflash_ctx_new(td_dflash_t *d, int n_ctx, td_err_t *err);
void td_dflash_ctx_destroy(td_dflash_ctx_t **self_p);
/* Feature rows held: positions 0 .. len-1. */
int td_dflash_ctx_len(const td_dflash_ctx_t *c);
int td_dflash_ctx_capacity(const td_dflash_ctx_t *c);
void td_dflash_ctx_reset(td_dflash_ctx_t *c);
/* Appends rows feature rows (host memory, [rows, k*H] f32) at positions len .. len+rows-1.
 * TD_ERR_ARG (nothing changed) when the cache would overflow, or a backend failure. */
int td_dflash_ctx_append(td_dflash_ctx_t *c, const float *features, int rows, td_err_t *err);

/* Drafts gamma = block - 1 tokens after the committed text whose last token is anchor at
 * position td_dflash_ctx_len(c) (the context holds the features of every earlier position): one
 * forward of the block [anchor, mask x gamma]. Token i is drawn with td_sample(sp, rng) from
 * logits row i (rows in order 0..gamma-1, block positions 1..B-1); q (optional, [gamma][n_vocab])
 * receives each row's td_sampling_dist, logits (optional, [gamma][n_vocab]) the raw rows. Each row
 * depends on the context and the anchor only, never on another drafted token. block >= 2 (usually
 * the config's block_size). TD_OK or a negative TD_ERR_*. */
int td_dflash_draft(td_dflash_ctx_t *c, int32_t anchor, int block, const td_sampling_t *sp,
                    td_rng_t *rng, int32_t *draft, float *q, float *logits, td_err_t *err);
/* (rng may be NULL for greedy settings.) */

/* Several blocks at once, each exactly td_dflash_draft's for its own context (contexts of one
 * drafter, each at most once): every block's rows go through ONE forward of the drafter, each
 * block attending to its own context only, the matrix products in pieces of at most
 * td_backend_invariant_rows rows so that every row is bitwise what it is alone, and the LM head
 * once for all blocks. td_dflash_draft is the one-job case. TD_OK or the first error (every
 * job's outputs are then unspecified). */
typedef struct td_dflash_job {
    td_dflash_ctx_t *ctx;
    int32_t anchor;
    int block;
    const td_sampling_t *sp;
    td_rng_t *rng;  /* NULL for greedy settings */
    int n_draft;    /* rows 1..n_draft of the block go through the LM head and are drawn
                       (1..block - 1; 0 means block - 1): the rest only shape the others */
    int32_t *draft; /* [n_draft] */
    float *q;       /* [n_draft][n_vocab] or NULL */
    float *logits;  /* [n_draft][n_vocab] or NULL */
} td_dflash_job_t;
int td_dflash_draft_many(td_dflash_job_t *jobs, int n_jobs, td_err_t *err);

/* --- features on the wire ----------------------------------------------------------------------
 */

typedef enum td_feature_type {
    TD_FEATURE_NONE = 0,
    TD_FEATURE_F16 = 1,
    TD_FEATURE_BF16 = 2,
} td_feature_type_t;

/* Rounds x[n] in place to the nearest value of type (BF16: round to nearest even; F16: as
 * td_dtype F16 conversion), so a drafter in the same process sees exactly what the wire carries.
 * TD_FEATURE_NONE leaves x alone. */
void td_feature_round(float *x, int64_t n, td_feature_type_t type);

#ifdef __cplusplus
}
#endif
#endif
