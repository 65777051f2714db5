/* remote.c - requests to a drafter's selfspec and planned services (see remote.h). */
#include "verifier/remote.h"

#include "verifier/link.h"

#include <stdlib.h>
#include <string.h>

/* Waits for (session, round) with body `want` or an Error; NULL with err set on timeout. Goes
 * through a drafter link, so heartbeats and late answers are skipped the same way everywhere. */
static td_msg_t *s_wait(td_client_t *c, uint64_t session, uint64_t round, int timeout_ms,
                        td_body_t want, td_err_t *err) {
    td_link_t *l = td_link_new(c, NULL, err);
    td_msg_t *env = NULL;
    if (l && td_link_wait(l, session, round, (int)want, timeout_ms, &env, err) != TD_OK) env = NULL;
    td_link_destroy(&l);
    return env;
}

/* An Error answer as a return code. */
static int s_error(const td_msg_t *env, td_err_t *err) {
    const td_error_msg_t *e = &env->error;
    int code = e->code == TD_PERR_UNSUPPORTED ? TD_ERR_UNSUPPORTED : TD_ERR;
    return td_err_set(err, code, "drafter error (%s): %.800s", td_wire_error_code_name(e->code),
                      e->message ? e->message : "");
}

int td_remote_selfspec_send(td_client_t *c, uint64_t session, uint64_t round, const int32_t *prefix,
                            int n_prefix, const int32_t *const *tails, const int *tail_lens,
                            const int *canvas_starts, int n, int k, uint64_t fingerprint,
                            td_err_t *err) {
    if (!c || n < 1 || n > (int)TD_WIRE_MAX_SELFSPEC_K || n_prefix < 0)
        return td_err_set(err, TD_ERR_ARG, "selfspec request: bad arguments");
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (size_t)tail_lens[i];
    uint32_t *pre = malloc(((size_t)n_prefix + 1) * sizeof *pre),
             *tl = malloc((total + 1) * sizeof *tl);
    uint32_t lens[TD_WIRE_MAX_SELFSPEC_K], starts[TD_WIRE_MAX_SELFSPEC_K];
    if (!pre || !tl) {
        free(pre);
        free(tl);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_prefix; i++) pre[i] = (uint32_t)prefix[i];
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < tail_lens[i]; j++) tl[at++] = (uint32_t)tails[i][j];
        lens[i] = (uint32_t)tail_lens[i];
        starts[i] = (uint32_t)canvas_starts[i];
    }
    td_msg_t env;
    td_msg_init(&env, TD_BODY_SELFSPEC_EVAL, session, round);
    td_selfspec_eval_t *r = &env.selfspec_eval;
    r->n_prefix = (size_t)n_prefix;
    r->prefix = pre;
    r->n_tails = total;
    r->tails = tl;
    r->n_tail_lens = r->n_canvas_starts = (size_t)n;
    r->tail_lens = lens;
    r->canvas_starts = starts;
    r->draft_k = (uint32_t)k;
    r->model_fingerprint = fingerprint;
    int rc = td_client_send(c, &env, err);
    free(pre);
    free(tl);
    return rc;
}

int td_remote_selfspec_recv(td_client_t *c, uint64_t session, uint64_t round, int timeout_ms, int n,
                            int k, int *counts, int32_t *pos, int32_t *ids, uint64_t *drafter_us,
                            td_err_t *err) {
    td_msg_t *env = s_wait(c, session, round, timeout_ms, TD_BODY_SELFSPEC_DRAFTS, err);
    if (!env) return err && err->code ? err->code : TD_ERR_IO;
    int rc = TD_OK;
    if (env->body == TD_BODY_ERROR) {
        rc = s_error(env, err);
        goto out;
    }
    const td_selfspec_drafts_t *d = &env->selfspec_drafts;
    if ((int)d->n_counts != n) {
        rc = td_err_set(err, TD_ERR_FORMAT, "the drafter answered %zu states, %d were asked",
                        d->n_counts, n);
        goto out;
    }
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        if ((int)d->counts[i] > k) {
            rc = td_err_set(err, TD_ERR_FORMAT, "the drafter sent %u drafts for state %d (k %d)",
                            d->counts[i], i, k);
            goto out;
        }
        counts[i] = (int)d->counts[i];
        for (int j = 0; j < counts[i]; j++, at++) {
            pos[i * k + j] = (int32_t)d->positions[at];
            ids[i * k + j] = (int32_t)d->tokens[at];
        }
    }
    if (drafter_us) *drafter_us = d->drafter_us;
