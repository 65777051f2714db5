/* selfspec.c - stepwise greedy diffusion decoding (the reference) and self-speculative decoding
 * that reproduces it with chains of drafted states verified in one batched forward. */
#include "drafter/selfspec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/sampler.h"

td_selfspec_params_t td_selfspec_params_default(void) {
    return (td_selfspec_params_t){.max_tokens = 128,
                                  .block_size = 32,
                                  .draft_k = 4,
                                  .stop_ids = NULL,
                                  .n_stop = 0,
                                  .stop_at_eos = 1,
                                  .accept_unchecked = 0};
}

/* ---- shared definitions: the greedy choice of a row and the stop rule ---- */

/* Confidence (max probability of softmax(row), computed as exp of the max log-softmax, as the
 * CONFIDENCE order of drafter/draft.c does) and the argmax (ties to the lowest id). The caller
 * has set the mask token's logit to -inf. tmp[V] is scratch. */
static int s_row_choice(const float *row, int V, float *tmp, double *conf) {
    td_log_softmax(tmp, row, V);
    float best = -INFINITY;
    for (int t = 0; t < V; t++)
        if (tmp[t] > best) best = tmp[t];
    *conf = (double)expf(best);
    return td_argmax(row, V);
}

static int s_is_stop(const td_selfspec_params_t *p, int eos, int32_t id) {
    if (p->stop_at_eos && eos >= 0 && id == eos) return 1;
    for (int i = 0; i < p->n_stop; i++)
        if (p->stop_ids[i] == id) return 1;
    return 0;
}

typedef struct s_ctx {
    td_model_t *m;
    const td_selfspec_params_t *p;
    int V, shift, mask_id, eos;
    int n_prompt, n_ctx, B;
} s_ctx_t;

static int s_setup(s_ctx_t *c, td_model_t *m, const int32_t *prompt, int n_prompt,
                   const td_selfspec_params_t *p, int32_t *out, td_err_t *err) {
    if (!m) return td_err_set(err, TD_ERR_ARG, "no model");
    const td_config_t *cf = td_model_config(m);
    if (!cf->is_diffusion || cf->causal || cf->mask_token_id < 0)
        return td_err_set(err, TD_ERR_ARG,
                          "%s is not a masked-diffusion LM (no mask token or causal)",
                          td_arch_name(cf->arch));
    if (!prompt || n_prompt < 1 || !p || p->max_tokens < 0 || (p->max_tokens > 0 && !out) ||
        (p->n_stop > 0 && !p->stop_ids))
        return td_err_set(err, TD_ERR_ARG, "stepwise/selfspec generate: bad arguments");
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= cf->n_vocab)
            return td_err_set(err, TD_ERR_ARG, "prompt token %d out of range", prompt[i]);
    c->m = m;
    c->p = p;
    c->V = cf->n_vocab;
    c->shift = cf->logit_shift ? 1 : 0;
    c->mask_id = cf->mask_token_id;
    c->eos = cf->eos_token_id;
    c->n_prompt = n_prompt;
    c->n_ctx = n_prompt + p->max_tokens;
    if (cf->n_ctx_train > 0 && c->n_ctx > cf->n_ctx_train) {
        if (n_prompt >= cf->n_ctx_train)
            return td_err_set(err, TD_ERR_ARG,
                              "prompt of %d tokens does not fit the model's context of %d",
                              n_prompt, cf->n_ctx_train);
        c->n_ctx = cf->n_ctx_train;
    }
    c->B = p->block_size > 0 ? p->block_size : (p->max_tokens > 0 ? p->max_tokens : 1);
    return TD_OK;
}

/* ---- the reference: one forward, one commit ---- */

