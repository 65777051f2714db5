/* wire.c - packing, unpacking and validation of tandem envelopes (see wire.h, docs/protocol.md).
 *
 * The generated protobuf-c code decodes the bytes; everything it lets through (any enum value, any
 * array length, NaN floats, missing sub-messages) is checked here, field by field, before a
 * message reaches the drafter, the verifier or the bridge. */
#include "protocol/wire.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

td_wire_limits_t td_wire_limits_default(void) {
    td_wire_limits_t lim = {TD_WIRE_MAX_MESSAGE_DEFAULT, 0, TD_WIRE_MAX_TOKENS_DEFAULT};
    return lim;
}

static td_wire_limits_t s_limits(const td_wire_limits_t *lim) {
    td_wire_limits_t l = lim ? *lim : td_wire_limits_default();
    if (!l.max_message) l.max_message = TD_WIRE_MAX_MESSAGE_DEFAULT;
    if (!l.max_tokens) l.max_tokens = TD_WIRE_MAX_TOKENS_DEFAULT;
    return l;
}

/* Well-formed UTF-8 (no overlongs, no surrogates, nothing past U+10FFFF). */
static int s_utf8_ok(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t need = c < 0x80                 ? 1
                      : c >= 0xc2 && c <= 0xdf ? 2
                      : c >= 0xe0 && c <= 0xef ? 3
                      : c >= 0xf0 && c <= 0xf4 ? 4
                                               : 0;
        if (!need || need > n - i) return 0;
        for (size_t k = 1; k < need; k++)
            if ((s[i + k] & 0xc0) != 0x80) return 0;
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] > 0x9f) ||
            (c == 0xf0 && s[i + 1] < 0x90) || (c == 0xf4 && s[i + 1] > 0x8f))
            return 0;
        i += need;
    }
    return 1;
}

static int s_check_string(const char *s, const char *what, size_t max, td_err_t *err) {
    if (!s) return TD_OK; /* protobuf-c uses the empty string, but a built message may hold NULL */
    size_t n = strnlen(s, max + 1);
    if (n > max) return td_err_set(err, TD_ERR_FORMAT, "%s is longer than %zu bytes", what, max);
    if (!s_utf8_ok(s, n)) return td_err_set(err, TD_ERR_FORMAT, "%s is not valid UTF-8", what);
    return TD_OK;
}

static int s_check_tokens(const uint32_t *ids, size_t n, const char *what,
                          const td_wire_limits_t *lim, td_err_t *err) {
    if (n && !ids) return td_err_set(err, TD_ERR_FORMAT, "%s: %zu tokens but no array", what, n);
    if (n > lim->max_tokens)
        return td_err_set(err, TD_ERR_FORMAT, "%s: %zu tokens, more than the limit %u", what, n,
                          lim->max_tokens);
    uint32_t v = lim->vocab_size ? lim->vocab_size : TD_WIRE_MAX_VOCAB;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= v)
            return td_err_set(err, TD_ERR_FORMAT, "%s[%zu] = %u is outside the vocabulary [0, %u)",
                              what, i, ids[i], v);
    return TD_OK;
}

static int s_check_sampling(const Tandem__Sampling *s, const char *what, td_err_t *err) {
    if (!s) return TD_OK;
    if (!isfinite(s->temperature) || s->temperature < 0.0f || s->temperature > 1000.0f)
        return td_err_set(err, TD_ERR_FORMAT, "%s.temperature = %g is outside [0, 1000]", what,
                          (double)s->temperature);
    if (!isfinite(s->top_p) || s->top_p < 0.0f || s->top_p > 1.0f)
        return td_err_set(err, TD_ERR_FORMAT, "%s.top_p = %g is outside [0, 1]", what,
                          (double)s->top_p);
    if (s->top_k > TD_WIRE_MAX_VOCAB)
        return td_err_set(err, TD_ERR_FORMAT, "%s.top_k = %u is over %u", what, s->top_k,
                          TD_WIRE_MAX_VOCAB);
    return TD_OK;
}

static int s_check_hello(const Tandem__Hello *h, const char *what, td_err_t *err) {
    if (!h) return td_err_set(err, TD_ERR_FORMAT, "%s is missing", what);
    if (h->protocol_version == 0)
        return td_err_set(err, TD_ERR_FORMAT, "%s.protocol_version is 0", what);
    if (h->role != TANDEM__ROLE__ROLE_DRAFTER && h->role != TANDEM__ROLE__ROLE_VERIFIER &&
        h->role != TANDEM__ROLE__ROLE_CLIENT)
        return td_err_set(err, TD_ERR_FORMAT, "%s.role = %d is not drafter, verifier or client",
                          what, (int)h->role);
    int rc = s_check_string(h->model_id, "hello.model_id", 1024, err);
    if (rc == TD_OK) rc = s_check_string(h->tokenizer_name, "hello.tokenizer_name", 1024, err);
    if (rc) return rc;
    if (h->role != TANDEM__ROLE__ROLE_CLIENT) { /* workers describe their model */
        if (h->vocab_size == 0 || h->vocab_size > TD_WIRE_MAX_VOCAB)
            return td_err_set(err, TD_ERR_FORMAT, "%s.vocab_size = %u is outside [1, %u]", what,
                              h->vocab_size, TD_WIRE_MAX_VOCAB);
    } else if (h->vocab_size > TD_WIRE_MAX_VOCAB) {
        return td_err_set(err, TD_ERR_FORMAT, "%s.vocab_size = %u is over %u", what, h->vocab_size,
                          TD_WIRE_MAX_VOCAB);
    }
    if (h->mask_token_id < -1 ||
        (h->mask_token_id >= 0 && h->vocab_size && (uint32_t)h->mask_token_id >= h->vocab_size))
        return td_err_set(err, TD_ERR_FORMAT, "%s.mask_token_id = %d is not -1 or in [0, %u)", what,
                          h->mask_token_id, h->vocab_size);
    if (h->n_capabilities > TD_WIRE_MAX_CAPABILITIES)
        return td_err_set(err, TD_ERR_FORMAT, "%s lists %zu capabilities, more than %u", what,
                          h->n_capabilities, TD_WIRE_MAX_CAPABILITIES);
    if (h->n_target_layers > TD_WIRE_MAX_TARGET_LAYERS)
        return td_err_set(err, TD_ERR_FORMAT, "%s lists %zu target layers, more than %u", what,
                          h->n_target_layers, TD_WIRE_MAX_TARGET_LAYERS);
    for (size_t i = 0; i < h->n_target_layers; i++)
        if (h->target_layers[i] < 1 || h->target_layers[i] > 100000)
            return td_err_set(err, TD_ERR_FORMAT, "%s.target_layers[%zu] = %u is not a layer id",
                              what, i, h->target_layers[i]);
    if (h->n_target_fingerprints > TD_WIRE_MAX_TARGET_FINGERPRINTS)
        return td_err_set(err, TD_ERR_FORMAT, "%s lists %zu target fingerprints, more than %u",
                          what, h->n_target_fingerprints, TD_WIRE_MAX_TARGET_FINGERPRINTS);
    if (h->block_size > TD_WIRE_MAX_GAMMA + 1)
        return td_err_set(err, TD_ERR_FORMAT, "%s.block_size = %u is over %u", what,
                          h->block_size, TD_WIRE_MAX_GAMMA + 1);
    if (h->n_capabilities && !h->capabilities)
        return td_err_set(err, TD_ERR_FORMAT, "%s.capabilities: no array", what);
    for (size_t i = 0; i < h->n_capabilities; i++) {
        if (!h->capabilities[i] || !h->capabilities[i][0])
            return td_err_set(err, TD_ERR_FORMAT, "%s.capabilities[%zu] is empty", what, i);
        if ((rc = s_check_string(h->capabilities[i], "hello.capabilities[]", 64, err))) return rc;
    }
    return TD_OK;
}

