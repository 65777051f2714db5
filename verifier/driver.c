/* driver.c - sessions with step functions and the driver that batches them (see driver.h).
 *
 * A session's round is three steps: s_begin (sends its draft request), s_prepare (takes its
 * proposal from the link and adds its rows to the shared batch) and s_commit (acceptance rule on
 * its rows of the logits, emission, KV crop). With one session the steps run back to back and
 * reproduce the single-request loop exactly: same requests, same forwards, same tokens. */
#include "verifier/driver.h"

#include "verifier/accept.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { S_NEW = 0, S_LIVE, S_DONE };

struct td_session {
    td_model_t *v;
    td_method_t method;
    td_spec_params_t p;
    td_link_t *link;
    uint64_t sid;
    td_token_cb cb;
    void *ud;
    void (*on_done)(void *ud, td_session_t *s);
    const int32_t *suppress;
    int n_suppress;
    int V, apd, greedy, want_dist, spec, n_prompt, n_ctx, timeout_ms;
    /* dflash: feature layers, row width, wire type, the rounded features of positions
     * 0 .. cur-2 [n_ctx, fdim], and the position of this round's first batch row */
    int dflash, n_hl, fdim, ftype, pos0;
    int hl[64];
    float *feat;
    /* text and drafter state */
    int32_t *text;
    int cur, known, backoff;
    uint64_t round, next_try;
    td_rng_t rng;
    /* this round */
    int g, pending, n_rows, n_logit_rows, row0, brow0; /* brow0: first row in the shared batch */
    double t_req, t_fwd;
    td_msg_t *prop;
    /* acceptance scratch */
    float *prob, *qfull_mem;
    const float **qfull;
    td_sparse_row_t *sq;
    td_apd_row_t *ar;
    int32_t *ids;
    int32_t acc_out[TD_SPEC_MAX_GAMMA + 1], draft[TD_SPEC_MAX_GAMMA];
    /* results */
    int32_t *out;
    td_spec_stats_t s;
    int rc;
    td_err_t err;
    char why[256];
    int state, cancelled, slot;
    double t_start;
    td_driver_t *d;
};

struct td_driver {
    td_model_t *v;
    td_kv_cache_t *kv;
    int max_sessions, n_ctx, V;
    int max_pass; /* rows per forward that keep every row batch-invariant (INT_MAX: any) */
    td_session_t **live; /* by slot; NULL = free */
    int n_live;
    int64_t forwards;
    /* dflash sessions' hidden states: the shared layer list and [cap_logits, n_hl, n_embd] */
    int n_hl, n_embd;
    int hl[64];
    float *hidden;
    /* the shared batch */
    int cap_rows, cap_logits;
    int32_t *tokens, *pos, *seq;
    uint8_t *logits_for;
    float *logits;
};

/* ---- parameters ------------------------------------------------------------------------------ */

