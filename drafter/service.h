/* service.h - the drafter worker: serves draft proposals for many sessions over the protocol.
 *
 * One td_drafter_service_t owns a drafting model and a KV cache with one slot per session. It
 * answers Hello (refusing a peer whose tokenizer differs), DraftRequest (diffusion block drafts
 * for a diffusion LM, autoregressive drafts for a causal LM), FullRowRequest (a full q or logit
 * row of the last proposal), CloseSession and Heartbeat. Sessions are created by their first
 * DraftRequest (base_len 0, the whole text as delta), so a drafter that restarted is simply asked
 * again from scratch: a request for an unknown session with base_len > 0 gets
 * ERROR_UNKNOWN_SESSION. Every request is validated before use; a bad one gets an Error reply and
 * changes nothing. */
#ifndef TD_DRAFTER_SERVICE_H
#define TD_DRAFTER_SERVICE_H

#include "model/model.h"
#include "model/tokenizer.h"
#include "protocol/transport.h"

#include <signal.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_drafter_service td_drafter_service_t;

typedef struct td_drafter_opts {
    int max_sessions;     /* concurrent sessions (KV slots); default 8 */
    int n_ctx;            /* positions per session; default min(model context, 2048) */
    const char *model_id; /* shown to peers; default "drafter" */
    int exact;            /* diffusion drafts without the prefix cache (slower, exact) */
    int predraft;         /* after each proposal, draft the next round ahead for its most likely
                             request (all accepted + the drafter's greedy guess of the bonus) */
    /* a DFlash drafter (drafter/dflash.h; borrowed): the service's model m is then its target
     * (vocabulary, embedding and LM head), the only capability is "dflash", the Hello lists the
     * drafter's target_layers, block_size and (unless dflash_any_target) its target
     * fingerprints, and each DraftRequest must carry the committed rows' features */
    struct td_dflash *dflash;
    int dflash_any_target;
} td_drafter_opts_t;

/* Borrows m and tok (they must outlive the service). NULL on failure (err says why). */
td_drafter_service_t *td_drafter_service_new(td_model_t *m, const td_tokenizer_t *tok,
                                             const td_drafter_opts_t *opts, td_err_t *err);
void td_drafter_service_destroy(td_drafter_service_t **self_p);

/* Handles one received message from peer `from`, replying through srv. Never fails the caller:
 * problems become Error replies (and a log line). */
void td_drafter_service_handle(td_drafter_service_t *svc, td_server_t *srv,
                               const td_routing_id_t *from, const td_msg_t *req);

/* Serves on srv until *stop is set (checked at least every 100 ms; for a process stopped by a
 * signal handler). Returns TD_OK. */
int td_drafter_serve(td_drafter_service_t *svc, td_server_t *srv, volatile sig_atomic_t *stop);

/* Serves on srv until a command ("STOP") arrives on ctl, this thread's end of an actor pipe
 * (td_pipe_new): the way to run a drafter in a thread of another component. Sleeps in one poll
 * on both sockets; nothing is shared with the thread that stops it. Returns TD_OK. */
int td_drafter_serve_until(td_drafter_service_t *svc, td_server_t *srv, td_pipe_t *ctl);

/* Batched drafting calls so far: DraftRequests that were waiting together (several sessions over
 * one link send theirs before awaiting any answer) are drafted together when pre-drafting is off
 * and they are not APD requests: one batch per draft position for a causal LM, per denoising
 * step for a diffusion LM, one block forward for a DFlash drafter. */
long td_drafter_service_batched_forwards(const td_drafter_service_t *svc);

/* Pre-drafts that were used / thrown away so far. */
void td_drafter_service_predraft_stats(const td_drafter_service_t *svc, long *hits, long *misses);

/* This side's Hello (role DRAFTER); strings borrowed from the service. */
const td_hello_t *td_drafter_service_hello(const td_drafter_service_t *svc);

#ifdef __cplusplus
}
#endif
#endif