static int s_check_error(const Tandem__Error *e, const char *what, td_err_t *err) {
    if (!e) return td_err_set(err, TD_ERR_FORMAT, "%s is missing", what);
    if ((int)e->code < TANDEM__ERROR_CODE__ERROR_UNSPECIFIED ||
        (int)e->code > TANDEM__ERROR_CODE__ERROR_NO_HANDSHAKE)
        return td_err_set(err, TD_ERR_FORMAT, "%s.code = %d is unknown", what, (int)e->code);
    return s_check_string(e->message, "error.message", TD_WIRE_MAX_STRING, err);
}

static int s_cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int s_check_dist(const Tandem__SparseDist *d, size_t pos, const td_wire_limits_t *lim,
                        td_err_t *err) {
    if (!d) return td_err_set(err, TD_ERR_FORMAT, "proposal.dists[%zu] is missing", pos);
    if (d->n_ids > TD_WIRE_MAX_DIST_TOP_K)
        return td_err_set(err, TD_ERR_FORMAT, "proposal.dists[%zu] has %zu ids, more than %u", pos,
                          d->n_ids, TD_WIRE_MAX_DIST_TOP_K);
    if (d->n_probs != d->n_ids)
        return td_err_set(err, TD_ERR_FORMAT, "proposal.dists[%zu]: %zu ids but %zu probs", pos,
                          d->n_ids, d->n_probs);
    if (d->n_logits != 0 && d->n_logits != d->n_ids)
        return td_err_set(err, TD_ERR_FORMAT, "proposal.dists[%zu]: %zu ids but %zu logits", pos,
                          d->n_ids, d->n_logits);
    if ((d->n_ids && (!d->ids || !d->probs)) || (d->n_logits && !d->logits))
        return td_err_set(err, TD_ERR_FORMAT, "proposal.dists[%zu]: missing array", pos);
    int rc = s_check_tokens(d->ids, d->n_ids, "proposal.dists[].ids", lim, err);
    if (rc) return td_err_prefix(err, "position %zu", pos);
    double sum = 0.0;
    for (size_t i = 0; i < d->n_probs; i++) {
        float p = d->probs[i];
        if (!(p >= 0.0f && p <= 1.0f)) /* NaN fails too */
            return td_err_set(err, TD_ERR_FORMAT,
                              "proposal.dists[%zu].probs[%zu] = %g is not a probability", pos, i,
                              (double)p);
        sum += p;
    }
    if (!(d->rest_mass >= 0.0f && d->rest_mass <= 1.0f))
        return td_err_set(err, TD_ERR_FORMAT,
                          "proposal.dists[%zu].rest_mass = %g is outside [0, 1]", pos,
                          (double)d->rest_mass);
    if (!(fabs(sum + d->rest_mass - 1.0) <= TD_WIRE_PROB_TOLERANCE))
        return td_err_set(err, TD_ERR_FORMAT,
                          "proposal.dists[%zu]: probs sum to %.6f and rest_mass is %.6f, total "
                          "not within %g of 1",
                          pos, sum, (double)d->rest_mass, TD_WIRE_PROB_TOLERANCE);
    if (d->n_ids > 1) { /* distinct ids: a repeated id would count its mass twice */
        uint32_t stack[TD_WIRE_MAX_DIST_TOP_K];
        memcpy(stack, d->ids, d->n_ids * sizeof *stack);
        qsort(stack, d->n_ids, sizeof *stack, s_cmp_u32);
        for (size_t i = 1; i < d->n_ids; i++)
            if (stack[i] == stack[i - 1])
                return td_err_set(err, TD_ERR_FORMAT, "proposal.dists[%zu]: id %u listed twice",
                                  pos, stack[i]);
    }
    if (d->n_logits) {
        float lo = INFINITY;
        for (size_t i = 0; i < d->n_logits; i++) {
            float l = d->logits[i];
            if (isnan(l) || l == INFINITY)
                return td_err_set(err, TD_ERR_FORMAT,
                                  "proposal.dists[%zu].logits[%zu] = %g is not a logit", pos, i,
                                  (double)l);
            if (l < lo) lo = l;
        }
        /* The bound covers the ids left out, which rank below every listed one. */
        if (isnan(d->logit_bound) || d->logit_bound == INFINITY || d->logit_bound > lo)
            return td_err_set(err, TD_ERR_FORMAT,
                              "proposal.dists[%zu].logit_bound = %g is not <= the smallest "
                              "listed logit %g",
                              pos, (double)d->logit_bound, (double)lo);
    } else if (d->logit_bound != 0.0f) {
        return td_err_set(err, TD_ERR_FORMAT, "proposal.dists[%zu]: logit_bound without logits",
                          pos);
    }
    return TD_OK;
}

static int s_check_u32s(const void *arr, size_t n, const char *what, td_err_t *err) {
    if (n && !arr) return td_err_set(err, TD_ERR_FORMAT, "%s: %zu entries but no array", what, n);
    return TD_OK;
}

