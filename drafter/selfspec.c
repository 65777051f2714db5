/* selfspec.c - stepwise greedy diffusion decoding (the reference) and self-speculative decoding
 * that reproduces it with chains of drafted states verified in one batched forward. */
#include "drafter/selfspec.h"

#include "drafter/draft.h"

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
    return td_is_stop_id(p->stop_ids, p->n_stop, p->stop_at_eos ? eos : -1, id);
}

typedef struct s_ctx {
    td_model_t *m;
    const td_selfspec_params_t *p;
    int V, shift, mask_id, eos;
    int n_prompt, n_ctx, B;
    int K; /* draft list length per evaluated state */
} s_ctx_t;

static int s_setup(s_ctx_t *c, td_model_t *m, const int32_t *prompt, int n_prompt,
                   const td_selfspec_params_t *p, int32_t *out, td_err_t *err) {
    int rc = td_diffusion_check_model(m, err);
    if (rc != TD_OK) return rc;
    const td_config_t *cf = td_model_config(m);
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
    c->K = p->draft_k >= 1 && p->draft_k <= TD_SELFSPEC_MAX_K ? p->draft_k : 1;
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
    /* after evaluation: the draft list, the min(K, n_masked) most confident masks best first
     * (leftmost on ties) with their argmax; dpos[0]/did[0] is the stepwise greedy choice */
    int nd;
    int dpos[TD_SELFSPEC_MAX_K];
    int32_t did[TD_SELFSPEC_MAX_K];
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

/* The draft list of an evaluated state from its per-mask confidence and argmax: the k most
 * confident masks, best first, leftmost on ties (the first is the stepwise greedy choice). Walks
 * the order (confidence descending, index ascending) without scratch memory. */
static int s_draft_list(const double *conf, const int32_t *arg, const uint8_t *msk, int g, int k,
                        int *dpos, int32_t *did) {
    int n = 0, prev = -1;
    for (int d = 0; d < k; d++) {
        int best = -1;
        for (int j = 0; j < g; j++) {
            if (!msk[j]) continue;
            if (prev >= 0 && !(conf[j] < conf[prev] || (conf[j] == conf[prev] && j > prev)))
                continue; /* at or before the previous pick in the order */
            if (best < 0 || conf[j] > conf[best]) best = j;
        }
        if (best < 0) break;
        dpos[n] = best;
        did[n++] = arg[best];
        prev = best;
    }
    return n;
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
        s->nd = s_draft_list(s->conf, s->arg, s->msk, s->g, c->K, s->dpos, s->did);
    }
    (void)n_out;
    return TD_OK;
}

/* Whether a remote draft list is a possible answer for state s: min(K, masks) entries, each a
 * distinct masked canvas position with a real token. Anything else is treated as garbage. */
static int s_list_ok(const s_state_t *s, const s_ctx_t *c, int nd, const int32_t *pos,
                     const int32_t *id) {
    int want = s->n_masked < c->K ? s->n_masked : c->K;
    if (nd != want) return 0;
    for (int d = 0; d < nd; d++) {
        if (pos[d] < 0 || pos[d] >= s->g || !s->msk[pos[d]] || id[d] < 0 || id[d] >= c->V ||
            id[d] == c->mask_id)
            return 0;
        for (int e = 0; e < d; e++)
            if (pos[e] == pos[d]) return 0;
    }
    return 1;
}

/* Evaluates states[0..n): the deepest n/2 (rounded down) through the remote hook when there is
 * one (concurrently with the local forward of the rest), the others locally. A remote failure
 * other than TD_ERR_UNSUPPORTED is repaired by evaluating those states locally (counted). */
