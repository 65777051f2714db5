/* planned.c - planned diffusion: tag lookup, strict plan parsing, scaffolds with block-sparse
 * attention rows, the batched span filler and the planner/filler loop. */
#include "drafter/planned.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- tags ---- */

int td_plan_tags_init(td_plan_tags_t *t, const td_tokenizer_t *tok, int32_t eos, td_err_t *err) {
    memset(t, 0, sizeof *t);
    if (!tok) return td_err_set(err, TD_ERR_ARG, "planned diffusion: no tokenizer");
    static const char *names[6] = {"<async>",  "</async>", "<promise>-<topic>",
                                   "</topic>", "<sync/>",  "[PAD]"};
    int32_t ids[6];
    char missing[256] = "";
    for (int i = 0; i < 6; i++) {
        ids[i] = td_tokenizer_token_id(tok, names[i]);
        if (ids[i] < 0 && i == 4) ids[i] = td_tokenizer_token_id(tok, "<sync>");
        if (ids[i] < 0) {
            size_t l = strlen(missing);
            snprintf(missing + l, sizeof missing - l, "%s%s", l ? " " : "", names[i]);
        }
    }
    if (missing[0])
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "the tokenizer has no planned-diffusion tags (missing: %s); this "
                          "checkpoint cannot plan - use plain decoding (ar or diffusion) instead",
                          missing);
    t->async_open = ids[0];
    t->async_close = ids[1];
    t->promise = ids[2];
    t->topic_close = ids[3];
    t->sync = ids[4];
    t->pad = ids[5];
    t->eos = eos;
    t->n_vocab = td_tokenizer_n_vocab(tok);
    t->kind = calloc((size_t)t->n_vocab, 1);
    t->ndigits = calloc((size_t)t->n_vocab, 1);
    t->value = calloc((size_t)t->n_vocab, 1);
    if (!t->kind || !t->ndigits || !t->value) {
        td_plan_tags_free(t);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t len = 0;
        const char *b = td_tokenizer_token_bytes(tok, id, &len);
        if (!b || len == 0 || td_tokenizer_is_added(tok, id)) continue;
        size_t i = 0;
        while (i < len && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r')) i++;
        size_t ws = i;
        int nd = 0, v = 0;
        while (i < len && b[i] >= '0' && b[i] <= '9') {
            if (nd < 3) v = v * 10 + (b[i] - '0');
            nd++;
            i++;
        }
        if (i != len) continue; /* something else in it */
        if (nd == 0) {
            t->kind[id] = 1;
        } else {
            t->kind[id] = ws ? 3 : 2;
            t->ndigits[id] = (uint8_t)(nd > 3 ? 3 : nd);
            t->value[id] = (uint8_t)(nd <= 2 ? v : 0);
        }
    }
    return TD_OK;
}

void td_plan_tags_free(td_plan_tags_t *t) {
    if (!t) return;
    free(t->kind);
    free(t->ndigits);
    free(t->value);
    t->kind = t->ndigits = t->value = NULL;
}

int td_plan_tag_ids(const td_tokenizer_t *tok, int32_t eos, int32_t *ids) {
    static const char *names[TD_PLAN_MAX_TAG_IDS] = {
        "<async>", "</async>", "<promise>-<topic>", "</topic>", "<sync/>", "<sync>", "[PAD]"};
    int n = 0;
    if (!tok) return 0;
    for (int i = 0; i < TD_PLAN_MAX_TAG_IDS; i++) {
        int32_t id = td_tokenizer_token_id(tok, names[i]);
        if (id < 0 || id == eos) continue;
        int dup = 0;
        for (int k = 0; k < n; k++) dup |= ids[k] == id;
        if (!dup) ids[n++] = id;
    }
    return n;
}

static int s_kind(const td_plan_tags_t *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->kind ? t->kind[id] : 0;
}

/* ---- parsing ---- */