static int s_check_selfspec_eval(const Tandem__SelfspecEval *e, const td_wire_limits_t *lim,
                                 td_err_t *err) {
    if (!e) return td_err_set(err, TD_ERR_FORMAT, "selfspec_eval body is missing");
    int rc;
    if ((rc = s_check_tokens(e->prefix, e->n_prefix, "selfspec_eval.prefix", lim, err)) ||
        (rc = s_check_tokens(e->tails, e->n_tails, "selfspec_eval.tails", lim, err)) ||
        (rc = s_check_u32s(e->tail_lens, e->n_tail_lens, "selfspec_eval.tail_lens", err)) ||
        (rc = s_check_u32s(e->canvas_starts, e->n_canvas_starts, "selfspec_eval.canvas_starts",
                           err)))
        return rc;
    if (e->draft_k < 1 || e->draft_k > TD_WIRE_MAX_SELFSPEC_K)
        return td_err_set(err, TD_ERR_FORMAT, "selfspec_eval.draft_k = %u is outside [1, %u]",
                          e->draft_k, TD_WIRE_MAX_SELFSPEC_K);
    if (e->n_tail_lens < 1 || e->n_tail_lens > TD_WIRE_MAX_SELFSPEC_K)
        return td_err_set(err, TD_ERR_FORMAT, "selfspec_eval has %zu states, not in [1, %u]",
                          e->n_tail_lens, TD_WIRE_MAX_SELFSPEC_K);
    if (e->n_canvas_starts != e->n_tail_lens)
        return td_err_set(err, TD_ERR_FORMAT, "selfspec_eval: %zu tail_lens but %zu canvas_starts",
                          e->n_tail_lens, e->n_canvas_starts);
    uint64_t sum = 0;
    for (size_t i = 0; i < e->n_tail_lens; i++) {
        uint32_t t = e->tail_lens[i], c = e->canvas_starts[i];
        if (t < 1)
            return td_err_set(err, TD_ERR_FORMAT, "selfspec_eval.tail_lens[%zu] is 0 (no canvas)",
                              i);
        if ((uint64_t)e->n_prefix + t > lim->max_tokens)
            return td_err_set(err, TD_ERR_FORMAT,
                              "selfspec_eval: state %zu has %llu tokens, more than the limit %u", i,
                              (unsigned long long)(e->n_prefix + t), lim->max_tokens);
        if (c < e->n_prefix || (uint64_t)c >= (uint64_t)e->n_prefix + t)
            return td_err_set(err, TD_ERR_FORMAT,
                              "selfspec_eval.canvas_starts[%zu] = %u is outside [%zu, %llu)", i, c,
                              e->n_prefix, (unsigned long long)(e->n_prefix + t));
        sum += t;
    }
    if (sum != e->n_tails)
        return td_err_set(err, TD_ERR_FORMAT,
                          "selfspec_eval: tail_lens sum to %llu but %zu tail tokens were sent",
                          (unsigned long long)sum, e->n_tails);
    return TD_OK;
}

static int s_check_selfspec_drafts(const Tandem__SelfspecDrafts *d, const td_wire_limits_t *lim,
                                   td_err_t *err) {
    if (!d) return td_err_set(err, TD_ERR_FORMAT, "selfspec_drafts body is missing");
    int rc;
    if ((rc = s_check_u32s(d->counts, d->n_counts, "selfspec_drafts.counts", err)) ||
        (rc = s_check_u32s(d->positions, d->n_positions, "selfspec_drafts.positions", err)) ||
        (rc = s_check_tokens(d->tokens, d->n_tokens, "selfspec_drafts.tokens", lim, err)))
        return rc;
    if (d->n_counts < 1 || d->n_counts > TD_WIRE_MAX_SELFSPEC_K)
        return td_err_set(err, TD_ERR_FORMAT, "selfspec_drafts has %zu states, not in [1, %u]",
                          d->n_counts, TD_WIRE_MAX_SELFSPEC_K);
    size_t sum = 0;
    for (size_t i = 0; i < d->n_counts; i++) {
        if (d->counts[i] > TD_WIRE_MAX_SELFSPEC_K)
            return td_err_set(err, TD_ERR_FORMAT, "selfspec_drafts.counts[%zu] = %u is over %u", i,
                              d->counts[i], TD_WIRE_MAX_SELFSPEC_K);
        sum += d->counts[i];
    }
    if (d->n_positions != sum || d->n_tokens != sum)
        return td_err_set(err, TD_ERR_FORMAT,
                          "selfspec_drafts: counts sum to %zu but %zu positions and %zu tokens",
                          sum, d->n_positions, d->n_tokens);
    for (size_t i = 0; i < d->n_positions; i++)
        if (d->positions[i] >= lim->max_tokens)
            return td_err_set(err, TD_ERR_FORMAT, "selfspec_drafts.positions[%zu] = %u is over %u",
                              i, d->positions[i], lim->max_tokens);
    return TD_OK;
}

static int s_check_rng(const uint64_t *st, size_t n, const char *what, td_err_t *err) {
    if (n != 4 || !st)
        return td_err_set(err, TD_ERR_FORMAT, "%s has %zu words, 4 expected", what, n);
    if (!(st[0] | st[1] | st[2] | st[3]))
        return td_err_set(err, TD_ERR_FORMAT, "%s is all zero (not a generator state)", what);
    return TD_OK;
}

