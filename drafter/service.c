/* service.c - the drafter worker's request handling and serve loop (see service.h). */
#include "drafter/service.h"

#include "drafter/draft.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PEERS 256
#define DEFAULT_TOP_K 32

typedef struct session {
    uint64_t id;      /* 0 = free */
    int slot;
    int32_t *tok;     /* the session's text as the verifier last sent it */
    int n;
    int32_t *cache_tok; /* the tokens whose keys/values sit in the slot */
    int cache_n;
    uint64_t last_round;
    int last_gamma;   /* 0 = no proposal to serve rows from */
    float *q;         /* [last_gamma][V] sampling rows of the last proposal */
    float *logits;    /* [last_gamma][V] raw rows (APD), or NULL */
    double used;
} session_t;

struct td_drafter_service {
    td_model_t *m;
    const td_tokenizer_t *tok;
    td_kv_cache_t *kv;
    td_drafter_opts_t opts;
    int V, n_ctx;
    session_t *sessions;
    Tandem__Hello hello;
    char *caps[4];
    char model_id[256], tok_name[64];
    td_routing_id_t peers[MAX_PEERS];
    int n_peers;
    /* scratch for one proposal */
    int32_t *draft, *ids;
    float *probs, *vals;
};

const Tandem__Hello *td_drafter_service_hello(const td_drafter_service_t *svc) { return &svc->hello; }

td_drafter_service_t *td_drafter_service_new(td_model_t *m, const td_tokenizer_t *tok,
                                             const td_drafter_opts_t *opts, td_err_t *err) {
    const td_config_t *c = td_model_config(m);
    td_drafter_service_t *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->m = m;
    s->tok = tok;
    if (opts) s->opts = *opts;
    if (s->opts.max_sessions <= 0) s->opts.max_sessions = 8;
    s->n_ctx = s->opts.n_ctx > 0 ? s->opts.n_ctx : 2048;
    if (c->n_ctx_train > 0 && s->n_ctx > c->n_ctx_train) s->n_ctx = c->n_ctx_train;
    s->V = c->n_vocab;
    snprintf(s->model_id, sizeof s->model_id, "%s", s->opts.model_id ? s->opts.model_id : "drafter");
    snprintf(s->tok_name, sizeof s->tok_name, "%.40s/tokenizer.json", s->model_id);
    s->kv = td_kv_cache_new(m, s->opts.max_sessions, s->n_ctx, err);
    s->sessions = calloc((size_t)s->opts.max_sessions, sizeof *s->sessions);
    s->draft = malloc(TD_WIRE_MAX_GAMMA * sizeof *s->draft);
    s->ids = malloc(TD_WIRE_MAX_DIST_TOP_K * sizeof *s->ids);
    s->probs = malloc(TD_WIRE_MAX_DIST_TOP_K * sizeof *s->probs);
    s->vals = malloc(TD_WIRE_MAX_DIST_TOP_K * sizeof *s->vals);
    if (!s->kv || !s->sessions || !s->draft || !s->ids || !s->probs || !s->vals) {
        if (s->kv) td_err_set(err, TD_ERR_NOMEM, "out of memory");
        td_drafter_service_destroy(&s);
        return NULL;
    }
    int nc = 0;
    if (c->is_diffusion) {
        s->caps[nc++] = "specdiff";
        s->caps[nc++] = "apd";
        s->caps[nc++] = "diffusion";
    } else {
        s->caps[nc++] = "ar-draft";
    }
    tandem__hello__init(&s->hello);
    td_wire_hello_fill(&s->hello, TANDEM__ROLE__ROLE_DRAFTER, s->model_id, (uint32_t)s->V,
                       c->mask_token_id, td_tokenizer_hash(tok), s->tok_name, s->caps, (size_t)nc);
    return s;
}

static void s_session_free(session_t *ss) {
    free(ss->tok);
    free(ss->cache_tok);
    free(ss->q);
    free(ss->logits);
    int slot = ss->slot;
    memset(ss, 0, sizeof *ss);
    ss->slot = slot;
}

void td_drafter_service_destroy(td_drafter_service_t **self_p) {
    if (!self_p || !*self_p) return;
    td_drafter_service_t *s = *self_p;
    if (s->sessions)
        for (int i = 0; i < s->opts.max_sessions; i++) s_session_free(&s->sessions[i]);
    free(s->sessions);
    td_kv_cache_destroy(&s->kv);
    free(s->draft);
    free(s->ids);
    free(s->probs);
    free(s->vals);
    free(s);
    *self_p = NULL;
}