int td_stepwise_greedy_generate(td_model_t *m, const int32_t *prompt, int n_prompt,
                                const td_selfspec_params_t *p, int32_t *out,
                                td_selfspec_stats_t *st, td_err_t *err) {
    s_ctx_t c;
    int rc = s_setup(&c, m, prompt, n_prompt, p, out, err);
    if (rc != TD_OK) return rc;
    td_selfspec_stats_t s = {0};
    if (c.n_ctx == n_prompt) {
        if (st) *st = s;
        return TD_OK;
    }
    const int V = c.V, B = c.B;
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, c.n_ctx, err);
    if (!kv) return err && err->code ? err->code : TD_ERR_NOMEM;
    int32_t *tok = malloc((size_t)c.n_ctx * sizeof *tok),
            *pos = malloc((size_t)c.n_ctx * sizeof *pos);
    uint8_t *lf = malloc((size_t)c.n_ctx), *masked = malloc((size_t)B);
    float *rows = malloc((size_t)B * V * sizeof *rows), *tmp = malloc((size_t)V * sizeof *tmp);
    if (!tok || !pos || !lf || !masked || !rows || !tmp) {
        rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        goto done;
    }
    memcpy(tok, prompt, (size_t)n_prompt * sizeof *tok);
    for (int i = 0; i < c.n_ctx; i++) pos[i] = i;
    int cur = n_prompt, stop = 0;
    while (!stop && cur < c.n_ctx) {
        int g = c.n_ctx - cur < B ? c.n_ctx - cur : B, remaining = g, end = g;
        for (int j = 0; j < g; j++) {
            tok[cur + j] = c.mask_id;
            masked[j] = 1;
        }
        s.blocks++;
        while (remaining > 0 && !stop) {
            int n = cur + g, n_out = 0;
            memset(lf, 0, (size_t)n);
            for (int j = 0; j < g; j++)
                if (masked[j]) {
                    lf[cur + j - c.shift] = 1;
                    n_out++;
                }
            td_kv_cache_crop(kv, 0, 0);
            td_batch_t b = {
                .n = n, .tokens = tok, .pos = pos, .attn = TD_ATTN_BIDIR, .logits_for = lf};
            rc = td_model_forward(m, kv, &b, rows, err);
            if (rc != TD_OK) goto done;
            s.forwards++;
            s.forward_tokens += n;
            int best = -1, best_id = -1, r = 0;
            double best_conf = 0.0;
            for (int j = 0; j < g; j++) {
                if (!masked[j]) continue;
                float *row = rows + (size_t)r++ * V;
                row[c.mask_id] = -INFINITY;
                double conf;
                int id = s_row_choice(row, V, tmp, &conf);
                if (best < 0 || conf > best_conf) {
                    best = j;
                    best_conf = conf;
                    best_id = id;
                }
            }
            tok[cur + best] = best_id;
            masked[best] = 0;
            remaining--;
            s.commits++;
            for (int j = 0; j < g && !masked[j]; j++)
                if (s_is_stop(p, c.eos, tok[cur + j])) {
                    stop = 1;
                    end = j + 1;
                    break;
                }
        }
        cur += end;
    }
    s.generated = cur - n_prompt;
    s.stopped_at_stop_id = stop;
    memcpy(out, tok + n_prompt, (size_t)s.generated * sizeof *out);
    if (st) *st = s;
done:
    td_kv_cache_destroy(&kv);
    free(tok);
    free(pos);
    free(lf);
    free(masked);
    free(rows);
    free(tmp);
    return rc;
}

/* ---- self-speculative decoding ---- */

/* A state of the stepwise trajectory: the whole sequence (prompt, committed text, canvas), which
 * canvas positions are masks, and - once evaluated - the greedy choice data of each mask. */
typedef struct s_state {
    int32_t *tok; /* [n_ctx] */
    uint8_t *msk; /* [B] canvas position j is a mask */
    double *conf; /* [B] confidence of each mask (valid after evaluation) */
    int32_t *arg; /* [B] argmax of each mask */
    int cur, g;   /* canvas = [cur, cur + g) */
    int n_masked;
    int done;    /* 1: a stop id ended it; 2: context or max_tokens exhausted */
    int out_end; /* done: length of the final sequence */
    int blocks;  /* canvases started so far */
} s_state_t;

static int s_state_alloc(s_state_t *s, const s_ctx_t *c) {
    memset(s, 0, sizeof *s);
    s->tok = malloc((size_t)c->n_ctx * sizeof *s->tok);
    s->msk = malloc((size_t)c->B);
    s->conf = malloc((size_t)c->B * sizeof *s->conf);
    s->arg = malloc((size_t)c->B * sizeof *s->arg);
    return s->tok && s->msk && s->conf && s->arg ? TD_OK : TD_ERR_NOMEM;
}

static void s_state_free(s_state_t *s) {
    free(s->tok);
    free(s->msk);
    free(s->conf);
    free(s->arg);
}

static void s_state_copy(s_state_t *d, const s_state_t *s, const s_ctx_t *c) {
    int n = s->cur + s->g;
    memcpy(d->tok, s->tok, (size_t)n * sizeof *d->tok);
    memcpy(d->msk, s->msk, (size_t)c->B);
    d->cur = s->cur;
    d->g = s->g;
    d->n_masked = s->n_masked;
    d->done = s->done;
    d->out_end = s->out_end;
    d->blocks = s->blocks;
}

