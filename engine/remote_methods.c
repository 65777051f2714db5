/* remote_methods.c - selfspec and planned with a drafter process (see remote_methods.h). */
#include "engine/remote_methods.h"

#include "verifier/remote.h"

#include <stdlib.h>

typedef struct link {
    td_client_t *dc;
    uint64_t session, round, fingerprint;
    int timeout_ms;
    double drafter_s;
} link_t;

static int s_ss_start(void *ud, const int32_t *prefix, int n_prefix, const int32_t *const *tails,
                      const int *tail_lens, const int *canvas_starts, int n, int k, td_err_t *err) {
    link_t *l = ud;
    l->round++;
    return td_remote_selfspec_send(l->dc, l->session, l->round, prefix, n_prefix, tails, tail_lens,
                                   canvas_starts, n, k, l->fingerprint, err);
}

static int s_ss_finish(void *ud, int n, int k, int *counts, int32_t *pos, int32_t *ids,
                       td_err_t *err) {
    link_t *l = ud;
    uint64_t us = 0;
    int rc = td_remote_selfspec_recv(l->dc, l->session, l->round, l->timeout_ms, n, k, counts, pos,
                                     ids, &us, err);
    l->drafter_s += us / 1e6;
    return rc;
}

int td_selfspec_generate_via(td_model_t *m, td_client_t *dc, const td_remote_opts_t *o,
                             const int32_t *prompt, int n_prompt, const td_selfspec_params_t *p,
                             int32_t *out, td_selfspec_stats_t *st, td_err_t *err) {
    if (!m || !dc || !o || !o->session)
        return td_err_set(err, TD_ERR_ARG, "selfspec via a drafter: bad arguments");
    link_t l = {.dc = dc,
                .session = o->session,
                .timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 5000,
                .fingerprint = o->no_fingerprint ? 0 : td_selfspec_fingerprint(m)};
    td_selfspec_remote_t r = {.start = s_ss_start, .finish = s_ss_finish, .ud = &l};
    return td_selfspec_generate_remote(m, prompt, n_prompt, p, &r, out, st, err);
}

static int s_pl_fill(void *ud, const td_plan_tags_t *tags, const int32_t *ctx,
                     const td_pd_row_t *ctx_rows, int n_ctx, const td_plan_t *plan,
                     const td_planned_params_t *p, td_rng_t *rng, int32_t *scaffold, int cap,
                     td_planned_stats_t *st, td_err_t *err) {
    link_t *l = ud;
    int causal = 1;
    for (int i = 0; ctx_rows && i < n_ctx && causal; i++)
        causal = ctx_rows[i].pre == i + 1 && ctx_rows[i].lo == ctx_rows[i].hi;
    int32_t *rows3 = causal ? NULL : malloc((size_t)n_ctx * 3 * sizeof *rows3);
    if (!causal && !rows3) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    for (int i = 0; rows3 && i < n_ctx; i++) {
        rows3[3 * i] = ctx_rows[i].pre;
        rows3[3 * i + 1] = ctx_rows[i].lo;
        rows3[3 * i + 2] = ctx_rows[i].hi;
    }
    int units[TD_PLAN_MAX_SPANS];
    for (int k = 0; k < plan->n_spans; k++) units[k] = plan->spans[k].units;
    const int32_t t6[6] = {tags->async_open,  tags->async_close, tags->promise,
                           tags->topic_close, tags->sync,        tags->pad};
    int fw = 0, ss = 0;
    uint64_t us = 0;
    l->round++;
    int rc = td_remote_planned_fill(l->dc, l->session, l->round, l->timeout_ms, ctx, rows3, n_ctx,
                                    units, plan->n_spans, p->steps_ratio, p->dense, &p->sampling,
                                    rng->s, t6, cap, scaffold, &fw, &ss, &us, err);
    free(rows3);
    if (rc < 0) return rc;
    l->drafter_s += us / 1e6;
    td_planned_stats_add_fill(st, plan, fw, ss);
    return rc;
}

int td_planned_generate_via(td_model_t *planner, td_client_t *dc, const td_remote_opts_t *o,
                            const td_plan_tags_t *tags, const int32_t *prompt, int n_prompt,
                            const td_planned_params_t *p, int32_t *out, int *n_out,
                            td_planned_stats_t *st, double *drafter_s, td_err_t *err) {
    if (!planner || !dc || !o || !o->session)
        return td_err_set(err, TD_ERR_ARG, "planned via a drafter: bad arguments");
    link_t l = {
        .dc = dc, .session = o->session, .timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 5000};
    td_planned_remote_t r = {.fill = s_pl_fill, .ud = &l};
    int rc = td_planned_generate_remote(planner, &r, tags, prompt, n_prompt, p, out, n_out, NULL,
                                        NULL, st, err);
    if (drafter_s) *drafter_s += l.drafter_s;
    return rc;
}
