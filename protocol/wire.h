/* wire.h - encoding, decoding and validation of tandem's protocol messages (protocol/tandem.proto).
 *
 * Every message on the wire is one Tandem__Envelope. td_wire_unpack decodes AND validates: a
 * message it returns has a known body, every field in range, every array of a sane length and
 * every token id inside the vocabulary (when the limits name one), so callers can use it without
 * further checks of form (session state - is this round the expected one? - remains the caller's).
 * Each successful unpack is paired with td_wire_free.
 *
 * Building a message: declare the envelope and the body on the stack, call the body's
 * td_wire_<body>_init (sets the version, session, round and links the body), fill the body's
 * fields (arrays are borrowed pointers), then td_wire_pack or td_client_send_env.
 *
 * This header is protocol/'s own (and that of tests/ and fuzz/, which test the wire format): the
 * rest of tandem speaks protocol/msg.h's plain types, converted here (td_wire_from_msg /
 * td_wire_to_msg). scripts/check-layers.sh refuses it anywhere else. */
#ifndef TD_WIRE_H
#define TD_WIRE_H

#include "common/td_common.h"
#include "protocol/msg.h"
#include "protocol/tandem.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Checks an envelope (decoded or built) against the rules of docs/protocol.md: version, a known
 * body, session id nonzero for session messages, every enum, range, length and probability.
 * lim NULL = defaults. Returns TD_OK, or TD_ERR_FORMAT with a message naming the field. */
int td_wire_validate(const Tandem__Envelope *env, const td_wire_limits_t *lim, td_err_t *err);

/* Validates env (default limits) and packs it into a new malloc'd buffer (*buf, *len; free()
 * it). Returns TD_OK; TD_ERR_FORMAT when env is invalid, TD_ERR_NOMEM; *buf untouched then. */
int td_wire_pack(const Tandem__Envelope *env, uint8_t **buf, size_t *len, td_err_t *err);

/* Packed size of env, for packing into a caller's buffer with td_wire_pack_to. */
size_t td_wire_packed_size(const Tandem__Envelope *env);
/* Validates env and packs it into out (at least td_wire_packed_size bytes). TD_OK or TD_ERR_FORMAT.
 */
int td_wire_pack_to(const Tandem__Envelope *env, uint8_t *out, td_err_t *err);

/* Decodes len bytes at buf into *out and validates it (td_wire_validate with lim; NULL =
 * defaults). Returns TD_OK and a message to release with td_wire_free; or TD_ERR_FORMAT for
 * anything malformed (undecodable, over the size limit, wrong version, no body, out-of-range
 * field), *out NULL and err naming the problem. Never reads outside buf[0..len). */
int td_wire_unpack(const void *buf, size_t len, const td_wire_limits_t *lim, Tandem__Envelope **out,
                   td_err_t *err);

/* Releases a message from td_wire_unpack and NULLs *env_p; safe on NULL or *env_p NULL. */
void td_wire_free(Tandem__Envelope **env_p);

/* "hello", "draft_request", ... for logs; "none" when no body is set, "unknown" otherwise. */
const char *td_wire_body_name(const Tandem__Envelope *env);

/* Constructors: each initialises env (version TD_PROTOCOL_VERSION, session_id, round) and body
 * (the message's defaults) and makes body env's body. Fill the body's fields afterwards; the
 * envelope borrows body and everything body points to. */
void td_wire_hello_init(Tandem__Envelope *env, Tandem__Hello *body);
void td_wire_hello_ack_init(Tandem__Envelope *env, Tandem__HelloAck *body);
void td_wire_open_session_init(Tandem__Envelope *env, Tandem__OpenSession *body,
                               uint64_t session_id);
void td_wire_close_session_init(Tandem__Envelope *env, Tandem__CloseSession *body,
                                uint64_t session_id);
void td_wire_draft_request_init(Tandem__Envelope *env, Tandem__DraftRequest *body,
                                uint64_t session_id, uint64_t round);
void td_wire_proposal_init(Tandem__Envelope *env, Tandem__Proposal *body, uint64_t session_id,
                           uint64_t round);
void td_wire_full_row_request_init(Tandem__Envelope *env, Tandem__FullRowRequest *body,
                                   uint64_t session_id, uint64_t round);
void td_wire_full_row_init(Tandem__Envelope *env, Tandem__FullRow *body, uint64_t session_id,
                           uint64_t round);
void td_wire_commit_init(Tandem__Envelope *env, Tandem__Commit *body, uint64_t session_id,
                         uint64_t round, uint32_t accepted_len);
