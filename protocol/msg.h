/* msg.h - tandem's protocol messages as plain C types: what the rest of tandem sends and receives.
 *
 * The wire format is protobuf (protocol/tandem.proto, protocol/wire.h); nothing outside protocol/
 * sees a protobuf type (scripts/check-layers.sh fails the build on one). A td_msg_t is one
 * envelope: session id, round and one body (td_body_t) in an anonymous union, each body a struct
 * whose fields mirror the .proto message (arrays as a pointer and an n_ count, strings as C
 * strings, optional submessages as has_x + x).
 *
 * Ownership:
 * - Sending: every pointer in a td_msg_t is borrowed from the caller for the duration of the
 *   send (td_client_send / td_server_send); the message may live on the stack. Start from
 *   td_msg_init, which zeroes the body (the protobuf defaults) and sets the ids.
 * - Receiving: a td_msg_t from td_client_recv / td_server_recv (or td_msg_decode) is heap
 *   allocated and owns the decoded buffer; every array and string in it points INTO that buffer
 *   (no copies of features, full rows or distributions), valid until td_msg_free. Nothing in a
 *   received message may be written to.
 * - A received message has passed validation (td_wire_validate, docs/protocol.md "Limits and
 *   validation") before conversion: token ids in the vocabulary, lengths within the limits,
 *   probabilities summing to one; what the transport refuses never reaches a td_msg_t. */
#ifndef TD_PROTOCOL_MSG_H
#define TD_PROTOCOL_MSG_H

#include "common/td_common.h"

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
#define TD_WIRE_MAX_SELFSPEC_K 16u    /* selfspec: states per SelfspecEval, drafts per state */
#define TD_WIRE_MAX_PLAN_SPANS 64u    /* planned: spans per PlannedFill */
#define TD_WIRE_MAX_TARGET_LAYERS 64u /* dflash: Hello.target_layers */
#define TD_WIRE_MAX_TARGET_FINGERPRINTS 16u /* dflash: Hello.target_fingerprints */
#define TD_WIRE_PROB_TOLERANCE 1e-3         /* |sum(probs) + rest_mass - 1| */

typedef struct td_wire_limits {
    size_t max_message; /* bytes; 0 = TD_WIRE_MAX_MESSAGE_DEFAULT */
    uint32_t
        vocab_size; /* token ids must be < vocab_size, FullRow has this length; 0 = unchecked */
    uint32_t max_tokens; /* per token array; 0 = TD_WIRE_MAX_TOKENS_DEFAULT */
} td_wire_limits_t;

/* The defaults: 64 MiB messages, token ids unchecked against a vocabulary, 1 Mi tokens. */
td_wire_limits_t td_wire_limits_default(void);

/* The enums carry the .proto values (protocol/msg.c checks them at compile time). Unmask orders
 * are drafter/draft.h's TD_ORDER_*, feature types drafter/dflash.h's TD_FEATURE_* (same values
 * as the wire's UnmaskOrder and FeatureType). */
typedef enum td_role {
    TD_ROLE_UNSPECIFIED = 0,
    TD_ROLE_DRAFTER = 1,
    TD_ROLE_VERIFIER = 2,
    TD_ROLE_CLIENT = 3,
} td_role_t;

/* Error.code: why a peer refused a message. */
typedef enum td_proto_error {
    TD_PERR_UNSPECIFIED = 0,
    TD_PERR_MALFORMED = 1,
    TD_PERR_VERSION = 2,
    TD_PERR_TOKENIZER_MISMATCH = 3,
    TD_PERR_UNKNOWN_SESSION = 4,
    TD_PERR_OUT_OF_ORDER = 5,
    TD_PERR_UNSUPPORTED = 6,
    TD_PERR_BUSY = 7,
    TD_PERR_INTERNAL = 8,
    TD_PERR_NO_HANDSHAKE = 9,
} td_proto_error_t;

typedef enum td_row_kind { TD_ROW_PROBS = 0, TD_ROW_LOGITS = 1 } td_row_kind_t;

/* Which body a message carries (the values are Envelope's oneof field numbers). */
typedef enum td_body {
    TD_BODY_NONE = 0,
    TD_BODY_HELLO = 10,
    TD_BODY_HELLO_ACK = 11,
    TD_BODY_OPEN_SESSION = 12,
    TD_BODY_CLOSE_SESSION = 13,
    TD_BODY_DRAFT_REQUEST = 14,
    TD_BODY_PROPOSAL = 15,
    TD_BODY_FULL_ROW_REQUEST = 16,
    TD_BODY_FULL_ROW = 17,
    TD_BODY_COMMIT = 18,
    TD_BODY_ERROR = 19,
    TD_BODY_HEARTBEAT = 20,
    TD_BODY_GENERATE_REQUEST = 21,
    TD_BODY_TOKEN_CHUNK = 22,
    TD_BODY_SELFSPEC_EVAL = 23,
    TD_BODY_SELFSPEC_DRAFTS = 24,
    TD_BODY_PLANNED_FILL = 25,
    TD_BODY_PLANNED_FILLED = 26,
} td_body_t;