static int s_check_planned_fill(const Tandem__PlannedFill *f, const td_wire_limits_t *lim,
                                td_err_t *err) {
    if (!f) return td_err_set(err, TD_ERR_FORMAT, "planned_fill body is missing");
    int rc;
    if ((rc = s_check_tokens(f->context, f->n_context, "planned_fill.context", lim, err)) ||
        (rc = s_check_u32s(f->context_rows, f->n_context_rows, "planned_fill.context_rows", err)) ||
        (rc = s_check_u32s(f->span_units, f->n_span_units, "planned_fill.span_units", err)) ||
        (rc = s_check_tokens(f->tags, f->n_tags, "planned_fill.tags", lim, err)) ||
        (rc = s_check_rng(f->rng_state, f->n_rng_state, "planned_fill.rng_state", err)) ||
        (rc = s_check_sampling(f->sampling, "planned_fill.sampling", err)))
        return rc;
    if (f->n_context < 1) return td_err_set(err, TD_ERR_FORMAT, "planned_fill.context is empty");
    if (f->n_context_rows != 0 && f->n_context_rows != 3 * f->n_context)
        return td_err_set(err, TD_ERR_FORMAT,
                          "planned_fill.context_rows has %zu entries, 0 or 3 x %zu expected",
                          f->n_context_rows, f->n_context);
    for (size_t i = 0; i < f->n_context_rows; i += 3) {
        uint32_t pre = f->context_rows[i], lo = f->context_rows[i + 1], hi = f->context_rows[i + 2];
        if (pre > f->n_context || lo > hi || hi > f->n_context)
            return td_err_set(err, TD_ERR_FORMAT,
                              "planned_fill.context_rows of token %zu = (%u, %u, %u) is not "
                              "within the %zu context tokens",
                              i / 3, pre, lo, hi, f->n_context);
    }
    if (f->n_span_units < 1 || f->n_span_units > TD_WIRE_MAX_PLAN_SPANS)
        return td_err_set(err, TD_ERR_FORMAT, "planned_fill has %zu spans, not in [1, %u]",
                          f->n_span_units, TD_WIRE_MAX_PLAN_SPANS);
    for (size_t i = 0; i < f->n_span_units; i++)
        if (f->span_units[i] < 1 || f->span_units[i] > 99)
            return td_err_set(err, TD_ERR_FORMAT,
                              "planned_fill.span_units[%zu] = %u is not a length in [1, 99]", i,
                              f->span_units[i]);
    if (!(f->steps_ratio > 0.0f && f->steps_ratio <= 10.0f))
        return td_err_set(err, TD_ERR_FORMAT, "planned_fill.steps_ratio = %g is outside (0, 10]",
                          (double)f->steps_ratio);
    if (f->capacity < 1 || f->capacity > lim->max_tokens)
        return td_err_set(err, TD_ERR_FORMAT, "planned_fill.capacity = %u is outside [1, %u]",
                          f->capacity, lim->max_tokens);
    if (f->n_tags != 6)
        return td_err_set(err, TD_ERR_FORMAT, "planned_fill has %zu tags, 6 expected", f->n_tags);
    return TD_OK;
}

static int s_check_planned_filled(const Tandem__PlannedFilled *f, const td_wire_limits_t *lim,
                                  td_err_t *err) {
    if (!f) return td_err_set(err, TD_ERR_FORMAT, "planned_filled body is missing");
    int rc;
    if ((rc = s_check_tokens(f->scaffold, f->n_scaffold, "planned_filled.scaffold", lim, err)) ||
        (rc = s_check_rng(f->rng_state, f->n_rng_state, "planned_filled.rng_state", err)))
        return rc;
    if (f->n_scaffold < 3)
        return td_err_set(err, TD_ERR_FORMAT, "planned_filled.scaffold has %zu tokens (< 3)",
                          f->n_scaffold);
    if (f->forwards > TD_WIRE_MAX_STEPS * 10u)
        return td_err_set(err, TD_ERR_FORMAT, "planned_filled.forwards = %u is over %u",
                          f->forwards, TD_WIRE_MAX_STEPS * 10u);
    if ((uint64_t)f->span_steps > (uint64_t)f->forwards * TD_WIRE_MAX_PLAN_SPANS)
        return td_err_set(err, TD_ERR_FORMAT,
                          "planned_filled.span_steps = %u is more than forwards x spans",
                          f->span_steps);
    return TD_OK;
}