/* message is borrowed (NULL = ""). */
void td_wire_error_init(Tandem__Envelope *env, Tandem__Error *body, uint64_t session_id,
                        uint64_t round, Tandem__ErrorCode code, const char *message);
/* sent_us = td_wire_now_us(). */
void td_wire_heartbeat_init(Tandem__Envelope *env, Tandem__Heartbeat *body);

/* A client's generation request to a verifier worker (session_id = the request id). */
void td_wire_generate_request_init(Tandem__Envelope *env, Tandem__GenerateRequest *body,
                                   uint64_t session_id);
/* One streamed piece of the answer; seq (the envelope's round field) counts chunks from 1. */
void td_wire_token_chunk_init(Tandem__Envelope *env, Tandem__TokenChunk *body, uint64_t session_id,
                              uint64_t seq);

/* Self-speculative diffusion and planned diffusion across processes (session messages). */
void td_wire_selfspec_eval_init(Tandem__Envelope *env, Tandem__SelfspecEval *body,
                                uint64_t session_id, uint64_t round);
void td_wire_selfspec_drafts_init(Tandem__Envelope *env, Tandem__SelfspecDrafts *body,
                                  uint64_t session_id, uint64_t round);
void td_wire_planned_fill_init(Tandem__Envelope *env, Tandem__PlannedFill *body,
                               uint64_t session_id, uint64_t round);
void td_wire_planned_filled_init(Tandem__Envelope *env, Tandem__PlannedFilled *body,
                                 uint64_t session_id, uint64_t round);

/* Fills a Hello describing this side (protocol_version = TD_PROTOCOL_VERSION); strings and the
 * capability array are borrowed. mask_token_id -1 = none. */
void td_wire_hello_fill(Tandem__Hello *hello, Tandem__Role role, const char *model_id,
                        uint32_t vocab_size, int32_t mask_token_id, uint64_t tokenizer_hash,
                        const char *tokenizer_name, char **capabilities, size_t n_capabilities);

/* td_hello_compatible (protocol/msg.h) on protobuf Hellos. */
int td_wire_hello_compatible(const Tandem__Hello *ours, const Tandem__Hello *theirs,
                             Tandem__ErrorCode *code, td_err_t *err);

/* td_hello_has_capability on a protobuf Hello. */
int td_wire_hello_has_capability(const Tandem__Hello *hello, const char *cap);

/* ---- conversion between envelopes and td_msg_t (protocol/msg.c) ---- */

/* The protobuf structs of one envelope built from a td_msg_t: they borrow the message's arrays
 * and strings; only a Proposal's distributions are allocated (td_wire_env_release frees them). */
typedef struct td_wire_env {
    Tandem__Envelope env;
    union {
        Tandem__Hello hello;
        Tandem__HelloAck hello_ack;
        Tandem__OpenSession open_session;
        Tandem__CloseSession close_session;
        Tandem__DraftRequest draft_request;
        Tandem__Proposal proposal;
        Tandem__FullRowRequest full_row_request;
        Tandem__FullRow full_row;
        Tandem__Commit commit;
        Tandem__Error error;
        Tandem__Heartbeat heartbeat;
        Tandem__GenerateRequest generate_request;
        Tandem__TokenChunk token_chunk;
        Tandem__SelfspecEval selfspec_eval;
        Tandem__SelfspecDrafts selfspec_drafts;
        Tandem__PlannedFill planned_fill;
        Tandem__PlannedFilled planned_filled;
    } b;
    /* optional submessages of the body */
    Tandem__Sampling sampling;
    Tandem__ApdSettings apd;
    Tandem__Hello hello;
    Tandem__Error error;
    Tandem__SparseDist *dists, **dist_ptrs;
} td_wire_env_t;

/* Builds w->env from m (not validated here: the send or td_wire_pack does it). TD_OK;
 * TD_ERR_FORMAT for an unknown body; TD_ERR_NOMEM. Pair with td_wire_env_release. */
int td_wire_from_msg(const td_msg_t *m, td_wire_env_t *w, td_err_t *err);
void td_wire_env_release(td_wire_env_t *w);

/* Wraps a decoded, validated envelope in a new td_msg_t that takes it over (*env_p NULLed; on
 * failure the envelope is freed). TD_OK or TD_ERR_NOMEM. */
int td_wire_to_msg(Tandem__Envelope **env_p, td_msg_t **out, td_err_t *err);

/* A Hello one way or the other (borrowing strings and arrays). */
void td_wire_hello_to_msg(const Tandem__Hello *h, td_hello_t *out);
void td_wire_hello_from_msg(const td_hello_t *h, Tandem__Hello *out);

#ifdef __cplusplus
}
#endif
#endif