/* ---- bodies (field meanings: protocol/tandem.proto and docs/protocol.md) ---- */

typedef struct td_msg_sampling {
    float temperature;
    uint32_t top_k;
    float top_p;
} td_msg_sampling_t;

typedef struct td_apd_settings {
    float mixture;
    uint32_t kv_window;
    uint32_t lookahead;
} td_apd_settings_t;

typedef struct td_hello {
    uint32_t protocol_version;
    int role; /* td_role_t */
    const char *model_id;
    uint32_t vocab_size;
    int32_t mask_token_id; /* -1: none */
    uint64_t tokenizer_hash;
    size_t n_capabilities;
    const char *const *capabilities;
    const char *tokenizer_name;
    size_t n_target_layers; /* dflash */
    const uint32_t *target_layers;
    uint32_t block_size;
    size_t n_target_fingerprints;
    const uint64_t *target_fingerprints;
} td_hello_t;

typedef struct td_error_msg {
    int code; /* td_proto_error_t */
    const char *message;
    uint64_t in_reply_to_round;
} td_error_msg_t;

typedef struct td_hello_ack {
    int accepted;
    int has_hello, has_error;
    td_hello_t hello;     /* has_hello */
    td_error_msg_t error; /* has_error */
} td_hello_ack_t;

typedef struct td_open_session {
    size_t n_prompt_tokens;
    const uint32_t *prompt_tokens;
    int has_sampling;
    td_msg_sampling_t sampling;
    uint64_t seed;
} td_open_session_t;

typedef struct td_close_session {
    const char *reason;
} td_close_session_t;

typedef struct td_draft_request {
    uint32_t base_len;
    size_t n_prefix_delta;
    const uint32_t *prefix_delta;
    uint32_t gamma, steps;
    int order; /* TD_ORDER_* */
    int has_sampling;
    td_msg_sampling_t sampling;
    uint64_t seed;
    int want_dist;
    uint32_t dist_top_k;
    int has_apd;
    td_apd_settings_t apd;
    float confidence_threshold;
    size_t n_features; /* bytes: [rows, layers * hidden] little-endian 16-bit feature_type values */
    const uint8_t *features;
    int feature_type; /* TD_FEATURE_* */
    uint32_t feature_start;
} td_draft_request_t;

typedef struct td_sparse_dist {
    size_t n_ids;
    const uint32_t *ids;
    size_t n_probs;
    const float *probs;
    float rest_mass;
    size_t n_logits; /* 0 or n_ids */
    const float *logits;
    float logit_bound;
} td_sparse_dist_t;

typedef struct td_proposal {
    size_t n_tokens;
    const uint32_t *tokens;
    size_t n_dists; /* 0 or n_tokens */
    const td_sparse_dist_t *dists;
    uint64_t drafter_us;
    int predrafted;
} td_proposal_t;

typedef struct td_full_row_request {
    uint32_t position;
    int kind; /* td_row_kind_t */
} td_full_row_request_t;

typedef struct td_full_row {
    uint32_t position;
    int kind; /* td_row_kind_t */
    size_t n_values;
    const float *values;
} td_full_row_t;

typedef struct td_commit {
    uint32_t accepted_len;
} td_commit_t;

typedef struct td_heartbeat_msg {
    uint64_t sent_us;
} td_heartbeat_msg_t;

typedef struct td_generate_request {
    const char *prompt;
    const char *method;
    uint32_t max_tokens;
    int has_sampling;
    td_msg_sampling_t sampling;
    uint64_t seed;
    uint32_t gamma, steps;
    int order; /* TD_ORDER_* */
    const char *verify;
    float mixture;
    int chat;
} td_generate_request_t;

typedef struct td_token_chunk {
    size_t n_tokens;
    const uint32_t *tokens;
    const char *text;
    int done;
    const char *stats_json;
    const char *error;
} td_token_chunk_t;

typedef struct td_selfspec_eval {
    size_t n_prefix;
    const uint32_t *prefix;
    size_t n_tails;
    const uint32_t *tails;
    size_t n_tail_lens;
    const uint32_t *tail_lens;
    size_t n_canvas_starts;
    const uint32_t *canvas_starts;
    uint32_t draft_k;
    uint64_t model_fingerprint;
} td_selfspec_eval_t;

typedef struct td_selfspec_drafts {
    size_t n_counts;
    const uint32_t *counts;
    size_t n_positions;
    const uint32_t *positions;
    size_t n_tokens;
    const uint32_t *tokens;
    uint64_t drafter_us;
} td_selfspec_drafts_t;

