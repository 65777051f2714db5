/* link.h - the verifier's end of a drafter link, shared by many sessions.
 *
 * A td_link_t wraps one connected, handshaken td_client_t (borrowed) and routes what the drafter
 * sends by session id: a session waiting for its answer takes it from the link; a message for
 * another session is kept for that session (never dropped) until it asks for it or leaves
 * (td_link_forget). Messages for the asking session that answer an earlier round (late answers to
 * an abandoned round) and heartbeats are dropped. One thread uses a link at a time (the driver's).
 *
 * Codes of td_link_wait besides TD_OK: TD_LINK_TIMEOUT (nothing in time) and TD_LINK_MALFORMED
 * (the drafter sent a message that does not decode); err says what happened. */
#ifndef TD_VERIFIER_LINK_H
#define TD_VERIFIER_LINK_H

#include "protocol/transport.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_link td_link_t;

enum { TD_LINK_TIMEOUT = 1, TD_LINK_MALFORMED = 2 };

/* Borrows dc and hello (our Hello, to handshake again with a drafter that restarted; NULL: no
 * second handshake). NULL on allocation failure. */
td_link_t *td_link_new(td_client_t *dc, const td_hello_t *hello, td_err_t *err);
void td_link_destroy(td_link_t **self_p);

td_client_t *td_link_client(const td_link_t *l);
const td_hello_t *td_link_hello(const td_link_t *l);

/* Sends m (validated by the transport). As td_client_send. */
int td_link_send(td_link_t *l, const td_msg_t *m, td_err_t *err);

/* Waits up to timeout_ms for the message of (session, round) whose body is `want` (a td_body_t)
 * or an Error (a kept one first). TD_OK: *out holds it (release with td_msg_free). */
int td_link_wait(td_link_t *l, uint64_t session, uint64_t round, int want, int timeout_ms,
                 td_msg_t **out, td_err_t *err);

/* Drops every kept message of session (it left). */
void td_link_forget(td_link_t *l, uint64_t session);

/* Messages kept for sessions that have not asked yet. */
int td_link_kept(const td_link_t *l);

#ifdef __cplusplus
}
#endif
#endif