/* The length inside promise body tokens[a, b). */
static int s_parse_length(const int32_t *tok, int a, int b, const td_plan_tags_t *t, int *units,
                          td_err_t *err) {
    int runs = 0, digits = 0, value = 0, run_at = -1, prev_numeric = 0;
    int cur_digits = 0, cur_value = 0;
    for (int i = a; i <= b; i++) {
        int k = i < b ? s_kind(t, tok[i]) : 0;
        int continues = k == 2 && prev_numeric;
        if (prev_numeric && !continues) { /* a run ended */
            runs++;
            digits = cur_digits;
            value = cur_value;
        }
        if (k == 2 || k == 3) {
            if (!continues) {
                cur_digits = 0;
                cur_value = 0;
                run_at = i;
                if (runs >= 1)
                    return td_err_set(err, TD_ERR_FORMAT,
                                      "plan: the promise at token %d has two numbers (token %d); "
                                      "one length is expected",
                                      a - 1, i);
            }
            cur_digits += t->ndigits[tok[i]];
            if (cur_digits <= 2)
                cur_value = cur_value * (t->ndigits[tok[i]] == 2 ? 100 : 10) + t->value[tok[i]];
            prev_numeric = 1;
        } else {
            prev_numeric = 0;
        }
    }
    if (runs == 0)
        return td_err_set(err, TD_ERR_FORMAT,
                          "plan: the promise at token %d has no length (`<promise>-<topic> words "
                          "N </topic>`, N in tens of tokens)",
                          a - 1);
    if (digits > 2)
        return td_err_set(err, TD_ERR_FORMAT,
                          "plan: the number at token %d is not a length (more than 2 digits)",
                          run_at);
    if (value == 0)
        return td_err_set(err, TD_ERR_FORMAT, "plan: the length at token %d is 0", run_at);
    *units = value;
    return TD_OK;
}

int td_plan_parse(const int32_t *tokens, int n, const td_plan_tags_t *tags, td_plan_t *plan,
                  td_err_t *err) {
    if (!tags || !plan || n < 0 || (n > 0 && !tokens))
        return td_err_set(err, TD_ERR_ARG, "plan parse: bad arguments");
    memset(plan, 0, sizeof *plan);
    int open = -1; /* index of the open promise */
    for (int i = 0; i < n; i++) {
        int32_t id = tokens[i];
        if (id == tags->async_open || id == tags->async_close)
            return td_err_set(err, TD_ERR_FORMAT,
                              "plan: %s at token %d (async tags belong to scaffolds, not plans)",
                              id == tags->async_open ? "<async>" : "</async>", i);
        if (id == tags->promise) {
            if (open >= 0)
                return td_err_set(err, TD_ERR_FORMAT,
                                  "plan: <promise>-<topic> at token %d inside the promise opened "
                                  "at token %d (unterminated tag)",
                                  i, open);
            open = i;
            continue;
        }
        if (id == tags->topic_close) {
            if (open < 0)
                return td_err_set(err, TD_ERR_FORMAT,
                                  "plan: </topic> at token %d without an open <promise>-<topic>",
                                  i);
            if (plan->n_spans >= TD_PLAN_MAX_SPANS)
                return td_err_set(err, TD_ERR_FORMAT, "plan: more than %d spans in one stage",
                                  TD_PLAN_MAX_SPANS);
            td_plan_span_t *s = &plan->spans[plan->n_spans];
            int rc = s_parse_length(tokens, open + 1, i, tags, &s->units, err);
            if (rc != TD_OK) return rc;
            s->promise_at = open;
            s->close_at = i;
            s->length = 10 * s->units;
            plan->n_spans++;
            open = -1;
            continue;
        }
        if (id == tags->sync || (tags->eos >= 0 && id == tags->eos)) {
            const char *what = id == tags->sync ? "<sync/>" : "EOS";
            if (open >= 0)
                return td_err_set(err, TD_ERR_FORMAT,
                                  "plan: unterminated <promise>-<topic> opened at token %d (%s at "
                                  "token %d before its </topic>)",
                                  open, what, i);
            if (i != n - 1)
                return td_err_set(err, TD_ERR_FORMAT,
                                  "plan: %d tokens after the stage's %s at token %d", n - 1 - i,
                                  what, i);
            plan->end = id == tags->sync ? TD_PLAN_END_SYNC : TD_PLAN_END_EOS;
            plan->n_used = n;
            return TD_OK;
        }
    }
    if (open >= 0)
        return td_err_set(err, TD_ERR_FORMAT,
                          "plan: unterminated <promise>-<topic> opened at token %d (the plan "
                          "ends first)",
                          open);
    plan->end = TD_PLAN_END_NONE;
    plan->n_used = n;
    return TD_OK;
}

