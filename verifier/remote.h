/* remote.h - the verifier side of the two-process selfspec and planned methods: requests to a
 * tandem-drafter's SelfspecEval and PlannedFill services over a connected, handshaken td_client_t.
 *
 * Plain arrays only (the decoding loops live in drafter/selfspec.c and drafter/planned.c; the
 * bridge connects them to these calls). Every answer is matched by (session, round); heartbeats
 * and late answers to earlier rounds are skipped. Errors: TD_ERR_UNSUPPORTED when the drafter
 * refused for a reason that will not go away (another checkpoint, no plan tags, a span that does
 * not fit its context: err carries its message), TD_ERR_IO on a timeout or a failed send,
 * TD_ERR_FORMAT on a malformed or mismatched answer, TD_ERR for any other Error reply. */
#ifndef TD_VERIFIER_REMOTE_H
#define TD_VERIFIER_REMOTE_H

#include "model/sampler.h"
#include "protocol/transport.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sends SelfspecEval (see tandem.proto): n states = prefix + tails[i][0..tail_lens[i]), canvas
 * from canvas_starts[i]; k drafts each; fingerprint 0 = unchecked. */
int td_remote_selfspec_send(td_client_t *c, uint64_t session, uint64_t round, const int32_t *prefix,
                            int n_prefix, const int32_t *const *tails, const int *tail_lens,
                            const int *canvas_starts, int n, int k, uint64_t fingerprint,
                            td_err_t *err);

/* Waits up to timeout_ms for the SelfspecDrafts of (session, round): counts[n], pos/ids[i*k + d].
 * *drafter_us (optional) receives the drafter's time. */
int td_remote_selfspec_recv(td_client_t *c, uint64_t session, uint64_t round, int timeout_ms, int n,
                            int k, int *counts, int32_t *pos, int32_t *ids, uint64_t *drafter_us,
                            td_err_t *err);

/* One planned stage filled by the drafter: sends PlannedFill and waits for PlannedFilled. rows3:
 * NULL (all causal) or 3 ints per context token (pre, lo, hi). rng[4] is the shared generator,
 * advanced by the fill on return. Writes the filled scaffold into scaffold[cap] and returns its
 * length (>= 0), *forwards and *span_steps from the drafter; or a negative TD_ERR_*. */
int td_remote_planned_fill(td_client_t *c, uint64_t session, uint64_t round, int timeout_ms,
                           const int32_t *ctx, const int32_t *rows3, int n_ctx,
                           const int *span_units, int n_spans, float steps_ratio, int dense,
                           const td_sampling_t *sp, uint64_t rng[4], const int32_t tags[6], int cap,
                           int32_t *scaffold, int *forwards, int *span_steps, uint64_t *drafter_us,
                           td_err_t *err);

#ifdef __cplusplus
}
#endif
#endif
