/* spec.c - the verifier's speculative decoding loop over the protocol (see spec.h). */
#include "verifier/spec.h"

#include "verifier/accept.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s_methods[TD_METHOD_COUNT] = {"ar",        "spec-ar",  "specdiff", "apd",
                                                 "diffusion", "selfspec", "planned"};
static const char *s_verifies[] = {"rejection", "match", "greedy"};

const char *td_method_name(td_method_t m) {
    return (unsigned)m < TD_METHOD_COUNT ? s_methods[m] : "?";
}
int td_method_parse(const char *s) {
    for (int i = 0; i < TD_METHOD_COUNT; i++)
        if (!strcmp(s, s_methods[i])) return i;
    return -1;
}
const char *td_verify_name(td_verify_t v) { return (unsigned)v < 3 ? s_verifies[v] : "?"; }
int td_verify_parse(const char *s) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, s_verifies[i])) return i;
    return -1;
}

td_spec_params_t td_spec_params_default(td_method_t method) {
    td_spec_params_t p = {.method = method,
                          .gamma = 8,
                          .steps = 4,
                          .order = 0,
                          .verify = TD_VERIFY_REJECTION,
                          .max_tokens = 128,
                          .sampling = {0, 0, 1},
                          .draft_sampling = {0, 0, 1},
                          .dist_top_k = 32,
                          .apd_mixture = 0.7f,
                          .apd_kv_window = 16,
                          .drafter_timeout_ms = 5000};
    if (method == TD_METHOD_SPEC_AR) p.steps = 1;
    if (method == TD_METHOD_APD) p.gamma = 16, p.steps = 1;
    return p;
}

typedef struct link {
    td_client_t *dc;
    uint64_t session;
    int timeout_ms;
    const Tandem__Hello *hello;
    char why[256];
} link_t;

/* Waits for the answer to (session, round) of the given body kind; skips heartbeats and stale
 * answers to earlier rounds. Returns the envelope, or NULL with l->why set. An Error answer is
 * returned as is (the caller looks at it). */
static Tandem__Envelope *s_wait(link_t *l, uint64_t round, Tandem__Envelope__BodyCase want) {
    double deadline = td_time_now() + l->timeout_ms / 1e3;
    for (;;) {
        int left = (int)((deadline - td_time_now()) * 1e3);
        if (left <= 0) {
            snprintf(l->why, sizeof l->why, "drafter did not answer within %d ms", l->timeout_ms);
            return NULL;
        }
        Tandem__Envelope *env = NULL;
        td_err_t err = {0};
        int rc = td_client_recv(l->dc, &env, left, &err);
        if (rc == -1) continue;
        if (rc == -2) {
            snprintf(l->why, sizeof l->why, "drafter sent a malformed message: %.200s", err.msg);
            return NULL;
        }
        if (env->session_id == l->session && env->round == round &&
            (env->body_case == want || env->body_case == TANDEM__ENVELOPE__BODY_ERROR))
            return env;
        td_wire_free(&env); /* heartbeat, or a late answer to an abandoned round */
    }
}