td_session_t *td_session_new(td_model_t *v, const td_session_opts_t *o, td_err_t *err) {
    const td_config_t *c = td_model_config(v);
    const td_spec_params_t *p = o->params;
    const int spec = o->method == TD_METHOD_SPEC_AR || o->method == TD_METHOD_SPECDIFF ||
                     o->method == TD_METHOD_APD || o->method == TD_METHOD_DFLASH;
    if (o->method == TD_METHOD_DFLASH) {
        if (o->n_feature_layers < 1 || o->n_feature_layers > 64 || !o->feature_layers) {
            td_err_set(err, TD_ERR_ARG, "dflash needs 1..64 feature layers (got %d)",
                       o->n_feature_layers);
            return NULL;
        }
        for (int i = 0; i < o->n_feature_layers; i++)
            if (o->feature_layers[i] < 1 || o->feature_layers[i] > c->n_layer) {
                td_err_set(err, TD_ERR_ARG,
                           "the dflash drafter wants features of layer %d; the verifier has "
                           "layers 1..%d",
                           o->feature_layers[i], c->n_layer);
                return NULL;
            }
        if (o->feature_type < 0 || o->feature_type > 2) {
            td_err_set(err, TD_ERR_ARG, "unknown feature type %d", o->feature_type);
            return NULL;
        }
    }
    if (!spec && o->method != TD_METHOD_AR) {
        td_err_set(err, TD_ERR_ARG, "method %s has no verifier session", td_method_name(o->method));
        return NULL;
    }
    if (!c->causal) {
        td_err_set(err, TD_ERR_ARG, "the verifier must be a causal LM (%s is not)",
                   td_arch_name(c->arch));
        return NULL;
    }
    if (spec && (p->gamma < 1 || p->gamma > TD_SPEC_MAX_GAMMA)) {
        td_err_set(err, TD_ERR_ARG, "gamma must be in [1, %d], got %d", TD_SPEC_MAX_GAMMA,
                   p->gamma);
        return NULL;
    }
    if (spec && !o->link) {
        td_err_set(err, TD_ERR_ARG, "method %s needs a drafter link", td_method_name(o->method));
        return NULL;
    }
    if (o->n_suppress > 0 && !o->suppress_ids) {
        td_err_set(err, TD_ERR_ARG, "suppress_ids is NULL");
        return NULL;
    }
    int n_ctx = 0;
    if (td_config_fit_ctx(c, o->n_prompt, p->max_tokens, spec ? p->gamma + 1 : 0, &n_ctx, err) !=
        TD_OK)
        return NULL;
    td_session_t *s = calloc(1, sizeof *s);
    if (!s) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    s->v = v, s->method = o->method, s->p = *p, s->link = o->link, s->sid = o->session_id;
    s->cb = o->cb, s->ud = o->ud, s->on_done = o->on_done;
    s->suppress = o->suppress_ids, s->n_suppress = o->n_suppress;
    s->V = c->n_vocab, s->apd = o->method == TD_METHOD_APD, s->spec = spec;
    s->greedy = p->sampling.temperature <= 0 || p->verify == TD_VERIFY_GREEDY;
    s->want_dist = s->apd || (!s->greedy && p->verify == TD_VERIFY_REJECTION);
    s->n_prompt = o->n_prompt, s->n_ctx = n_ctx;
    s->timeout_ms = p->drafter_timeout_ms > 0 ? p->drafter_timeout_ms : 5000;
    s->s.lossy = s->apd;
    s->slot = -1;
    s->backoff = 1;
    if (o->method == TD_METHOD_DFLASH) {
        s->dflash = 1;
        s->n_hl = o->n_feature_layers;
        memcpy(s->hl, o->feature_layers, (size_t)s->n_hl * sizeof *s->hl);
        s->fdim = s->n_hl * c->n_embd;
        s->ftype = o->feature_type ? o->feature_type : 2;
        s->feat = malloc((size_t)n_ctx * (size_t)s->fdim * sizeof *s->feat);
        if (!s->feat) {
            free(s);
            td_err_set(err, TD_ERR_NOMEM, "out of memory");
            return NULL;
        }
    }
    const size_t rows = spec ? (size_t)p->gamma + 1 : 1, V = (size_t)s->V;
    s->text = malloc((size_t)n_ctx * sizeof *s->text);
    s->out = malloc(((size_t)p->max_tokens + 1) * sizeof *s->out);
    if (spec) {
        s->prob = malloc(rows * V * sizeof(float));
        s->qfull = calloc(rows, sizeof *s->qfull);
        s->sq = calloc(rows, sizeof *s->sq);
        s->ar = calloc(rows, sizeof *s->ar);
        s->ids = malloc(rows * (size_t)TD_WIRE_MAX_DIST_TOP_K * sizeof *s->ids);
    }
    if (!s->text || !s->out || (spec && (!s->prob || !s->qfull || !s->sq || !s->ar || !s->ids))) {
        td_session_destroy(&s);
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    memcpy(s->text, o->prompt, (size_t)o->n_prompt * sizeof *s->text);
    s->cur = o->n_prompt;
    td_rng_seed(&s->rng, p->seed);
    return s;
}

void td_session_destroy(td_session_t **self_p) {
    if (!self_p || !*self_p) return;
    td_session_t *s = *self_p;
    td_msg_free(&s->prop);
    void *bufs[] = {s->text, s->out,    s->prob, s->qfull_mem, (void *)s->qfull,
                    s->sq,   s->ar,     s->ids,  s->feat};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    free(s);
    *self_p = NULL;
}

int td_session_n_ctx(const td_session_t *s) { return s->n_ctx; }
void td_session_cancel(td_session_t *s) { s->cancelled = 1; }
int td_session_done(const td_session_t *s) { return s->state == S_DONE; }
const int32_t *td_session_tokens(const td_session_t *s, int *n) {
    if (n) *n = s->s.generated;
    return s->out;
}
const td_spec_stats_t *td_session_stats(const td_session_t *s) { return &s->s; }
uint64_t td_session_id(const td_session_t *s) { return s->sid; }
int td_session_status(const td_session_t *s, td_err_t *err) {
    if (s->rc != TD_OK && err) *err = s->err;
    return s->rc;
}

/* ---- the drafter side of a round ---------------------------------------------------------------
 */

/* Sends the DraftRequest for this round (text the drafter has not seen, from s->known). */
static int s_send_draft(td_session_t *s) {
    const td_spec_params_t *p = &s->p;
    td_draft_args_t a = {.session = s->sid,
                         .round = s->round,
                         .base_len = s->known,
                         .delta = s->text + s->known,
                         .n_delta = s->cur - s->known,
                         .gamma = s->g,
                         .steps = p->steps,
                         .order = p->order,
                         .temperature = p->draft_sampling.temperature,
                         .top_p = p->draft_sampling.top_p,
                         .top_k = p->draft_sampling.top_k,
                         .seed = p->seed,
                         .want_dist = s->want_dist,
                         .dist_top_k = p->dist_top_k,
                         .apd = s->apd,
                         .apd_mixture = p->apd_mixture,
                         .apd_kv_window = p->apd_kv_window};
    if (s->dflash) {
        /* the drafter holds the features of positions 0 .. known-2; it gets the rest up to
         * cur-2 (every committed position but the last) */
        int start = s->known > 0 ? s->known - 1 : 0;
        a.features = s->feat + (size_t)start * s->fdim;
        a.feature_rows = s->cur - 1 - start;
        a.feature_dim = s->fdim;
        a.feature_start = start;
        a.feature_type = s->ftype;
        s->s.feature_bytes += (int64_t)a.feature_rows * s->fdim * 2;
    }
    td_err_t err = {0};
    if (td_client_send_draft_request(td_link_client(s->link), &a, &err) != TD_OK) {
        snprintf(s->why, sizeof s->why, "sending to the drafter failed: %.200s", err.msg);
        return -1;
    }
    return 0;
}

/* Waits for this round's answer of kind want; NULL with s->why set. */
static td_msg_t *s_wait(td_session_t *s, int want) {
    td_msg_t *env = NULL;
    td_err_t err = {0};
    int rc = td_link_wait(s->link, s->sid, s->round, want, s->timeout_ms, &env, &err);
    if (rc == TD_LINK_TIMEOUT)
        snprintf(s->why, sizeof s->why, "drafter did not answer within %d ms", s->timeout_ms);
    else if (rc != TD_OK)
        snprintf(s->why, sizeof s->why, "%.250s", err.msg);
    return rc == TD_OK ? env : NULL;
}

/* The proposal of the request s_send_draft sent: retries once from scratch when the drafter lost
 * the session or restarted (a new handshake). NULL with s->why set. */
static td_msg_t *s_collect(td_session_t *s) {
    for (int attempt = 0; attempt < 2; attempt++) {
        int base = s->known;
        if (attempt > 0 && s_send_draft(s)) return NULL;
        td_msg_t *ans = s_wait(s, TD_BODY_PROPOSAL);
        if (!ans) return NULL;
        if (ans->body == TD_BODY_PROPOSAL) {
            s->known = s->cur;
            return ans;
        }
        int code = ans->error.code;
        snprintf(s->why, sizeof s->why, "drafter error %s: %.200s", td_wire_error_code_name(code),
                 ans->error.message ? ans->error.message : "");
        td_msg_free(&ans);
        if ((code == TD_PERR_UNKNOWN_SESSION || code == TD_PERR_OUT_OF_ORDER) && base > 0) {
            s->known = 0; /* the drafter lost the session: send the whole text again */
            continue;
        }
        const td_hello_t *hello = td_link_hello(s->link);
        if (code == TD_PERR_NO_HANDSHAKE && hello && attempt == 0) {
            /* a drafter that restarted does not know us: handshake again, resend from scratch */
            td_err_t err = {0};
            if (td_client_handshake(td_link_client(s->link), hello, NULL, s->timeout_ms, &err) !=
                TD_OK) {
                snprintf(s->why, sizeof s->why,
                         "handshake with the restarted drafter failed: %.200s", err.msg);
                return NULL;
            }
            s->known = 0;
            continue;
        }
        return NULL;
    }
    return NULL;
}

/* Fetches the drafter's full row of the current proposal into dst[V]. */
static int s_fetch_row(td_session_t *s, int pos, int logits, float *dst) {
    td_err_t err = {0};
    if (td_client_send_full_row_request(td_link_client(s->link), s->sid, s->round, pos, logits,
                                        &err) != TD_OK) {
        snprintf(s->why, sizeof s->why, "sending to the drafter failed: %.200s", err.msg);
        return -1;
    }
    for (;;) {
        td_msg_t *ans = s_wait(s, TD_BODY_FULL_ROW);
        if (!ans) return -1;
        if (ans->body == TD_BODY_ERROR) {
            snprintf(s->why, sizeof s->why, "drafter error on a full row: %.200s",
                     ans->error.message);
            td_msg_free(&ans);
            return -1;
        }
        if (ans->full_row.position != (uint32_t)pos) { /* stale answer to another row */
            td_msg_free(&ans);
            continue;
        }
        int ok = ans->full_row.n_values >= (size_t)s->V;
        if (ok)
            memcpy(dst, ans->full_row.values, (size_t)s->V * sizeof(float));
        else
            snprintf(s->why, sizeof s->why, "drafter sent a row of %zu values, need %d",
                     ans->full_row.n_values, s->V);
        td_msg_free(&ans);
        return ok ? 0 : -1;
    }
}

/* Fetches the drafter's full row at position need into the session's full-row store (an
 * acceptance rule asked for it). 0, or 1 when the drafter failed (s->why says why). */
static int s_need_row(td_session_t *s, int need, int logits) {
    const size_t V = (size_t)s->V, rows = (size_t)s->p.gamma + 1;
    if (!s->qfull_mem && !(s->qfull_mem = malloc(rows * V * sizeof(float)))) {
        snprintf(s->why, sizeof s->why, "out of memory");
        return 1;
    }
    if (s_fetch_row(s, need, logits, s->qfull_mem + (size_t)need * V)) return 1;
    s->qfull[need] = s->qfull_mem + (size_t)need * V;
    s->s.full_rows++;
    return 0;
}

/* Checks a proposal's shape; NULL when usable, else why not. */
static const char *s_check_proposal(const td_proposal_t *pr, int gamma, int V, int want_dist,
                                    int apd) {
    if (pr->n_tokens != (size_t)gamma) return "wrong number of drafted tokens";
    for (size_t j = 0; j < pr->n_tokens; j++)
        if (pr->tokens[j] >= (uint32_t)V) return "drafted token outside the verifier's vocabulary";
    if (!want_dist) return NULL;
    if (pr->n_dists != (size_t)gamma) return "missing per-position distributions";
    for (size_t j = 0; j < pr->n_dists; j++) {
        const td_sparse_dist_t *d = &pr->dists[j];
        for (size_t i = 0; i < d->n_ids; i++)
            if (d->ids[i] >= (uint32_t)V)
                return "distribution id outside the verifier's vocabulary";
        if (apd && d->n_logits != d->n_ids) return "APD proposal without logits";
    }
    return NULL;
}

/* ---- session steps -----------------------------------------------------------------------------
 */

static int s_finished(const td_session_t *s) {
    return s->rc != TD_OK || s->s.stop != TD_STOP_LENGTH || s->s.generated >= s->p.max_tokens ||
           s->cur >= s->n_ctx;
}

/* Starts a round: picks the draft length and sends the draft request (when speculating). */
static void s_begin(td_session_t *s) {
    int remaining = s->p.max_tokens - s->s.generated;
    int g = s->p.gamma < remaining ? s->p.gamma : remaining;
    if (s->cur + g >= s->n_ctx) g = s->n_ctx - s->cur - 1;
    s->g = s->spec ? g : 0;
    s->round++;
    s->pending = 0;
    s->t_req = td_time_now();
    if (s->g >= 1 && s->round >= s->next_try) s->pending = s_send_draft(s) == 0 ? 1 : -1;
}

/* Takes the proposal (if any) and appends this round's rows to the batch at row n. Returns the
 * rows added; their logits rows are flagged in lf. */
static int s_prepare(td_session_t *s, int32_t *tok, int32_t *pos, int32_t *seq, uint8_t *lf) {
    if (s->pending) {
        s->prop = s->pending > 0 ? s_collect(s) : NULL;
        double rt = td_time_now() - s->t_req;
        if (s->prop) {
            double dus = s->prop->proposal.drafter_us / 1e6;
            s->s.drafter_s += dus < rt ? dus : rt;
            s->s.transport_s += dus < rt ? rt - dus : 0;
            const char *bad =
                s_check_proposal(&s->prop->proposal, s->g, s->V, s->want_dist, s->apd);
            if (bad) {
                snprintf(s->why, sizeof s->why, "drafter sent an unusable proposal: %s", bad);
                td_msg_free(&s->prop);
            }
        } else {
            s->s.transport_s += rt;
        }
        if (!s->prop) {
            s->known = 0;
            s->next_try = s->round + (uint64_t)s->backoff;
            if (s->backoff < 64) s->backoff *= 2;
        } else {
            s->backoff = 1;
        }
    }
    s->t_fwd = td_time_now();
    int n = 0;
    if (!s->prop) {
        if (s->g >= 1) {
            s->s.fallbacks++;
            snprintf(s->s.last_fallback, sizeof s->s.last_fallback, "%s", s->why);
            td_log(TD_LOG_INFO, "verifier: round %llu as plain AR: %s",
                   (unsigned long long)s->round, s->why);
        }
        /* every text token the slot does not hold yet (one: the prompt was prefilled at submit
         * but its last token), logits for the last */
        int from = td_kv_cache_len(s->d->kv, s->slot);
        for (int i = from; i < s->cur; i++, n++)
            tok[n] = s->text[i], pos[n] = i, seq[n] = s->slot,
            lf[n] = s->dflash || i == s->cur - 1;
        s->n_logit_rows = s->dflash ? n : 1;
        s->pos0 = from;
    } else {
        const td_proposal_t *pr = &s->prop->proposal;
        for (int j = 0; j < s->g; j++) s->draft[j] = (int32_t)pr->tokens[j];
        int nr = s->apd ? s->g : s->g + 1;
        tok[0] = s->text[s->cur - 1], pos[0] = s->cur - 1;
        for (int j = 1; j < nr; j++) tok[j] = s->draft[j - 1], pos[j] = s->cur - 1 + j;
        for (int j = 0; j < nr; j++) seq[j] = s->slot, lf[j] = 1;
        n = nr;
        s->n_logit_rows = nr;
        s->pos0 = s->cur - 1;
    }
    s->n_rows = n;
    return n;
}

/* Emits acc_out[0..n_emit), honouring stop ids, max_tokens and the callback. */
static void s_emit(td_session_t *s, int n_emit) {
    for (int i = 0; i < n_emit && s->s.generated < s->p.max_tokens; i++) {
        int32_t id = s->acc_out[i];
        s->text[s->cur++] = id;
        s->out[s->s.generated++] = id;
        if (s->cb && s->cb(s->ud, id)) {
            s->s.stop = TD_STOP_CALLBACK;
            break;
        }
        if (td_is_stop_id(s->p.stop_ids, s->p.n_stop, -1, id)) {
            s->s.stop = TD_STOP_EOS;
            break;
        }
    }
}

/* Rounds x[n] to the wire's feature type (what the drafter will decode), so an in-process drafter
 * sees the same values as a remote one. */
static void s_round_features(float *x, int64_t n, int ftype) {
    if (ftype == 2)
        for (int64_t i = 0; i < n; i++) x[i] = td_bf16_to_f32(td_f32_to_bf16(x[i]));
    else if (ftype == 1)
        for (int64_t i = 0; i < n; i++) x[i] = td_f16_to_f32(td_f32_to_f16(x[i]));
}

/* dflash: keeps the features of positions from .. s->cur-2 from this session's hidden rows (row r
 * = position s->pos0 + r). */
static void s_keep_features(td_session_t *s, const float *hidden, int from) {
    for (int p = from; p <= s->cur - 2; p++) {
        int r = p - s->pos0;
        if (r < 0 || r >= s->n_logit_rows) continue;
        float *dst = s->feat + (size_t)p * s->fdim;
        memcpy(dst, hidden + (size_t)r * s->fdim, (size_t)s->fdim * sizeof *dst);
        s_round_features(dst, s->fdim, s->ftype);
    }
}

/* Applies the acceptance rule to this session's rows of the logits and emits. */
static void s_commit(td_session_t *s, float *logits, const float *hidden) {
    const td_spec_params_t *p = &s->p;
    const int V = s->V, g = s->g, cur0 = s->cur;
    int n_emit = 0, n_acc = 0, rc = TD_OK;
    if (!s->prop) {
        logits += (size_t)(s->n_logit_rows - 1) * (size_t)V; /* the last row's */
        for (int k = 0; k < s->n_suppress; k++)
            if (s->suppress[k] >= 0 && s->suppress[k] < V) logits[s->suppress[k]] = -INFINITY;
        s->acc_out[0] = td_sample(&p->sampling, &s->rng, logits, V, NULL);
        n_emit = 1;
    } else {
        const td_proposal_t *pr = &s->prop->proposal;
        int predrafted = pr->predrafted ? 1 : 0;
        for (int j = 0; j < g; j++) {
            const td_sparse_dist_t *d = s->want_dist ? &pr->dists[j] : NULL;
            if (!d) continue;
            int32_t *row_ids = s->ids + (size_t)j * TD_WIRE_MAX_DIST_TOP_K;
            for (size_t i = 0; i < d->n_ids; i++) row_ids[i] = (int32_t)d->ids[i];
            s->sq[j] = (td_sparse_row_t){(int)d->n_ids, row_ids, d->probs, d->rest_mass};
            s->ar[j] = (td_apd_row_t){(int)d->n_ids, row_ids, d->logits, d->logit_bound};
            s->qfull[j] = NULL;
        }
        int need = -1, fail = 0;
        if (s->apd) {
            int k = 0;
            for (;;) {
                rc = td_apd_accept(s->ar, s->qfull, logits, s->draft, g, V, p->apd_mixture, &k,
                                   &need);
                if (rc != TD_OK || need < 0) break;
                if ((fail = s_need_row(s, need, 1))) break;
            }
            if (rc == TD_OK && !fail) {
                n_acc = k;
                n_emit = k;
                memcpy(s->acc_out, s->draft, (size_t)k * sizeof *s->draft);
            }
        } else if (s->greedy) {
            rc = td_accept_greedy(logits, s->draft, g, V, s->acc_out, &n_acc);
            n_emit = n_acc + 1;
        } else {
            for (int j = 0; j < g + 1; j++)
                td_sampling_dist(&p->sampling, logits + (size_t)j * V, V, s->prob + (size_t)j * V);
            if (p->verify == TD_VERIFY_MATCH) {
                rc = td_accept_match(s->prob, s->draft, g, V, &s->rng, s->acc_out, &n_acc);
            } else {
                for (;;) {
                    rc = td_accept_rejection_sparse(s->prob, s->sq, s->qfull, s->draft, g, V,
                                                    &s->rng, s->acc_out, &n_acc, &need);
                    if (rc != TD_OK || need < 0) break;
                    if ((fail = s_need_row(s, need, 0))) break;
                }
            }
            n_emit = n_acc + 1;
        }
        td_msg_free(&s->prop);
        if (rc != TD_OK) {
            s->rc = td_err_set(&s->err, rc, "acceptance rule failed (round %llu)",
                               (unsigned long long)s->round);
            return;
        }
        if (fail) {
            /* the drafter vanished mid-round: this round's verifier work is discarded and the
             * next one is done as plain AR */
            td_kv_cache_crop(s->d->kv, s->slot, s->cur - 1);
            s->known = 0;
            s->next_try = s->round + (uint64_t)s->backoff;
            s->s.fallbacks++;
            snprintf(s->s.last_fallback, sizeof s->s.last_fallback, "%s", s->why);
            s->s.verifier_s += td_time_now() - s->t_fwd;
            return;
        }
        s->s.rounds++;
        s->s.predrafted += predrafted;
        s->s.drafted += g;
        s->s.accepted += n_acc;
        if (!s->apd) s->s.bonus_tokens++;
        for (int j = 0; j < g; j++) {
            s->s.drafted_by_position[j]++;
            if (j < n_acc) s->s.accepted_by_position[j]++;
        }
    }
    s_emit(s, n_emit);
    if (s->dflash && hidden) s_keep_features(s, hidden, cur0 - 1);
    /* keep the keys/values of verified positions only: the slot must hold cur - 1 tokens */
    int keep = s->cur - 1;
    td_kv_cache_crop(s->d->kv, s->slot, keep);
    if (td_kv_cache_len(s->d->kv, s->slot) < keep) /* every emitted token but the last was in */
        s->rc = td_err_set(&s->err, TD_ERR, "internal: verifier cache behind the text");
    s->s.verifier_s += td_time_now() - s->t_fwd;
}

/* ---- driver ------------------------------------------------------------------------------------
 */

td_driver_t *td_driver_new(td_model_t *v, int max_sessions, int n_ctx, td_err_t *err) {
    if (max_sessions < 1 || n_ctx < 1) {
        td_err_set(err, TD_ERR_ARG, "a driver needs >= 1 session slot and context");
        return NULL;
    }
    td_driver_t *d = calloc(1, sizeof *d);
    if (!d) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    d->v = v, d->max_sessions = max_sessions, d->n_ctx = n_ctx;
    d->V = td_model_config(v)->n_vocab;
    /* a backend that promises no batch invariance (1) has nothing to keep: one pass for all */
    d->max_pass = td_model_invariant_rows(v);
    if (d->max_pass <= 1) d->max_pass = INT_MAX;
    d->live = calloc((size_t)max_sessions, sizeof *d->live);
    if (!d->live) td_err_set(err, TD_ERR_NOMEM, "out of memory");
    if (!d->live || !(d->kv = td_kv_cache_new(v, max_sessions, n_ctx, err))) td_driver_destroy(&d);
    return d;
}

void td_driver_destroy(td_driver_t **self_p) {
    if (!self_p || !*self_p) return;
    td_driver_t *d = *self_p;
    for (int i = 0; d->live && i < d->max_sessions; i++)
        if (d->live[i]) d->live[i]->d = NULL, d->live[i]->state = S_DONE;
    td_kv_cache_destroy(&d->kv);
    void *bufs[] = {d->live, d->tokens, d->logits_for, d->logits, d->hidden, d};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    *self_p = NULL;
}

int td_driver_live(const td_driver_t *d) { return d->n_live; }
int64_t td_driver_forwards(const td_driver_t *d) { return d->forwards; }

/* Room for rows batch rows (tokens, positions and slots in one block) and logit_rows rows of
 * logits; the contents are not kept (a round fills them after reserving). */
static int s_reserve(td_driver_t *d, int rows, int logit_rows, td_err_t *err) {
    if (rows > d->cap_rows) {
        int cap = rows > 2 * d->cap_rows ? rows : 2 * d->cap_rows;
        free(d->tokens), free(d->logits_for);
        d->tokens = malloc((size_t)cap * 3 * sizeof *d->tokens);
        d->logits_for = malloc((size_t)cap);
        d->cap_rows = d->tokens && d->logits_for ? cap : 0;
        if (!d->cap_rows) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        d->pos = d->tokens + cap, d->seq = d->tokens + 2 * (size_t)cap;
    }
    if (logit_rows > d->cap_logits) {
        int cap = logit_rows > 2 * d->cap_logits ? logit_rows : 2 * d->cap_logits;
        free(d->logits);
        free(d->hidden);
        d->hidden = NULL;
        d->logits = malloc((size_t)cap * (size_t)d->V * sizeof *d->logits);
        d->cap_logits = d->logits ? cap : 0;
        if (!d->logits) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    if (d->n_hl && !d->hidden && d->cap_logits) {
        d->hidden = malloc((size_t)d->cap_logits * d->n_hl * d->n_embd * sizeof *d->hidden);
        if (!d->hidden) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    return TD_OK;
}

/* One causal forward of the n rows from batch row off in the batch buffers (tokens: NULL =
 * d->tokens + off); hidden (or NULL): where the selected rows' hidden states at the dflash layers
 * go (d->hl). */
static int s_forward_at(td_driver_t *d, int off, int n, const int32_t *tokens, float *logits,
                        float *hidden, td_err_t *err) {
    td_batch_t b = {.n = n,
                    .tokens = tokens ? tokens : d->tokens + off,
                    .pos = d->pos + off,
                    .seq = d->seq + off,
                    .attn = TD_ATTN_CAUSAL,
                    .logits_for = d->logits_for + off};
    if (hidden) {
        b.hidden_layers = d->hl;
        b.n_hidden_layers = d->n_hl;
        b.hidden_out = hidden;
    }
    d->forwards++;
    return td_model_forward(d->v, d->kv, &b, logits, err);
}

/* The session leaves at once: slot freed, drafter told, on_done called. */
static void s_leave(td_driver_t *d, td_session_t *s) {
    s->s.total_s = td_time_now() - s->t_start;
    if (s->rc == TD_OK && s->known > 0 && s->link) {
        td_client_send_close_session(td_link_client(s->link), s->sid, NULL);
    }
    if (s->link) td_link_forget(s->link, s->sid);
    td_msg_free(&s->prop);
    td_kv_cache_crop(d->kv, s->slot, 0);
    d->live[s->slot] = NULL;
    d->n_live--;
    s->state = S_DONE;
    s->d = NULL;
    if (s->on_done) s->on_done(s->ud, s);
}

int td_driver_submit(td_driver_t *d, td_session_t *s, td_err_t *err) {
    if (s->state != S_NEW) return td_err_set(err, TD_ERR_ARG, "session submitted twice");
    if (s->n_ctx > d->n_ctx)
        return td_err_set(err, TD_ERR_ARG, "session needs %d positions, the driver has %d",
                          s->n_ctx, d->n_ctx);
    int slot = -1;
    for (int i = 0; i < d->max_sessions && slot < 0; i++)
        if (!d->live[i]) slot = i;
    if (slot < 0)
        return td_err_set(err, TD_ERR_ARG, "all %d session slots are busy", d->max_sessions);
    if (s->dflash) {
        int same = d->n_hl == s->n_hl && !memcmp(d->hl, s->hl, (size_t)s->n_hl * sizeof *s->hl);
        int busy = 0;
        for (int i = 0; i < d->max_sessions; i++) busy |= d->live[i] && d->live[i]->dflash;
        if (!same && busy)
            return td_err_set(err, TD_ERR_ARG,
                              "a dflash session with other feature layers is live in this driver");
        if (!same) {
            d->n_hl = s->n_hl;
            d->n_embd = s->fdim / s->n_hl;
            memcpy(d->hl, s->hl, (size_t)s->n_hl * sizeof *s->hl);
            free(d->hidden);
            d->hidden = NULL;
        }
    }
    s->slot = slot, s->d = d, s->state = S_LIVE;
    d->live[slot] = s;
    d->n_live++;
    td_kv_cache_crop(d->kv, slot, 0);
    s->t_start = td_time_now();
    s->s.stop = TD_STOP_LENGTH;
    if (s->cur >= 2) {
        /* a session keeps every accepted token but the last in its slot: prefill them now, alone
         * (the last one is the first round's anchor). An ar session does the same, so a prompt's
         * keys/values are computed the same way whatever the method (td_generate_ar too) */
        double t0 = td_time_now();
        int n = s->cur - 1, rc = s_reserve(d, n, s->dflash ? n : 0, err);
        if (rc == TD_OK) {
            for (int i = 0; i < n; i++)
                d->seq[i] = slot, d->pos[i] = i, d->logits_for[i] = (uint8_t)s->dflash;
            rc = s_forward_at(d, 0, n, s->text, NULL, s->dflash ? d->hidden : NULL, err);
            s->s.forwards++;
        }
        if (rc == TD_OK && s->dflash) { /* the prompt's features: positions 0 .. cur-2 */
            memcpy(s->feat, d->hidden, (size_t)n * s->fdim * sizeof *s->feat);
            s_round_features(s->feat, (int64_t)n * s->fdim, s->ftype);
        }
        s->s.verifier_s += td_time_now() - t0;
        if (rc != TD_OK) {
            s->rc = rc;
            if (err) s->err = *err;
            s_leave(d, s);
            return rc;
        }
    }
    if (s_finished(s)) s_leave(d, s);
    return TD_OK;
}

int td_driver_round(td_driver_t *d, td_err_t *err) {
    /* sessions cancelled between rounds leave first */
    for (int i = 0; i < d->max_sessions; i++) {
        td_session_t *s = d->live[i];
        if (s && (s->cancelled || s_finished(s))) {
            if (s->cancelled && s->s.stop == TD_STOP_LENGTH) s->s.stop = TD_STOP_CALLBACK;
            s_leave(d, s);
        }
    }
    if (!d->n_live) return 0;
    /* 1. every speculating session's draft request goes out before any answer is awaited */
    int rows = 0;
    for (int i = 0; i < d->max_sessions; i++)
        if (d->live[i]) {
            s_begin(d->live[i]);
            int from = td_kv_cache_len(d->kv, i), need = d->live[i]->cur - from;
            rows += (d->live[i]->g + 1 > need ? d->live[i]->g + 1 : need);
        }
    int rc = s_reserve(d, rows, rows, err);
    /* 2. proposals in, rows into the shared batch */
    int n = 0, n_out = 0;
    for (int i = 0; rc == TD_OK && i < d->max_sessions; i++) {
        td_session_t *s = d->live[i];
        if (!s) continue;
        s->row0 = n_out;
        s->brow0 = n;
        int k = s_prepare(s, d->tokens + n, d->pos + n, d->seq + n, d->logits_for + n);
        n += k;
        n_out += s->n_logit_rows;
    }
    /* 3. one forward for every session, or, when the rows exceed what the backend keeps
     * batch-invariant (CPU float weights: 24), a few forwards, each holding whole sessions within
     * that bound (a session alone over it gets a pass of its own, as when it runs alone): each
     * session's logits are then bitwise the same as in its solo run */
    for (int i = 0, c0 = -1, c_rows = 0; rc == TD_OK && n > 0 && i <= d->max_sessions; i++) {
        td_session_t *s = i < d->max_sessions ? d->live[i] : NULL;
        if (i < d->max_sessions && (!s || !s->n_rows)) continue;
        if (c0 >= 0 && (!s || c_rows + s->n_rows > d->max_pass)) {
            const td_session_t *f = d->live[c0];
            float *hid = d->n_hl && d->hidden
                             ? d->hidden + (size_t)f->row0 * (size_t)d->n_hl * (size_t)d->n_embd
                             : NULL;
            rc = s_forward_at(d, f->brow0, c_rows, NULL, d->logits + (size_t)f->row0 * (size_t)d->V,
                              hid, err);
            c0 = -1, c_rows = 0;
        }
        if (s && c0 < 0) c0 = i;
        if (s) c_rows += s->n_rows;
    }
    /* 4. each session commits on its own rows; finished ones leave at once */
    for (int i = 0; i < d->max_sessions; i++) {
        td_session_t *s = d->live[i];
        if (!s) continue;
        if (rc != TD_OK) {
            s->rc = rc;
            if (err) s->err = *err;
            s_leave(d, s);
            continue;
        }
        s->s.forwards++;
        s_commit(s, d->logits + (size_t)s->row0 * (size_t)d->V,
                 s->dflash ? d->hidden + (size_t)s->row0 * d->n_hl * d->n_embd : NULL);
        if (s->cancelled && s->s.stop == TD_STOP_LENGTH) s->s.stop = TD_STOP_CALLBACK;
        if (s->cancelled || s_finished(s)) s_leave(d, s);
    }
    return rc != TD_OK ? rc : d->n_live;
}

int td_driver_run(td_driver_t *d, td_err_t *err) {
    while (d->n_live > 0) {
        int rc = td_driver_round(d, err);
        if (rc < 0) return rc;
    }
    return TD_OK;
}

int td_driver_generate(td_model_t *v, const td_session_opts_t *o, int32_t *out, td_spec_stats_t *st,
                       td_err_t *err) {
    td_session_t *s = td_session_new(v, o, err);
    td_driver_t *d = s ? td_driver_new(v, 1, td_session_n_ctx(s), err) : NULL;
    int rc = s && d ? TD_OK : (err && err->code ? err->code : TD_ERR);
    if (rc == TD_OK) rc = td_driver_submit(d, s, err);
    if (rc == TD_OK) rc = td_driver_run(d, err);
    if (s) {
        if (rc == TD_OK) rc = td_session_status(s, err);
        memcpy(out, s->out, (size_t)s->s.generated * sizeof *out);
        if (st) *st = s->s;
    }
    td_driver_destroy(&d);
    td_session_destroy(&s);
    return rc;
}
