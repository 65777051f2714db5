/* msg.c - td_msg_t (protocol/msg.h) and its conversion to and from protobuf envelopes.
 *
 * Both directions copy pointers, never array contents: a received td_msg_t borrows from the
 * decoded envelope it owns, an envelope built for sending borrows from the caller's td_msg_t. The
 * field lists below (one per message, S: scalar, A: array with its n_ count, T: string, O:
 * optional submessage) are written once and expanded for both directions. */
#include "protocol/msg.h"
#include "protocol/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the plain enums carry the wire's values */
_Static_assert((int)TD_ROLE_CLIENT == (int)TANDEM__ROLE__ROLE_CLIENT, "td_role_t");
_Static_assert((int)TD_PERR_NO_HANDSHAKE == (int)TANDEM__ERROR_CODE__ERROR_NO_HANDSHAKE,
               "td_proto_error_t");
_Static_assert((int)TD_ROW_LOGITS == (int)TANDEM__ROW_KIND__ROW_LOGITS, "td_row_kind_t");
_Static_assert((int)TD_BODY_HELLO == (int)TANDEM__ENVELOPE__BODY_HELLO, "td_body_t");
_Static_assert((int)TD_BODY_DRAFT_REQUEST == (int)TANDEM__ENVELOPE__BODY_DRAFT_REQUEST,
               "td_body_t");
_Static_assert((int)TD_BODY_PLANNED_FILLED == (int)TANDEM__ENVELOPE__BODY_PLANNED_FILLED,
               "td_body_t");

/* ---- the field lists ---- */

#define L_SAMPLING S(temperature) S(top_k) S(top_p)
#define L_APD S(mixture) S(kv_window) S(lookahead)
#define L_HELLO                                                                                    \
    S(protocol_version)                                                                            \
    S(role)                                                                                        \
    T(model_id) S(vocab_size) S(mask_token_id) S(tokenizer_hash) A(capabilities) T(tokenizer_name) \
        A(target_layers) S(block_size) A(target_fingerprints)
#define L_ERROR S(code) T(message) S(in_reply_to_round)
#define L_HELLO_ACK S(accepted) O(hello, hello, L_HELLO) O(error, error, L_ERROR)
#define L_OPEN_SESSION A(prompt_tokens) O(sampling, sampling, L_SAMPLING) S(seed)
#define L_CLOSE_SESSION T(reason)
#define L_DRAFT_REQUEST                                                                            \
    S(base_len)                                                                                    \
    A(prefix_delta)                                                                                \
    S(gamma) S(steps) S(order) O(sampling, sampling, L_SAMPLING) S(seed) S(want_dist)              \
        S(dist_top_k) O(apd, apd_settings, L_APD) S(confidence_threshold) BYTES(features)          \
            S(feature_type) S(feature_start)
#define L_SPARSE_DIST A(ids) A(probs) S(rest_mass) A(logits) S(logit_bound)
#define L_PROPOSAL A(tokens) S(drafter_us) S(predrafted)
#define L_FULL_ROW_REQUEST S(position) S(kind)
#define L_FULL_ROW S(position) S(kind) A(values)
#define L_COMMIT S(accepted_len)
#define L_HEARTBEAT S(sent_us)
#define L_GENERATE_REQUEST                                                                         \
    T(prompt)                                                                                      \
    T(method)                                                                                      \
    S(max_tokens) O(sampling, sampling, L_SAMPLING) S(seed) S(gamma) S(steps) S(order) T(verify)   \
        S(mixture) S(chat)
#define L_TOKEN_CHUNK A(tokens) T(text) S(done) T(stats_json) T(error)
#define L_SELFSPEC_EVAL                                                                            \
    A(prefix) A(tails) A(tail_lens) A(canvas_starts) S(draft_k) S(model_fingerprint)
#define L_SELFSPEC_DRAFTS A(counts) A(positions) A(tokens) S(drafter_us)
#define L_PLANNED_FILL                                                                             \
    A(context)                                                                                     \
    A(context_rows)                                                                                \
    A(span_units) S(steps_ratio) S(dense) O(sampling, sampling, L_SAMPLING) A(rng_state)           \
        S(capacity) A(tags)
#define L_PLANNED_FILLED A(scaffold) A(rng_state) S(forwards) S(span_steps) S(drafter_us)