/* ---- rows, scaffolds ---- */

void td_pd_rows_mask(const td_pd_row_t *rows, int n, uint8_t *mask, int64_t stride) {
    for (int i = 0; i < n; i++) {
        uint8_t *m = mask + (int64_t)i * stride;
        for (int64_t k = 0; k < stride; k++)
            m[k] = (k < rows[i].pre || (k >= rows[i].lo && k < rows[i].hi)) ? 1 : 0;
    }
}

static td_pd_row_t s_causal(int i) { return (td_pd_row_t){i + 1, 0, 0}; }

int td_planned_scaffold(const td_plan_t *plan, const td_plan_tags_t *tags, int32_t mask_id,
                        int start, int dense, int32_t *tokens, td_pd_row_t *rows, int cap) {
    int total = 0;
    for (int k = 0; k < plan->n_spans; k++) total += plan->spans[k].length + 2;
    if (total > cap) return TD_ERR_ARG;
    int at = 0;
    for (int k = 0; k < plan->n_spans; k++) {
        int len = plan->spans[k].length, lo = start + at, hi = lo + len + 2;
        for (int j = 0; j < len + 2; j++) {
            tokens[at + j] = j == 0 ? tags->async_open : j == len + 1 ? tags->async_close : mask_id;
            rows[at + j] =
                dense ? (td_pd_row_t){start, start, start + total} : (td_pd_row_t){start, lo, hi};
        }
        at += len + 2;
    }
    return total;
}

td_planned_params_t td_planned_params_default(void) {
    return (td_planned_params_t){.max_tokens = 256,
                                 .max_plan_tokens = 128,
                                 .steps_ratio = 1.0f,
                                 .dense = 0,
                                 .sampling = {.temperature = 0.0f, .top_k = 0, .top_p = 1.0f},
                                 .seed = 0,
                                 .only_span = -1};
}

int td_planned_clean(const td_plan_tags_t *tags, const int32_t *raw, int n, int32_t *out) {
    int m = 0, in_promise = 0;
    for (int i = 0; i < n; i++) {
        int32_t id = raw[i];
        if (id == tags->promise) {
            in_promise = 1;
            continue;
        }
        if (in_promise) {
            if (id == tags->topic_close) in_promise = 0;
            continue;
        }
        if (id == tags->async_open || id == tags->async_close || id == tags->sync ||
            id == tags->pad || id == tags->topic_close || (tags->eos >= 0 && id == tags->eos))
            continue;
        out[m++] = id;
    }
    return m;
}

/* ---- the filler ---- */

/* Negative entropy of the score distribution of a logits row (mask already -inf). */
static double s_neg_entropy(const td_sampling_t *sp, const float *row, int V, float *d) {
    if (sp->temperature > 0.0f) {
        td_sampling_dist(sp, row, V, d);
    } else {
        td_log_softmax(d, row, V);
        for (int t = 0; t < V; t++) d[t] = expf(d[t]);
    }
    double h = 0.0;
    for (int t = 0; t < V; t++)
        if (d[t] > 0.0f) h += (double)d[t] * log((double)d[t]);
    return h;
}

