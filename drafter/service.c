/* service.c - the drafter worker's request handling and serve loop (see service.h). */
#include "drafter/service.h"

#define TD_DRAFTER_MAX_BATCH 32

#include "drafter/dflash.h"
#include "drafter/draft.h"
#include "drafter/planned.h"
#include "drafter/selfspec.h"
#include "model/checkpoint.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PEERS 256
#define DEFAULT_TOP_K 32

/* One draft: what a Proposal is built from (and what FullRowRequests read). */
typedef struct dbuf {
    int gamma; /* 0 = empty */
    uint64_t round;
    int32_t tok[TD_WIRE_MAX_GAMMA];
    float *q;      /* [gamma][V] */
    float *logits; /* [gamma][V] (APD) or NULL */
    size_t cap;    /* floats allocated in q (and logits) */
} dbuf_t;

/* What determines a draft besides the text: a pre-draft is used only when these match. */
typedef struct dkey {
    int gamma, steps, order, apd, kv_window, top_k;
    float temperature, top_p;
    uint64_t seed;
} dkey_t;

typedef struct session {
    uint64_t id; /* 0 = free */
    int slot;
    int32_t *tok; /* the session's text as the verifier last sent it */
    int n;
    int32_t *cache_tok; /* the tokens whose keys/values sit in the slot */
    int cache_n;
    dbuf_t cur;        /* the last proposal sent */
    dbuf_t pre;        /* drafted ahead for the expected next request */
    int32_t *pre_text; /* the text pre was drafted after */
    int pre_n;
    dkey_t pre_key;
    double used;
} session_t;

struct td_drafter_service {
    td_model_t *m;
    const td_tokenizer_t *tok;
    td_kv_cache_t *kv;
    td_drafter_opts_t opts;
    int V, n_ctx;
    session_t *sessions;
    td_hello_t hello;
    const char *caps[6];
    /* selfspec (evaluating chain states) and planned (filling spans), made on first use */
    td_selfspec_evaluator_t *ev;
    uint64_t fingerprint; /* 0 = not computed yet */
    td_plan_tags_t tags;
    int have_tags;
    char tags_err[1024];
    char model_id[256], tok_name[64];
    long predraft_hits, predraft_misses;
    td_routing_id_t peers[MAX_PEERS];
    int n_peers;
    double t_request;      /* when the request being handled reached the handler */
    long batched_forwards; /* drafting calls that served several requests at once */
    /* scratch for one proposal */
    int32_t *draft, *ids;
    float *probs, *vals;
    /* dflash: the drafter, one context cache per slot, the Hello's lists, feature scratch */
    td_dflash_t *df;
    td_dflash_ctx_t **dctx;
    uint32_t hello_layers[TD_DFLASH_MAX_TARGET_LAYERS];
    uint64_t hello_fps[TD_DFLASH_MAX_FINGERPRINTS];
    float *fbuf;
    size_t fbuf_cap;
};

const td_hello_t *td_drafter_service_hello(const td_drafter_service_t *svc) { return &svc->hello; }

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
    snprintf(s->model_id, sizeof s->model_id, "%s",
             s->opts.model_id ? s->opts.model_id : "drafter");
    td_checkpoint_tokenizer_origin(s->model_id, s->tok_name, sizeof s->tok_name);
    s->df = s->opts.dflash;
    /* a dflash service keeps no target keys/values: a token-sized cache keeps the common code */
    s->kv = td_kv_cache_new(m, s->opts.max_sessions, s->df ? 1 : s->n_ctx, err);
    if (s->df && s->kv) {
        s->dctx = calloc((size_t)s->opts.max_sessions, sizeof *s->dctx);
        for (int i = 0; s->dctx && i < s->opts.max_sessions; i++)
            if (!(s->dctx[i] = td_dflash_ctx_new(s->df, s->n_ctx, err))) {
                td_drafter_service_destroy(&s);
                return NULL;
            }
        if (!s->dctx) td_kv_cache_destroy(&s->kv);
    }
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
    if (s->df) {
        s->caps[nc++] = "dflash";
        snprintf(s->tags_err, sizeof s->tags_err, "a dflash drafter only drafts for dflash");
    } else if (c->is_diffusion) {
        s->caps[nc++] = "specdiff";
        s->caps[nc++] = "apd";
        s->caps[nc++] = "diffusion";
        s->caps[nc++] = "selfspec";
    } else {
        s->caps[nc++] = "ar-draft";
    }
    if (s->df) {
    } else if (c->is_diffusion) {
        td_err_t terr = {0};
        if (tok && td_plan_tags_init(&s->tags, tok, c->eos_token_id, &terr) == TD_OK) {
            s->have_tags = 1;
            s->caps[nc++] = "planned";
        } else {
            snprintf(s->tags_err, sizeof s->tags_err, "%s", tok ? terr.msg : "no tokenizer");
        }
    } else {
        snprintf(s->tags_err, sizeof s->tags_err,
                 "planned needs a masked-diffusion LM to fill spans; this drafter is causal (%s)",
                 td_arch_name(c->arch));
    }
    td_hello_fill(&s->hello, TD_ROLE_DRAFTER, s->model_id, (uint32_t)s->V, c->mask_token_id,
                  td_tokenizer_hash(tok), s->tok_name, s->caps, (size_t)nc);
    if (s->df) {
        const td_dflash_config_t *dc = td_dflash_config(s->df);
        for (int i = 0; i < dc->n_target_layers; i++)
            s->hello_layers[i] = (uint32_t)dc->target_layers[i];
        s->hello.n_target_layers = (size_t)dc->n_target_layers;
        s->hello.target_layers = s->hello_layers;
        s->hello.block_size = (uint32_t)dc->block_size;
        if (!s->opts.dflash_any_target) {
            memcpy(s->hello_fps, dc->fingerprints, sizeof s->hello_fps);
            s->hello.n_target_fingerprints = (size_t)dc->n_fingerprints;
            s->hello.target_fingerprints = s->hello_fps;
        }
    }
    return s;
}