/* every body: X(CASE, member, protobuf type) */
#define BODIES(X)                                                                                  \
    X(HELLO, hello, Hello)                                                                         \
    X(HELLO_ACK, hello_ack, HelloAck)                                                              \
    X(OPEN_SESSION, open_session, OpenSession)                                                     \
    X(CLOSE_SESSION, close_session, CloseSession)                                                  \
    X(DRAFT_REQUEST, draft_request, DraftRequest)                                                  \
    X(PROPOSAL, proposal, Proposal)                                                                \
    X(FULL_ROW_REQUEST, full_row_request, FullRowRequest)                                          \
    X(FULL_ROW, full_row, FullRow)                                                                 \
    X(COMMIT, commit, Commit)                                                                      \
    X(ERROR, error, Error)                                                                         \
    X(HEARTBEAT, heartbeat, Heartbeat)                                                             \
    X(GENERATE_REQUEST, generate_request, GenerateRequest)                                         \
    X(TOKEN_CHUNK, token_chunk, TokenChunk)                                                        \
    X(SELFSPEC_EVAL, selfspec_eval, SelfspecEval)                                                  \
    X(SELFSPEC_DRAFTS, selfspec_drafts, SelfspecDrafts)                                            \
    X(PLANNED_FILL, planned_fill, PlannedFill)                                                     \
    X(PLANNED_FILLED, planned_filled, PlannedFilled)

/* Field copies, the same both ways (d: destination, s: source). Pointers lose or gain const:
 * protobuf-c's packing never writes through them, and a received message is read-only. */
#define S(f) d->f = s->f;
#define A(f)                                                                                       \
    d->n_##f = s->n_##f;                                                                           \
    d->f = (void *)s->f;
#define T(f) d->f = (void *)(s->f ? s->f : "");

/* ---- envelope -> td_msg_t ---- */

#define BYTES(f)                                                                                   \
    d->n_##f = s->f.len;                                                                           \
    d->f = s->f.data;
#define O(f, lower, L)                                                                             \
    if ((d->has_##f = s->f != NULL)) {                                                             \
        __typeof__(&d->f) d_ = &d->f;                                                              \
        const __typeof__(*s->f) *s_ = s->f;                                                        \
        {                                                                                          \
            __typeof__(d_) d = d_;                                                                 \
            __typeof__(s_) s = s_;                                                                 \
            L                                                                                      \
        }                                                                                          \
    }

void td_wire_hello_to_msg(const Tandem__Hello *s, td_hello_t *d) {
    memset(d, 0, sizeof *d);
    L_HELLO
}

static int s_body_to_msg(const Tandem__Envelope *env, td_msg_t *m) {
    switch (env->body_case) {
#define X(CASE, member, Type)                                                                      \
    case TANDEM__ENVELOPE__BODY_##CASE: {                                                          \
        const Tandem__##Type *s = env->member;                                                     \
        __typeof__(m->member) *d = &m->member;                                                     \
        L_##CASE return TD_OK;                                                                     \
    }
        BODIES(X)
#undef X
    default:
        return TD_ERR_FORMAT;
    }
}

int td_wire_to_msg(Tandem__Envelope **env_p, td_msg_t **out, td_err_t *err) {
    Tandem__Envelope *env = *env_p;
    *env_p = NULL;
    *out = NULL;
    td_msg_t *m = calloc(1, sizeof *m);
    const Tandem__Proposal *p =
        env->body_case == TANDEM__ENVELOPE__BODY_PROPOSAL ? env->proposal : NULL;
    td_sparse_dist_t *dists = p && p->n_dists ? calloc(p->n_dists, sizeof *dists) : NULL;
    if (!m || (p && p->n_dists && !dists)) {
        free(m);
        free(dists);
        td_wire_free(&env);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    m->session_id = env->session_id;
    m->round = env->round;
    m->body = (td_body_t)env->body_case;
    if (s_body_to_msg(env, m) != TD_OK) {
        free(m);
        free(dists);
        int bc = (int)env->body_case;
        td_wire_free(&env);
        return td_err_set(err, TD_ERR_FORMAT, "envelope without a known body (%d)", bc);
    }
    for (size_t j = 0; dists && j < p->n_dists; j++) {
        const Tandem__SparseDist *s = p->dists[j];
        td_sparse_dist_t *d = &dists[j];
        L_SPARSE_DIST
    }
    if (dists) {
        m->proposal.dists = dists;
        m->proposal.n_dists = p->n_dists;
    }
    m->owned_ = env;
    m->scratch_ = dists;
    *out = m;
    return TD_OK;
}

#undef BYTES
#undef O

/* ---- td_msg_t -> envelope ---- */

#define BYTES(f)                                                                                   \
    d->f.len = s->n_##f;                                                                           \
    d->f.data = (void *)s->f;
#define O(f, lower, L)                                                                             \
    d->f = NULL;                                                                                   \
    if (s->has_##f) {                                                                              \
        tandem__##lower##__init(&w->f);                                                            \
        d->f = &w->f;                                                                              \
        __typeof__(d->f) d_ = d->f;                                                                \
        const __typeof__(s->f) *s_ = &s->f;                                                        \
        {                                                                                          \
            __typeof__(d_) d = d_;                                                                 \
            __typeof__(s_) s = s_;                                                                 \
            L                                                                                      \
        }                                                                                          \
    }

void td_wire_hello_from_msg(const td_hello_t *s, Tandem__Hello *d) {
    tandem__hello__init(d);
    L_HELLO
}

static int s_body_from_msg(const td_msg_t *m, td_wire_env_t *w) {
    switch (m->body) {
#define X(CASE, member, Type)                                                                      \
    case TD_BODY_##CASE: {                                                                         \
        const __typeof__(m->member) *s = &m->member;                                               \
        Tandem__##Type *d = &w->b.member;                                                          \
        tandem__##member##__init(d);                                                               \
        L_##CASE w->env.member = d;                                                                \
        return TD_OK;                                                                              \
    }
        BODIES(X)
#undef X
    default:
        return TD_ERR_FORMAT;
    }
}