/* Opens a canvas at s->cur (or marks the state exhausted). */
static void s_state_open(s_state_t *s, const s_ctx_t *c) {
    if (s->cur >= c->n_ctx) {
        s->done = 2;
        s->out_end = s->cur;
        s->g = 0;
        s->n_masked = 0;
        return;
    }
    s->g = c->n_ctx - s->cur < c->B ? c->n_ctx - s->cur : c->B;
    for (int j = 0; j < s->g; j++) {
        s->tok[s->cur + j] = c->mask_id;
        s->msk[j] = 1;
    }
    s->n_masked = s->g;
    s->blocks++;
}

/* Commits id at canvas position j, then applies the stop rule and opens the next canvas when
 * this one is complete: exactly what one stepwise step does after choosing (j, id). */
static void s_state_commit(s_state_t *s, const s_ctx_t *c, int j, int32_t id) {
    s->tok[s->cur + j] = id;
    s->msk[j] = 0;
    s->n_masked--;
    for (int i = 0; i < s->g && !s->msk[i]; i++)
        if (s_is_stop(c->p, c->eos, s->tok[s->cur + i])) {
            s->done = 1;
            s->out_end = s->cur + i + 1;
            return;
        }
    if (s->n_masked == 0) {
        s->cur += s->g;
        s_state_open(s, c);
    }
}

/* The stepwise greedy choice at an evaluated state: the masked position of highest confidence,
 * leftmost on ties. */
static int s_state_choice(const s_state_t *s) {
    int best = -1;
    for (int j = 0; j < s->g; j++)
        if (s->msk[j] && (best < 0 || s->conf[j] > s->conf[best])) best = j;
    return best;
}

typedef struct s_verifier {
    td_kv_cache_t *kv;
    int cap;
    int32_t *tok, *pos, *seq;
    uint8_t *lf;
    float *rows, *tmp;
} s_verifier_t;

/* One batched forward evaluating states[0..n) (each non-terminal), state i in slot i. */
static int s_evaluate(s_verifier_t *v, const s_ctx_t *c, s_state_t **states, int n,
                      td_selfspec_stats_t *st, td_err_t *err) {
    int total = 0, n_out = 0;
    for (int i = 0; i < n; i++) {
        const s_state_t *s = states[i];
        int len = s->cur + s->g;
        td_kv_cache_crop(v->kv, i, 0);
        for (int p = 0; p < len; p++) {
            v->tok[total + p] = s->tok[p];
            v->pos[total + p] = p;
            v->seq[total + p] = i;
            v->lf[total + p] = 0;
        }
        for (int j = 0; j < s->g; j++)
            if (s->msk[j]) {
                v->lf[total + s->cur + j - c->shift] = 1;
                n_out++;
            }
        total += len;
    }
    td_batch_t b = {.n = total,
                    .tokens = v->tok,
                    .pos = v->pos,
                    .seq = v->seq,
                    .attn = TD_ATTN_BIDIR,
                    .logits_for = v->lf};
    int rc = td_model_forward(c->m, v->kv, &b, v->rows, err);
    if (rc != TD_OK) return rc;
    st->forwards++;
    st->forward_tokens += total;
    int r = 0;
    for (int i = 0; i < n; i++) {
        s_state_t *s = states[i];
        for (int j = 0; j < s->g; j++) {
            if (!s->msk[j]) continue;
            float *row = v->rows + (size_t)r++ * c->V;
            row[c->mask_id] = -INFINITY;
            s->arg[j] = s_row_choice(row, c->V, v->tmp, &s->conf[j]);
        }
    }
    (void)n_out;
    return TD_OK;
}