int td_planned_fill(td_model_t *m, const td_plan_tags_t *tags, const int32_t *ctx,
                    const td_pd_row_t *ctx_rows, int n_ctx, const td_plan_t *plan,
                    const td_planned_params_t *p, td_rng_t *rng, int32_t *scaffold,
                    td_pd_row_t *sc_rows, int cap, td_planned_stats_t *st, td_err_t *err) {
    if (!m || !tags || !plan || !p || !rng || !scaffold || !sc_rows || n_ctx < 1 || !ctx)
        return td_err_set(err, TD_ERR_ARG, "planned fill: bad arguments");
    const td_config_t *c = td_model_config(m);
    if (!c->is_diffusion || c->causal || c->mask_token_id < 0)
        return td_err_set(err, TD_ERR_ARG, "planned fill: %s is not a masked-diffusion LM",
                          td_arch_name(c->arch));
    const int V = c->n_vocab, mask_id = c->mask_token_id, shift = c->logit_shift ? 1 : 0;
    int need = 0, maxlen = 0;
    for (int k = 0; k < plan->n_spans; k++) {
        if (plan->spans[k].length < 1)
            return td_err_set(err, TD_ERR_ARG, "planned fill: span %d has length 0", k);
        need += plan->spans[k].length + 2;
        if (plan->spans[k].length > maxlen) maxlen = plan->spans[k].length;
    }
    if (plan->n_spans == 0) return 0;
    int limit = c->n_ctx_train > 0 ? c->n_ctx_train : n_ctx + need;
    if (n_ctx + need > limit || need > cap)
        return td_err_set(err, TD_ERR_ARG,
                          "planned: the plan's %d span(s) need %d positions after %d tokens of "
                          "context, but only %d fit (model context %d)",
                          plan->n_spans, need, n_ctx,
                          (limit < n_ctx + cap ? limit : n_ctx + cap) - n_ctx, c->n_ctx_train);
    for (int i = 0; i < n_ctx; i++)
        if (ctx[i] < 0 || ctx[i] >= V)
            return td_err_set(err, TD_ERR_ARG, "planned fill: context token %d out of range",
                              ctx[i]);
    int32_t ids[6] = {tags->async_open,  tags->async_close, tags->promise,
                      tags->topic_close, tags->sync,        tags->pad};
    for (int i = 0; i < 6; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return td_err_set(err, TD_ERR_ARG,
                              "planned: tag id %d is outside the filler's vocabulary (%d)", ids[i],
                              V);
    int n_sc = td_planned_scaffold(plan, tags, mask_id, n_ctx, p->dense, scaffold, sc_rows, cap);
    const int N = n_ctx + n_sc;
    int rc = TD_OK;
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, N, err);
    if (!kv) return err && err->code ? err->code : TD_ERR_NOMEM;
    int32_t *tok = malloc((size_t)N * sizeof *tok), *pos = malloc((size_t)N * sizeof *pos);
    int32_t *btok = malloc((size_t)N * sizeof *btok);
    uint8_t *lf = malloc((size_t)N), *mask = malloc((size_t)N * (size_t)N);
    td_pd_row_t *rows = malloc((size_t)N * sizeof *rows), *brow = malloc((size_t)N * sizeof *brow);
    float *logits = malloc((size_t)n_sc * V * sizeof *logits), *d = malloc((size_t)V * sizeof *d);
    double *conf = malloc((size_t)N * sizeof *conf);
    int *rowof = malloc((size_t)N * sizeof *rowof),
        *span_lo = malloc((size_t)plan->n_spans * sizeof(int));
    uint8_t *pick = calloc((size_t)N, 1);
    if (!tok || !pos || !btok || !lf || !mask || !rows || !brow || !logits || !d || !conf ||
        !rowof || !span_lo || !pick) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto done;
    }
    memcpy(tok, ctx, (size_t)n_ctx * sizeof *tok);
    memcpy(tok + n_ctx, scaffold, (size_t)n_sc * sizeof *tok);
    for (int i = 0; i < n_ctx; i++) rows[i] = ctx_rows ? ctx_rows[i] : s_causal(i);
    memcpy(rows + n_ctx, sc_rows, (size_t)n_sc * sizeof *rows);
    for (int k = 0, at = n_ctx; k < plan->n_spans; k++) {
        span_lo[k] = at;
        at += plan->spans[k].length + 2;
    }
    int steps = (int)((float)maxlen * p->steps_ratio);
    if (steps < 1) steps = 1;
    const double eps = 1e-3;
    int forwards = 0;
    for (int step = 0; step < steps; step++) {
        /* which spans still have masks */
        int any = 0;
        for (int k = 0; k < plan->n_spans; k++) {
            if (p->only_span >= 0 && k != p->only_span) continue;
            for (int j = 1; j <= plan->spans[k].length; j++)
                if (tok[span_lo[k] + j] == mask_id) {
                    any = 1;
                    break;
                }
        }
        if (!any) break;
        /* the batch: ctx (first step) + the spans to recompute */
        int n = 0, n_out = 0;
        if (step == 0)
            for (int i = 0; i < n_ctx; i++) {
                btok[n] = tok[i];
                pos[n] = i;
                brow[n] = rows[i];
                lf[n++] = 0;
            }
        for (int k = 0; k < plan->n_spans; k++) {
            int lo = span_lo[k], len = plan->spans[k].length, active = 0;
            if (p->only_span < 0 || k == p->only_span)
                for (int j = 1; j <= len; j++) active |= tok[lo + j] == mask_id;
            /* finished spans are invisible to the others unless dense: skip them (their final
             * keys/values are never read here); the first step must write every position */
            if (!active && !p->dense && step > 0) continue;
            for (int j = 0; j < len + 2; j++) {
                int q = lo + j;
                btok[n] = tok[q];
                pos[n] = q;
                brow[n] = rows[q];
                lf[n++] = 0;
            }
        }
        /* logits rows: the row predicting each mask of an active span */
        int first_pos = pos[0];
        for (int k = 0; k < plan->n_spans; k++) {
            if (p->only_span >= 0 && k != p->only_span) continue;
            for (int j = 1; j <= plan->spans[k].length; j++) {
                int q = span_lo[k] + j;
                if (tok[q] != mask_id) continue;
                /* find q - shift in the batch (positions are increasing) */
                int want = q - shift, bi = -1;
                for (int b = 0; b < n; b++)
                    if (pos[b] == want) {
                        bi = b;
                        break;
                    }
                if (bi < 0) {
                    rc = td_err_set(err, TD_ERR, "planned fill: internal: row %d not in batch",
                                    want);
                    goto done;
                }
                lf[bi] = 1;
            }
        }
        (void)first_pos;
        td_pd_rows_mask(brow, n, mask, N);
        td_batch_t b = {.n = n,
                        .tokens = btok,
                        .pos = pos,
                        .attn = TD_ATTN_EXPLICIT,
                        .mask = mask,
                        .mask_stride = N,
                        .logits_for = lf};
        rc = td_model_forward(m, kv, &b, logits, err);
        if (rc != TD_OK) goto done;
        forwards++;
        /* map batch rows to output rows */
        for (int b2 = 0, r = 0; b2 < n; b2++)
            if (lf[b2]) rowof[pos[b2]] = r++, n_out++;
        float ratio = 1.0f;
        if (step < steps - 1) {
            float t = (float)(1.0 + (eps - 1.0) * step / steps);
            float s = (float)(1.0 + (eps - 1.0) * (step + 1) / steps);
            ratio = 1.0f - s / t;
        }
        for (int k = 0; k < plan->n_spans; k++) {
            if (p->only_span >= 0 && k != p->only_span) continue;
            int lo = span_lo[k], len = plan->spans[k].length, masked = 0;
            for (int j = 1; j <= len; j++) {
                int q = lo + j;
                pick[q] = 0;
                if (tok[q] != mask_id) continue;
                masked++;
                float *row = logits + (size_t)rowof[q - shift] * V;
                row[mask_id] = -INFINITY;
                conf[q] = s_neg_entropy(&p->sampling, row, V, d);
            }
            if (masked == 0) continue;
            if (st) st->span_steps++;
            int take = step < steps - 1 ? (int)((float)masked * ratio) : masked;
            if (take < 1) take = 1;
            if (take > masked) take = masked;
            for (int t = 0; t < take; t++) {
                int best = -1;
                for (int j = 1; j <= len; j++) {
                    int q = lo + j;
                    if (tok[q] == mask_id && !pick[q] && (best < 0 || conf[q] > conf[best]))
                        best = q;
                }
                pick[best] = 1;
            }
            for (int j = 1; j <= len; j++) {
                int q = lo + j;
                if (!pick[q]) continue;
                int id =
                    td_sample(&p->sampling, rng, logits + (size_t)rowof[q - shift] * V, V, NULL);
                if (id < 0) {
                    rc = td_err_set(err, id, "planned fill: sampling failed");
                    goto done;
                }
                tok[q] = id;
            }
        }
    }
    memcpy(scaffold, tok + n_ctx, (size_t)n_sc * sizeof *scaffold);
    if (st) {
        st->diffusion_forwards += forwards;
        st->stages++;
        st->spans += plan->n_spans;
        for (int k = 0; k < plan->n_spans; k++) st->span_tokens += plan->spans[k].length;
        if (forwards > st->max_span_steps) st->max_span_steps = forwards;
    }
    rc = n_sc;