int td_wire_from_msg(const td_msg_t *m, td_wire_env_t *w, td_err_t *err) {
    tandem__envelope__init(&w->env);
    w->dists = NULL;
    w->dist_ptrs = NULL;
    w->env.version = TD_PROTOCOL_VERSION;
    w->env.session_id = m->session_id;
    w->env.round = m->round;
    if (s_body_from_msg(m, w) != TD_OK)
        return td_err_set(err, TD_ERR_FORMAT, "message without a known body (%d)", (int)m->body);
    w->env.body_case = (Tandem__Envelope__BodyCase)m->body;
    const td_proposal_t *p = m->body == TD_BODY_PROPOSAL ? &m->proposal : NULL;
    if (p && p->n_dists) {
        w->dists = malloc(p->n_dists * sizeof *w->dists);
        w->dist_ptrs = malloc(p->n_dists * sizeof *w->dist_ptrs);
        if (!w->dists || !w->dist_ptrs) {
            td_wire_env_release(w);
            return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        }
        for (size_t j = 0; j < p->n_dists; j++) {
            const td_sparse_dist_t *s = &p->dists[j];
            Tandem__SparseDist *d = &w->dists[j];
            tandem__sparse_dist__init(d);
            L_SPARSE_DIST
            w->dist_ptrs[j] = d;
        }
        w->b.proposal.n_dists = p->n_dists;
        w->b.proposal.dists = w->dist_ptrs;
    }
    return TD_OK;
}

void td_wire_env_release(td_wire_env_t *w) {
    free(w->dists);
    free(w->dist_ptrs);
    w->dists = NULL;
    w->dist_ptrs = NULL;
}

#undef BYTES
#undef O
#undef S
#undef A
#undef T

/* ---- messages ---- */

void td_msg_init(td_msg_t *m, td_body_t body, uint64_t session_id, uint64_t round) {
    memset(m, 0, sizeof *m);
    m->body = body;
    m->session_id = session_id;
    m->round = round;
    switch (body) {
    case TD_BODY_HELLO:
        m->hello.protocol_version = TD_PROTOCOL_VERSION;
        m->hello.mask_token_id = -1;
        break;
    case TD_BODY_DRAFT_REQUEST:
        m->draft_request.gamma = 1;
        m->draft_request.steps = 1;
        break;
    case TD_BODY_ERROR:
        m->error.in_reply_to_round = round;
        break;
    case TD_BODY_HEARTBEAT:
        m->heartbeat.sent_us = td_wire_now_us();
        break;
    default:
        break;
    }
}

void td_msg_free(td_msg_t **m_p) {
    if (!m_p || !*m_p) return;
    td_msg_t *m = *m_p;
    Tandem__Envelope *env = m->owned_;
    td_wire_free(&env);
    free(m->scratch_);
    free(m);
    *m_p = NULL;
}

const char *td_msg_body_name(td_body_t body) {
    switch (body) {
    case TD_BODY_NONE:
        return "none";
#define X(CASE, member, Type)                                                                      \
    case TD_BODY_##CASE:                                                                           \
        return #member;
        BODIES(X)
#undef X
    default:
        return "unknown";
    }
}

int td_msg_encode(const td_msg_t *m, uint8_t **buf, size_t *len, td_err_t *err) {
    td_wire_env_t w;
    int rc = td_wire_from_msg(m, &w, err);
    if (rc == TD_OK) rc = td_wire_pack(&w.env, buf, len, err);
    td_wire_env_release(&w);
    return rc;
}