static void s_session_free(session_t *ss) {
    free(ss->tok);
    free(ss->cache_tok);
    free(ss->cur.q);
    free(ss->cur.logits);
    free(ss->pre.q);
    free(ss->pre.logits);
    free(ss->pre_text);
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
    for (int i = 0; s->dctx && i < s->opts.max_sessions; i++) td_dflash_ctx_destroy(&s->dctx[i]);
    free(s->dctx);
    free(s->fbuf);
    td_kv_cache_destroy(&s->kv);
    td_selfspec_evaluator_destroy(&s->ev);
    if (s->have_tags) td_plan_tags_free(&s->tags);
    free(s->draft);
    free(s->ids);
    free(s->probs);
    free(s->vals);
    free(s);
    *self_p = NULL;
}

static int s_peer_known(td_drafter_service_t *s, const td_routing_id_t *from) {
    for (int i = 0; i < s->n_peers; i++)
        if (s->peers[i].len == from->len && !memcmp(s->peers[i].data, from->data, from->len))
            return 1;
    return 0;
}

static void s_peer_add(td_drafter_service_t *s, const td_routing_id_t *from) {
    if (s_peer_known(s, from)) return;
    if (s->n_peers == MAX_PEERS)
        memmove(s->peers, s->peers + 1, sizeof s->peers[0] * (MAX_PEERS - 1)), s->n_peers--;
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
        if (!ss->id) {
            best = ss;
            break;
        }
        if (!best || ss->used < best->used) best = ss;
    }
    if (best->id)
        td_log(TD_LOG_INFO, "drafter: evicting session %llu", (unsigned long long)best->id);
    s_session_free(best);
    best->id = id;
    best->tok = malloc((size_t)s->n_ctx * sizeof *best->tok);
    best->cache_tok = malloc((size_t)s->n_ctx * sizeof *best->cache_tok);
    best->pre_text = malloc((size_t)s->n_ctx * sizeof *best->pre_text);
    if (!best->tok || !best->cache_tok || !best->pre_text) {
        s_session_free(best);
        return NULL;
    }
    td_kv_cache_crop(s->kv, best->slot, 0);
    if (s->dctx) td_dflash_ctx_reset(s->dctx[best->slot]);
    return best;
}

