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
 * fields (arrays are borrowed pointers), then td_wire_pack or td_client_send / td_server_send. */
#ifndef TD_WIRE_H
#define TD_WIRE_H

#include "common/td_common.h"
#include "protocol/tandem.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The protocol version this build speaks; Envelope.version and Hello.protocol_version carry it. */
#define TD_PROTOCOL_VERSION 1u

/* Default and hard limits (see docs/protocol.md, "Limits and validation"). */
#define TD_WIRE_MAX_MESSAGE_DEFAULT (64u << 20) /* bytes of one packed envelope */
#define TD_WIRE_MAX_TOKENS_DEFAULT (1u << 20)   /* tokens in one array (prompt, delta) */
#define TD_WIRE_MAX_VOCAB (1u << 24)            /* vocab_size, FullRow length */
#define TD_WIRE_MAX_GAMMA 256u                  /* draft length, proposal tokens */
#define TD_WIRE_MAX_STEPS 1024u                 /* diffusion steps */
#define TD_WIRE_MAX_DIST_TOP_K 1024u            /* entries of one SparseDist */
#define TD_WIRE_MAX_STRING 4096u                /* bytes of a model id, message, reason */
#define TD_WIRE_MAX_CAPABILITIES 64u
#define TD_WIRE_MAX_LOOKAHEAD 65536u
#define TD_WIRE_MAX_SELFSPEC_K 16u  /* selfspec: states per SelfspecEval, drafts per state */
#define TD_WIRE_MAX_PLAN_SPANS 64u  /* planned: spans per PlannedFill */
#define TD_WIRE_MAX_TARGET_LAYERS 64u      /* dflash: Hello.target_layers */
#define TD_WIRE_MAX_TARGET_FINGERPRINTS 16u /* dflash: Hello.target_fingerprints */
#define TD_WIRE_PROB_TOLERANCE 1e-3 /* |sum(probs) + rest_mass - 1| */

typedef struct td_wire_limits {
    size_t max_message; /* bytes; 0 = TD_WIRE_MAX_MESSAGE_DEFAULT */
    uint32_t
        vocab_size; /* token ids must be < vocab_size, FullRow has this length; 0 = unchecked */
    uint32_t max_tokens; /* per token array; 0 = TD_WIRE_MAX_TOKENS_DEFAULT */
} td_wire_limits_t;

/* The defaults: 64 MiB messages, token ids unchecked against a vocabulary, 1 Mi tokens. */
td_wire_limits_t td_wire_limits_default(void);

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
/* "drafter", "verifier", "client" or "unspecified". */
const char *td_wire_role_name(int role);
/* "malformed", "version", ... for logs. */
const char *td_wire_error_code_name(int code);

/* Microseconds on a monotonic clock (for Heartbeat.sent_us and drafter time). */
uint64_t td_wire_now_us(void);

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

/* Whether a peer whose Hello is theirs can work with us (ours): same protocol version and the
 * same tokenizer hash (not checked when either side is a CLIENT, which exchanges text). Returns
 * TD_OK; or TD_ERR_UNSUPPORTED with a message naming both sides' models and tokenizers, and *code
 * (when non-NULL) the ErrorCode to answer with. */
int td_wire_hello_compatible(const Tandem__Hello *ours, const Tandem__Hello *theirs,
                             Tandem__ErrorCode *code, td_err_t *err);

/* Whether the Hello lists capability cap (exact match). */
int td_wire_hello_has_capability(const Tandem__Hello *hello, const char *cap);

/* FNV-1a 64-bit hash of len bytes. (Hello.tokenizer_hash is td_tokenizer_hash, which is
 * defined over the tokenizer's contents, not a file's bytes: see model/tokenizer.h.) */
uint64_t td_wire_hash64(const void *data, size_t len);

/* The seed a drafter uses for round `round` of a session whose DraftRequest.seed is `seed`. Both
 * sides derive it, so a drafter can draft round r+1 before it is asked (pre-drafting). */
uint64_t td_draft_round_seed(uint64_t seed, uint64_t round);

#ifdef __cplusplus
}
#endif
#endif