int td_msg_decode(const void *buf, size_t len, const td_wire_limits_t *lim, td_msg_t **out,
                  td_err_t *err) {
    Tandem__Envelope *env = NULL;
    *out = NULL;
    int rc = td_wire_unpack(buf, len, lim, &env, err);
    return rc ? rc : td_wire_to_msg(&env, out, err);
}

/* ---- Hello ---- */

void td_hello_fill(td_hello_t *hello, td_role_t role, const char *model_id, uint32_t vocab_size,
                   int32_t mask_token_id, uint64_t tokenizer_hash, const char *tokenizer_name,
                   const char *const *capabilities, size_t n_capabilities) {
    memset(hello, 0, sizeof *hello);
    hello->protocol_version = TD_PROTOCOL_VERSION;
    hello->role = role;
    hello->model_id = model_id ? model_id : "";
    hello->vocab_size = vocab_size;
    hello->mask_token_id = mask_token_id;
    hello->tokenizer_hash = tokenizer_hash;
    hello->tokenizer_name = tokenizer_name ? tokenizer_name : "";
    hello->capabilities = capabilities;
    hello->n_capabilities = n_capabilities;
}

static const char *s_str(const char *s, const char *dflt) { return s && s[0] ? s : dflt; }

static void s_fp_list(const td_hello_t *h, char *out, size_t cap) {
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; i < h->n_target_fingerprints && o + 24 < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s0x%016llx", i ? ", " : "",
                              (unsigned long long)h->target_fingerprints[i]);
}

int td_hello_compatible(const td_hello_t *ours, const td_hello_t *theirs, int *code,
                        td_err_t *err) {
    if (theirs->protocol_version != ours->protocol_version) {
        if (code) *code = TD_PERR_VERSION;
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "protocol version mismatch: %s %s speaks version %u, %s %s speaks %u",
                          td_wire_role_name(ours->role), s_str(ours->model_id, "(no model id)"),
                          ours->protocol_version, td_wire_role_name(theirs->role),
                          s_str(theirs->model_id, "(no model id)"), theirs->protocol_version);
    }
    /* A client exchanges text with a verifier, never token ids: its tokenizer does not matter. */
    int client = ours->role == TD_ROLE_CLIENT || theirs->role == TD_ROLE_CLIENT;
    if (!client && theirs->tokenizer_hash != ours->tokenizer_hash) {
        if (code) *code = TD_PERR_TOKENIZER_MISMATCH;
        return td_err_set(
            err, TD_ERR_UNSUPPORTED,
            "tokenizers differ: %s %s uses tokenizer %s (hash %016llx), %s %s uses "
            "tokenizer %s (hash %016llx)",
            td_wire_role_name(ours->role), s_str(ours->model_id, "(no model id)"),
            s_str(ours->tokenizer_name, "(unnamed)"), (unsigned long long)ours->tokenizer_hash,
            td_wire_role_name(theirs->role), s_str(theirs->model_id, "(no model id)"),
            s_str(theirs->tokenizer_name, "(unnamed)"), (unsigned long long)theirs->tokenizer_hash);
    }
    /* a DFlash drafter lists the targets it was trained for; a verifier that pairs with one lists
     * its own fingerprint: when both list some, one must be shared */
    if (ours->n_target_fingerprints && theirs->n_target_fingerprints) {
        for (size_t i = 0; i < ours->n_target_fingerprints; i++)
            for (size_t j = 0; j < theirs->n_target_fingerprints; j++)
                if (ours->target_fingerprints[i] == theirs->target_fingerprints[j]) return TD_OK;
        char a[256], b[256];
        s_fp_list(ours, a, sizeof a);
        s_fp_list(theirs, b, sizeof b);
        if (code) *code = TD_PERR_UNSUPPORTED;
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "target models differ: %s %s has target fingerprints [%s], %s %s has "
                          "[%s] (a dflash drafter pairs only with the target it was trained for; "
                          "tandem-drafter --dflash-any-target overrides)",
                          td_wire_role_name(ours->role), s_str(ours->model_id, "(no model id)"), a,
                          td_wire_role_name(theirs->role), s_str(theirs->model_id, "(no model id)"),
                          b);
    }
    return TD_OK;
}

int td_hello_has_capability(const td_hello_t *hello, const char *cap) {
    for (size_t i = 0; hello && i < hello->n_capabilities; i++)
        if (hello->capabilities[i] && !strcmp(hello->capabilities[i], cap)) return 1;
    return 0;
}