static void s_reply_error(td_server_t *srv, const td_routing_id_t *to, const td_msg_t *req,
                          int code, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void s_reply_error(td_server_t *srv, const td_routing_id_t *to, const td_msg_t *req,
                          int code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    td_log(TD_LOG_WARN, "drafter: session %llu round %llu: %s", (unsigned long long)req->session_id,
           (unsigned long long)req->round, msg);
    td_server_send_error(srv, to, req->session_id, req->round, code, msg, NULL);
}

static int s_dbuf_reserve(dbuf_t *d, int gamma, int V, int apd) {
    size_t need = (size_t)gamma * (size_t)V;
    if (d->cap < need || (apd && !d->logits)) {
        free(d->q);
        free(d->logits);
        d->q = malloc(need * sizeof(float));
        d->logits = malloc(need * sizeof(float));
        d->cap = d->q && d->logits ? need : 0;
        if (!d->cap) return TD_ERR_NOMEM;
    }
    return TD_OK;
}

/* Before drafting after text[n] into d: room in d, the slot cropped to the longest cached prefix
 * that still matches the text, the round's sampling settings and generator. */
static int s_draft_begin(td_drafter_service_t *s, session_t *ss, const int32_t *text, int n,
                         const dkey_t *k, uint64_t round, dbuf_t *d, td_sampling_t *sp,
                         td_rng_t *rng, td_err_t *err) {
    if (s_dbuf_reserve(d, k->gamma, s->V, k->apd))
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    int keep = 0;
    while (keep < ss->cache_n && keep < n && ss->cache_tok[keep] == text[keep]) keep++;
    if (k->apd && k->kv_window > 0 && keep > n - k->kv_window)
        keep = n - k->kv_window > 0 ? n - k->kv_window : 0;
    td_kv_cache_crop(s->kv, ss->slot, keep);
    ss->cache_n = keep;
    *sp = (td_sampling_t){k->temperature, k->top_k, k->top_p};
    td_rng_seed(rng, td_draft_round_seed(k->seed, round));
    return TD_OK;
}

/* After drafting (rc): the slot's bookkeeping (which tokens its keys/values came from). */
static int s_draft_end(td_drafter_service_t *s, session_t *ss, const int32_t *text, int n,
                       const dkey_t *k, uint64_t round, dbuf_t *d, int rc) {
    if (rc != TD_OK) {
        td_kv_cache_crop(s->kv, ss->slot, 0);
        ss->cache_n = 0;
        d->gamma = 0;
        return rc;
    }
    memmove(ss->cache_tok, text, (size_t)n * sizeof *text);
    if (!td_model_config(s->m)->is_diffusion) /* an AR drafter caches its own drafts */
        memcpy(ss->cache_tok + n, d->tok, (size_t)(k->gamma - 1) * sizeof *d->tok);
    ss->cache_n = td_kv_cache_len(s->kv, ss->slot);
    d->gamma = k->gamma;
    d->round = round;
    return TD_OK;
}

/* Drafts after text[n] into d, keeping the slot's cache bookkeeping right. */
static int s_run_draft(td_drafter_service_t *s, session_t *ss, const int32_t *text, int n,
                       const dkey_t *k, uint64_t round, dbuf_t *d, td_err_t *err) {
    td_sampling_t sp;
    td_rng_t rng;
    int rc = s_draft_begin(s, ss, text, n, k, round, d, &sp, &rng, err);
    if (rc != TD_OK) return rc;
    if (td_model_config(s->m)->is_diffusion) {
        td_draft_opts_t o = {.exact = s->opts.exact, .logits = k->apd ? d->logits : NULL};
        rc = td_diffusion_draft_ex(s->m, s->kv, ss->slot, text, n, k->gamma, k->steps,
                                   (td_unmask_order_t)k->order, &sp, &rng, d->tok, d->q, &o, err);
    } else {
        rc = td_ar_draft(s->m, s->kv, ss->slot, text, n, k->gamma, &sp, &rng, d->tok, d->q, err);
    }
    return s_draft_end(s, ss, text, n, k, round, d, rc);
}

/* The drafter's greedy guess of the verifier's bonus token after text[n] (the token that would
 * follow a fully accepted draft): one cheap forward, reusing the cache. */
static int s_guess_next(td_drafter_service_t *s, session_t *ss, const int32_t *text, int n,
                        int32_t *out) {
    dkey_t k = {.gamma = 1, .steps = 1, .temperature = 0, .top_p = 1};
    dbuf_t tmp = {0};
    td_err_t err = {0};
    int rc = s_run_draft(s, ss, text, n, &k, 0, &tmp, &err);
    if (rc == TD_OK) *out = tmp.tok[0];
    free(tmp.q);
    free(tmp.logits);
    return rc;
}

static void s_send_proposal(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                            const td_msg_t *req, const dbuf_t *d, int apd, int predrafted) {
    const td_draft_request_t *r = &req->draft_request;
    const int gamma = d->gamma;
    td_msg_t env;
    td_msg_init(&env, TD_BODY_PROPOSAL, req->session_id, req->round);
    td_proposal_t *prop = &env.proposal;
    uint32_t toks[TD_WIRE_MAX_GAMMA];
    for (int j = 0; j < gamma; j++) toks[j] = (uint32_t)d->tok[j];
    prop->n_tokens = (size_t)gamma;
    prop->tokens = toks;
    prop->predrafted = predrafted;
    td_sparse_dist_t *dists = NULL;
    uint32_t *all_ids = NULL;
    float *all_probs = NULL, *all_logits = NULL;
    int K = r->dist_top_k ? (int)r->dist_top_k : DEFAULT_TOP_K;
    if (K > s->V) K = s->V;
    if (r->want_dist) {
        dists = calloc((size_t)gamma, sizeof *dists);
        all_ids = malloc((size_t)gamma * (size_t)K * sizeof *all_ids);
        all_probs = malloc((size_t)gamma * (size_t)K * sizeof *all_probs);
        all_logits = apd ? malloc((size_t)gamma * (size_t)K * sizeof *all_logits) : NULL;
        if (!dists || !all_ids || !all_probs || (apd && !all_logits)) {
            s_reply_error(srv, from, req, TD_PERR_INTERNAL, "out of memory");
            goto out;
        }
        for (int j = 0; j < gamma; j++) {
            const float *qj = d->q + (size_t)j * s->V;
            td_sparse_dist_t *sd = &dists[j];
            uint32_t *ids = all_ids + (size_t)j * K;
            float *probs = all_probs + (size_t)j * K;
            int k;
            float rest = 0;
            if (apd) {
                float bound;
                k = td_logits_topk(d->logits + (size_t)j * s->V, s->V, K, s->ids, s->vals, &bound);
                double sum = 0;
                for (int i = 0; i < k; i++) s->probs[i] = qj[s->ids[i]], sum += s->probs[i];
                rest = sum < 1.0 ? (float)(1.0 - sum) : 0.0f;
                sd->logit_bound = bound;
                sd->n_logits = (size_t)k;
                sd->logits = all_logits + (size_t)j * K;
                memcpy(all_logits + (size_t)j * K, s->vals, (size_t)k * sizeof(float));
            } else {
                k = td_dist_topk(qj, s->V, K, s->ids, s->probs, &rest);
            }
            sd->n_ids = sd->n_probs = (size_t)k;
            sd->ids = ids;
            sd->probs = probs;
            for (int i = 0; i < k; i++) ids[i] = (uint32_t)s->ids[i], probs[i] = s->probs[i];
            sd->rest_mass = rest;
        }
        prop->n_dists = (size_t)gamma;
        prop->dists = dists;
    }
    /* everything this side did for the request, up to the send: drafting (or nothing, for a
     * pre-draft hit), the sparse rows, the session bookkeeping; the verifier counts the rest of
     * its round trip as transport (wire, encoding, wake-ups) */
    prop->drafter_us = (uint64_t)((td_time_now() - s->t_request) * 1e6);
    td_err_t err = {0};
    if (td_server_send(srv, from, &env, &err) != TD_OK)
        td_log(TD_LOG_WARN, "drafter: sending a proposal failed: %s", err.msg);
out:
    free(dists);
    free(all_ids);
    free(all_probs);
    free(all_logits);
}

/* Checks a DraftRequest and takes its text into the session: 1 with *ssp and *kp set, or 0 after
 * replying with an Error. */
static int s_draft_prepare(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                           const td_msg_t *req, session_t **ssp, dkey_t *kp) {
    const td_draft_request_t *r = &req->draft_request;
    const td_config_t *c = td_model_config(s->m);
    if (req->session_id == 0) {
        s_reply_error(srv, from, req, TD_PERR_MALFORMED, "session id 0 is reserved");
        return 0;
    }
    session_t *ss = s_find(s, req->session_id);
    if (!ss) {
        if (r->base_len != 0) {
            s_reply_error(
                srv, from, req, TD_PERR_UNKNOWN_SESSION,
                "unknown session (drafter restarted or evicted it): resend from base_len 0");
            return 0;
        }
        if (!(ss = s_create(s, req->session_id))) {
            s_reply_error(srv, from, req, TD_PERR_INTERNAL, "out of memory");
            return 0;
        }
    }
    if (r->base_len > (uint32_t)ss->n) {
        s_reply_error(srv, from, req, TD_PERR_OUT_OF_ORDER,
                      "base_len %u is past the %d tokens this drafter holds", r->base_len, ss->n);
        return 0;
    }
    int64_t n = (int64_t)r->base_len + (int64_t)r->n_prefix_delta;
    int gamma = (int)r->gamma;
    /* +1: room for a pre-draft's bonus guess */
    if (n < 1 || n + 2 * gamma + 2 > s->n_ctx) {
        s_reply_error(srv, from, req, TD_PERR_UNSUPPORTED,
                      "text of %lld tokens + drafts of %d do not fit the drafter's context of %d",
                      (long long)n, gamma, s->n_ctx);
        return 0;
    }
    int apd = r->has_apd;
    if (apd && !c->is_diffusion) {
        s_reply_error(srv, from, req, TD_PERR_UNSUPPORTED,
                      "APD needs a diffusion-LM drafter; this one is causal (%s)",
                      td_arch_name(c->arch));
        return 0;
    }
    for (uint32_t i = 0; i < r->n_prefix_delta; i++)
        ss->tok[r->base_len + i] = (int32_t)r->prefix_delta[i];
    ss->n = (int)n;
    ss->used = td_time_now();
    dkey_t k = {.gamma = gamma,
                .steps = (int)r->steps,
                .order = (int)r->order,
                .apd = apd,
                .kv_window = apd ? (int)r->apd.kv_window : 0,
                .temperature = 0,
                .top_p = 1,
                .seed = r->seed};
    if (r->has_sampling) {
        k.temperature = r->sampling.temperature;
        k.top_k = (int)r->sampling.top_k;
        k.top_p = r->sampling.top_p > 0 ? r->sampling.top_p : 1.0f;
    }
    *ssp = ss, *kp = k;
    return 1;
}

/* A DFlash request before its draft: the feature rows are checked against what the session holds
 * (before anything changes), the text taken and the rows appended to its context cache. 1 with
 * *ssp, *kp and *bp (the block) set, or 0 after replying with an Error. */
static int s_dflash_take(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                         const td_msg_t *req, session_t **ssp, dkey_t *kp, int *bp) {
    const td_draft_request_t *r = &req->draft_request;
    const td_dflash_config_t *dc = td_dflash_config(s->df);
    const int fdim = td_dflash_feature_dim(s->df);
    const size_t rowbytes = (size_t)fdim * 2;
    session_t *ss = req->session_id ? s_find(s, req->session_id) : NULL;
    const int64_t n = (int64_t)r->base_len + (int64_t)r->n_prefix_delta;
    int64_t rows = (int64_t)(r->n_features / rowbytes);
    if (ss || r->base_len == 0) { /* else s_draft_prepare answers ERROR_UNKNOWN_SESSION */
        if (r->n_features % rowbytes) {
            s_reply_error(srv, from, req, TD_PERR_MALFORMED,
                          "features: %zu bytes is not a whole number of rows of %d 16-bit values "
                          "(%d target layers x hidden %d)",
                          r->n_features, fdim, dc->n_target_layers, dc->hidden);
            return 0;
        }
        if (rows > 0 && r->feature_type == TD_FEATURE_NONE) {
            s_reply_error(srv, from, req, TD_PERR_MALFORMED, "features without a feature_type");
            return 0;
        }
        int held = ss && r->base_len > 0 ? td_dflash_ctx_len(s->dctx[ss->slot]) : 0;
        if ((int64_t)r->feature_start != held) {
            s_reply_error(srv, from, req, TD_PERR_OUT_OF_ORDER,
                          "feature_start %u, but this drafter holds the features of %d positions",
                          r->feature_start, held);
            return 0;
        }
        if ((int64_t)r->feature_start + rows != n - 1) {
            s_reply_error(srv, from, req, TD_PERR_MALFORMED,
                          "features cover positions %u..%lld; a text of %lld tokens needs every "
                          "position up to %lld",
                          r->feature_start, (long long)(r->feature_start + rows - 1), (long long)n,
                          (long long)(n - 2));
            return 0;
        }
    }
    int gamma = (int)r->gamma;
    int B = td_dflash_block_for(dc, gamma);
    if (B - 1 > (int)TD_WIRE_MAX_GAMMA || n - 1 + B > s->n_ctx) {
        s_reply_error(srv, from, req, TD_PERR_UNSUPPORTED,
                      "a text of %lld tokens and a block of %d do not fit the drafter's context "
                      "of %d",
                      (long long)n, B, s->n_ctx);
        return 0;
    }
    if (!s_draft_prepare(s, srv, from, req, &ss, kp)) return 0;
    td_dflash_ctx_t *cx = s->dctx[ss->slot];
    if (r->base_len == 0) td_dflash_ctx_reset(cx);
    td_err_t err = {0};
    size_t nf = (size_t)rows * (size_t)fdim;
    if (nf > s->fbuf_cap) {
        free(s->fbuf);
        s->fbuf = malloc(nf * sizeof *s->fbuf);
        s->fbuf_cap = s->fbuf ? nf : 0;
    }
    dbuf_t *d = &ss->cur;
    if ((nf && !s->fbuf) || s_dbuf_reserve(d, B - 1, s->V, 0)) {
        td_dflash_ctx_reset(cx);
        d->gamma = 0;
        s_reply_error(srv, from, req, TD_PERR_INTERNAL, "out of memory");
        return 0;
    }
    const uint8_t *b = r->features;
    const int bf = r->feature_type == TD_FEATURE_BF16;
    for (size_t i = 0; i < nf; i++) {
        uint16_t h = (uint16_t)(b[2 * i] | (b[2 * i + 1] << 8));
        s->fbuf[i] = bf ? td_bf16_to_f32(h) : td_f16_to_f32(h);
    }
    if (td_dflash_ctx_append(cx, s->fbuf, (int)rows, &err) != TD_OK) {
        td_dflash_ctx_reset(cx);
        d->gamma = 0;
        s_reply_error(srv, from, req, TD_PERR_INTERNAL, "drafting failed: %s", err.msg);
        return 0;
    }
    *ssp = ss, *bp = B;
    return 1;
}

/* The session's DFlash job: its block after the last token, drawn with the round's generator
 * (sp and rng: the caller's storage). */
static td_dflash_job_t s_dflash_job(td_drafter_service_t *s, session_t *ss, const dkey_t *k, int B,
                                    uint64_t round, td_sampling_t *sp, td_rng_t *rng) {
    *sp = (td_sampling_t){k->temperature, k->top_k, k->top_p};
    td_rng_seed(rng, td_draft_round_seed(k->seed, round));
    return (td_dflash_job_t){.ctx = s->dctx[ss->slot],
                             .anchor = ss->tok[ss->n - 1],
                             .block = B,
                             .n_draft = k->gamma,
                             .sp = sp,
                             .rng = rng,
                             .draft = ss->cur.tok,
                             .q = ss->cur.q};
}

/* After a DFlash draft (rc): the proposal of gamma tokens, or an Error. */
static void s_dflash_answer(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                            const td_msg_t *req, session_t *ss, const dkey_t *k, int rc,
                            const td_err_t *err) {
    dbuf_t *d = &ss->cur;
    if (rc != TD_OK) {
        td_dflash_ctx_reset(s->dctx[ss->slot]);
        d->gamma = 0;
        s_reply_error(srv, from, req, TD_PERR_INTERNAL, "drafting failed: %s", err->msg);
        return;
    }
    d->gamma = k->gamma;
    d->round = req->round;
    s_send_proposal(s, srv, from, req, d, 0, 0);
}

/* A DFlash draft: the request's features into the session's context, the block drafted in one
 * forward. */
static void s_draft_dflash(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                           const td_msg_t *req) {
    session_t *ss;
    dkey_t k;
    int B;
    if (!s_dflash_take(s, srv, from, req, &ss, &k, &B)) return;
    td_sampling_t sp;
    td_rng_t rng;
    td_dflash_job_t job = s_dflash_job(s, ss, &k, B, req->round, &sp, &rng);
    td_err_t err = {0};
    int rc = td_dflash_draft_many(&job, 1, &err);
    s_dflash_answer(s, srv, from, req, ss, &k, rc, &err);
}

static void s_draft(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                    const td_msg_t *req) {
    if (s->df) {
        s_draft_dflash(s, srv, from, req);
        return;
    }
    session_t *ss;
    dkey_t k;
    if (!s_draft_prepare(s, srv, from, req, &ss, &k)) return;
    const int gamma = k.gamma, apd = k.apd;

    /* a pre-draft made for exactly this request? */
    int hit = ss->pre.gamma && ss->pre.round == req->round && ss->pre_n == ss->n &&
              !memcmp(&ss->pre_key, &k, sizeof k) &&
              !memcmp(ss->pre_text, ss->tok, (size_t)ss->n * sizeof *ss->tok);
    if (ss->pre.gamma) {
        if (hit)
            s->predraft_hits++;
        else
            s->predraft_misses++;
    }
    if (hit) {
        dbuf_t t = ss->cur;
        ss->cur = ss->pre;
        ss->pre = t;
        ss->pre.gamma = 0;
    } else {
        ss->pre.gamma = 0;
        td_err_t err = {0};
        if (s_run_draft(s, ss, ss->tok, ss->n, &k, req->round, &ss->cur, &err) != TD_OK) {
            s_reply_error(srv, from, req, TD_PERR_INTERNAL, "drafting failed: %s", err.msg);
            return;
        }
    }
    s_send_proposal(s, srv, from, req, &ss->cur, apd, hit);
    if (!s->opts.predraft) return;
    /* Pre-draft the next round for its most likely request: every drafted token accepted, then the
     * verifier's bonus token, guessed greedily. Runs while the verifier verifies this round. */
    int n2 = ss->n + gamma;
    memcpy(ss->pre_text, ss->tok, (size_t)ss->n * sizeof *ss->tok);
    memcpy(ss->pre_text + ss->n, ss->cur.tok, (size_t)gamma * sizeof *ss->tok);
    if (s_guess_next(s, ss, ss->pre_text, n2, &ss->pre_text[n2]) != TD_OK) return;
    ss->pre_n = n2 + 1;
    ss->pre_key = k;
    td_err_t err = {0};
    if (s_run_draft(s, ss, ss->pre_text, ss->pre_n, &k, req->round + 1, &ss->pre, &err) != TD_OK)
        ss->pre.gamma = 0;
}

/* Several DraftRequests that were waiting together, drafted in one batch per draft position (a
 * causal drafter: td_ar_draft_many), per denoising step (a diffusion LM:
 * td_diffusion_draft_many) or in one block forward (DFlash: td_dflash_draft_many); each answer
 * equals the one s_draft would give alone. */
static void s_draft_batch(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                          td_msg_t **reqs, int n_req) {
    session_t *ss[TD_DRAFTER_MAX_BATCH];
    dkey_t k[TD_DRAFTER_MAX_BATCH];
    td_sampling_t sp[TD_DRAFTER_MAX_BATCH];
    td_rng_t rng[TD_DRAFTER_MAX_BATCH];
    td_ar_job_t jobs[TD_DRAFTER_MAX_BATCH];
    td_diffusion_job_t djobs[TD_DRAFTER_MAX_BATCH];
    td_draft_opts_t dopts = {.exact = s->opts.exact};
    const int diffusion = td_model_config(s->m)->is_diffusion;
    int idx[TD_DRAFTER_MAX_BATCH], n = 0;
    td_err_t err = {0};
    s->t_request = td_time_now();
    if (s->df) { /* DFlash: every block in one drafter forward */
        td_dflash_job_t fj[TD_DRAFTER_MAX_BATCH];
        for (int i = 0; i < n_req; i++) {
            int B;
            if (!s_dflash_take(s, srv, &from[i], reqs[i], &ss[n], &k[n], &B)) continue;
            fj[n] = s_dflash_job(s, ss[n], &k[n], B, reqs[i]->round, &sp[n], &rng[n]);
            idx[n++] = i;
        }
        if (!n) return;
        int rc = td_dflash_draft_many(fj, n, &err);
        s->batched_forwards += rc == TD_OK ? 1 : 0;
        for (int j = 0; j < n; j++)
            s_dflash_answer(s, srv, &from[idx[j]], reqs[idx[j]], ss[j], &k[j], rc, &err);
        return;
    }
    for (int i = 0; i < n_req; i++) {
        if (!s_draft_prepare(s, srv, &from[i], reqs[i], &ss[n], &k[n])) continue;
        ss[n]->pre.gamma = 0;
        if (s_draft_begin(s, ss[n], ss[n]->tok, ss[n]->n, &k[n], reqs[i]->round, &ss[n]->cur,
                          &sp[n], &rng[n], &err) != TD_OK) {
            s_reply_error(srv, &from[i], reqs[i], TD_PERR_INTERNAL, "drafting failed: %s", err.msg);
            continue;
        }
        jobs[n] = (td_ar_job_t){.seq = ss[n]->slot,
                                .prefix = ss[n]->tok,
                                .n_prefix = ss[n]->n,
                                .gamma = k[n].gamma,
                                .sp = &sp[n],
                                .rng = &rng[n],
                                .draft = ss[n]->cur.tok,
                                .q = ss[n]->cur.q};
        djobs[n] = (td_diffusion_job_t){.seq = ss[n]->slot,
                                        .prefix = ss[n]->tok,
                                        .n_prefix = ss[n]->n,
                                        .gamma = k[n].gamma,
                                        .steps = k[n].steps,
                                        .order = (td_unmask_order_t)k[n].order,
                                        .sp = &sp[n],
                                        .rng = &rng[n],
                                        .draft = ss[n]->cur.tok,
                                        .q = ss[n]->cur.q,
                                        .opts = &dopts};
        idx[n++] = i;
    }
    if (!n) return;
    int rc = diffusion ? td_diffusion_draft_many(s->m, s->kv, djobs, n, NULL, &err)
                       : td_ar_draft_many(s->m, s->kv, jobs, n, &err);
    s->batched_forwards += rc == TD_OK ? 1 : 0;
    for (int j = 0; j < n; j++) {
        const td_msg_t *req = reqs[idx[j]];
        if (s_draft_end(s, ss[j], ss[j]->tok, ss[j]->n, &k[j], req->round, &ss[j]->cur, rc) !=
            TD_OK)
            s_reply_error(srv, &from[idx[j]], req, TD_PERR_INTERNAL, "drafting failed: %s",
                          err.msg);
        else
            s_send_proposal(s, srv, &from[idx[j]], req, &ss[j]->cur, 0, 0);
    }
}

static void s_full_row(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                       const td_msg_t *req) {
    const td_full_row_request_t *r = &req->full_row_request;
    session_t *ss = s_find(s, req->session_id);
    if (!ss || !ss->cur.gamma || ss->cur.round != req->round) {
        s_reply_error(srv, from, req, TD_PERR_OUT_OF_ORDER,
                      "no proposal of this session and round to read a row from");
        return;
    }
    if (r->position >= (uint32_t)ss->cur.gamma || (r->kind == TD_ROW_LOGITS && !ss->cur.logits)) {
        s_reply_error(srv, from, req, TD_PERR_MALFORMED,
                      "row %u of kind %d is not available (proposal of %d tokens)", r->position,
                      (int)r->kind, ss->cur.gamma);
        return;
    }
    td_msg_t env;
    td_msg_init(&env, TD_BODY_FULL_ROW, req->session_id, req->round);
    td_full_row_t *row = &env.full_row;
    row->position = r->position;
    row->kind = r->kind;
    row->n_values = (size_t)s->V;
    row->values =
        (r->kind == TD_ROW_LOGITS ? ss->cur.logits : ss->cur.q) + (size_t)r->position * s->V;
    td_err_t err = {0};
    if (td_server_send(srv, from, &env, &err) != TD_OK)
        td_log(TD_LOG_WARN, "drafter: sending a full row failed: %s", err.msg);
}

/* SelfspecEval: evaluate the chain states with this dLLM and answer their draft lists. */
static void s_selfspec_eval(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                            const td_msg_t *req) {
    const td_selfspec_eval_t *r = &req->selfspec_eval;
    td_err_t err = {0};
    double t0 = td_time_now();
    if (!s->ev && !(s->ev = td_selfspec_evaluator_new(s->m, &err))) {
        s_reply_error(srv, from, req, TD_PERR_UNSUPPORTED, "%s", err.msg);
        return;
    }
    if (r->model_fingerprint) {
        if (!s->fingerprint) s->fingerprint = td_selfspec_fingerprint(s->m);
        if (s->fingerprint != r->model_fingerprint) {
            s_reply_error(srv, from, req, TD_PERR_UNSUPPORTED,
                          "selfspec needs the same dLLM checkpoint in both processes: drafter %s "
                          "has fingerprint %016llx, the verifier's model %016llx",
                          s->model_id, (unsigned long long)s->fingerprint,
                          (unsigned long long)r->model_fingerprint);
            return;
        }
    }
    int n = (int)r->n_tail_lens, k = (int)r->draft_k;
    int32_t *prefix = malloc((r->n_prefix + 1) * sizeof *prefix),
            *tails = malloc((r->n_tails + 1) * sizeof *tails);
    int tl[TD_SELFSPEC_MAX_K], cs[TD_SELFSPEC_MAX_K], counts[TD_SELFSPEC_MAX_K];
    int32_t pos[TD_SELFSPEC_MAX_K * TD_SELFSPEC_MAX_K], ids[TD_SELFSPEC_MAX_K * TD_SELFSPEC_MAX_K];
    if (!prefix || !tails) {
        s_reply_error(srv, from, req, TD_PERR_INTERNAL, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < r->n_prefix; i++) prefix[i] = (int32_t)r->prefix[i];
    for (size_t i = 0; i < r->n_tails; i++) tails[i] = (int32_t)r->tails[i];
    for (int i = 0; i < n; i++) tl[i] = (int)r->tail_lens[i], cs[i] = (int)r->canvas_starts[i];
    int rc = td_selfspec_evaluate(s->ev, prefix, (int)r->n_prefix, tails, tl, cs, n, k, counts, pos,
                                  ids, &err);
    if (rc != TD_OK) {
        s_reply_error(srv, from, req,
                      rc == TD_ERR_ARG           ? TD_PERR_MALFORMED
                      : rc == TD_ERR_UNSUPPORTED ? TD_PERR_UNSUPPORTED
                                                 : TD_PERR_INTERNAL,
                      "selfspec evaluation failed: %s", err.msg);
        goto out;
    }
    uint32_t ucounts[TD_SELFSPEC_MAX_K], upos[TD_SELFSPEC_MAX_K * TD_SELFSPEC_MAX_K],
        uids[TD_SELFSPEC_MAX_K * TD_SELFSPEC_MAX_K];
    size_t m = 0;
    for (int i = 0; i < n; i++) {
        ucounts[i] = (uint32_t)counts[i];
        for (int d = 0; d < counts[i]; d++, m++) {
            upos[m] = (uint32_t)pos[i * k + d];
            uids[m] = (uint32_t)ids[i * k + d];
        }
    }
    td_msg_t env;
    td_msg_init(&env, TD_BODY_SELFSPEC_DRAFTS, req->session_id, req->round);
    td_selfspec_drafts_t *ans = &env.selfspec_drafts;
    ans->n_counts = (size_t)n;
    ans->counts = ucounts;
    ans->n_positions = ans->n_tokens = m;
    ans->positions = upos;
    ans->tokens = uids;
    ans->drafter_us = (uint64_t)((td_time_now() - t0) * 1e6);
    if (td_server_send(srv, from, &env, &err) != TD_OK)
        td_log(TD_LOG_WARN, "drafter: sending selfspec drafts failed: %s", err.msg);
out:
    free(prefix);
    free(tails);
}

/* PlannedFill: fill one stage's spans with td_planned_fill and answer the scaffold. */
static void s_planned_fill(td_drafter_service_t *s, td_server_t *srv, const td_routing_id_t *from,
                           const td_msg_t *req) {
    const td_planned_fill_t *r = &req->planned_fill;
    td_err_t err = {0};
    double t0 = td_time_now();
    if (!s->have_tags) {
        s_reply_error(srv, from, req, TD_PERR_UNSUPPORTED,
                      "this drafter (%s) cannot fill planned spans: %s", s->model_id, s->tags_err);
        return;
    }
    const int32_t mine[6] = {s->tags.async_open,  s->tags.async_close, s->tags.promise,
                             s->tags.topic_close, s->tags.sync,        s->tags.pad};
    for (int i = 0; i < 6; i++)
        if ((int32_t)r->tags[i] != mine[i]) {
            s_reply_error(srv, from, req, TD_PERR_UNSUPPORTED,
                          "plan tag %d is id %u on the planner but %d on drafter %s: the "
                          "checkpoints' tokenizers disagree",
                          i, r->tags[i], mine[i], s->model_id);
            return;
        }
    td_plan_t plan;
    memset(&plan, 0, sizeof plan);
    plan.n_spans = (int)r->n_span_units;
    int need = 0;
    for (int k = 0; k < plan.n_spans; k++) {
        plan.spans[k].units = (int)r->span_units[k];
        plan.spans[k].length = 10 * plan.spans[k].units;
        need += plan.spans[k].length + 2;
    }
    int n_ctx = (int)r->n_context, cap = (int)r->capacity < need ? (int)r->capacity : need;
    int32_t *ctx = malloc((size_t)n_ctx * sizeof *ctx), *sc = malloc((size_t)need * sizeof *sc);
    td_pd_row_t *rows = r->n_context_rows ? malloc((size_t)n_ctx * sizeof *rows) : NULL,
                *sc_rows = malloc((size_t)need * sizeof *sc_rows);
    uint32_t *usc = malloc((size_t)need * sizeof *usc);
    if (!ctx || !sc || !sc_rows || !usc || (r->n_context_rows && !rows)) {
        s_reply_error(srv, from, req, TD_PERR_INTERNAL, "out of memory");
        goto out;
    }
    for (int i = 0; i < n_ctx; i++) ctx[i] = (int32_t)r->context[i];
    if (rows)
        for (int i = 0; i < n_ctx; i++)
            rows[i] =
                (td_pd_row_t){(int32_t)r->context_rows[3 * i], (int32_t)r->context_rows[3 * i + 1],
                              (int32_t)r->context_rows[3 * i + 2]};
    td_planned_params_t pp = td_planned_params_default();
    pp.steps_ratio = r->steps_ratio;
    pp.dense = r->dense;
    if (r->has_sampling) {
        pp.sampling.temperature = r->sampling.temperature;
        pp.sampling.top_k = (int)r->sampling.top_k;
        pp.sampling.top_p = r->sampling.top_p > 0 ? r->sampling.top_p : 1.0f;
    }
    td_rng_t rng;
    for (int i = 0; i < 4; i++) rng.s[i] = r->rng_state[i];
    td_planned_stats_t st = {0};
    int n_sc = td_planned_fill(s->m, &s->tags, ctx, rows, n_ctx, &plan, &pp, &rng, sc, sc_rows, cap,
                               &st, &err);
    if (n_sc < 0) {
        s_reply_error(srv, from, req, n_sc == TD_ERR_ARG ? TD_PERR_UNSUPPORTED : TD_PERR_INTERNAL,
                      "drafter %s: %s", s->model_id, err.msg);
        goto out;
    }
    for (int i = 0; i < n_sc; i++) usc[i] = (uint32_t)sc[i];
    td_msg_t env;
    td_msg_init(&env, TD_BODY_PLANNED_FILLED, req->session_id, req->round);
    td_planned_filled_t *ans = &env.planned_filled;
    ans->n_scaffold = (size_t)n_sc;
    ans->scaffold = usc;
    ans->n_rng_state = 4;
    ans->rng_state = rng.s;
    ans->forwards = (uint32_t)st.diffusion_forwards;
    ans->span_steps = (uint32_t)st.span_steps;
    ans->drafter_us = (uint64_t)((td_time_now() - t0) * 1e6);
    if (td_server_send(srv, from, &env, &err) != TD_OK)
        td_log(TD_LOG_WARN, "drafter: sending a planned fill failed: %s", err.msg);
out:
    free(ctx);
    free(sc);
    free(rows);
    free(sc_rows);
    free(usc);
}

void td_drafter_service_handle(td_drafter_service_t *s, td_server_t *srv,
                               const td_routing_id_t *from, const td_msg_t *req) {
    td_err_t err = {0};
    s->t_request = td_time_now();
    switch (req->body) {
    case TD_BODY_HELLO:
        if (td_server_answer_hello(srv, from, &s->hello, &req->hello, &err) == TD_OK)
            s_peer_add(s, from);
        else
            td_log(TD_LOG_WARN, "drafter: refused a peer: %s", err.msg);
        return;
    case TD_BODY_HEARTBEAT: {
        td_msg_t hb;
        td_msg_init(&hb, TD_BODY_HEARTBEAT, 0, 0);
        td_server_send(srv, from, &hb, NULL);
        return;
    }
    default:
        break;
    }
    if (!s_peer_known(s, from)) {
        s_reply_error(srv, from, req, TD_PERR_NO_HANDSHAKE, "send a Hello first");
        return;
    }
    switch (req->body) {
    case TD_BODY_DRAFT_REQUEST:
        s_draft(s, srv, from, req);
        break;
    case TD_BODY_FULL_ROW_REQUEST:
        s_full_row(s, srv, from, req);
        break;
    case TD_BODY_SELFSPEC_EVAL:
        s_selfspec_eval(s, srv, from, req);
        break;
    case TD_BODY_PLANNED_FILL:
        s_planned_fill(s, srv, from, req);
        break;
    case TD_BODY_CLOSE_SESSION: {
        session_t *ss = s_find(s, req->session_id);
        if (ss) {
            td_kv_cache_crop(s->kv, ss->slot, 0);
            if (s->dctx) td_dflash_ctx_reset(s->dctx[ss->slot]);
            s_session_free(ss);
        }
        break;
    }
    case TD_BODY_OPEN_SESSION:
    case TD_BODY_COMMIT:
        /* sessions start with their first DraftRequest, whose delta carries the accepted text */
        break;
    default:
        s_reply_error(srv, from, req, TD_PERR_UNSUPPORTED, "a drafter does not handle %s",
                      td_msg_body_name(req->body));
    }
}

/* Whether req can join a batch: a DraftRequest (not APD) from a known peer, for a causal,
 * diffusion or DFlash drafter without pre-drafting, for a session not already in the batch. */
static int s_batchable(td_drafter_service_t *s, const td_routing_id_t *from, td_msg_t **batch,
                       int n, const td_msg_t *req) {
    if (req->body != TD_BODY_DRAFT_REQUEST || s->opts.predraft || req->draft_request.has_apd ||
        !s_peer_known(s, from) || n >= TD_DRAFTER_MAX_BATCH || n >= s->opts.max_sessions - 1)
        return 0;
    for (int i = 0; i < n; i++)
        if (batch[i]->session_id == req->session_id) return 0;
    return 1;
}

/* Handles the messages waiting on srv (up to TD_DRAFTER_MAX_BATCH), in arrival order; DraftRequests
 * that arrived together are drafted together. */
static void s_serve_waiting(td_drafter_service_t *svc, td_server_t *srv) {
    td_routing_id_t from[TD_DRAFTER_MAX_BATCH];
    td_msg_t *env[TD_DRAFTER_MAX_BATCH];
    int n = 0;
    td_err_t err = {0};
    while (n < TD_DRAFTER_MAX_BATCH &&
           td_server_recv(srv, &from[n], &env[n], 0, &err) == TD_RECV_OK)
        n++;
    for (int i = 0; i < n;) {
        int j = i;
        while (j < n && s_batchable(svc, &from[j], env + i, j - i, env[j])) j++;
        if (j - i >= 2) {
            s_draft_batch(svc, srv, from + i, env + i, j - i);
        } else {
            j = i + 1;
            td_drafter_service_handle(svc, srv, &from[i], env[i]);
        }
        for (; i < j; i++) td_msg_free(&env[i]);
    }
}

/* Serves until *stop is set or a command comes on ctl (either may be NULL). */
static int s_serve(td_drafter_service_t *svc, td_server_t *srv, volatile sig_atomic_t *stop,
                   td_pipe_t *ctl) {
    td_wire_limits_t lim = td_wire_limits_default();
    lim.vocab_size = (uint32_t)svc->V;
    td_server_set_limits(srv, &lim);
    while (!(stop && *stop)) {
        int ev = td_server_poll(srv, ctl, stop ? 100 : -1);
        if (ev == TD_POLL_PIPE) {
            char cmd[32];
            td_pipe_recv(ctl, cmd, sizeof cmd, 0);
            break;
        }
        if (ev == TD_POLL_SERVER) s_serve_waiting(svc, srv);
    }
    return TD_OK;
}

long td_drafter_service_batched_forwards(const td_drafter_service_t *svc) {
    return svc->batched_forwards;
}

int td_drafter_serve(td_drafter_service_t *svc, td_server_t *srv, volatile sig_atomic_t *stop) {
    return s_serve(svc, srv, stop, NULL);
}

int td_drafter_serve_until(td_drafter_service_t *svc, td_server_t *srv, td_pipe_t *ctl) {
    return s_serve(svc, srv, NULL, ctl);
}

void td_drafter_service_predraft_stats(const td_drafter_service_t *svc, long *hits, long *misses) {
    *hits = svc->predraft_hits;
    *misses = svc->predraft_misses;
}