static Tandem__Envelope *s_request_draft(link_t *l, uint64_t round, const int32_t *text, int *known,
                                         int cur, int gamma, const td_spec_params_t *p,
                                         int want_dist) {
    for (int attempt = 0; attempt < 2; attempt++) {
        Tandem__Envelope env;
        Tandem__DraftRequest r;
        Tandem__Sampling smp = TANDEM__SAMPLING__INIT;
        Tandem__ApdSettings apd = TANDEM__APD_SETTINGS__INIT;
        td_wire_draft_request_init(&env, &r, l->session, round);
        int base = *known;
        uint32_t *delta = malloc(sizeof(uint32_t) * (size_t)(cur - base + 1));
        if (!delta) {
            snprintf(l->why, sizeof l->why, "out of memory");
            return NULL;
        }
        for (int i = base; i < cur; i++) delta[i - base] = (uint32_t)text[i];
        r.base_len = (uint32_t)base;
        r.n_prefix_delta = (size_t)(cur - base);
        r.prefix_delta = delta;
        r.gamma = (uint32_t)gamma;
        r.steps = (uint32_t)(p->steps > 0 ? p->steps : 1);
        r.order = (Tandem__UnmaskOrder)p->order;
        smp.temperature = p->draft_sampling.temperature;
        smp.top_k = (uint32_t)(p->draft_sampling.top_k > 0 ? p->draft_sampling.top_k : 0);
        smp.top_p = p->draft_sampling.top_p;
        r.sampling = &smp;
        r.seed = p->seed;
        r.want_dist = want_dist;
        r.dist_top_k = (uint32_t)(p->dist_top_k > 0 ? p->dist_top_k : 32);
        if (p->method == TD_METHOD_APD) {
            apd.mixture = p->apd_mixture;
            apd.kv_window = (uint32_t)p->apd_kv_window;
            apd.lookahead = (uint32_t)gamma;
            r.apd = &apd;
        }
        td_err_t err = {0};
        int rc = td_client_send(l->dc, &env, &err);
        free(delta);
        if (rc != TD_OK) {
            snprintf(l->why, sizeof l->why, "sending to the drafter failed: %.200s", err.msg);
            return NULL;
        }
        Tandem__Envelope *ans = s_wait(l, round, TANDEM__ENVELOPE__BODY_PROPOSAL);
        if (!ans) return NULL;
        if (ans->body_case == TANDEM__ENVELOPE__BODY_PROPOSAL) {
            *known = cur;
            return ans;
        }
        int code = ans->error->code;
        snprintf(l->why, sizeof l->why, "drafter error %s: %.200s", td_wire_error_code_name(code),
                 ans->error->message ? ans->error->message : "");
        td_wire_free(&ans);
        if ((code == TANDEM__ERROR_CODE__ERROR_UNKNOWN_SESSION ||
             code == TANDEM__ERROR_CODE__ERROR_OUT_OF_ORDER) &&
            base > 0) {
            *known = 0; /* the drafter lost the session: send the whole text again */
            continue;
        }
        if (code == TANDEM__ERROR_CODE__ERROR_NO_HANDSHAKE && l->hello && attempt == 0) {
            /* a drafter that restarted does not know us: handshake again, resend from scratch */
            if (td_client_handshake(l->dc, l->hello, NULL, l->timeout_ms, &err) != TD_OK) {
                snprintf(l->why, sizeof l->why,
                         "handshake with the restarted drafter failed: %.200s", err.msg);
                return NULL;
            }
            *known = 0;
            continue;
        }
        return NULL;
    }
    return NULL;
}

/* Fetches the drafter's full row of the current proposal into dst[V]. */
static int s_fetch_row(link_t *l, uint64_t round, int pos, Tandem__RowKind kind, float *dst,
                       int V) {
    Tandem__Envelope env;
    Tandem__FullRowRequest r;
    td_wire_full_row_request_init(&env, &r, l->session, round);
    r.position = (uint32_t)pos;
    r.kind = kind;
    td_err_t err = {0};
    if (td_client_send(l->dc, &env, &err) != TD_OK) {
        snprintf(l->why, sizeof l->why, "sending to the drafter failed: %.200s", err.msg);
        return -1;
    }
    for (;;) {
        Tandem__Envelope *ans = s_wait(l, round, TANDEM__ENVELOPE__BODY_FULL_ROW);
        if (!ans) return -1;
        if (ans->body_case == TANDEM__ENVELOPE__BODY_ERROR) {
            snprintf(l->why, sizeof l->why, "drafter error on a full row: %.200s",
                     ans->error->message);
            td_wire_free(&ans);
            return -1;
        }
        if (ans->full_row->position != (uint32_t)pos) { /* stale answer to another row */
            td_wire_free(&ans);
            continue;
        }
        int ok = ans->full_row->n_values >= (size_t)V;
        if (ok)
            memcpy(dst, ans->full_row->values, (size_t)V * sizeof(float));
        else
            snprintf(l->why, sizeof l->why, "drafter sent a row of %zu values, need %d",
                     ans->full_row->n_values, V);
        td_wire_free(&ans);
        return ok ? 0 : -1;
    }
}