static int s_check_body(const Tandem__Envelope *env, const td_wire_limits_t *lim, td_err_t *err) {
    int rc;
    switch (env->body_case) {
    case TANDEM__ENVELOPE__BODY_HELLO:
        return s_check_hello(env->hello, "hello", err);
    case TANDEM__ENVELOPE__BODY_HELLO_ACK: {
        const Tandem__HelloAck *a = env->hello_ack;
        if (!a) return td_err_set(err, TD_ERR_FORMAT, "hello_ack body is missing");
        if (a->accepted) {
            if (a->error) return td_err_set(err, TD_ERR_FORMAT, "accepted hello_ack with an error");
            return s_check_hello(a->hello, "hello_ack.hello", err);
        }
        if (a->hello && (rc = s_check_hello(a->hello, "hello_ack.hello", err))) return rc;
        return s_check_error(a->error, "refused hello_ack.error", err);
    }
    case TANDEM__ENVELOPE__BODY_OPEN_SESSION: {
        const Tandem__OpenSession *o = env->open_session;
        if (!o) return td_err_set(err, TD_ERR_FORMAT, "open_session body is missing");
        if ((rc = s_check_tokens(o->prompt_tokens, o->n_prompt_tokens, "open_session.prompt_tokens",
                                 lim, err)))
            return rc;
        return s_check_sampling(o->sampling, "open_session.sampling", err);
    }
    case TANDEM__ENVELOPE__BODY_CLOSE_SESSION:
        if (!env->close_session) return td_err_set(err, TD_ERR_FORMAT, "close_session is missing");
        return s_check_string(env->close_session->reason, "close_session.reason",
                              TD_WIRE_MAX_STRING, err);
    case TANDEM__ENVELOPE__BODY_DRAFT_REQUEST: {
        const Tandem__DraftRequest *d = env->draft_request;
        if (!d) return td_err_set(err, TD_ERR_FORMAT, "draft_request body is missing");
        if (d->gamma < 1 || d->gamma > TD_WIRE_MAX_GAMMA)
            return td_err_set(err, TD_ERR_FORMAT, "draft_request.gamma = %u is outside [1, %u]",
                              d->gamma, TD_WIRE_MAX_GAMMA);
        if (d->steps < 1 || d->steps > TD_WIRE_MAX_STEPS)
            return td_err_set(err, TD_ERR_FORMAT, "draft_request.steps = %u is outside [1, %u]",
                              d->steps, TD_WIRE_MAX_STEPS);
        if ((int)d->order < TANDEM__UNMASK_ORDER__ORDER_LEFT_TO_RIGHT ||
            (int)d->order > TANDEM__UNMASK_ORDER__ORDER_MARGIN)
            return td_err_set(err, TD_ERR_FORMAT, "draft_request.order = %d is unknown",
                              (int)d->order);
        if (d->dist_top_k > TD_WIRE_MAX_DIST_TOP_K || (d->want_dist && d->dist_top_k < 1))
            return td_err_set(err, TD_ERR_FORMAT,
                              "draft_request.dist_top_k = %u is outside [1, %u]", d->dist_top_k,
                              TD_WIRE_MAX_DIST_TOP_K);
        if (!(d->confidence_threshold >= 0.0f && d->confidence_threshold <= 1.0f))
            return td_err_set(err, TD_ERR_FORMAT,
                              "draft_request.confidence_threshold = %g is outside [0, 1]",
                              (double)d->confidence_threshold);
        if ((rc = s_check_tokens(d->prefix_delta, d->n_prefix_delta, "draft_request.prefix_delta",
                                 lim, err)))
            return rc;
        if ((uint64_t)d->base_len + d->n_prefix_delta > (uint64_t)INT32_MAX)
            return td_err_set(err, TD_ERR_FORMAT,
                              "draft_request: base_len %u + %zu tokens overflows", d->base_len,
                              d->n_prefix_delta);
        if ((rc = s_check_sampling(d->sampling, "draft_request.sampling", err))) return rc;
        if (d->feature_type != TANDEM__FEATURE_TYPE__FEATURE_NONE &&
            d->feature_type != TANDEM__FEATURE_TYPE__FEATURE_F16 &&
            d->feature_type != TANDEM__FEATURE_TYPE__FEATURE_BF16)
            return td_err_set(err, TD_ERR_FORMAT, "draft_request.feature_type = %d is unknown",
                              (int)d->feature_type);
        if (d->features.len) {
            if (d->feature_type == TANDEM__FEATURE_TYPE__FEATURE_NONE)
                return td_err_set(err, TD_ERR_FORMAT,
                                  "draft_request.features without a feature_type");
            if (d->features.len % 2)
                return td_err_set(err, TD_ERR_FORMAT,
                                  "draft_request.features: %zu bytes is not a whole number of "
                                  "16-bit values",
                                  d->features.len);
        }
        if ((uint64_t)d->feature_start > (uint64_t)d->base_len + d->n_prefix_delta)
            return td_err_set(err, TD_ERR_FORMAT,
                              "draft_request.feature_start %u is past the text (%llu tokens)",
                              d->feature_start,
                              (unsigned long long)((uint64_t)d->base_len + d->n_prefix_delta));
        if (d->apd) {
            if (!(d->apd->mixture >= 0.0f && d->apd->mixture <= 1.0f))
                return td_err_set(err, TD_ERR_FORMAT,
                                  "draft_request.apd.mixture = %g is outside [0, 1]",
                                  (double)d->apd->mixture);
            if (d->apd->kv_window > lim->max_tokens)
                return td_err_set(err, TD_ERR_FORMAT, "draft_request.apd.kv_window = %u is over %u",
                                  d->apd->kv_window, lim->max_tokens);
            if (d->apd->lookahead > TD_WIRE_MAX_LOOKAHEAD)
                return td_err_set(err, TD_ERR_FORMAT, "draft_request.apd.lookahead = %u is over %u",
                                  d->apd->lookahead, TD_WIRE_MAX_LOOKAHEAD);
        }
        return TD_OK;
    }
    case TANDEM__ENVELOPE__BODY_PROPOSAL: {
        const Tandem__Proposal *p = env->proposal;
        if (!p) return td_err_set(err, TD_ERR_FORMAT, "proposal body is missing");
        if (p->n_tokens > TD_WIRE_MAX_GAMMA)
            return td_err_set(err, TD_ERR_FORMAT, "proposal has %zu tokens, more than %u",
                              p->n_tokens, TD_WIRE_MAX_GAMMA);
        if ((rc = s_check_tokens(p->tokens, p->n_tokens, "proposal.tokens", lim, err))) return rc;
        if (p->n_dists != 0 && p->n_dists != p->n_tokens)
            return td_err_set(err, TD_ERR_FORMAT, "proposal: %zu tokens but %zu dists", p->n_tokens,
                              p->n_dists);
        if (p->n_dists && !p->dists)
            return td_err_set(err, TD_ERR_FORMAT, "proposal.dists: no array");
        for (size_t i = 0; i < p->n_dists; i++)
            if ((rc = s_check_dist(p->dists[i], i, lim, err))) return rc;
        return TD_OK;
    }
    case TANDEM__ENVELOPE__BODY_FULL_ROW_REQUEST: {
        const Tandem__FullRowRequest *r = env->full_row_request;
        if (!r) return td_err_set(err, TD_ERR_FORMAT, "full_row_request body is missing");
        if (r->position >= TD_WIRE_MAX_GAMMA)
            return td_err_set(err, TD_ERR_FORMAT, "full_row_request.position = %u is over %u",
                              r->position, TD_WIRE_MAX_GAMMA - 1);
        if (r->kind != TANDEM__ROW_KIND__ROW_PROBS && r->kind != TANDEM__ROW_KIND__ROW_LOGITS)
            return td_err_set(err, TD_ERR_FORMAT, "full_row_request.kind = %d is unknown",
                              (int)r->kind);
        return TD_OK;
    }
    case TANDEM__ENVELOPE__BODY_FULL_ROW: {
        const Tandem__FullRow *r = env->full_row;
        if (!r) return td_err_set(err, TD_ERR_FORMAT, "full_row body is missing");
        if (r->position >= TD_WIRE_MAX_GAMMA)
            return td_err_set(err, TD_ERR_FORMAT, "full_row.position = %u is over %u", r->position,
                              TD_WIRE_MAX_GAMMA - 1);
        if (r->kind != TANDEM__ROW_KIND__ROW_PROBS && r->kind != TANDEM__ROW_KIND__ROW_LOGITS)
            return td_err_set(err, TD_ERR_FORMAT, "full_row.kind = %d is unknown", (int)r->kind);
        if (r->n_values == 0 || r->n_values > TD_WIRE_MAX_VOCAB || (r->n_values && !r->values))
            return td_err_set(err, TD_ERR_FORMAT, "full_row has %zu values", r->n_values);
        if (lim->vocab_size && r->n_values != lim->vocab_size)
            return td_err_set(err, TD_ERR_FORMAT, "full_row has %zu values, the vocabulary %u",
                              r->n_values, lim->vocab_size);
        double sum = 0.0;
        for (size_t i = 0; i < r->n_values; i++) {
            float v = r->values[i];
            if (r->kind == TANDEM__ROW_KIND__ROW_PROBS) {
                if (!(v >= 0.0f && v <= 1.0f))
                    return td_err_set(err, TD_ERR_FORMAT,
                                      "full_row.values[%zu] = %g is not a probability", i,
                                      (double)v);
                sum += v;
            } else if (isnan(v) || v == INFINITY) {
                return td_err_set(err, TD_ERR_FORMAT, "full_row.values[%zu] = %g is not a logit", i,
                                  (double)v);
            }
        }
        if (r->kind == TANDEM__ROW_KIND__ROW_PROBS && !(fabs(sum - 1.0) <= TD_WIRE_PROB_TOLERANCE))
            return td_err_set(err, TD_ERR_FORMAT, "full_row probabilities sum to %.6f", sum);
        return TD_OK;
    }
    case TANDEM__ENVELOPE__BODY_COMMIT:
        if (!env->commit) return td_err_set(err, TD_ERR_FORMAT, "commit body is missing");
        if (env->commit->accepted_len > (uint32_t)INT32_MAX)
            return td_err_set(err, TD_ERR_FORMAT, "commit.accepted_len = %u overflows",
                              env->commit->accepted_len);
        return TD_OK;
    case TANDEM__ENVELOPE__BODY_ERROR:
        return s_check_error(env->error, "error", err);
    case TANDEM__ENVELOPE__BODY_HEARTBEAT:
        if (!env->heartbeat) return td_err_set(err, TD_ERR_FORMAT, "heartbeat body is missing");
        return TD_OK;
    case TANDEM__ENVELOPE__BODY_GENERATE_REQUEST: {
        const Tandem__GenerateRequest *g = env->generate_request;
        if (!g) return td_err_set(err, TD_ERR_FORMAT, "generate_request body is missing");
        if ((rc = s_check_string(g->prompt, "generate_request.prompt", (size_t)16 << 20, err)))
            return rc;
        if ((rc = s_check_string(g->method, "generate_request.method", 64, err))) return rc;
        if ((rc = s_check_string(g->verify, "generate_request.verify", 64, err))) return rc;
        if (g->max_tokens < 1 || g->max_tokens > (1u << 20))
            return td_err_set(err, TD_ERR_FORMAT,
                              "generate_request.max_tokens = %u is outside [1, %u]", g->max_tokens,
                              1u << 20);
        if (g->gamma > TD_WIRE_MAX_GAMMA)
            return td_err_set(err, TD_ERR_FORMAT, "generate_request.gamma = %u is over %u",
                              g->gamma, TD_WIRE_MAX_GAMMA);
        if (g->steps > TD_WIRE_MAX_STEPS)
            return td_err_set(err, TD_ERR_FORMAT, "generate_request.steps = %u is over %u",
                              g->steps, TD_WIRE_MAX_STEPS);
        if ((unsigned)g->order > 3)
            return td_err_set(err, TD_ERR_FORMAT, "generate_request.order = %d is unknown",
                              (int)g->order);
        if (!(g->mixture >= 0.0f && g->mixture <= 1.0f))
            return td_err_set(err, TD_ERR_FORMAT, "generate_request.mixture = %g is outside [0, 1]",
                              (double)g->mixture);
        return s_check_sampling(g->sampling, "generate_request.sampling", err);
    }
    case TANDEM__ENVELOPE__BODY_TOKEN_CHUNK: {
        const Tandem__TokenChunk *t = env->token_chunk;
        if (!t) return td_err_set(err, TD_ERR_FORMAT, "token_chunk body is missing");
        if ((rc = s_check_tokens(t->tokens, t->n_tokens, "token_chunk.tokens", lim, err)))
            return rc;
        if ((rc = s_check_string(t->text, "token_chunk.text", (size_t)16 << 20, err))) return rc;
        if ((rc = s_check_string(t->stats_json, "token_chunk.stats_json", (size_t)1 << 20, err)))
            return rc;
        return s_check_string(t->error, "token_chunk.error", TD_WIRE_MAX_STRING, err);
    }
    case TANDEM__ENVELOPE__BODY_SELFSPEC_EVAL:
        return s_check_selfspec_eval(env->selfspec_eval, lim, err);
    case TANDEM__ENVELOPE__BODY_SELFSPEC_DRAFTS:
        return s_check_selfspec_drafts(env->selfspec_drafts, lim, err);
    case TANDEM__ENVELOPE__BODY_PLANNED_FILL:
        return s_check_planned_fill(env->planned_fill, lim, err);
    case TANDEM__ENVELOPE__BODY_PLANNED_FILLED:
        return s_check_planned_filled(env->planned_filled, lim, err);
    case TANDEM__ENVELOPE__BODY__NOT_SET:
        return td_err_set(err, TD_ERR_FORMAT, "envelope has no body");
    default:
        return td_err_set(err, TD_ERR_FORMAT, "envelope body %d is unknown", (int)env->body_case);
    }
}