static int s_peer_known(td_drafter_service_t *s, const td_routing_id_t *from) {
    for (int i = 0; i < s->n_peers; i++)
        if (s->peers[i].len == from->len && !memcmp(s->peers[i].data, from->data, from->len)) return 1;
    return 0;
}

static void s_peer_add(td_drafter_service_t *s, const td_routing_id_t *from) {
    if (s_peer_known(s, from)) return;
    if (s->n_peers == MAX_PEERS) memmove(s->peers, s->peers + 1, sizeof s->peers[0] * (MAX_PEERS - 1)), s->n_peers--;
    s->peers[s->n_peers++] = *from;
}

static session_t *s_find(td_drafter_service_t *s, uint64_t id) {
    for (int i = 0; i < s->opts.max_sessions; i++)
        if (s->sessions[i].id == id) return &s->sessions[i];
    return NULL;
}

/* A free slot, or the least recently used session's (evicted: it will be asked from scratch). */
static session_t *s_create(td_drafter_service_t *s, uint64_t id) {
    session_t *best = NULL;
    for (int i = 0; i < s->opts.max_sessions; i++) {
        session_t *ss = &s->sessions[i];
        ss->slot = i;
        if (!ss->id) { best = ss; break; }
        if (!best || ss->used < best->used) best = ss;
    }
    if (best->id) td_log(TD_LOG_INFO, "drafter: evicting session %llu", (unsigned long long)best->id);
    s_session_free(best);
    best->id = id;
    best->tok = malloc((size_t)s->n_ctx * sizeof *best->tok);
    best->cache_tok = malloc((size_t)s->n_ctx * sizeof *best->cache_tok);
    if (!best->tok || !best->cache_tok) {
        s_session_free(best);
        return NULL;
    }
    td_kv_cache_crop(s->kv, best->slot, 0);
    return best;
}