/* Checks a proposal's shape; NULL when usable, else why not. */
static const char *s_check_proposal(const Tandem__Proposal *pr, int gamma, int V, int want_dist,
                                    int apd) {
    if (pr->n_tokens != (size_t)gamma) return "wrong number of drafted tokens";
    for (size_t j = 0; j < pr->n_tokens; j++)
        if (pr->tokens[j] >= (uint32_t)V) return "drafted token outside the verifier's vocabulary";
    if (!want_dist) return NULL;
    if (pr->n_dists != (size_t)gamma) return "missing per-position distributions";
    for (size_t j = 0; j < pr->n_dists; j++) {
        const Tandem__SparseDist *d = pr->dists[j];
        for (size_t i = 0; i < d->n_ids; i++)
            if (d->ids[i] >= (uint32_t)V)
                return "distribution id outside the verifier's vocabulary";
        if (apd && d->n_logits != d->n_ids) return "APD proposal without logits";
    }
    return NULL;
}

int td_spec_generate(td_model_t *v, td_client_t *dc, uint64_t session_id, const int32_t *prompt,
                     int n_prompt, const td_spec_params_t *p, td_token_cb cb, void *ud,
                     int32_t *out, td_spec_stats_t *st, td_err_t *err) {
    const td_config_t *c = td_model_config(v);
    const int V = c->n_vocab, apd = p->method == TD_METHOD_APD;
    td_spec_stats_t s;
    memset(&s, 0, sizeof s);
    s.lossy = apd;
    if (!c->causal)
        return td_err_set(err, TD_ERR_ARG, "the verifier must be a causal LM (%s is not)",
                          td_arch_name(c->arch));
    if (p->gamma < 1 || p->gamma > TD_SPEC_MAX_GAMMA)
        return td_err_set(err, TD_ERR_ARG, "gamma must be in [1, %d], got %d", TD_SPEC_MAX_GAMMA,
                          p->gamma);
    if (n_prompt < 1) return td_err_set(err, TD_ERR_ARG, "empty prompt");
    int n_ctx = n_prompt + p->max_tokens + p->gamma + 1;
    if (c->n_ctx_train > 0 && n_ctx > c->n_ctx_train) n_ctx = c->n_ctx_train;
    if (n_prompt + 1 >= n_ctx)
        return td_err_set(err, TD_ERR_ARG, "prompt of %d tokens does not fit the context of %d",
                          n_prompt, n_ctx);
    const int greedy = p->sampling.temperature <= 0 || p->verify == TD_VERIFY_GREEDY;
    const int want_dist = apd || (!greedy && p->verify == TD_VERIFY_REJECTION);
    td_kv_cache_t *kv = td_kv_cache_new(v, 1, n_ctx, err);
    int32_t *text = malloc((size_t)n_ctx * sizeof *text);
    const size_t rows = (size_t)p->gamma + 1;
    float *logits = malloc(rows * (size_t)V * sizeof(float)),
          *prob = malloc(rows * (size_t)V * sizeof(float));
    float *qfull_mem = NULL;
    const float **qfull = calloc(rows, sizeof *qfull);
    td_sparse_row_t *sq = calloc(rows, sizeof *sq);
    td_apd_row_t *ar = calloc(rows, sizeof *ar);
    int32_t *ids = malloc(rows * (size_t)TD_WIRE_MAX_DIST_TOP_K * sizeof *ids),
            acc_out[TD_SPEC_MAX_GAMMA + 1];
    int32_t draft[TD_SPEC_MAX_GAMMA], btok[TD_SPEC_MAX_GAMMA + 1], bpos[TD_SPEC_MAX_GAMMA + 1];
    int rc = TD_OK;
    if (!kv || !text || !logits || !prob || !qfull || !sq || !ar || !ids) {
        rc = kv ? td_err_set(err, TD_ERR_NOMEM, "out of memory") : (err ? err->code : TD_ERR);
        goto done;
    }
    memcpy(text, prompt, (size_t)n_prompt * sizeof *text);
    int cur = n_prompt, known = 0, backoff = 1;
    uint64_t round = 0, next_try = 0;
    td_rng_t rng;
    td_rng_seed(&rng, p->seed);
    link_t l = {dc, session_id, p->drafter_timeout_ms > 0 ? p->drafter_timeout_ms : 5000, p->hello,
                ""};
    double t_start = td_time_now();
    if (cur >= 2) { /* the cache holds every accepted token but the last */
        double t0 = td_time_now();
        uint8_t *none = calloc((size_t)cur, 1);
        td_batch_t b = {.n = cur - 1, .tokens = text, .attn = TD_ATTN_CAUSAL, .logits_for = none};
        rc = none ? td_model_forward(v, kv, &b, NULL, err)
                  : td_err_set(err, TD_ERR_NOMEM, "out of memory");
        free(none);
        s.forwards++;
        s.verifier_s += td_time_now() - t0;
        if (rc != TD_OK) goto done;
    }
    s.stop = TD_STOP_LENGTH;
    while (s.generated < p->max_tokens && cur < n_ctx) {
        int remaining = p->max_tokens - s.generated;
        int g = p->gamma < remaining ? p->gamma : remaining;
        if (cur + g >= n_ctx) g = n_ctx - cur - 1;
        round++;
        Tandem__Envelope *prop = NULL;
        const char *bad = NULL;
        if (g >= 1 && round >= next_try) {
            double t0 = td_time_now();
            prop = s_request_draft(&l, round, text, &known, cur, g, p, want_dist);
            double rt = td_time_now() - t0;
            if (prop) {
                double dus = prop->proposal->drafter_us / 1e6;
                s.drafter_s += dus < rt ? dus : rt;
                s.transport_s += dus < rt ? rt - dus : 0;
                bad = s_check_proposal(prop->proposal, g, V, want_dist, apd);
                if (bad) {
                    snprintf(l.why, sizeof l.why, "drafter sent an unusable proposal: %s", bad);
                    td_wire_free(&prop);
                }
            } else {
                s.transport_s += rt;
            }
            if (!prop) {
                known = 0;
                next_try = round + (uint64_t)backoff;
                if (backoff < 64) backoff *= 2;
            } else {
                backoff = 1;
            }
        }
        int n_emit = 0, n_acc = 0;
        double tv = td_time_now();
        if (!prop) {
            /* plain AR round */
            if (g >= 1) {
                s.fallbacks++;
                snprintf(s.last_fallback, sizeof s.last_fallback, "%s", l.why);
                td_log(TD_LOG_INFO, "verifier: round %llu as plain AR: %s",
                       (unsigned long long)round, l.why);
            }
            int32_t last = text[cur - 1], pos = cur - 1;
            td_batch_t b = {.n = 1, .tokens = &last, .pos = &pos, .attn = TD_ATTN_CAUSAL};
            if ((rc = td_model_forward(v, kv, &b, logits, err)) != TD_OK) break;
            s.forwards++;
            acc_out[0] = td_sample(&p->sampling, &rng, logits, V, NULL);
            n_emit = 1;
        } else {
            const Tandem__Proposal *pr = prop->proposal;
            int predrafted = pr->predrafted ? 1 : 0;
            for (int j = 0; j < g; j++) draft[j] = (int32_t)pr->tokens[j];
            int nr = apd ? g : g + 1;
            btok[0] = text[cur - 1];
            bpos[0] = cur - 1;
            for (int j = 1; j < nr; j++) btok[j] = draft[j - 1], bpos[j] = cur - 1 + j;
            td_batch_t b = {.n = nr, .tokens = btok, .pos = bpos, .attn = TD_ATTN_CAUSAL};
            if ((rc = td_model_forward(v, kv, &b, logits, err)) != TD_OK) {
                td_wire_free(&prop);
                break;
            }
            s.forwards++;
            for (int j = 0; j < g; j++) {
                const Tandem__SparseDist *d = want_dist ? pr->dists[j] : NULL;
                if (!d) continue;
                int32_t *row_ids = ids + (size_t)j * TD_WIRE_MAX_DIST_TOP_K;
                for (size_t i = 0; i < d->n_ids; i++) row_ids[i] = (int32_t)d->ids[i];
                sq[j] = (td_sparse_row_t){(int)d->n_ids, row_ids, d->probs, d->rest_mass};
                ar[j] = (td_apd_row_t){(int)d->n_ids, row_ids, d->logits, d->logit_bound};
                qfull[j] = NULL;
            }
            int need = -1, fail = 0;
            if (apd) {
                int k = 0;
                for (;;) {
                    rc = td_apd_accept(ar, qfull, logits, draft, g, V, p->apd_mixture, &k, &need);
                    if (rc != TD_OK || need < 0) break;
                    if (!qfull_mem && !(qfull_mem = malloc(rows * (size_t)V * sizeof(float)))) {
                        fail = 1;
                        break;
                    }
                    if (s_fetch_row(&l, round, need, TANDEM__ROW_KIND__ROW_LOGITS,
                                    qfull_mem + (size_t)need * V, V)) {
                        fail = 1;
                        break;
                    }
                    qfull[need] = qfull_mem + (size_t)need * V;
                    s.full_rows++;
                }
                if (rc == TD_OK && !fail) {
                    n_acc = k;
                    n_emit = k;
                    memcpy(acc_out, draft, (size_t)k * sizeof *draft);
                }
            } else if (greedy) {
                rc = td_accept_greedy(logits, draft, g, V, acc_out, &n_acc);
                n_emit = n_acc + 1;
            } else {
                for (int j = 0; j < g + 1; j++)
                    td_sampling_dist(&p->sampling, logits + (size_t)j * V, V, prob + (size_t)j * V);
                if (p->verify == TD_VERIFY_MATCH) {
                    rc = td_accept_match(prob, draft, g, V, &rng, acc_out, &n_acc);
                } else {
                    for (;;) {
                        rc = td_accept_rejection_sparse(prob, sq, qfull, draft, g, V, &rng, acc_out,
                                                        &n_acc, &need);
                        if (rc != TD_OK || need < 0) break;
                        if (!qfull_mem && !(qfull_mem = malloc(rows * (size_t)V * sizeof(float)))) {
                            fail = 1;
                            break;
                        }
                        if (s_fetch_row(&l, round, need, TANDEM__ROW_KIND__ROW_PROBS,
                                        qfull_mem + (size_t)need * V, V)) {
                            fail = 1;
                            break;
                        }
                        qfull[need] = qfull_mem + (size_t)need * V;
                        s.full_rows++;
                    }
                }
                n_emit = n_acc + 1;
            }
            td_wire_free(&prop);
            if (rc != TD_OK) {
                td_err_set(err, rc, "acceptance rule failed (round %llu)",
                           (unsigned long long)round);
                break;
            }
            if (fail) {
                /* the drafter vanished mid-round: this round's verifier work is discarded and the
                 * next one is done as plain AR */
                td_kv_cache_crop(kv, 0, cur - 1);
                known = 0;
                next_try = round + (uint64_t)backoff;
                s.fallbacks++;
                snprintf(s.last_fallback, sizeof s.last_fallback, "%s", l.why);
                s.verifier_s += td_time_now() - tv;
                continue;
            }
            s.rounds++;
            s.predrafted += predrafted;
            s.drafted += g;
            s.accepted += n_acc;
            if (!apd) s.bonus_tokens++;
            for (int j = 0; j < g; j++) {
                s.drafted_by_position[j]++;
                if (j < n_acc) s.accepted_by_position[j]++;
            }
        }
        /* commit: emit tokens one by one, honouring stop ids and max_tokens */
        for (int i = 0; i < n_emit && s.generated < p->max_tokens; i++) {
            int32_t id = acc_out[i];
            text[cur++] = id;
            out[s.generated++] = id;
            if (cb && cb(ud, id)) {
                s.stop = TD_STOP_CALLBACK;
                break;
            }
            int stop = 0;
            for (int k = 0; k < p->n_stop; k++) stop |= p->stop_ids[k] == id;
            if (stop) {
                s.stop = TD_STOP_EOS;
                break;
            }
        }
        /* keep the keys/values of verified positions only: the cache must hold cur - 1 tokens */
        int keep = cur - 1;
        td_kv_cache_crop(kv, 0, keep);
        if (td_kv_cache_len(kv, 0) <
            keep) { /* cannot happen: every emitted token but the last was in the batch */
            rc = td_err_set(err, TD_ERR, "internal: verifier cache behind the text");
            break;
        }
        s.verifier_s += td_time_now() - tv;
        if (s.stop != TD_STOP_LENGTH) break;
    }
    s.total_s = td_time_now() - t_start;
    if (rc == TD_OK && known > 0) {
        Tandem__Envelope env;
        Tandem__CloseSession cs;
        td_wire_close_session_init(&env, &cs, session_id);
        td_client_send(dc, &env, NULL);
    }
done:
    if (st) *st = s;
    td_kv_cache_destroy(&kv);
    free(text);
    free(logits);
    free(prob);
    free(qfull_mem);
    free(qfull);
    free(sq);
    free(ar);
    free(ids);
    return rc;
}