static int s_evaluate_split(s_verifier_t *v, const s_ctx_t *c, s_state_t **states, int n,
                            const td_selfspec_remote_t *r, td_selfspec_stats_t *st, td_err_t *err) {
    int n_remote = r ? n / 2 : 0;
    if (n_remote == 0) return s_evaluate(v, c, states, n, st, err);
    int n_local = n - n_remote;
    s_state_t **rs = states + n_local;
    const int32_t *tails[TD_SELFSPEC_MAX_K];
    int tlen[TD_SELFSPEC_MAX_K], starts[TD_SELFSPEC_MAX_K], counts[TD_SELFSPEC_MAX_K];
    int32_t pos[TD_SELFSPEC_MAX_K * TD_SELFSPEC_MAX_K], ids[TD_SELFSPEC_MAX_K * TD_SELFSPEC_MAX_K];
    int n_prefix = rs[0]->cur;
    for (int i = 0; i < n_remote; i++)
        if (rs[i]->cur < n_prefix) n_prefix = rs[i]->cur;
    for (int i = 0; i < n_remote; i++) {
        tails[i] = rs[i]->tok + n_prefix;
        tlen[i] = rs[i]->cur + rs[i]->g - n_prefix;
        starts[i] = rs[i]->cur;
    }
    td_err_t rerr = {0};
    double t0 = td_time_now();
    int rrc = r->start(r->ud, rs[0]->tok, n_prefix, tails, tlen, starts, n_remote, c->K, &rerr);
    int rc = s_evaluate(v, c, states, n_local, st, err);
    if (rc != TD_OK) return rc;
    if (rrc == TD_OK) rrc = r->finish(r->ud, n_remote, c->K, counts, pos, ids, &rerr);
    st->remote_s += td_time_now() - t0;
    if (rrc == TD_OK)
        for (int i = 0; i < n_remote && rrc == TD_OK; i++)
            if (!s_list_ok(rs[i], c, counts[i], pos + i * c->K, ids + i * c->K))
                rrc = td_err_set(&rerr, TD_ERR_FORMAT,
                                 "the drafter's draft list for chain state %d is not a possible "
                                 "answer (wrong count, position or token)",
                                 n_local + i);
    if (rrc == TD_ERR_UNSUPPORTED) {
        if (err) *err = rerr;
        return rrc;
    }
    if (rrc != TD_OK) {
        st->remote_fallbacks++;
        td_log(TD_LOG_WARN, "selfspec: drafter evaluation failed (%s); evaluating locally",
               rerr.msg);
        return s_evaluate(v, c, rs, n_remote, st, err);
    }
    for (int i = 0; i < n_remote; i++) {
        s_state_t *s = rs[i];
        s->nd = counts[i];
        for (int d = 0; d < s->nd; d++) {
            s->dpos[d] = pos[i * c->K + d];
            s->did[d] = ids[i * c->K + d];
        }
    }
    st->remote_states += n_remote;
    st->remote_forwards++;
    return TD_OK;
}