done:
    td_kv_cache_destroy(&kv);
    free(tok);
    free(pos);
    free(btok);
    free(lf);
    free(mask);
    free(rows);
    free(brow);
    free(logits);
    free(d);
    free(conf);
    free(rowof);
    free(span_lo);
    free(pick);
    return rc;
}

/* ---- the planner/filler loop ---- */

typedef struct s_planner {
    td_model_t *m;
    td_kv_cache_t *kv;
    int V, mode; /* 0 causal LM, 1 diffusion LM with shift, 2 diffusion LM without shift */
    int mask_id;
    int valid; /* positions whose keys/values are real */
    int32_t *btok, *pos;
    uint8_t *lf, *mask;
    td_pd_row_t *brow;
    int cap;
} s_planner_t;

/* Forwards seq[valid..n) and returns the next-token logits (row for position n). */
static int s_plan_step(s_planner_t *pl, const int32_t *seq, const td_pd_row_t *rows, int n,
                       float *logits, td_err_t *err) {
    int k = 0;
    for (int i = pl->valid; i < n; i++, k++) {
        pl->btok[k] = seq[i];
        pl->pos[k] = i;
        pl->brow[k] = rows[i];
        pl->lf[k] = 0;
    }
    int stride = n;
    if (pl->mode == 2) { /* the next position as a mask token, read its row */
        if (n >= pl->cap)
            return td_err_set(err, TD_ERR_ARG, "planned: planner context full (%d)", pl->cap);
        pl->btok[k] = pl->mask_id;
        pl->pos[k] = n;
        pl->brow[k] = s_causal(n);
        pl->lf[k++] = 1;
        stride = n + 1;
    } else {
        pl->lf[k - 1] = 1;
    }
    td_batch_t b = {.n = k, .tokens = pl->btok, .pos = pl->pos, .logits_for = pl->lf};
    if (pl->mode == 0) {
        b.attn = TD_ATTN_CAUSAL;
    } else {
        td_pd_rows_mask(pl->brow, k, pl->mask, stride);
        b.attn = TD_ATTN_EXPLICIT;
        b.mask = pl->mask;
        b.mask_stride = stride;
    }
    int rc = td_model_forward(pl->m, pl->kv, &b, logits, err);
    if (rc != TD_OK) return rc;
    pl->valid = n;
    if (pl->mode != 0 && pl->mask_id >= 0 && pl->mask_id < pl->V) logits[pl->mask_id] = -INFINITY;
    return TD_OK;
}

