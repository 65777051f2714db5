/* remote_methods.h - selfspec and planned with a drafter process: connects the decoding loops of
 * drafter/selfspec.c and drafter/planned.c to the requests of verifier/remote.c over a connected
 * td_client_t (see docs/selfspec.md and docs/planned.md, "two processes"). */
#ifndef TD_ENGINE_REMOTE_METHODS_H
#define TD_ENGINE_REMOTE_METHODS_H

#include "drafter/planned.h"
#include "drafter/selfspec.h"
#include "protocol/transport.h"

typedef struct td_remote_opts {
    uint64_t session;   /* nonzero; answers are matched by (session, round) */
    int timeout_ms;     /* per request (0 = 5000) */
    int no_fingerprint; /* selfspec: skip the same-checkpoint check (tests only) */
} td_remote_opts_t;

/* Self-speculative decoding with m here and the deeper half of every chain evaluated by the
 * drafter behind dc (which must run the same checkpoint: checked by fingerprint, refused with
 * TD_ERR_UNSUPPORTED otherwise). A drafter that times out or answers garbage costs a local
 * re-evaluation (st->remote_fallbacks), never a wrong token. */
int td_selfspec_generate_via(td_model_t *m, td_client_t *dc, const td_remote_opts_t *o,
                             const int32_t *prompt, int n_prompt, const td_selfspec_params_t *p,
                             int32_t *out, td_selfspec_stats_t *st, td_err_t *err);

/* Planned diffusion with planner here and every stage's spans filled by the drafter behind dc.
 * TD_ERR_UNSUPPORTED when the drafter cannot fill (no plan tags, other tag ids, spans beyond its
 * context; err says which): the caller falls back to plain decoding. *drafter_s (optional)
 * accumulates the drafter's fill time. */
int td_planned_generate_via(td_model_t *planner, td_client_t *dc, const td_remote_opts_t *o,
                            const td_plan_tags_t *tags, const int32_t *prompt, int n_prompt,
                            const td_planned_params_t *p, int32_t *out, int *n_out,
                            td_planned_stats_t *st, double *drafter_s, td_err_t *err);

#endif
