/* generate.h - decoding loops owned by the verifier side. For now: plain autoregressive decoding
 * (the `ar` baseline every other method is measured and tested against). */
#ifndef TD_GENERATE_H
#define TD_GENERATE_H

#include "model/model.h"
#include "model/sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_gen_params {
    int max_tokens; /* generated tokens at most */
    td_sampling_t sampling;
    uint64_t seed;
    const int32_t *stop_ids; /* generation ends after emitting one of these (it is kept in out) */
    int n_stop;
    /* ids never generated (logits -inf before sampling, like HF's suppress_tokens; ids outside
     * the vocabulary are ignored); NULL / 0: none. Suppressing samples on the host (td_sample),
     * also on a device backend. `planned`'s ar fallback passes the plan tags (td_plan_tag_ids). */
    const int32_t *suppress_ids;
    int n_suppress;
} td_gen_params_t;

typedef enum td_stop_reason { TD_STOP_LENGTH = 0, TD_STOP_EOS, TD_STOP_CALLBACK } td_stop_reason_t;

typedef struct td_gen_stats {
    int prompt_tokens;
    int generated;
    int forwards; /* sequential forward passes (the critical path) */
    double prefill_s, decode_s;
    td_stop_reason_t stop;
} td_gen_stats_t;

/* Called with each new token as soon as it is chosen; return non-zero to stop. */
typedef int (*td_token_cb)(void *ud, int32_t id);

/* Plain AR decoding with the model's causal attention. out[max_tokens] receives the generated ids.
 * Refuses a non-causal (diffusion) model with TD_ERR_ARG. */
int td_generate_ar(td_model_t *m, const int32_t *prompt, int n_prompt, const td_gen_params_t *p,
                   td_token_cb cb, void *ud, int32_t *out, td_gen_stats_t *st, td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