static int s_generate(td_model_t *planner, td_model_t *filler, const td_planned_remote_t *remote,
                      const td_plan_tags_t *tags, const int32_t *prompt, int n_prompt,
                      const td_planned_params_t *p, int32_t *out, int *n_out, int32_t *raw,
                      int *n_raw, td_planned_stats_t *st, td_err_t *err) {
    if (!planner || (!filler && !remote) || !tags || !prompt || n_prompt < 1 || !p ||
        p->max_tokens < 0 || (p->max_tokens > 0 && !out) || !n_out)
        return td_err_set(err, TD_ERR_ARG, "planned generate: bad arguments");
    const td_config_t *pc = td_model_config(planner), *fc = filler ? td_model_config(filler) : NULL;
    if (fc && (!fc->is_diffusion || fc->causal || fc->mask_token_id < 0))
        return td_err_set(err, TD_ERR_ARG, "planned: the filler (%s) is not a masked-diffusion LM",
                          td_arch_name(fc->arch));
    if (fc && pc->n_vocab != fc->n_vocab)
        return td_err_set(err, TD_ERR_ARG,
                          "planned: planner and filler vocabularies differ (%d vs %d)", pc->n_vocab,
                          fc->n_vocab);
    if (remote && !remote->fill)
        return td_err_set(err, TD_ERR_ARG, "planned: remote filler without a fill function");
    if (!pc->causal && (!pc->is_diffusion || pc->mask_token_id < 0))
        return td_err_set(err, TD_ERR_ARG, "planned: the planner is neither causal nor a dLLM");
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= pc->n_vocab)
            return td_err_set(err, TD_ERR_ARG, "prompt token %d out of range", prompt[i]);
    int total = n_prompt + p->max_tokens;
    int lim = pc->n_ctx_train;
    if (fc && fc->n_ctx_train > 0 && (lim <= 0 || fc->n_ctx_train < lim)) lim = fc->n_ctx_train;
    if (lim > 0 && total > lim) total = lim;
    if (total <= n_prompt)
        return td_err_set(err, TD_ERR_ARG, "planned: the prompt (%d tokens) fills the context",
                          n_prompt);
    td_planned_stats_t s = {0};
    s_planner_t pl = {.m = planner,
                      .V = pc->n_vocab,
                      .mode = pc->causal ? 0 : (pc->logit_shift ? 1 : 2),
                      .mask_id = pc->mask_token_id,
                      .cap = total};
    int rc = TD_OK;
    int32_t *seq = malloc((size_t)total * sizeof *seq);
    td_pd_row_t *rows = malloc((size_t)total * sizeof *rows);
    float *logits = malloc((size_t)pc->n_vocab * sizeof *logits);
    pl.kv = td_kv_cache_new(planner, 1, total, err);
    pl.btok = malloc((size_t)total * sizeof *pl.btok);
    pl.pos = malloc((size_t)total * sizeof *pl.pos);
    pl.brow = malloc((size_t)total * sizeof *pl.brow);
    pl.lf = malloc((size_t)total);
    pl.mask = malloc((size_t)total * (size_t)total);
    if (!pl.kv) {
        rc = err && err->code ? err->code : TD_ERR_NOMEM;
        goto done;
    }
    if (!seq || !rows || !logits || !pl.btok || !pl.pos || !pl.brow || !pl.lf || !pl.mask) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto done;
    }
    memcpy(seq, prompt, (size_t)n_prompt * sizeof *seq);
    for (int i = 0; i < n_prompt; i++) rows[i] = s_causal(i);
    td_rng_t rng;
    td_rng_seed(&rng, p->seed);
    int n = n_prompt, stage_start = n_prompt, finished = 0;
    while (!finished) {
        /* planning: one token per forward */
        int32_t last = -1;
        int stage_tokens = 0;
        while (n < total && stage_tokens < p->max_plan_tokens) {
            rc = s_plan_step(&pl, seq, rows, n, logits, err);
            if (rc != TD_OK) goto done;
            s.ar_forwards++;
            int id = td_sample(&p->sampling, &rng, logits, pc->n_vocab, NULL);
            if (id < 0) {
                rc = td_err_set(err, id, "planned: sampling failed");
                goto done;
            }
            seq[n] = id;
            rows[n] = s_causal(n);
            n++;
            stage_tokens++;
            s.plan_tokens++;
            last = id;
            if (id == tags->sync || (tags->eos >= 0 && id == tags->eos)) break;
        }
        td_plan_t plan;
        rc = td_plan_parse(seq + stage_start, n - stage_start, tags, &plan, err);
        if (rc != TD_OK) {
            td_err_prefix(err, "stage starting at token %d", stage_start - n_prompt);
            goto done;
        }
        (void)last;
        int ctx_len = plan.end != TD_PLAN_END_NONE ? n - 1 : n;
        if (plan.n_spans > 0) {
            int sc;
            if (filler) {
                sc = td_planned_fill(filler, tags, seq, rows, ctx_len, &plan, p, &rng,
                                     seq + ctx_len, rows + ctx_len, total - ctx_len, &s, err);
            } else {
                /* the rows are this side's to know; the tokens come from the remote filler */
                sc = td_planned_scaffold(&plan, tags, 0, ctx_len, p->dense, seq + ctx_len,
                                         rows + ctx_len, total - ctx_len);
                if (sc < 0) {
                    int need = 0;
                    for (int k = 0; k < plan.n_spans; k++) need += plan.spans[k].length + 2;
                    rc = td_err_set(err, TD_ERR_ARG,
                                    "planned: the plan's %d span(s) need %d positions after %d "
                                    "tokens of context, but only %d fit",
                                    plan.n_spans, need, ctx_len, total - ctx_len);
                    goto done;
                }
                sc = remote->fill(remote->ud, tags, seq, rows, ctx_len, &plan, p, &rng,
                                  seq + ctx_len, total - ctx_len, &s, err);
            }
            if (sc < 0) {
                rc = sc;
                goto done;
            }
            n = ctx_len + sc;
        } else {
            n = ctx_len;
        }
        if (plan.end == TD_PLAN_END_SYNC && n < total) {
            seq[n] = tags->sync;
            rows[n] = s_causal(n);
            n++;
            stage_start = n;
            if (n >= total) finished = 1;
        } else {
            s.stopped_at_eos = plan.end == TD_PLAN_END_EOS;
            finished = 1;
        }
    }
    s.raw_tokens = n - n_prompt;
    s.critical_path = s.ar_forwards + s.diffusion_forwards;
    if (raw) memcpy(raw, seq + n_prompt, (size_t)s.raw_tokens * sizeof *raw);
    if (n_raw) *n_raw = s.raw_tokens;
    s.output_tokens = td_planned_clean(tags, seq + n_prompt, s.raw_tokens, out);
    *n_out = s.output_tokens;
    if (st) *st = s;