typedef struct td_planned_fill {
    size_t n_context;
    const uint32_t *context;
    size_t n_context_rows;
    const uint32_t *context_rows;
    size_t n_span_units;
    const uint32_t *span_units;
    float steps_ratio;
    int dense;
    int has_sampling;
    td_msg_sampling_t sampling;
    size_t n_rng_state;
    const uint64_t *rng_state;
    uint32_t capacity;
    size_t n_tags;
    const uint32_t *tags;
} td_planned_fill_t;

typedef struct td_planned_filled {
    size_t n_scaffold;
    const uint32_t *scaffold;
    size_t n_rng_state;
    const uint64_t *rng_state;
    uint32_t forwards;
    uint32_t span_steps;
    uint64_t drafter_us;
} td_planned_filled_t;

/* One message. Read the member that `body` names. */
typedef struct td_msg {
    uint64_t session_id; /* nonzero for session messages, 0 for link-level ones */
    uint64_t round;      /* verification round (TokenChunk: its sequence number) */
    td_body_t body;
    union {
        td_hello_t hello;
        td_hello_ack_t hello_ack;
        td_open_session_t open_session;
        td_close_session_t close_session;
        td_draft_request_t draft_request;
        td_proposal_t proposal;
        td_full_row_request_t full_row_request;
        td_full_row_t full_row;
        td_commit_t commit;
        td_error_msg_t error;
        td_heartbeat_msg_t heartbeat;
        td_generate_request_t generate_request;
        td_token_chunk_t token_chunk;
        td_selfspec_eval_t selfspec_eval;
        td_selfspec_drafts_t selfspec_drafts;
        td_planned_fill_t planned_fill;
        td_planned_filled_t planned_filled;
    };
    /* received messages only (protocol/ internal): the decoded envelope the pointers above
     * borrow from, and what conversion allocated (the dists array of a Proposal) */
    void *owned_;
    void *scratch_;
} td_msg_t;

/* Zeroes *m (every body field at its protobuf default), then sets body, session_id and round.
 * A Hello gets protocol_version TD_PROTOCOL_VERSION and mask_token_id -1; a Heartbeat sent_us =
 * td_wire_now_us(). */
void td_msg_init(td_msg_t *m, td_body_t body, uint64_t session_id, uint64_t round);

/* Releases a received message (the decoded buffer and what points into it) and NULLs *m_p; safe
 * on NULL or *m_p NULL. Never call it on a message built by the caller. */
void td_msg_free(td_msg_t **m_p);

/* "hello", "draft_request", ... for logs; "none" for TD_BODY_NONE, "unknown" otherwise. */
const char *td_msg_body_name(td_body_t body);
/* "drafter", "verifier", "client" or "unspecified". */
const char *td_wire_role_name(int role);
/* "malformed", "version", ... for logs. */
const char *td_wire_error_code_name(int code);

/* Encodes m (validated as td_wire_pack does, default limits) into a new malloc'd buffer (*buf,
 * *len; free() it). TD_OK; TD_ERR_FORMAT when m is invalid; TD_ERR_NOMEM. */
int td_msg_encode(const td_msg_t *m, uint8_t **buf, size_t *len, td_err_t *err);
/* Decodes and validates len bytes at buf (td_wire_unpack with lim) into a new message (*out,
 * release with td_msg_free). TD_OK, or TD_ERR_FORMAT (*out NULL, err says why), TD_ERR_NOMEM. */
int td_msg_decode(const void *buf, size_t len, const td_wire_limits_t *lim, td_msg_t **out,
                  td_err_t *err);

/* ---- Hello helpers ---- */

/* Fills a Hello describing this side (protocol_version = TD_PROTOCOL_VERSION, no dflash
 * fields); strings and the capability array are borrowed. mask_token_id -1 = none. */
void td_hello_fill(td_hello_t *hello, td_role_t role, const char *model_id, uint32_t vocab_size,
                   int32_t mask_token_id, uint64_t tokenizer_hash, const char *tokenizer_name,
                   const char *const *capabilities, size_t n_capabilities);

/* Whether a peer whose Hello is theirs can work with us (ours): same protocol version, the same
 * tokenizer hash (not checked when either side is a CLIENT, which exchanges text) and, when both
 * list target fingerprints, one in common. Returns TD_OK; or TD_ERR_UNSUPPORTED with a message
 * naming both sides' models and tokenizers, and *code (when non-NULL) the td_proto_error_t to
 * answer with. */
int td_hello_compatible(const td_hello_t *ours, const td_hello_t *theirs, int *code, td_err_t *err);

/* Whether the Hello lists capability cap (exact match); 0 for NULL. */
int td_hello_has_capability(const td_hello_t *hello, const char *cap);

/* ---- values both sides derive ---- */

/* Microseconds on a monotonic clock (for Heartbeat.sent_us and drafter time). */
uint64_t td_wire_now_us(void);

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