static int s_selfspec(td_model_t *m, const int32_t *prompt, int n_prompt,
                      const td_selfspec_params_t *p, const td_selfspec_remote_t *remote,
                      int32_t *out, td_selfspec_stats_t *st, td_err_t *err) {
    s_ctx_t c;
    int rc = s_setup(&c, m, prompt, n_prompt, p, out, err);
    if (rc != TD_OK) return rc;
    if (p->draft_k < 1 || p->draft_k > TD_SELFSPEC_MAX_K)
        return td_err_set(err, TD_ERR_ARG, "selfspec: draft_k %d outside 1..%d", p->draft_k,
                          TD_SELFSPEC_MAX_K);
    if (remote && (!remote->start || !remote->finish))
        return td_err_set(err, TD_ERR_ARG, "selfspec: remote evaluator without functions");
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
    if (rc != TD_OK || !v.kv || !v.tok || !v.pos || !v.seq || !v.lf || !v.rows || !v.tmp) {
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
        int k = S->nd;
        for (int d = 0; d < k; d++) {
            dpos[d] = S->dpos[d];
            did[d] = S->did[d];
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
            rc = s_evaluate_split(&v, &c, batch, n_eval, remote, &s, err);
            if (rc != TD_OK) goto done;
        }
        /* accept d_1 (the greedy choice at S) and then d_{i+1} while the greedy choice at S_i
         * is exactly (position, token) of d_{i+1} */
        int j = 1;
        while (j < kk) {
            s.depth_checked[j + 1]++;
            if (!p->accept_unchecked) {
                const s_state_t *Si = &chain[j - 1];
                if (Si->nd < 1 || Si->dpos[0] != dpos[j] || Si->did[0] != did[j]) break;
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
    return rc;
}

int td_selfspec_generate(td_model_t *m, const int32_t *prompt, int n_prompt,
                         const td_selfspec_params_t *p, int32_t *out, td_selfspec_stats_t *st,
                         td_err_t *err) {
    return s_selfspec(m, prompt, n_prompt, p, NULL, out, st, err);
}

int td_selfspec_generate_remote(td_model_t *m, const int32_t *prompt, int n_prompt,
                                const td_selfspec_params_t *p, const td_selfspec_remote_t *remote,
                                int32_t *out, td_selfspec_stats_t *st, td_err_t *err) {
    if (!remote) return td_err_set(err, TD_ERR_ARG, "selfspec: no remote evaluator");
    return s_selfspec(m, prompt, n_prompt, p, remote, out, st, err);
}

/* ---- the drafter side: evaluating explicit states ---- */

struct td_selfspec_evaluator {
    td_model_t *m;
    s_verifier_t v;
    int slots, n_ctx; /* what v.kv holds */
    int rows_cap;     /* logits rows in v.rows */
    uint64_t fingerprint;
};

td_selfspec_evaluator_t *td_selfspec_evaluator_new(td_model_t *m, td_err_t *err) {
    const td_config_t *cf = m ? td_model_config(m) : NULL;
    if (!cf || !cf->is_diffusion || cf->causal || cf->mask_token_id < 0) {
        td_err_set(err, TD_ERR_UNSUPPORTED,
                   "selfspec needs a masked-diffusion LM; this drafter runs %s (causal or no mask "
                   "token)",
                   cf ? td_arch_name(cf->arch) : "no model");
        return NULL;
    }
    td_selfspec_evaluator_t *e = calloc(1, sizeof *e);
    if (!e) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    e->m = m;
    return e;
}

static void s_verifier_free(s_verifier_t *v) {
    td_kv_cache_destroy(&v->kv);
    free(v->tok);
    free(v->pos);
    free(v->seq);
    free(v->lf);
    free(v->rows);
    free(v->tmp);
    memset(v, 0, sizeof *v);
}

void td_selfspec_evaluator_destroy(td_selfspec_evaluator_t **e_p) {
    if (!e_p || !*e_p) return;
    s_verifier_free(&(*e_p)->v);
    free(*e_p);
    *e_p = NULL;
}

int td_selfspec_evaluate(td_selfspec_evaluator_t *e, const int32_t *prefix, int n_prefix,
                         const int32_t *tails, const int *tail_lens, const int *canvas_starts,
                         int n, int k, int *counts, int32_t *pos, int32_t *ids, td_err_t *err) {
    if (!e || n < 1 || n > TD_SELFSPEC_MAX_K || k < 1 || k > TD_SELFSPEC_MAX_K || n_prefix < 0 ||
        (n_prefix > 0 && !prefix) || !tails || !tail_lens || !canvas_starts || !counts || !pos ||
        !ids)
        return td_err_set(err, TD_ERR_ARG, "selfspec evaluate: bad arguments");
    const td_config_t *cf = td_model_config(e->m);
    td_selfspec_params_t p = td_selfspec_params_default();
    p.draft_k = k;
    s_ctx_t c = {.m = e->m,
                 .p = &p,
                 .V = cf->n_vocab,
                 .shift = cf->logit_shift ? 1 : 0,
                 .mask_id = cf->mask_token_id,
                 .eos = cf->eos_token_id,
                 .K = k};
    int max_len = 0, max_g = 0, rows = 0;
    for (int i = 0, off = 0; i < n; i++) {
        int len = n_prefix + tail_lens[i], cur = canvas_starts[i], masks = 0;
        if (tail_lens[i] < 1 || cur < n_prefix || cur >= len)
            return td_err_set(err, TD_ERR_ARG, "selfspec evaluate: state %d has no canvas", i);
        if (cf->n_ctx_train > 0 && len > cf->n_ctx_train)
            return td_err_set(err, TD_ERR_UNSUPPORTED,
                              "selfspec evaluate: state %d has %d tokens, more than the model's "
                              "context of %d",
                              i, len, cf->n_ctx_train);
        if (cur - c.shift < 0)
            return td_err_set(err, TD_ERR_ARG, "selfspec evaluate: state %d canvas at 0", i);
        for (int j = 0; j < tail_lens[i]; j++) {
            int32_t t = tails[off + j];
            if (t < 0 || t >= c.V)
                return td_err_set(err, TD_ERR_ARG, "selfspec evaluate: token %d out of range", t);
            if (n_prefix + j >= cur && t == c.mask_id) masks++;
        }
        for (int j = 0; j < n_prefix; j++)
            if (prefix[j] < 0 || prefix[j] >= c.V)
                return td_err_set(err, TD_ERR_ARG, "selfspec evaluate: token %d out of range",
                                  prefix[j]);
        if (masks == 0)
            return td_err_set(err, TD_ERR_ARG, "selfspec evaluate: state %d has no masked position",
                              i);
        if (len > max_len) max_len = len;
        if (len - cur > max_g) max_g = len - cur;
        rows += masks;
        off += tail_lens[i];
    }
    c.n_ctx = max_len;
    c.B = max_g;
    /* scratch: grow when needed */
    if (!e->v.kv || e->slots < n || e->n_ctx < max_len) {
        int slots = n > e->slots ? n : e->slots;
        int ctx = max_len > e->n_ctx ? max_len + 64 : e->n_ctx;
        s_verifier_free(&e->v);
        e->slots = e->n_ctx = e->rows_cap = 0;
        e->v.kv = td_kv_cache_new(e->m, slots, ctx, err);
        if (!e->v.kv) return err && err->code ? err->code : TD_ERR_NOMEM;
        e->v.cap = slots * ctx;
        e->v.tok = malloc((size_t)e->v.cap * sizeof *e->v.tok);
        e->v.pos = malloc((size_t)e->v.cap * sizeof *e->v.pos);
        e->v.seq = malloc((size_t)e->v.cap * sizeof *e->v.seq);
        e->v.lf = malloc((size_t)e->v.cap);
        e->v.tmp = malloc((size_t)c.V * sizeof *e->v.tmp);
        if (!e->v.tok || !e->v.pos || !e->v.seq || !e->v.lf || !e->v.tmp) {
            s_verifier_free(&e->v);
            return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        }
        e->slots = slots;
        e->n_ctx = ctx;
    }
    if (e->rows_cap < rows) {
        free(e->v.rows);
        e->v.rows = malloc((size_t)rows * c.V * sizeof *e->v.rows);
        if (!e->v.rows) {
            e->rows_cap = 0;
            return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        }
        e->rows_cap = rows;
    }
    s_state_t st_arr[TD_SELFSPEC_MAX_K], *states[TD_SELFSPEC_MAX_K];
    int n_alloc = 0, rc = TD_OK;
    for (; n_alloc < n; n_alloc++) {
        s_state_t *s = &st_arr[n_alloc];
        memset(s, 0, sizeof *s);
        int len = n_prefix + tail_lens[n_alloc];
        s->tok = malloc((size_t)len * sizeof *s->tok);
        s->msk = malloc((size_t)max_g);
        s->conf = malloc((size_t)max_g * sizeof *s->conf);
        s->arg = malloc((size_t)max_g * sizeof *s->arg);
        if (!s->tok || !s->msk || !s->conf || !s->arg) {
            n_alloc++;
            rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
            goto out;
        }
        states[n_alloc] = s;
    }
    for (int i = 0, off = 0; i < n; i++) {
        s_state_t *s = &st_arr[i];
        if (n_prefix) memcpy(s->tok, prefix, (size_t)n_prefix * sizeof *s->tok);
        memcpy(s->tok + n_prefix, tails + off, (size_t)tail_lens[i] * sizeof *s->tok);
        off += tail_lens[i];
        s->cur = canvas_starts[i];
        s->g = n_prefix + tail_lens[i] - s->cur;
        for (int j = 0; j < s->g; j++) {
            s->msk[j] = s->tok[s->cur + j] == c.mask_id;
            s->n_masked += s->msk[j];
        }
    }
    td_selfspec_stats_t dummy = {0};
    rc = s_evaluate(&e->v, &c, states, n, &dummy, err);
    if (rc == TD_OK)
        for (int i = 0; i < n; i++) {
            counts[i] = st_arr[i].nd;
            for (int d = 0; d < st_arr[i].nd; d++) {
                pos[i * k + d] = st_arr[i].dpos[d];
                ids[i * k + d] = st_arr[i].did[d];
            }
        }
out:
    for (int i = 0; i < n_alloc; i++) s_state_free(&st_arr[i]);
    return rc;
}

uint64_t td_selfspec_fingerprint(td_model_t *m) {
    const td_config_t *cf = td_model_config(m);
    uint64_t h = 0xcbf29ce484222325ull;
#define S_MIX(x)                                                                                   \
    do {                                                                                           \
        uint64_t x_ = (uint64_t)(x);                                                               \
        for (int b_ = 0; b_ < 8; b_++) h = (h ^ ((x_ >> (8 * b_)) & 0xff)) * 0x100000001b3ull;     \
    } while (0)
    S_MIX(cf->arch);
    S_MIX(cf->n_vocab);
    S_MIX(cf->mask_token_id);
    S_MIX(cf->eos_token_id);
    S_MIX(cf->logit_shift);
    S_MIX(cf->n_ctx_train);
    S_MIX(td_model_n_params(m));
    S_MIX(td_model_dtype(m));
    /* the weights themselves, through their output: the argmax of every row of a fixed probe */
    enum { PROBE = 8 };
    int32_t tok[PROBE], pos[PROBE];
    uint8_t lf[PROBE];
    float *rows = malloc((size_t)PROBE * cf->n_vocab * sizeof *rows);
    td_err_t err = {0};
    td_kv_cache_t *kv = rows ? td_kv_cache_new(m, 1, PROBE, &err) : NULL;
    for (int i = 0; i < PROBE; i++) {
        tok[i] = i == PROBE - 1 && cf->mask_token_id >= 0
                     ? cf->mask_token_id
                     : (int32_t)((1 + (int64_t)i * 7919) % cf->n_vocab);
        pos[i] = i;
        lf[i] = 1;
    }
    td_batch_t b = {.n = PROBE,
                    .tokens = tok,
                    .pos = pos,
                    .attn = cf->causal ? TD_ATTN_CAUSAL : TD_ATTN_BIDIR,
                    .logits_for = lf};
    if (kv && td_model_forward(m, kv, &b, rows, &err) == TD_OK)
        for (int i = 0; i < PROBE; i++)
            S_MIX(td_argmax(rows + (size_t)i * cf->n_vocab, cf->n_vocab));
    else
        S_MIX(0xdeadull);
#undef S_MIX
    td_kv_cache_destroy(&kv);
    free(rows);
    return h ? h : 1;
}