static int s_session_body(Tandem__Envelope__BodyCase c) {
    return c == TANDEM__ENVELOPE__BODY_OPEN_SESSION || c == TANDEM__ENVELOPE__BODY_CLOSE_SESSION ||
           c == TANDEM__ENVELOPE__BODY_DRAFT_REQUEST || c == TANDEM__ENVELOPE__BODY_PROPOSAL ||
           c == TANDEM__ENVELOPE__BODY_FULL_ROW_REQUEST || c == TANDEM__ENVELOPE__BODY_FULL_ROW ||
           c == TANDEM__ENVELOPE__BODY_COMMIT || c == TANDEM__ENVELOPE__BODY_GENERATE_REQUEST ||
           c == TANDEM__ENVELOPE__BODY_TOKEN_CHUNK || c == TANDEM__ENVELOPE__BODY_SELFSPEC_EVAL ||
           c == TANDEM__ENVELOPE__BODY_SELFSPEC_DRAFTS ||
           c == TANDEM__ENVELOPE__BODY_PLANNED_FILL || c == TANDEM__ENVELOPE__BODY_PLANNED_FILLED;
}

/* Unknown fields (from a newer peer) are skipped, but protobuf-c also keeps the invalid field
 * number 0, which it would then pack into bytes it cannot read back: refuse those. Walks every
 * sub-message that is present (for a oneof, only the member that is set). */