static void s_reply_error(td_server_t *srv, const td_routing_id_t *to, const Tandem__Envelope *req,
                          Tandem__ErrorCode code, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void s_reply_error(td_server_t *srv, const td_routing_id_t *to, const Tandem__Envelope *req,
                          Tandem__ErrorCode code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    td_log(TD_LOG_WARN, "drafter: session %llu round %llu: %s", (unsigned long long)req->session_id,
           (unsigned long long)req->round, msg);
    td_server_send_error(srv, to, req->session_id, req->round, code, msg, NULL);
}

static void s_draft(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                    const Tandem__Envelope *req) {
    const Tandem__DraftRequest *r = req->draft_request;
    const td_config_t *c = td_model_config(s->m);
    if (req->session_id == 0) {
        s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_MALFORMED, "session id 0 is reserved");
        return;
    }
    session_t *ss = s_find(s, req->session_id);
    if (!ss) {
        if (r->base_len != 0) {
            s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_UNKNOWN_SESSION,
                          "unknown session (drafter restarted or evicted it): resend from base_len 0");
            return;
        }
        if (!(ss = s_create(s, req->session_id))) {
            s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_INTERNAL, "out of memory");
            return;
        }
    }
    if (r->base_len > (uint32_t)ss->n) {
        s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_OUT_OF_ORDER,
                      "base_len %u is past the %d tokens this drafter holds", r->base_len, ss->n);
        return;
    }
    int64_t n = (int64_t)r->base_len + (int64_t)r->n_prefix_delta;
    int gamma = (int)r->gamma;
    if (n < 1 || n + gamma > s->n_ctx) {
        s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_UNSUPPORTED,
                      "text of %lld tokens + draft of %d does not fit the drafter's context of %d",
                      (long long)n, gamma, s->n_ctx);
        return;
    }
    int apd = r->apd != NULL;
    if (apd && !c->is_diffusion) {
        s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_UNSUPPORTED,
                      "APD needs a diffusion-LM drafter; this one is causal (%s)", td_arch_name(c->arch));
        return;
    }
    for (uint32_t i = 0; i < r->n_prefix_delta; i++) ss->tok[r->base_len + i] = (int32_t)r->prefix_delta[i];
    ss->n = (int)n;
    ss->used = td_time_now();
    /* keep the cached keys/values of the longest prefix that still matches the text */
    int keep = 0;
    while (keep < ss->cache_n && keep < ss->n && ss->cache_tok[keep] == ss->tok[keep]) keep++;
    td_kv_cache_crop(s->kv, ss->slot, keep);
    ss->cache_n = keep;

    free(ss->q);
    free(ss->logits);
    ss->q = malloc((size_t)gamma * (size_t)s->V * sizeof(float));
    ss->logits = apd ? malloc((size_t)gamma * (size_t)s->V * sizeof(float)) : NULL;
    ss->last_gamma = 0;
    if (!ss->q || (apd && !ss->logits)) {
        s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_INTERNAL, "out of memory");
        return;
    }
    td_sampling_t sp = {.temperature = 0, .top_k = 0, .top_p = 1};
    if (r->sampling) {
        sp.temperature = r->sampling->temperature;
        sp.top_k = (int)r->sampling->top_k;
        sp.top_p = r->sampling->top_p > 0 ? r->sampling->top_p : 1.0f;
    }
    td_rng_t rng;
    td_rng_seed(&rng, r->seed);
    td_err_t err = {0};
    double t0 = td_time_now();
    int rc;
    if (c->is_diffusion) {
        td_draft_opts_t o = {.exact = s->opts.exact, .logits = ss->logits};
        rc = td_diffusion_draft_ex(s->m, s->kv, ss->slot, ss->tok, ss->n, gamma, (int)r->steps,
                                   (td_unmask_order_t)r->order, &sp, &rng, s->draft, ss->q, &o, &err);
        if (rc == TD_OK) {
            memcpy(ss->cache_tok, ss->tok, (size_t)ss->n * sizeof *ss->tok);
            ss->cache_n = td_kv_cache_len(s->kv, ss->slot);
        }
    } else {
        rc = td_ar_draft(s->m, s->kv, ss->slot, ss->tok, ss->n, gamma, &sp, &rng, s->draft, ss->q, &err);
        if (rc == TD_OK) {
            memcpy(ss->cache_tok, ss->tok, (size_t)ss->n * sizeof *ss->tok);
            memcpy(ss->cache_tok + ss->n, s->draft, (size_t)(gamma - 1) * sizeof *s->draft);
            ss->cache_n = td_kv_cache_len(s->kv, ss->slot);
        }
    }
    if (rc != TD_OK) {
        td_kv_cache_crop(s->kv, ss->slot, 0);
        ss->cache_n = 0;
        s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_INTERNAL, "drafting failed: %s", err.msg);
        return;
    }
    ss->last_round = req->round;
    ss->last_gamma = gamma;

    Tandem__Envelope env;
    Tandem__Proposal prop;
    td_wire_proposal_init(&env, &prop, req->session_id, req->round);
    uint32_t toks[TD_WIRE_MAX_GAMMA];
    for (int j = 0; j < gamma; j++) toks[j] = (uint32_t)s->draft[j];
    prop.n_tokens = (size_t)gamma;
    prop.tokens = toks;
    Tandem__SparseDist *dists = NULL, **dptr = NULL;
    uint32_t *all_ids = NULL;
    float *all_probs = NULL, *all_logits = NULL;
    int K = r->dist_top_k ? (int)r->dist_top_k : DEFAULT_TOP_K;
    if (K > s->V) K = s->V;
    if (r->want_dist) {
        dists = calloc((size_t)gamma, sizeof *dists);
        dptr = calloc((size_t)gamma, sizeof *dptr);
        all_ids = malloc((size_t)gamma * (size_t)K * sizeof *all_ids);
        all_probs = malloc((size_t)gamma * (size_t)K * sizeof *all_probs);
        all_logits = apd ? malloc((size_t)gamma * (size_t)K * sizeof *all_logits) : NULL;
        if (!dists || !dptr || !all_ids || !all_probs || (apd && !all_logits)) {
            s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_INTERNAL, "out of memory");
            goto out;
        }
        for (int j = 0; j < gamma; j++) {
            const float *qj = ss->q + (size_t)j * s->V;
            Tandem__SparseDist *d = &dists[j];
            tandem__sparse_dist__init(d);
            int k;
            float rest = 0;
            if (apd) {
                float bound;
                k = td_logits_topk(ss->logits + (size_t)j * s->V, s->V, K, s->ids, s->vals, &bound);
                double sum = 0;
                for (int i = 0; i < k; i++) s->probs[i] = qj[s->ids[i]], sum += s->probs[i];
                rest = sum < 1.0 ? (float)(1.0 - sum) : 0.0f;
                d->logit_bound = bound;
                d->n_logits = (size_t)k;
                d->logits = all_logits + (size_t)j * K;
                memcpy(d->logits, s->vals, (size_t)k * sizeof(float));
            } else {
                k = td_dist_topk(qj, s->V, K, s->ids, s->probs, &rest);
            }
            d->n_ids = d->n_probs = (size_t)k;
            d->ids = all_ids + (size_t)j * K;
            d->probs = all_probs + (size_t)j * K;
            for (int i = 0; i < k; i++) d->ids[i] = (uint32_t)s->ids[i], d->probs[i] = s->probs[i];
            d->rest_mass = rest;
            dptr[j] = d;
        }
        prop.n_dists = (size_t)gamma;
        prop.dists = dptr;
    }
    prop.drafter_us = (uint64_t)((td_time_now() - t0) * 1e6);
    if (td_server_send(srv, from, &env, &err) != TD_OK)
        td_log(TD_LOG_WARN, "drafter: sending a proposal failed: %s", err.msg);