done:
    td_kv_cache_destroy(&pl.kv);
    free(pl.btok);
    free(pl.pos);
    free(pl.brow);
    free(pl.lf);
    free(pl.mask);
    free(seq);
    free(rows);
    free(logits);
    return rc;
}

int td_planned_generate(td_model_t *planner, td_model_t *filler, const td_plan_tags_t *tags,
                        const int32_t *prompt, int n_prompt, const td_planned_params_t *p,
                        int32_t *out, int *n_out, int32_t *raw, int *n_raw, td_planned_stats_t *st,
                        td_err_t *err) {
    if (!filler) return td_err_set(err, TD_ERR_ARG, "planned generate: no filler");
    return s_generate(planner, filler, NULL, tags, prompt, n_prompt, p, out, n_out, raw, n_raw, st,
                      err);
}

int td_planned_generate_remote(td_model_t *planner, const td_planned_remote_t *remote,
                               const td_plan_tags_t *tags, const int32_t *prompt, int n_prompt,
                               const td_planned_params_t *p, int32_t *out, int *n_out, int32_t *raw,
                               int *n_raw, td_planned_stats_t *st, td_err_t *err) {
    if (!remote) return td_err_set(err, TD_ERR_ARG, "planned generate: no remote filler");
    return s_generate(planner, NULL, remote, tags, prompt, n_prompt, p, out, n_out, raw, n_raw, st,
                      err);
}

void td_planned_stats_add_fill(td_planned_stats_t *st, const td_plan_t *plan, int forwards,
                               int span_steps) {
    if (!st) return;
    st->diffusion_forwards += forwards;
    st->span_steps += span_steps;
    st->stages++;
    st->spans += plan->n_spans;
    for (int k = 0; k < plan->n_spans; k++) st->span_tokens += plan->spans[k].length;
    if (forwards > st->max_span_steps) st->max_span_steps = forwards;
}