static int s_check_unknown(const ProtobufCMessage *m, int depth, td_err_t *err) {
    if (depth > 8) return td_err_set(err, TD_ERR_FORMAT, "messages nested too deeply");
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return td_err_set(err, TD_ERR_FORMAT, "%s holds a field numbered 0",
                              m->descriptor->short_name);
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t j = 0; j < n; j++) {
                if (!arr || !arr[j]) return td_err_set(err, TD_ERR_FORMAT, "empty sub-message");
                int rc = s_check_unknown(arr[j], depth + 1, err);
                if (rc) return rc;
            }
            continue;
        }
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + f->offset);
        if (sub) {
            int rc = s_check_unknown(sub, depth + 1, err);
            if (rc) return rc;
        }
    }
    return TD_OK;
}

int td_wire_validate(const Tandem__Envelope *env, const td_wire_limits_t *lim, td_err_t *err) {
    if (!env) return td_err_set(err, TD_ERR_FORMAT, "no envelope");
    td_wire_limits_t l = s_limits(lim);
    if (env->version != TD_PROTOCOL_VERSION)
        return td_err_set(err, TD_ERR_FORMAT,
                          "protocol version mismatch: the message has version %u, this build "
                          "speaks version %u",
                          env->version, TD_PROTOCOL_VERSION);
    if (s_session_body(env->body_case) && env->session_id == 0)
        return td_err_set(err, TD_ERR_FORMAT, "%s without a session id", td_wire_body_name(env));
    int rc = s_check_body(env, &l, err);
    if (rc == TD_OK) rc = s_check_unknown(&env->base, 0, err);
    if (rc) return td_err_prefix(err, "invalid %s", td_wire_body_name(env));
    return TD_OK;
}

size_t td_wire_packed_size(const Tandem__Envelope *env) {
    return tandem__envelope__get_packed_size(env);
}

int td_wire_pack_to(const Tandem__Envelope *env, uint8_t *out, td_err_t *err) {
    int rc = td_wire_validate(env, NULL, err);
    if (rc) return td_err_prefix(err, "refusing to send");
    tandem__envelope__pack(env, out);
    return TD_OK;
}

int td_wire_pack(const Tandem__Envelope *env, uint8_t **buf, size_t *len, td_err_t *err) {
    int rc = td_wire_validate(env, NULL, err);
    if (rc) return td_err_prefix(err, "refusing to send");
    size_t n = tandem__envelope__get_packed_size(env);
    if (n > TD_WIRE_MAX_MESSAGE_DEFAULT)
        return td_err_set(err, TD_ERR_FORMAT, "message of %zu bytes is over the %u byte limit", n,
                          TD_WIRE_MAX_MESSAGE_DEFAULT);
    uint8_t *b = malloc(n ? n : 1);
    if (!b) return td_err_set(err, TD_ERR_NOMEM, "out of memory packing %zu bytes", n);
    size_t w = tandem__envelope__pack(env, b);
    if (w != n) { /* cannot happen for a valid message; guards against a protobuf-c surprise */
        free(b);
        return td_err_set(err, TD_ERR, "packed %zu bytes, expected %zu", w, n);
    }
    *buf = b;
    *len = n;
    return TD_OK;
}

int td_wire_unpack(const void *buf, size_t len, const td_wire_limits_t *lim, Tandem__Envelope **out,
                   td_err_t *err) {
    *out = NULL;
    td_wire_limits_t l = s_limits(lim);
    if (len > l.max_message)
        return td_err_set(err, TD_ERR_FORMAT, "message of %zu bytes is over the %zu byte limit",
                          len, l.max_message);
    if (len && !buf) return td_err_set(err, TD_ERR_FORMAT, "no buffer");
    static const uint8_t empty[1] = {0};
    Tandem__Envelope *env = tandem__envelope__unpack(NULL, len, len ? buf : empty);
    if (!env)
        return td_err_set(err, TD_ERR_FORMAT,
                          "message of %zu bytes is not a tandem envelope "
                          "(protobuf decoding failed)",
                          len);
    int rc = td_wire_validate(env, &l, err);
    if (rc) {
        tandem__envelope__free_unpacked(env, NULL);
        return rc;
    }
    *out = env;
    return TD_OK;
}

void td_wire_free(Tandem__Envelope **env_p) {
    if (!env_p || !*env_p) return;
    tandem__envelope__free_unpacked(*env_p, NULL);
    *env_p = NULL;
}

const char *td_wire_body_name(const Tandem__Envelope *env) {
    return td_msg_body_name(env ? (td_body_t)env->body_case : TD_BODY_NONE);
}

const char *td_wire_role_name(int role) {
    switch (role) {
    case TANDEM__ROLE__ROLE_DRAFTER:
        return "drafter";
    case TANDEM__ROLE__ROLE_VERIFIER:
        return "verifier";
    case TANDEM__ROLE__ROLE_CLIENT:
        return "client";
    default:
        return "unspecified";
    }
}

const char *td_wire_error_code_name(int code) {
    static const char *names[] = {
        "unspecified",  "malformed",   "version", "tokenizer_mismatch", "unknown_session",
        "out_of_order", "unsupported", "busy",    "internal",           "no_handshake"};
    if (code < 0 || code >= (int)(sizeof names / sizeof names[0])) return "unknown";
    return names[code];
}

uint64_t td_wire_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void s_envelope(Tandem__Envelope *env, uint64_t session_id, uint64_t round) {
    tandem__envelope__init(env);
    env->version = TD_PROTOCOL_VERSION;
    env->session_id = session_id;
    env->round = round;
}

void td_wire_hello_init(Tandem__Envelope *env, Tandem__Hello *body) {
    s_envelope(env, 0, 0);
    tandem__hello__init(body);
    body->protocol_version = TD_PROTOCOL_VERSION;
    body->mask_token_id = -1;
    env->body_case = TANDEM__ENVELOPE__BODY_HELLO;
    env->hello = body;
}

void td_wire_hello_ack_init(Tandem__Envelope *env, Tandem__HelloAck *body) {
    s_envelope(env, 0, 0);
    tandem__hello_ack__init(body);
    env->body_case = TANDEM__ENVELOPE__BODY_HELLO_ACK;
    env->hello_ack = body;
}

void td_wire_open_session_init(Tandem__Envelope *env, Tandem__OpenSession *body,
                               uint64_t session_id) {
    s_envelope(env, session_id, 0);
    tandem__open_session__init(body);
    env->body_case = TANDEM__ENVELOPE__BODY_OPEN_SESSION;
    env->open_session = body;
}