int td_selfspec_generate(td_model_t *m, const int32_t *prompt, int n_prompt,
                         const td_selfspec_params_t *p, int32_t *out, td_selfspec_stats_t *st,
                         td_err_t *err) {
    s_ctx_t c;
    int rc = s_setup(&c, m, prompt, n_prompt, p, out, err);
    if (rc != TD_OK) return rc;
    if (p->draft_k < 1 || p->draft_k > TD_SELFSPEC_MAX_K)
        return td_err_set(err, TD_ERR_ARG, "selfspec: draft_k %d outside 1..%d", p->draft_k,
                          TD_SELFSPEC_MAX_K);
    td_selfspec_stats_t s = {0};
    if (c.n_ctx == n_prompt) {
        if (st) *st = s;
        return TD_OK;
    }
    const int K = p->draft_k, V = c.V, B = c.B;
    s_verifier_t v = {0};
    s_state_t cur_state, chain[TD_SELFSPEC_MAX_K];
    s_state_t *batch[TD_SELFSPEC_MAX_K];
    int n_alloc = 0;
    int dpos[TD_SELFSPEC_MAX_K];
    int32_t did[TD_SELFSPEC_MAX_K];
    uint8_t *taken = malloc((size_t)B);
    rc = s_state_alloc(&cur_state, &c);
    for (; rc == TD_OK && n_alloc < K; n_alloc++) rc = s_state_alloc(&chain[n_alloc], &c);
    v.kv = td_kv_cache_new(m, K, c.n_ctx, err);
    v.cap = K * c.n_ctx;
    v.tok = malloc((size_t)v.cap * sizeof *v.tok);
    v.pos = malloc((size_t)v.cap * sizeof *v.pos);
    v.seq = malloc((size_t)v.cap * sizeof *v.seq);
    v.lf = malloc((size_t)v.cap);
    v.rows = malloc((size_t)K * B * V * sizeof *v.rows);
    v.tmp = malloc((size_t)V * sizeof *v.tmp);
    if (rc != TD_OK || !v.kv || !v.tok || !v.pos || !v.seq || !v.lf || !v.rows || !v.tmp ||
        !taken) {
        rc = v.kv ? td_err_set(err, TD_ERR_NOMEM, "out of memory")
                  : (err && err->code ? err->code : TD_ERR_NOMEM);
        goto done;
    }

    memcpy(cur_state.tok, prompt, (size_t)n_prompt * sizeof *prompt);
    cur_state.cur = n_prompt;
    s_state_open(&cur_state, &c);
    s_state_t *S = &cur_state;
    batch[0] = S;
    rc = s_evaluate(&v, &c, batch, 1, &s, err);
    if (rc != TD_OK) goto done;

    while (!S->done) {
        /* draft: the k most confident masks of S, best first (leftmost on ties), their argmax */
        int k = S->n_masked < K ? S->n_masked : K;
        memset(taken, 0, (size_t)B);
        for (int d = 0; d < k; d++) {
            int best = -1;
            for (int j = 0; j < S->g; j++)
                if (S->msk[j] && !taken[j] && (best < 0 || S->conf[j] > S->conf[best])) best = j;
            taken[best] = 1;
            dpos[d] = best;
            did[d] = S->arg[best];
        }
        /* the chain S_1..S_kk, cut at the first terminal state */
        int kk = 0;
        for (int d = 0; d < k; d++) {
            s_state_copy(&chain[d], d == 0 ? S : &chain[d - 1], &c);
            s_state_commit(&chain[d], &c, dpos[d], did[d]);
            kk = d + 1;
            if (chain[d].done) break;
        }
        s.rounds++;
        s.drafted += kk;
        int n_eval = 0;
        for (int d = 0; d < kk; d++)
            if (!chain[d].done) batch[n_eval++] = &chain[d];
        if (n_eval > 0) {
            rc = s_evaluate(&v, &c, batch, n_eval, &s, err);
            if (rc != TD_OK) goto done;
        }
        /* accept d_1 (the greedy choice at S) and then d_{i+1} while the greedy choice at S_i
         * is exactly (position, token) of d_{i+1} */
        int j = 1;
        while (j < kk) {
            s.depth_checked[j + 1]++;
            if (!p->accept_unchecked) {
                int ch = s_state_choice(&chain[j - 1]);
                if (ch != dpos[j] || chain[j - 1].arg[ch] != did[j]) break;
            }
            s.depth_accepted[j + 1]++;
            j++;
        }
        s.depth_checked[1]++;
        s.depth_accepted[1]++;
        s.accepted_hist[j]++;
        s.commits += j;
        /* S <- S_j (its evaluation came with the batch) */
        s_state_t tmp_state = cur_state;
        cur_state = chain[j - 1];
        chain[j - 1] = tmp_state;
        S = &cur_state;
    }
    s.blocks = S->blocks;
    s.stopped_at_stop_id = S->done == 1;
    s.generated = S->out_end - n_prompt;
    memcpy(out, S->tok + n_prompt, (size_t)s.generated * sizeof *out);
    if (st) *st = s;
done:
    s_state_free(&cur_state);
    for (int i = 0; i < n_alloc; i++) s_state_free(&chain[i]);
    td_kv_cache_destroy(&v.kv);
    free(v.tok);
    free(v.pos);
    free(v.seq);
    free(v.lf);
    free(v.rows);
    free(v.tmp);
    free(taken);
    return rc;
}