out:
    td_msg_free(&env);
    return rc;
}

int td_remote_planned_fill(td_client_t *c, uint64_t session, uint64_t round, int timeout_ms,
                           const int32_t *ctx, const int32_t *rows3, int n_ctx,
                           const int *span_units, int n_spans, float steps_ratio, int dense,
                           const td_sampling_t *sp, uint64_t rng[4], const int32_t tags[6], int cap,
                           int32_t *scaffold, int *forwards, int *span_steps, uint64_t *drafter_us,
                           td_err_t *err) {
    if (!c || !ctx || n_ctx < 1 || n_spans < 1 || n_spans > (int)TD_WIRE_MAX_PLAN_SPANS ||
        cap < 1 || !scaffold || !rng || !tags)
        return td_err_set(err, TD_ERR_ARG, "planned fill request: bad arguments");
    uint32_t *uctx = malloc((size_t)n_ctx * sizeof *uctx),
             *urows = rows3 ? malloc((size_t)n_ctx * 3 * sizeof *urows) : NULL;
    uint32_t units[TD_WIRE_MAX_PLAN_SPANS], utags[6];
    if (!uctx || (rows3 && !urows)) {
        free(uctx);
        free(urows);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_ctx; i++) uctx[i] = (uint32_t)ctx[i];
    if (rows3)
        for (int i = 0; i < 3 * n_ctx; i++) urows[i] = (uint32_t)rows3[i];
    for (int i = 0; i < n_spans; i++) units[i] = (uint32_t)span_units[i];
    for (int i = 0; i < 6; i++) utags[i] = (uint32_t)tags[i];
    td_msg_t env;
    td_msg_init(&env, TD_BODY_PLANNED_FILL, session, round);
    td_planned_fill_t *r = &env.planned_fill;
    r->n_context = (size_t)n_ctx;
    r->context = uctx;
    r->n_context_rows = rows3 ? (size_t)n_ctx * 3 : 0;
    r->context_rows = urows;
    r->n_span_units = (size_t)n_spans;
    r->span_units = units;
    r->steps_ratio = steps_ratio;
    r->dense = dense;
    if (sp) {
        r->has_sampling = 1;
        r->sampling.temperature = sp->temperature;
        r->sampling.top_k = (uint32_t)sp->top_k;
        r->sampling.top_p = sp->top_p;
    }
    r->n_rng_state = 4;
    r->rng_state = rng;
    r->capacity = (uint32_t)cap;
    r->n_tags = 6;
    r->tags = utags;
    int rc = td_client_send(c, &env, err);
    free(uctx);
    free(urows);
    if (rc != TD_OK) return rc;
    td_msg_t *ans = s_wait(c, session, round, timeout_ms, TD_BODY_PLANNED_FILLED, err);
    if (!ans) return err && err->code ? err->code : TD_ERR_IO;
    if (ans->body == TD_BODY_ERROR) {
        rc = s_error(ans, err);
        td_msg_free(&ans);
        return rc;
    }
    const td_planned_filled_t *f = &ans->planned_filled;
    int need = 0;
    for (int i = 0; i < n_spans; i++) need += 10 * span_units[i] + 2;
    if ((int)f->n_scaffold != need || need > cap) {
        rc = td_err_set(err, TD_ERR_FORMAT,
                        "the drafter's scaffold has %zu tokens, the plan needs %d (room %d)",
                        f->n_scaffold, need, cap);
        td_msg_free(&ans);
        return rc;
    }
    for (int i = 0; i < need; i++) scaffold[i] = (int32_t)f->scaffold[i];
    for (int i = 0; i < 4; i++) rng[i] = f->rng_state[i];
    if (forwards) *forwards = (int)f->forwards;
    if (span_steps) *span_steps = (int)f->span_steps;
    if (drafter_us) *drafter_us = f->drafter_us;
    td_msg_free(&ans);
    return need;
}
