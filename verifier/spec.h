/* spec.h - speculative decoding on the verifier side: the drafter is reached only through the
 * protocol (a td_client_t, over inproc, ipc or tcp), the verifier model is local.
 *
 * Methods: spec-ar (an AR drafter, Leviathan rejection), specdiff (a diffusion drafter, rejection /
 * match / greedy verification), apd (a diffusion drafter judged by a small AR model through the
 * APD mixture; lossy). A round sends a DraftRequest with the text the drafter has not seen, gets a
 * Proposal (tokens, and per position the drafter's distribution in sparse form), scores gamma+1
 * positions in one verifier forward and applies the acceptance rule. When the drafter times out,
 * answers with an error or with garbage, the round is done as plain AR (counted in fallbacks) and
 * speculation is retried after a back-off; the request always completes. */
#ifndef TD_SPEC_H
#define TD_SPEC_H

#include "model/model.h"
#include "model/sampler.h"
#include "protocol/transport.h"
#include "verifier/generate.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum td_method {
    TD_METHOD_AR = 0,
    TD_METHOD_SPEC_AR,
    TD_METHOD_SPECDIFF,
    TD_METHOD_APD,
    TD_METHOD_DIFFUSION,
    TD_METHOD_SELFSPEC,
    TD_METHOD_PLANNED,
    TD_METHOD_DFLASH, /* a DFlash drafter fed the verifier's features (docs/dflash.md) */
    TD_METHOD_COUNT
} td_method_t;

typedef enum td_verify { TD_VERIFY_REJECTION = 0, TD_VERIFY_MATCH, TD_VERIFY_GREEDY } td_verify_t;

const char *td_method_name(td_method_t m);
int td_method_parse(const char *s); /* -1 when unknown */
const char *td_verify_name(td_verify_t v);
int td_verify_parse(const char *s); /* -1 when unknown */

#define TD_SPEC_MAX_GAMMA 256

typedef struct td_spec_params {
    td_method_t method;
    int gamma;          /* draft length */
    int steps;          /* diffusion steps per draft */
    int order;          /* td_unmask_order_t */
    td_verify_t verify; /* temperature 0 always verifies greedily */
    int max_tokens;
    td_sampling_t sampling;       /* the target distribution (verifier) */
    td_sampling_t draft_sampling; /* how the drafter samples its tokens */
    uint64_t seed;
    const int32_t *stop_ids;
    int n_stop;
    int dist_top_k;          /* K of the sparse distributions on the wire (0 = 32) */
    float apd_mixture;       /* R */
    int apd_kv_window;       /* W (0 = off) */
    int drafter_timeout_ms;  /* per round; 0 = 5000 */
    const td_hello_t *hello; /* our Hello, to handshake again with a drafter that restarted
                                   (NULL: a restarted drafter stays unused for this request) */
} td_spec_params_t;

/* Defaults from the reference: specdiff gamma 8, steps 4 (SpecDiff: T 4-6 best), left-to-right
 * order, rejection; APD R 0.7, W 16, lookahead M = gamma = 100 is capped by max_tokens. */
td_spec_params_t td_spec_params_default(td_method_t method);

typedef struct td_spec_stats {
    int generated;
    int drafted, accepted; /* draft tokens proposed / accepted (bonus tokens not counted) */
    int rounds;            /* speculative rounds that got a proposal */
    int fallbacks;         /* rounds done as plain AR because the drafter failed */
    int forwards;          /* verifier forward passes (critical path on the verifier) */
    int full_rows;         /* full drafter rows fetched because a sparse row could not decide */
    int bonus_tokens;      /* verifier-produced tokens (resampled or bonus) in speculative rounds */
    int predrafted;        /* proposals the drafter had drafted ahead (pre-drafting hits) */
    int64_t feature_bytes; /* dflash: target-feature bytes sent to the drafter */
    int drafted_by_position[TD_SPEC_MAX_GAMMA];
    int accepted_by_position[TD_SPEC_MAX_GAMMA];
    double drafter_s, verifier_s, transport_s, total_s;
    td_stop_reason_t stop;
    int lossy;               /* the method does not preserve the verifier's distribution */
    char last_fallback[256]; /* why the last fallback happened */
} td_spec_stats_t;

/* Generates up to p->max_tokens after prompt with verifier model v and the drafter behind dc (a
 * connected client that completed the handshake). out[max_tokens] receives the ids; cb (optional)
 * sees each token as it is committed. Returns TD_OK (even when the drafter failed: see
 * st->fallbacks) or TD_ERR_* for a verifier-side failure. */
int td_spec_generate(td_model_t *v, td_client_t *dc, uint64_t session_id, const int32_t *prompt,
                     int n_prompt, const td_spec_params_t *p, td_token_cb cb, void *ud,
                     int32_t *out, td_spec_stats_t *st, td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