void td_wire_close_session_init(Tandem__Envelope *env, Tandem__CloseSession *body,
                                uint64_t session_id) {
    s_envelope(env, session_id, 0);
    tandem__close_session__init(body);
    env->body_case = TANDEM__ENVELOPE__BODY_CLOSE_SESSION;
    env->close_session = body;
}

void td_wire_draft_request_init(Tandem__Envelope *env, Tandem__DraftRequest *body,
                                uint64_t session_id, uint64_t round) {
    s_envelope(env, session_id, round);
    tandem__draft_request__init(body);
    body->gamma = 1;
    body->steps = 1;
    env->body_case = TANDEM__ENVELOPE__BODY_DRAFT_REQUEST;
    env->draft_request = body;
}

void td_wire_proposal_init(Tandem__Envelope *env, Tandem__Proposal *body, uint64_t session_id,
                           uint64_t round) {
    s_envelope(env, session_id, round);
    tandem__proposal__init(body);
    env->body_case = TANDEM__ENVELOPE__BODY_PROPOSAL;
    env->proposal = body;
}

void td_wire_full_row_request_init(Tandem__Envelope *env, Tandem__FullRowRequest *body,
                                   uint64_t session_id, uint64_t round) {
    s_envelope(env, session_id, round);
    tandem__full_row_request__init(body);
    env->body_case = TANDEM__ENVELOPE__BODY_FULL_ROW_REQUEST;
    env->full_row_request = body;
}

void td_wire_full_row_init(Tandem__Envelope *env, Tandem__FullRow *body, uint64_t session_id,
                           uint64_t round) {
    s_envelope(env, session_id, round);
    tandem__full_row__init(body);
    env->body_case = TANDEM__ENVELOPE__BODY_FULL_ROW;
    env->full_row = body;
}

void td_wire_commit_init(Tandem__Envelope *env, Tandem__Commit *body, uint64_t session_id,
                         uint64_t round, uint32_t accepted_len) {
    s_envelope(env, session_id, round);
    tandem__commit__init(body);
    body->accepted_len = accepted_len;
    env->body_case = TANDEM__ENVELOPE__BODY_COMMIT;
    env->commit = body;
}

void td_wire_error_init(Tandem__Envelope *env, Tandem__Error *body, uint64_t session_id,
                        uint64_t round, Tandem__ErrorCode code, const char *message) {
    s_envelope(env, session_id, round);
    tandem__error__init(body);
    body->code = code;
    body->message = (char *)(message ? message : "");
    body->in_reply_to_round = round;
    env->body_case = TANDEM__ENVELOPE__BODY_ERROR;
    env->error = body;
}

void td_wire_heartbeat_init(Tandem__Envelope *env, Tandem__Heartbeat *body) {
    s_envelope(env, 0, 0);
    tandem__heartbeat__init(body);
    body->sent_us = td_wire_now_us();
    env->body_case = TANDEM__ENVELOPE__BODY_HEARTBEAT;
    env->heartbeat = body;
}

void td_wire_generate_request_init(Tandem__Envelope *env, Tandem__GenerateRequest *body,
                                   uint64_t session_id) {
    s_envelope(env, session_id, 0);
    tandem__generate_request__init(body);
    env->body_case = TANDEM__ENVELOPE__BODY_GENERATE_REQUEST;
    env->generate_request = body;
}

void td_wire_token_chunk_init(Tandem__Envelope *env, Tandem__TokenChunk *body, uint64_t session_id,
                              uint64_t seq) {
    s_envelope(env, session_id, seq);
    tandem__token_chunk__init(body);
    env->body_case = TANDEM__ENVELOPE__BODY_TOKEN_CHUNK;
    env->token_chunk = body;
}

#define S_BODY_INIT(fn, type, lower, CASE)                                                         \
    void td_wire_##fn##_init(Tandem__Envelope *env, Tandem__##type *body, uint64_t session_id,     \
                             uint64_t round) {                                                     \
        s_envelope(env, session_id, round);                                                        \
        tandem__##lower##__init(body);                                                             \
        env->body_case = TANDEM__ENVELOPE__BODY_##CASE;                                            \
        env->fn = body;                                                                            \
    }
S_BODY_INIT(selfspec_eval, SelfspecEval, selfspec_eval, SELFSPEC_EVAL)
S_BODY_INIT(selfspec_drafts, SelfspecDrafts, selfspec_drafts, SELFSPEC_DRAFTS)
S_BODY_INIT(planned_fill, PlannedFill, planned_fill, PLANNED_FILL)
S_BODY_INIT(planned_filled, PlannedFilled, planned_filled, PLANNED_FILLED)

void td_wire_hello_fill(Tandem__Hello *hello, Tandem__Role role, const char *model_id,
                        uint32_t vocab_size, int32_t mask_token_id, uint64_t tokenizer_hash,
                        const char *tokenizer_name, char **capabilities, size_t n_capabilities) {
    hello->protocol_version = TD_PROTOCOL_VERSION;
    hello->role = role;
    hello->model_id = (char *)(model_id ? model_id : "");
    hello->vocab_size = vocab_size;
    hello->mask_token_id = mask_token_id;
    hello->tokenizer_hash = tokenizer_hash;
    hello->tokenizer_name = (char *)(tokenizer_name ? tokenizer_name : "");
    hello->capabilities = capabilities;
    hello->n_capabilities = n_capabilities;
}

int td_wire_hello_compatible(const Tandem__Hello *ours, const Tandem__Hello *theirs,
                             Tandem__ErrorCode *code, td_err_t *err) {
    td_hello_t a, b;
    td_wire_hello_to_msg(ours, &a);
    td_wire_hello_to_msg(theirs, &b);
    int c = TD_PERR_UNSPECIFIED;
    int rc = td_hello_compatible(&a, &b, &c, err);
    if (code) *code = (Tandem__ErrorCode)c;
    return rc;
}

int td_wire_hello_has_capability(const Tandem__Hello *hello, const char *cap) {
    if (!hello) return 0;
    td_hello_t h;
    td_wire_hello_to_msg(hello, &h);
    return td_hello_has_capability(&h, cap);
}

uint64_t td_wire_hash64(const void *data, size_t len) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

uint64_t td_draft_round_seed(uint64_t seed, uint64_t round) {
    uint64_t x = seed ^ (round * 0x2545F4914F6CDD1Dull);
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
