/* generate.c - plain autoregressive decoding: a prefill pass (the prompt but its last token), then
 * one pass per token (the first one: the last prompt token).
 *
 * On a device backend (CUDA) each pass samples on the device (td_model_forward_sample): only the
 * chosen id comes back, not n_vocab logits. Greedy decoding takes that path on every backend (the
 * ids are td_argmax's either way). Sampling on the CPU keeps td_model_forward + td_sample, so CPU
 * output for a seed is unchanged; on a device the draws use td_sample_seeded's stream (seeded by
 * one td_rng_next per token): the same distribution, other ids than the CPU's for that seed.
 * Suppressed ids (p->suppress_ids) always take the host path: their logits are set to -inf
 * before td_sample. */
#include "verifier/generate.h"

#include <math.h>
#include <stdlib.h>

int td_generate_ar(td_model_t *m, const int32_t *prompt, int n_prompt, const td_gen_params_t *p,
                   td_token_cb cb, void *ud, int32_t *out, td_gen_stats_t *st, td_err_t *err) {
    const td_config_t *c = td_model_config(m);
    td_gen_stats_t s = {.prompt_tokens = n_prompt};
    if (!c->causal)
        return td_err_set(
            err, TD_ERR_ARG,
            "%s is a diffusion LM (bidirectional): plain AR decoding needs a causal model",
            td_arch_name(c->arch));
    if (n_prompt <= 0) return td_err_set(err, TD_ERR_ARG, "empty prompt");
    if (p->max_tokens < 0) return td_err_set(err, TD_ERR_ARG, "max_tokens must be >= 0");
    int n_ctx = 0, fit = td_config_fit_ctx(c, n_prompt, p->max_tokens, 0, &n_ctx, err);
    if (fit != TD_OK) return fit;
    const int greedy = !(p->sampling.temperature > 0.0f);
    if (p->n_suppress > 0 && !p->suppress_ids)
        return td_err_set(err, TD_ERR_ARG, "suppress_ids is NULL");
    const int on_backend = (greedy || !td_backend_host_memory(td_model_backend(m))) &&
                           p->sampling.temperature != INFINITY && p->n_suppress <= 0;
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, n_ctx, err);
    float *logits = on_backend ? malloc(1) : malloc((size_t)c->n_vocab * sizeof(float));
    if (!kv || !logits) {
        td_kv_cache_destroy(&kv);
        free(logits);
        return err && err->code ? err->code : td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    td_rng_t rng;
    td_rng_seed(&rng, p->seed);
    int rc = TD_OK;
    int32_t next = 0; /* the token sampled on the backend by the last pass (on_backend) */
    uint8_t *none = calloc((size_t)n_prompt, 1); /* logits of no prefill row */
    if (!none) rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
    double t0 = td_time_now();
    /* The prompt but its last token in one pass, then the last token alone: exactly how the
     * batched driver and every speculative method treat a prompt (the last prompt token is the
     * first round's anchor), so a token's keys/values come from the same computation whatever the
     * method, and greedy outputs can be compared token for token (a pass's arithmetic may depend on
     * how many rows it has: CPU float weights take SGEMM above TD_SKINNY_MAX rows). */
    if (rc == TD_OK && n_prompt > 1) {
        td_batch_t b = {
            .n = n_prompt - 1, .tokens = prompt, .attn = TD_ATTN_CAUSAL, .logits_for = none};
        rc = td_model_forward(m, kv, &b, NULL, err);
        s.forwards++;
    }
    if (rc == TD_OK) {
        td_batch_t b = {.n = 1, .tokens = prompt + n_prompt - 1, .attn = TD_ATTN_CAUSAL};
        rc = on_backend ? td_model_forward_sample(m, kv, &b, &p->sampling, &rng, &next, NULL, err)
                        : td_model_forward(m, kv, &b, logits, err);
        s.forwards++;
    }
    double t1 = td_time_now();
    s.prefill_s = t1 - t0;
    s.stop = TD_STOP_LENGTH;
    while (rc == TD_OK && s.generated < p->max_tokens && n_prompt + s.generated < n_ctx) {
        if (!on_backend)
            for (int k = 0; k < p->n_suppress; k++)
                if (p->suppress_ids[k] >= 0 && p->suppress_ids[k] < c->n_vocab)
                    logits[p->suppress_ids[k]] = -INFINITY;
        int32_t id = on_backend ? next : td_sample(&p->sampling, &rng, logits, c->n_vocab, NULL);
        out[s.generated++] = id;
        if (cb && cb(ud, id)) {
            s.stop = TD_STOP_CALLBACK;
            break;
        }
        if (td_is_stop_id(p->stop_ids, p->n_stop, -1, id)) {
            s.stop = TD_STOP_EOS;
            break;
        }
        if (s.generated == p->max_tokens || n_prompt + s.generated >= n_ctx) break;
        td_batch_t b = {.n = 1, .tokens = &id, .attn = TD_ATTN_CAUSAL};
        rc = on_backend ? td_model_forward_sample(m, kv, &b, &p->sampling, &rng, &next, NULL, err)
                        : td_model_forward(m, kv, &b, logits, err);
        s.forwards++;
    }
    s.decode_s = td_time_now() - t1;
    if (st) *st = s;
    free(none);
    free(logits);
    td_kv_cache_destroy(&kv);
    return rc;
}
