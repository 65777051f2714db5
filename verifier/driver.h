/* driver.h - the decoding engine: per-request sessions with step functions, and a driver that
 * verifies every live session in ONE forward per round over a multi-slot KV cache.
 *
 * This is the API a server uses (and `generate`, `bench` and the verifier worker through
 * td_spec_generate / the method table, as a driver with one session):
 *
 *     td_link_t *link = td_link_new(dc, &hello, &err);          // one drafter link, shared
 *     td_driver_t *d = td_driver_new(verifier, 8, 4096, &err);  // 8 KV slots of 4096 positions
 *     td_session_opts_t o = {.method = TD_METHOD_SPECDIFF, .params = &p, .link = link,
 *                            .session_id = id, .prompt = ids, .n_prompt = n,
 *                            .cb = on_token, .ud = req};        // cb: streaming, may cancel
 *     td_session_t *s = td_session_new(verifier, &o, &err);
 *     td_driver_submit(d, s, &err);     // takes a free slot, prefills; joins the next round
 *     while (td_driver_live(d) > 0)     // a server thread: submit / cancel between rounds
 *         td_driver_round(d, &err);     // one forward for all; finished sessions leave at once
 *     td_session_tokens(s, &n_out); td_session_stats(s); td_session_status(s, &err);
 *     td_session_destroy(&s);           // after it left (td_session_done) or before submit
 *
 * A round: every live session that speculates sends its draft request (all are in flight
 * together), then each one's proposal is taken from the link (routed by session id; a session
 * whose drafter failed does this round as plain AR and counts a fallback), each session adds its
 * rows (anchor + draft) in its own KV slot to the shared batch, ONE td_model_forward runs it,
 * and each session commits: applies its acceptance rule to its own rows of the logits (no copy),
 * emits tokens through its callback and crops its slot to the verified text.
 *
 * The CPU kernels are batch-invariant (a row's logits do not depend on the other rows), so a
 * session's output is bitwise the same alone or batched with others (tests/test_engine.c).
 * Not thread-safe: one thread runs a driver and its sessions; another thread hands requests to it
 * through a queue of its own. td_session_cancel may be called from a callback. */
#ifndef TD_VERIFIER_DRIVER_H
#define TD_VERIFIER_DRIVER_H

#include "model/model.h"
#include "verifier/generate.h"
#include "verifier/link.h"
#include "verifier/spec.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_session td_session_t;
typedef struct td_driver td_driver_t;

typedef struct td_session_opts {
    td_method_t method;             /* ar, spec-ar, specdiff or apd */
    const td_spec_params_t *params; /* copied (stop_ids and suppress_ids are borrowed) */
    td_link_t *link;                /* the drafter link (borrowed; NULL for ar) */
    uint64_t session_id;            /* the drafter session id (unique per live session) */
    const int32_t *prompt;          /* copied */
    int n_prompt;
    td_token_cb cb; /* optional: each committed token; non-zero ends the request (STOP_CALLBACK) */
    void *ud;
    /* ar only: ids never generated (logits -inf before sampling); borrowed */
    const int32_t *suppress_ids;
    int n_suppress;
    /* dflash only: the target layer boundaries whose features the drafter wants (its Hello's
     * target_layers; each in 1..n_layer) and the wire type of the features (TD_FEATURE_* of
     * drafter/dflash.h: 1 F16, 2 BF16; 0 = BF16). The session's verify rows and prefill request
     * these hidden states, rounds them to the wire type and sends the rows that became committed
     * with each DraftRequest (every committed position but the last). All dflash sessions of one
     * driver must use the same layer list. */
    const int *feature_layers;
    int n_feature_layers;
    int feature_type;
    /* optional: called once when the session leaves the driver (finished, cancelled, failed) */
    void (*on_done)(void *ud, td_session_t *s);
} td_session_opts_t;

/* A request for verifier model v: checks the parameters (gamma range, causal model, prompt that
 * fits the context); NULL with err set otherwise. */
td_session_t *td_session_new(td_model_t *v, const td_session_opts_t *o, td_err_t *err);
void td_session_destroy(td_session_t **self_p);

/* Positions of KV cache the session needs (prompt + max_tokens + lookahead, clamped to the
 * model's context). */
int td_session_n_ctx(const td_session_t *s);
/* Ends the session at the next round boundary (stop reason STOP_CALLBACK). */
void td_session_cancel(td_session_t *s);
/* 1 once the session left the driver. */
int td_session_done(const td_session_t *s);
/* The tokens generated so far. */
const int32_t *td_session_tokens(const td_session_t *s, int *n);
const td_spec_stats_t *td_session_stats(const td_session_t *s);
/* TD_OK, or the verifier-side error that ended the session (err gets its message). */
int td_session_status(const td_session_t *s, td_err_t *err);
uint64_t td_session_id(const td_session_t *s);

/* A driver for v with max_sessions KV slots of n_ctx positions each. */
td_driver_t *td_driver_new(td_model_t *v, int max_sessions, int n_ctx, td_err_t *err);
void td_driver_destroy(td_driver_t **self_p); /* sessions still live are left, not destroyed */

/* Adds s (borrowed until it leaves): takes a free KV slot and prefills the prompt there.
 * TD_ERR_ARG when no slot is free, the session needs more than n_ctx positions or was submitted
 * before; a prefill failure ends the session at once (returned, and in td_session_status). */
int td_driver_submit(td_driver_t *d, td_session_t *s, td_err_t *err);
/* One round for every live session (see above). Returns the sessions still live (>= 0), or a
 * TD_ERR_* when the shared forward failed (every session in it then ends with that error). */
int td_driver_round(td_driver_t *d, td_err_t *err);
/* Rounds until no session is live. TD_OK or the first forward failure. */
int td_driver_run(td_driver_t *d, td_err_t *err);
int td_driver_live(const td_driver_t *d);
/* Verifier forwards the driver ran (prefills included). */
int64_t td_driver_forwards(const td_driver_t *d);

/* One request alone: a driver with one slot of exactly the context it needs and one session (what
 * td_spec_generate and the method table's single-request runs do). out[max_tokens] receives the
 * ids; *st (optional) the stats. TD_OK or the verifier-side error. */
int td_driver_generate(td_model_t *v, const td_session_opts_t *o, int32_t *out, td_spec_stats_t *st,
                       td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
