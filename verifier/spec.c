/* spec.c - the verifier's speculative decoding loop over the protocol (see spec.h). */
#include "verifier/spec.h"

#include "verifier/driver.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s_methods[TD_METHOD_COUNT] = {"ar",       "spec-ar",  "specdiff",
                                                 "apd",      "diffusion", "selfspec",
                                                 "planned",  "dflash"};
static const char *s_verifies[] = {"rejection", "match", "greedy"};

const char *td_method_name(td_method_t m) {
    return (unsigned)m < TD_METHOD_COUNT ? s_methods[m] : "?";
}
int td_method_parse(const char *s) {
    for (int i = 0; i < TD_METHOD_COUNT; i++)
        if (!strcmp(s, s_methods[i])) return i;
    return -1;
}
const char *td_verify_name(td_verify_t v) { return (unsigned)v < 3 ? s_verifies[v] : "?"; }
int td_verify_parse(const char *s) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, s_verifies[i])) return i;
    return -1;
}

td_spec_params_t td_spec_params_default(td_method_t method) {
    td_spec_params_t p = {.method = method,
                          .gamma = 8,
                          .steps = 4,
                          .order = 0,
                          .verify = TD_VERIFY_REJECTION,
                          .max_tokens = 128,
                          .sampling = {0, 0, 1},
                          .draft_sampling = {0, 0, 1},
                          .dist_top_k = 32,
                          .apd_mixture = 0.7f,
                          .apd_kv_window = 16,
                          .drafter_timeout_ms = 5000};
    if (method == TD_METHOD_SPEC_AR) p.steps = 1;
    if (method == TD_METHOD_APD) p.gamma = 16, p.steps = 1;
    return p;
}

int td_spec_generate(td_model_t *v, td_client_t *dc, uint64_t session_id, const int32_t *prompt,
                     int n_prompt, const td_spec_params_t *p, td_token_cb cb, void *ud,
                     int32_t *out, td_spec_stats_t *st, td_err_t *err) {
    /* the driver with one session: one KV slot of exactly the context the request needs */
    td_link_t *link = NULL;
    if (dc && !(link = td_link_new(dc, p->hello, err))) return err ? err->code : TD_ERR_NOMEM;
    td_session_opts_t o = {.method = p->method, .params = p, .link = link, .cb = cb, .ud = ud};
    o.session_id = session_id, o.prompt = prompt, o.n_prompt = n_prompt;
    int rc = td_driver_generate(v, &o, out, st, err);
    td_link_destroy(&link);
    return rc;
}