out:
    free(dists);
    free(dptr);
    free(all_ids);
    free(all_probs);
    free(all_logits);
}

static void s_full_row(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                       const Tandem__Envelope *req) {
    const Tandem__FullRowRequest *r = req->full_row_request;
    session_t *ss = s_find(s, req->session_id);
    if (!ss || !ss->last_gamma || ss->last_round != req->round) {
        s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_OUT_OF_ORDER,
                      "no proposal of this session and round to read a row from");
        return;
    }
    if (r->position >= (uint32_t)ss->last_gamma || (r->kind == TANDEM__ROW_KIND__ROW_LOGITS && !ss->logits)) {
        s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_MALFORMED,
                      "row %u of kind %d is not available (proposal of %d tokens)", r->position, (int)r->kind,
                      ss->last_gamma);
        return;
    }
    Tandem__Envelope env;
    Tandem__FullRow row;
    td_wire_full_row_init(&env, &row, req->session_id, req->round);
    row.position = r->position;
    row.kind = r->kind;
    row.n_values = (size_t)s->V;
    row.values = (r->kind == TANDEM__ROW_KIND__ROW_LOGITS ? ss->logits : ss->q) + (size_t)r->position * s->V;
    td_err_t err = {0};
    if (td_server_send(srv, from, &env, &err) != TD_OK)
        td_log(TD_LOG_WARN, "drafter: sending a full row failed: %s", err.msg);
}

void td_drafter_service_handle(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                               const Tandem__Envelope *req) {
    td_err_t err = {0};
    switch (req->body_case) {
    case TANDEM__ENVELOPE__BODY_HELLO:
        if (td_server_answer_hello(srv, from, &s->hello, req->hello, &err) == TD_OK) s_peer_add(s, from);
        else td_log(TD_LOG_WARN, "drafter: refused a peer: %s", err.msg);
        return;
    case TANDEM__ENVELOPE__BODY_HEARTBEAT: {
        Tandem__Envelope env;
        Tandem__Heartbeat hb;
        td_wire_heartbeat_init(&env, &hb);
        td_server_send(srv, from, &env, NULL);
        return;
    }
    default:
        break;
    }
    if (!s_peer_known(s, from)) {
        s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_NO_HANDSHAKE, "send a Hello first");
        return;
    }
    switch (req->body_case) {
    case TANDEM__ENVELOPE__BODY_DRAFT_REQUEST: s_draft(s, srv, from, req); break;
    case TANDEM__ENVELOPE__BODY_FULL_ROW_REQUEST: s_full_row(s, srv, from, req); break;
    case TANDEM__ENVELOPE__BODY_CLOSE_SESSION: {
        session_t *ss = s_find(s, req->session_id);
        if (ss) {
            td_kv_cache_crop(s->kv, ss->slot, 0);
            s_session_free(ss);
        }
        break;
    }
    case TANDEM__ENVELOPE__BODY_OPEN_SESSION:
    case TANDEM__ENVELOPE__BODY_COMMIT:
        /* sessions start with their first DraftRequest, whose delta carries the accepted text */
        break;
    default:
        s_reply_error(srv, from, req, TANDEM__ERROR_CODE__ERROR_UNSUPPORTED, "a drafter does not handle %s",
                      td_wire_body_name(req));
    }
}

int td_drafter_serve(td_drafter_service_t *svc, td_server_t *srv, volatile sig_atomic_t *stop) {
    td_wire_limits_t lim = td_wire_limits_default();
    lim.vocab_size = (uint32_t)svc->V;
    td_server_set_limits(srv, &lim);
    while (!*stop) {
        td_routing_id_t from;
        Tandem__Envelope *env = NULL;
        td_err_t err = {0};
        int rc = td_server_recv(srv, &from, &env, 100, &err);
        if (rc == 0) {
            td_drafter_service_handle(svc, srv, &from, env);
            td_wire_free(&env);
        }
    }
    return TD_OK;
}
