/* test_planned.c - planned diffusion (drafter/planned.c): tag lookup and the no-tag fallback
 * error, the strict plan parser, attention rows checked cell by cell, and scaffold filling on a
 * random-weight Dream model whose vocabulary is the e2e drafter's plus the six tags (a copy of
 * its tokenizer.json with the tags appended as added tokens 1123..1128).
 *
 * Span isolation is checked two ways: at the forward level (a span's logits are bitwise the same
 * whatever its siblings contain, and match a run of the prefix and that span alone), and at the
 * filler level (filling one span alone gives the same tokens as filling all of them; with dense
 * attention it does not). The critical path is checked against the schedule computed here.
 *
 * The fallback to plain decoding never emits a plan tag: td_plan_tag_ids, suppress_ids in
 * td_diffusion_generate and td_generate_ar (each against an unsuppressed control that does emit
 * tags), and `tandem generate --method planned` falling back on models/tiny-planned. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bridge/pair.h"
#include "engine/remote_methods.h"
#include "common/td_common.h"
#include "drafter/draft.h"
#include "drafter/planned.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "tests/tdtest.h"
#include "tests/tdproc.h"
#include "verifier/generate.h"
#include "verifier/remote.h"

#define TAG0 1123

/* A copy of the e2e drafter's tokenizer with tags[n] appended as added tokens TAG0, TAG0+1, ... */
static td_tokenizer_t *s_tok_with(const char *const *tags, int n) {
    char path[512];
    snprintf(path, sizeof path, "%s/e2e/dream-drafter/tokenizer.json", td_test_data());
    char *text = NULL;
    size_t len = 0;
    td_err_t err = {0};
    if (td_read_file(path, &text, &len, &err) != TD_OK) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) return NULL;
    cJSON *added = cJSON_GetObjectItem(j, "added_tokens");
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "id", TAG0 + i);
        cJSON_AddStringToObject(o, "content", tags[i]);
        cJSON_AddBoolToObject(o, "single_word", 0);
        cJSON_AddBoolToObject(o, "lstrip", 0);
        cJSON_AddBoolToObject(o, "rstrip", 0);
        cJSON_AddBoolToObject(o, "normalized", 0);
        cJSON_AddBoolToObject(o, "special", 1);
        cJSON_AddItemToArray(added, o);
    }
    char *out = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    td_tokenizer_t *tok = td_tokenizer_from_json(out, strlen(out), &err);
    free(out);
    return tok;
}

static td_tokenizer_t *s_tok_with_tags(void) {
    static const char *tags[6] = {"<async>",  "</async>", "<promise>-<topic>",
                                  "</topic>", "<sync/>",  "[PAD]"};
    return s_tok_with(tags, 6);
}

typedef struct env {
    td_tokenizer_t *tok;
    td_plan_tags_t tags;
} env_t;

static int s_env(env_t *e) {
    memset(e, 0, sizeof *e);
    e->tok = s_tok_with_tags();
    if (!e->tok) {
        td_test_fail(__FILE__, __LINE__, "could not build the tokenizer with tags");
        return 0;
    }
    td_err_t err = {0};
    if (td_plan_tags_init(&e->tags, e->tok, 2, &err) != TD_OK) {
        td_test_fail(__FILE__, __LINE__, "tags: %s", err.msg);
        td_tokenizer_destroy(&e->tok);
        return 0;
    }
    return 1;
}

static void s_env_free(env_t *e) {
    td_plan_tags_free(&e->tags);
    td_tokenizer_destroy(&e->tok);
}

static int s_parse_text(env_t *e, const char *text, td_plan_t *plan, td_err_t *err) {
    int32_t *ids = NULL;
    int n = 0;
    if (td_tokenizer_encode(e->tok, text, strlen(text), 1, &ids, &n, err) != TD_OK) return -100;
    int rc = td_plan_parse(ids, n, &e->tags, plan, err);
    free(ids);
    return rc;
}

TD_TEST(tags_from_tokenizer) {
    env_t e;
    if (!s_env(&e)) return;
    CHECK_EQ_INT(e.tags.async_open, TAG0);
    CHECK_EQ_INT(e.tags.async_close, TAG0 + 1);
    CHECK_EQ_INT(e.tags.promise, TAG0 + 2);
    CHECK_EQ_INT(e.tags.topic_close, TAG0 + 3);
    CHECK_EQ_INT(e.tags.sync, TAG0 + 4);
    CHECK_EQ_INT(e.tags.pad, TAG0 + 5);
    int32_t five = td_tokenizer_token_id(e.tok, "5");
    REQUIRE(five >= 0);
    CHECK_EQ_INT(e.tags.kind[five], 2);
    CHECK_EQ_INT(e.tags.value[five], 5);
    int32_t the = td_tokenizer_token_id(e.tok, "the");
    if (the >= 0) CHECK_EQ_INT(e.tags.kind[the], 0);
    s_env_free(&e);
}

TD_TEST(no_tags_is_a_clear_error_with_a_fallback) {
    char path[512];
    snprintf(path, sizeof path, "%s/e2e/dream-drafter", td_test_data());
    td_err_t err = {0};
    td_tokenizer_t *tok = td_tokenizer_load(path, &err);
    REQUIRE(tok);
    td_plan_tags_t t;
    CHECK_EQ_INT(td_plan_tags_init(&t, tok, 2, &err), TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "<async>") && strstr(err.msg, "<promise>-<topic>"));
    CHECK(strstr(err.msg, "plain decoding") != NULL);
    td_plan_tags_free(&t);
    td_tokenizer_destroy(&tok);
}

TD_TEST(plan_parser_accepts) {
    env_t e;
    if (!s_env(&e)) return;
    td_plan_t p;
    td_err_t err = {0};
    CHECK_EQ_INT(s_parse_text(&e,
                              "Verses:<promise>-<topic> In the beginning 3</topic>"
                              "<promise>-<topic> And God said 12 </topic><sync/>",
                              &p, &err),
                 TD_OK);
    CHECK_EQ_INT(p.n_spans, 2);
    CHECK_EQ_INT(p.spans[0].units, 3);
    CHECK_EQ_INT(p.spans[0].length, 30);
    CHECK_EQ_INT(p.spans[1].units, 12);
    CHECK_EQ_INT(p.spans[1].length, 120);
    CHECK_EQ_INT(p.end, TD_PLAN_END_SYNC);
    CHECK(p.spans[0].promise_at < p.spans[0].close_at);
    CHECK(p.spans[0].close_at < p.spans[1].promise_at);
    CHECK_EQ_INT(s_parse_text(&e, "<promise>-<topic> x 1</topic>[PAD]<|im_end|>", &p, &err), TD_OK);
    CHECK_EQ_INT(p.n_spans, 1);
    CHECK_EQ_INT(p.end, TD_PLAN_END_EOS);
    CHECK_EQ_INT(s_parse_text(&e, "Just an answer.<|im_end|>", &p, &err), TD_OK);
    CHECK_EQ_INT(p.n_spans, 0);
    CHECK_EQ_INT(s_parse_text(&e, "<promise>-<topic> 99 words</topic>", &p, &err), TD_OK);
    CHECK_EQ_INT(p.spans[0].units, 99);
    CHECK_EQ_INT(p.end, TD_PLAN_END_NONE);
    s_env_free(&e);
}

TD_TEST(plan_parser_rejects) {
    env_t e;
    if (!s_env(&e)) return;
    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"<promise>-<topic> words </topic><sync/>", "no length"},
        {"<promise>-<topic> words 123</topic><sync/>", "more than 2 digits"},
        {"<promise>-<topic> words 0</topic><sync/>", "is 0"},
        {"<promise>-<topic> words 00</topic><sync/>", "is 0"},
        {"<promise>-<topic> words 3 and 4</topic><sync/>", "two numbers"},
        {"<promise>-<topic> words 3<sync/>", "unterminated"},
        {"<promise>-<topic> words 3<|im_end|>", "unterminated"},
        {"<promise>-<topic> words 3", "unterminated"},
        {"words 3</topic><sync/>", "without an open"},
        {"<promise>-<topic> a 2<promise>-<topic> b 3</topic>", "inside the promise"},
        {"<promise>-<topic> a 2</topic><async><sync/>", "async tags belong"},
        {"<promise>-<topic> a 2</topic><sync/> more", "after the stage"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        td_plan_t p;
        td_err_t err = {0};
        int rc = s_parse_text(&e, bad[i].text, &p, &err);
        CHECK_MSG(rc == TD_ERR_FORMAT, "\"%s\" gave %d", bad[i].text, rc);
        CHECK_MSG(strstr(err.msg, bad[i].msg) != NULL, "\"%s\": message \"%s\" lacks \"%s\"",
                  bad[i].text, err.msg, bad[i].msg);
    }
    s_env_free(&e);
}

/* Cell by cell, against the rule written out here. */
TD_TEST(scaffold_rows_and_mask_cells) {
    env_t e;
    if (!s_env(&e)) return;
    td_plan_t p = {.n_spans = 3};
    p.spans[0].length = 10;
    p.spans[1].length = 20;
    p.spans[2].length = 10;
    const int P = 7, L = 12 + 22 + 12, N = P + L;
    int32_t tok[64];
    td_pd_row_t rows[64];
    for (int dense = 0; dense < 2; dense++) {
        for (int i = 0; i < P; i++) rows[i] = (td_pd_row_t){i + 1, 0, 0};
        CHECK_EQ_INT(td_planned_scaffold(&p, &e.tags, 1121, P, dense, tok + P, rows + P, 64 - P),
                     L);
        CHECK_EQ_INT(td_planned_scaffold(&p, &e.tags, 1121, P, dense, tok + P, rows + P, L - 1),
                     TD_ERR_ARG);
        /* tokens: <async> masks </async> per span */
        int starts[3] = {P, P + 12, P + 34}, lens[3] = {10, 20, 10};
        for (int k = 0; k < 3; k++) {
            CHECK_EQ_INT(tok[starts[k]], e.tags.async_open);
            CHECK_EQ_INT(tok[starts[k] + lens[k] + 1], e.tags.async_close);
            for (int j = 1; j <= lens[k]; j++) CHECK_EQ_INT(tok[starts[k] + j], 1121);
        }
        uint8_t *mask = malloc((size_t)N * N);
        td_pd_rows_mask(rows, N, mask, N);
        int bad = 0;
        for (int q = 0; q < N; q++) {
            int qs = -1;
            for (int k = 0; k < 3; k++)
                if (q >= starts[k] && q < starts[k] + lens[k] + 2) qs = k;
            for (int key = 0; key < N; key++) {
                int ks = -1;
                for (int k = 0; k < 3; k++)
                    if (key >= starts[k] && key < starts[k] + lens[k] + 2) ks = k;
                int want;
                if (qs < 0)
                    want = key <= q; /* prefix: causal, never a span */
                else if (ks < 0)
                    want = 1; /* span rows see the whole prefix */
                else
                    want = dense ? 1 : ks == qs; /* own span; siblings only when dense */
                if (mask[(size_t)q * N + key] != want) bad++;
            }
        }
        CHECK_MSG(bad == 0, "%d wrong mask cells (dense %d)", bad, dense);
        free(mask);
    }
    s_env_free(&e);
}

TD_TEST(clean_strips_tags_promises_and_pad) {
    env_t e;
    if (!s_env(&e)) return;
    const td_plan_tags_t *t = &e.tags;
    int32_t raw[] = {40,
                     t->promise,
                     41,
                     23,
                     t->topic_close,
                     t->async_open,
                     50,
                     51,
                     t->pad,
                     t->pad,
                     t->async_close,
                     t->sync,
                     42,
                     t->async_open,
                     52,
                     t->async_close,
                     2};
    int32_t out[32];
    int n = td_planned_clean(t, raw, (int)(sizeof raw / sizeof raw[0]), out);
    int32_t want[] = {40, 50, 51, 42, 52};
    CHECK_EQ_INT(n, 5);
    for (int i = 0; i < 5 && i < n; i++) CHECK_EQ_INT(out[i], want[i]);
    s_env_free(&e);
}

/* ---- the filler on a random-weight Dream model with the tag vocabulary ---- */

typedef struct mfx {
    td_backend_t *be;
    td_model_t *m;
} mfx_t;

/* A random-weight model with fixture's config (tests/data/e2e/FIXTURE) and the tag vocabulary. */
static int s_model_from(mfx_t *f, const char *fixture, uint64_t seed) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/e2e/%s", td_test_data(), fixture);
    td_err_t err = {0};
    td_config_t cfg;
    if (td_config_load(dir, &cfg, &err) != TD_OK) {
        td_test_fail(__FILE__, __LINE__, "%s", err.msg);
        return 0;
    }
    cfg.n_vocab = TAG0 + 6;
    f->be = td_backend_cpu_new(1, 0, &err);
    f->m = f->be ? td_model_new_synthetic(&cfg, TD_DTYPE_F32, seed, f->be, &err) : NULL;
    if (!f->m) {
        td_test_fail(__FILE__, __LINE__, "synthetic model: %s", err.msg);
        td_backend_destroy(&f->be);
        return 0;
    }
    return 1;
}

static int s_model(mfx_t *f, uint64_t seed) { return s_model_from(f, "dream-drafter", seed); }

static void s_model_free(mfx_t *f) {
    td_model_destroy(&f->m);
    td_backend_destroy(&f->be);
}

static void s_ctx(int32_t *ctx, int n, uint64_t seed) {
    td_rng_t r;
    td_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) ctx[i] = 3 + (int)(td_rng_next(&r) % 1100);
}

/* Forward-level isolation: logits of the rows of one span do not depend on its siblings. */
TD_TEST(span_logits_never_see_siblings) {
    env_t e;
    mfx_t f;
    if (!s_env(&e)) return;
    if (!s_model(&f, 7)) return;
    const int V = TAG0 + 6, P = 9;
    td_plan_t p = {.n_spans = 3};
    p.spans[0].length = 10;
    p.spans[1].length = 20;
    p.spans[2].length = 10;
    int32_t tok[80], tok2[80];
    td_pd_row_t rows[80];
    s_ctx(tok, P, 3);
    for (int i = 0; i < P; i++) rows[i] = (td_pd_row_t){i + 1, 0, 0};
    for (int dense = 0; dense < 2; dense++) {
        int L = td_planned_scaffold(&p, &e.tags, 1121, P, dense, tok + P, rows + P, 80 - P);
        int N = P + L;
        /* some span content: a few committed tokens among the masks */
        for (int i = P; i < N; i++)
            if (tok[i] == 1121 && i % 3 == 0) tok[i] = 100 + i;
        memcpy(tok2, tok, sizeof tok);
        /* siblings of span 1 (spans 0 and 2) rewritten */
        for (int i = P + 1; i < P + 11; i++) tok2[i] = 500 + i;
        for (int i = P + 35; i < P + 45; i++) tok2[i] = 700 + i;
        uint8_t *mask = malloc((size_t)N * N);
        td_pd_rows_mask(rows, N, mask, N);
        float *a = malloc((size_t)N * V * sizeof *a), *b = malloc((size_t)N * V * sizeof *b);
        td_err_t err = {0};
        for (int run = 0; run < 2; run++) {
            td_kv_cache_t *kv = td_kv_cache_new(f.m, 1, N, &err);
            td_batch_t bt = {.n = N,
                             .tokens = run ? tok2 : tok,
                             .attn = TD_ATTN_EXPLICIT,
                             .mask = mask,
                             .mask_stride = N};
            CHECK(td_model_forward(f.m, kv, &bt, run ? b : a, &err) == TD_OK);
            td_kv_cache_destroy(&kv);
        }
        int span1_same = memcmp(a + (size_t)(P + 12) * V, b + (size_t)(P + 12) * V,
                                (size_t)22 * V * sizeof *a) == 0;
        int prefix_same = memcmp(a, b, (size_t)P * V * sizeof *a) == 0;
        CHECK(prefix_same); /* the prefix never sees any span */
        if (!dense)
            CHECK_MSG(span1_same, "span 1 logits changed with its siblings (sparse)");
        else
            CHECK_MSG(!span1_same, "dense: span 1 should see its siblings");
        if (!dense) {
            /* prefix + span 0 alone, bidirectional within, is the same computation */
            int n0 = P + 12;
            td_pd_row_t r0[80];
            memcpy(r0, rows, (size_t)n0 * sizeof *r0);
            uint8_t *m0 = malloc((size_t)n0 * n0);
            td_pd_rows_mask(r0, n0, m0, n0);
            float *c0 = malloc((size_t)n0 * V * sizeof *c0);
            td_kv_cache_t *kv = td_kv_cache_new(f.m, 1, n0, &err);
            td_batch_t bt = {
                .n = n0, .tokens = tok, .attn = TD_ATTN_EXPLICIT, .mask = m0, .mask_stride = n0};
            CHECK(td_model_forward(f.m, kv, &bt, c0, &err) == TD_OK);
            double md = 0;
            for (size_t i = (size_t)P * V; i < (size_t)n0 * V; i++) {
                double dd = fabs((double)c0[i] - (double)a[i]);
                if (dd > md) md = dd;
            }
            CHECK_MSG(md < 1e-4, "span 0 alone differs by %g", md);
            td_kv_cache_destroy(&kv);
            free(m0);
            free(c0);
        }
        free(mask);
        free(a);
        free(b);
    }
    s_model_free(&f);
    s_env_free(&e);
}

/* The count schedule of one span, computed independently: steps with masks. */
static int s_expected_steps(int len, int steps) {
    int masked = len, n = 0;
    for (int i = 0; i < steps && masked > 0; i++) {
        int take = masked;
        if (i < steps - 1) {
            float t = (float)(1.0 + (1e-3 - 1.0) * i / steps);
            float s = (float)(1.0 + (1e-3 - 1.0) * (i + 1) / steps);
            take = (int)((float)masked * (1.0f - s / t));
            if (take < 1) take = 1;
        }
        masked -= take;
        n++;
    }
    return n;
}

TD_TEST(fill_spans_shapes_isolation_and_critical_path) {
    env_t e;
    mfx_t f;
    if (!s_env(&e)) return;
    if (!s_model(&f, 11)) return;
    const int P = 12;
    int32_t ctx[16];
    s_ctx(ctx, P, 5);
    td_plan_t p = {.n_spans = 3, .end = TD_PLAN_END_SYNC};
    int lens[3] = {10, 30, 20};
    for (int k = 0; k < 3; k++) p.spans[k].length = lens[k];
    for (int dense = 0; dense < 2; dense++) {
        td_planned_params_t pp = td_planned_params_default();
        pp.dense = dense;
        int32_t all[100], one[100];
        td_pd_row_t rows[100];
        td_planned_stats_t st = {0};
        td_rng_t rng;
        td_rng_seed(&rng, 1);
        td_err_t err = {0};
        int n =
            td_planned_fill(f.m, &e.tags, ctx, NULL, P, &p, &pp, &rng, all, rows, 100, &st, &err);
        REQUIRE(n == 12 + 32 + 22);
        /* shape: tags in place, no masks left */
        int at = 0, masks = 0;
        for (int k = 0; k < 3; k++) {
            CHECK_EQ_INT(all[at], e.tags.async_open);
            CHECK_EQ_INT(all[at + lens[k] + 1], e.tags.async_close);
            at += lens[k] + 2;
        }
        for (int i = 0; i < n; i++) masks += all[i] == 1121;
        CHECK_EQ_INT(masks, 0);
        /* critical path: steps = longest span (30); forwards = the slowest span's steps */
        int exp_sum = 0, exp_max = 0;
        for (int k = 0; k < 3; k++) {
            int s = s_expected_steps(lens[k], 30);
            exp_sum += s;
            if (s > exp_max) exp_max = s;
        }
        CHECK_EQ_INT(st.diffusion_forwards, exp_max);
        CHECK_EQ_INT(st.span_steps, exp_sum);
        CHECK_EQ_INT(st.spans, 3);
        CHECK_EQ_INT(st.span_tokens, 60);
        CHECK_EQ_INT(st.stages, 1);
        /* each span alone */
        int differs = 0;
        at = 0;
        for (int k = 0; k < 3; k++) {
            pp.only_span = k;
            td_planned_stats_t s1 = {0};
            td_rng_seed(&rng, 1);
            CHECK_EQ_INT(td_planned_fill(f.m, &e.tags, ctx, NULL, P, &p, &pp, &rng, one, rows, 100,
                                         &s1, &err),
                         n);
            CHECK_EQ_INT(s1.diffusion_forwards, s_expected_steps(lens[k], 30));
            int same = memcmp(all + at, one + at, (size_t)(lens[k] + 2) * sizeof *all) == 0;
            if (!dense) CHECK_MSG(same, "span %d filled alone differs (sparse)", k);
            differs += !same;
            at += lens[k] + 2;
        }
        pp.only_span = -1;
        if (dense)
            printf("  dense: %d of 3 spans changed when filled without their siblings\n", differs);
    }
    /* a span longer than the context */
    td_planned_params_t pp = td_planned_params_default();
    td_plan_t big = {.n_spans = 1};
    big.spans[0].length = 200;
    int32_t sc[300];
    td_pd_row_t rows[300];
    td_rng_t rng;
    td_rng_seed(&rng, 1);
    td_err_t err = {0};
    CHECK_EQ_INT(
        td_planned_fill(f.m, &e.tags, ctx, NULL, P, &big, &pp, &rng, sc, rows, 300, NULL, &err),
        TD_ERR_ARG);
    CHECK(strstr(err.msg, "only") != NULL);
    s_model_free(&f);
    s_env_free(&e);
}

/* The same isolation check on the e2e Dream drafter (trained weights, no tag tokens: the scaffold
 * tags are stood in for by two of its added tokens). Sparse: each span alone gives the same
 * tokens; dense: some span must change, which shows the comparison can fail. */
TD_TEST(fill_isolation_on_trained_drafter) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/e2e/dream-drafter", td_test_data());
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    td_model_t *m = be ? td_model_load(dir, be, &err) : NULL;
    REQUIRE(m);
    td_plan_tags_t tags = {.async_open = 1120,
                           .async_close = 1122,
                           .promise = 1,
                           .topic_close = 0,
                           .sync = 1,
                           .pad = 0,
                           .eos = 2};
    td_tokenizer_t *tok = td_tokenizer_load(dir, &err);
    REQUIRE(tok);
    const char *text = "And God said, Let there be light: and there was light.";
    int32_t *ctx = NULL;
    int P = 0;
    REQUIRE(td_tokenizer_encode(tok, text, strlen(text), 0, &ctx, &P, &err) == TD_OK);
    td_plan_t p = {.n_spans = 3};
    int lens[3] = {10, 20, 10};
    for (int k = 0; k < 3; k++) p.spans[k].length = lens[k];
    int changed[2] = {0, 0};
    for (int dense = 0; dense < 2; dense++) {
        td_planned_params_t pp = td_planned_params_default();
        pp.dense = dense;
        int32_t all[64], one[64];
        td_pd_row_t rows[64];
        td_rng_t rng;
        td_rng_seed(&rng, 1);
        int n = td_planned_fill(m, &tags, ctx, NULL, P, &p, &pp, &rng, all, rows, 64, NULL, &err);
        REQUIRE(n == 46);
        for (int k = 0, at = 0; k < 3; at += lens[k] + 2, k++) {
            pp.only_span = k;
            CHECK_EQ_INT(
                td_planned_fill(m, &tags, ctx, NULL, P, &p, &pp, &rng, one, rows, 64, NULL, &err),
                n);
            changed[dense] += memcmp(all + at, one + at, (size_t)(lens[k] + 2) * sizeof *all) != 0;
        }
    }
    CHECK_MSG(changed[0] == 0, "sparse: %d spans changed when filled alone", changed[0]);
    CHECK_MSG(changed[1] > 0, "dense: no span depended on its siblings");
    printf("  trained drafter: dense attention changed %d of 3 spans filled alone\n", changed[1]);
    free(ctx);
    td_tokenizer_destroy(&tok);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

/* The whole loop with random weights: whatever the planner writes, the counts add up (one
 * forward per plan token; critical path = AR + diffusion forwards) or the plan is refused with a
 * parse error. The same model plans (run causally) and fills. */
TD_TEST(generate_counts_or_refuses) {
    env_t e;
    mfx_t f;
    if (!s_env(&e)) return;
    if (!s_model(&f, 13)) return;
    int ok = 0, refused = 0;
    for (uint64_t seed = 0; seed < 6; seed++) {
        int32_t prompt[8], out[64], raw[64];
        s_ctx(prompt, 8, 100 + seed);
        td_planned_params_t pp = td_planned_params_default();
        pp.max_tokens = 48;
        pp.max_plan_tokens = 16;
        pp.sampling.temperature = 1.0f;
        pp.seed = seed;
        td_planned_stats_t st;
        int n_out = 0, n_raw = 0;
        td_err_t err = {0};
        int rc = td_planned_generate(f.m, f.m, &e.tags, prompt, 8, &pp, out, &n_out, raw, &n_raw,
                                     &st, &err);
        if (rc == TD_ERR_FORMAT) {
            CHECK(strstr(err.msg, "plan") != NULL);
            refused++;
            continue;
        }
        CHECK_MSG(rc == TD_OK, "rc %d: %s", rc, err.msg);
        ok++;
        CHECK_EQ_INT(st.ar_forwards, st.plan_tokens);
        CHECK_EQ_INT(st.critical_path, st.ar_forwards + st.diffusion_forwards);
        CHECK_EQ_INT(st.raw_tokens, n_raw);
        CHECK(n_out <= n_raw);
        for (int i = 0; i < n_out; i++)
            CHECK(out[i] < TAG0 && out[i] != 2); /* no tag, pad or EOS left */
    }
    CHECK(ok + refused == 6);
    s_model_free(&f);
    s_env_free(&e);
}

/* ---- the fallback to plain decoding never emits a plan tag ---- */

static int s_has_id(const int32_t *ids, int n, int32_t id) {
    for (int i = 0; i < n; i++)
        if (ids[i] == id) return 1;
    return 0;
}

/* How many of toks[n] are among set[n_set]. */
static int s_count_in(const int32_t *toks, int n, const int32_t *set, int n_set) {
    int c = 0;
    for (int i = 0; i < n; i++) c += s_has_id(set, n_set, toks[i]);
    return c;
}

/* The ids the fallback suppresses: every tag the tokenizer has, never EOS, none without tags. */
TD_TEST(plan_tag_ids_lists_the_tags) {
    env_t e;
    if (!s_env(&e)) return;
    int32_t ids[TD_PLAN_MAX_TAG_IDS];
    int n = td_plan_tag_ids(e.tok, 2, ids);
    CHECK_EQ_INT(n, 6);
    for (int i = 0; i < 6; i++) CHECK_MSG(s_has_id(ids, n, TAG0 + i), "tag %d missing", TAG0 + i);
    CHECK(s_has_id(ids, n, e.tags.async_open) && s_has_id(ids, n, e.tags.promise) &&
          s_has_id(ids, n, e.tags.sync) && s_has_id(ids, n, e.tags.pad));
    /* an EOS that is one of the tag ids stays generable (it ends the answer) */
    n = td_plan_tag_ids(e.tok, TAG0 + 5, ids);
    CHECK_EQ_INT(n, 5);
    CHECK(!s_has_id(ids, n, TAG0 + 5));
    /* no tokenizer, or one without tags: nothing to suppress */
    CHECK_EQ_INT(td_plan_tag_ids(NULL, 2, ids), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/e2e/dream-drafter/tokenizer.json", td_test_data());
    td_err_t err = {0};
    td_tokenizer_t *plain = td_tokenizer_load(path, &err);
    REQUIRE(plain != NULL);
    CHECK_EQ_INT(td_plan_tag_ids(plain, 2, ids), 0);
    td_tokenizer_destroy(&plain);
    /* a tokenizer with only some tags (too few to plan): the ones it has, `<sync>` included */
    static const char *some[2] = {"<sync>", "</async>"};
    td_tokenizer_t *part = s_tok_with(some, 2);
    REQUIRE(part != NULL);
    n = td_plan_tag_ids(part, 2, ids);
    CHECK_EQ_INT(n, 2);
    CHECK(s_has_id(ids, n, TAG0) && s_has_id(ids, n, TAG0 + 1));
    td_tokenizer_destroy(&part);
    s_env_free(&e);
}

/* Plain diffusion decoding (the fallback's decoder) with suppress_ids on the random-weight tag
 * vocabulary: sampled at temperature 5 (random weights are too peaked to reach the tags at 1) over
 * 32 seeds, the unsuppressed control emits tag ids (so the leak is real on this fixture) and the
 * suppressed runs emit none while generating as many tokens;
 * greedily, suppressing the ids the control emitted removes every one of them (the greedy rows go
 * through the same masking). */
TD_TEST(diffusion_suppress_ids_are_never_emitted) {
    env_t e;
    mfx_t f;
    if (!s_env(&e)) return;
    if (!s_model(&f, 21)) return;
    int32_t tag_ids[TD_PLAN_MAX_TAG_IDS];
    const int n_tags = td_plan_tag_ids(e.tok, 2, tag_ids);
    REQUIRE(n_tags == 6);
    int leaked = 0, after = 0, total = 0;
    for (uint64_t seed = 0; seed < 32; seed++) {
        int32_t prompt[8], a[48], b[48];
        s_ctx(prompt, 8, 300 + seed);
        td_diffusion_params_t dp = td_diffusion_params_default();
        dp.max_tokens = 48;
        dp.block_size = 16;
        dp.stop_at_eos = 0;
        dp.exact = 1;
        dp.sampling.temperature = 5.0f;
        dp.seed = seed;
        td_diffusion_stats_t sa = {0}, sb = {0};
        td_err_t err = {0};
        REQUIRE(td_diffusion_generate(f.m, prompt, 8, &dp, a, &sa, &err) == TD_OK);
        dp.suppress_ids = tag_ids;
        dp.n_suppress = n_tags;
        REQUIRE(td_diffusion_generate(f.m, prompt, 8, &dp, b, &sb, &err) == TD_OK);
        CHECK_EQ_INT(sa.generated, 48);
        CHECK_EQ_INT(sb.generated, 48);
        leaked += s_count_in(a, sa.generated, tag_ids, n_tags);
        after += s_count_in(b, sb.generated, tag_ids, n_tags);
        total += sb.generated;
    }
    printf("    temperature 5: %d tag ids in the control's 1536 tokens, %d in the %d tokens of the "
           "suppressed runs\n",
           leaked, after, total);
    CHECK_MSG(leaked > 0, "the control emitted no tag id: the fixture no longer shows the leak");
    CHECK_EQ_INT(after, 0);

    /* greedy: suppress (up to 6 of) the ids the control emitted */
    int32_t prompt[8], a[32], b[32], ban[6];
    s_ctx(prompt, 8, 77);
    td_diffusion_params_t dp = td_diffusion_params_default();
    dp.max_tokens = 32;
    dp.stop_at_eos = 0;
    td_diffusion_stats_t sa = {0}, sb = {0};
    td_err_t err = {0};
    REQUIRE(td_diffusion_generate(f.m, prompt, 8, &dp, a, &sa, &err) == TD_OK);
    int n_ban = 0;
    for (int i = 0; i < sa.generated && n_ban < 6; i++)
        if (!s_has_id(ban, n_ban, a[i])) ban[n_ban++] = a[i];
    REQUIRE(n_ban > 0);
    dp.suppress_ids = ban;
    dp.n_suppress = n_ban;
    REQUIRE(td_diffusion_generate(f.m, prompt, 8, &dp, b, &sb, &err) == TD_OK);
    CHECK_EQ_INT(sb.generated, 32);
    CHECK_EQ_INT(s_count_in(b, sb.generated, ban, n_ban), 0);
    /* out-of-vocabulary ids are ignored; a NULL list with a count is refused */
    int32_t odd[2] = {-1, TAG0 + 6};
    dp.suppress_ids = odd;
    dp.n_suppress = 2;
    REQUIRE(td_diffusion_generate(f.m, prompt, 8, &dp, b, &sb, &err) == TD_OK);
    CHECK(memcmp(a, b, sizeof a) == 0);
    dp.suppress_ids = NULL;
    CHECK_EQ_INT(td_diffusion_generate(f.m, prompt, 8, &dp, b, &sb, &err), TD_ERR_ARG);
    s_model_free(&f);
    s_env_free(&e);
}

/* The ar fallback (a causal planner decoding plainly) with suppress_ids: a random-weight causal
 * model with the tag vocabulary emits tag ids when sampled (temperature 5, 48 seeds), none when
 * they are suppressed; greedy
 * (normally sampled inside the forward) honours the list too: banning the control's first token
 * changes the first token, and no banned id appears. */
TD_TEST(ar_suppress_ids_are_never_emitted) {
    env_t e;
    mfx_t f;
    if (!s_env(&e)) return;
    if (!s_model_from(&f, "qwen2-chat", 5)) return;
    int32_t tag_ids[TD_PLAN_MAX_TAG_IDS];
    const int n_tags = td_plan_tag_ids(e.tok, 2, tag_ids);
    REQUIRE(n_tags == 6);
    int leaked = 0, after = 0;
    for (uint64_t seed = 0; seed < 48; seed++) {
        int32_t prompt[8], a[48], b[48];
        s_ctx(prompt, 8, 500 + seed);
        td_gen_params_t gp = {.max_tokens = 48, .sampling = {5.0f, 0, 1.0f}, .seed = seed};
        td_gen_stats_t sa = {0}, sb = {0};
        td_err_t err = {0};
        REQUIRE(td_generate_ar(f.m, prompt, 8, &gp, NULL, NULL, a, &sa, &err) == TD_OK);
        gp.suppress_ids = tag_ids;
        gp.n_suppress = n_tags;
        REQUIRE(td_generate_ar(f.m, prompt, 8, &gp, NULL, NULL, b, &sb, &err) == TD_OK);
        CHECK_EQ_INT(sb.generated, 48);
        leaked += s_count_in(a, sa.generated, tag_ids, n_tags);
        after += s_count_in(b, sb.generated, tag_ids, n_tags);
    }
    printf("    temperature 5: %d tag ids in the control's 2304 tokens, %d in the suppressed runs' "
           "2304\n",
           leaked, after);
    CHECK_MSG(leaked > 0, "the control emitted no tag id: the fixture no longer shows the leak");
    CHECK_EQ_INT(after, 0);

    int32_t prompt[8], a[24], b[24], ban[4];
    s_ctx(prompt, 8, 91);
    td_gen_params_t gp = {.max_tokens = 24, .sampling = {0, 0, 1}};
    td_gen_stats_t sa = {0}, sb = {0};
    td_err_t err = {0};
    REQUIRE(td_generate_ar(f.m, prompt, 8, &gp, NULL, NULL, a, &sa, &err) == TD_OK);
    REQUIRE(sa.generated == 24);
    int n_ban = 0;
    for (int i = 0; i < sa.generated && n_ban < 4; i++)
        if (!s_has_id(ban, n_ban, a[i])) ban[n_ban++] = a[i];
    gp.suppress_ids = ban;
    gp.n_suppress = n_ban;
    REQUIRE(td_generate_ar(f.m, prompt, 8, &gp, NULL, NULL, b, &sb, &err) == TD_OK);
    CHECK_EQ_INT(sb.generated, 24);
    CHECK(b[0] != a[0]);
    CHECK_EQ_INT(s_count_in(b, sb.generated, ban, n_ban), 0);
    s_model_free(&f);
    s_env_free(&e);
}

/* ---- two processes: the planner here, the spans filled by a real tandem-drafter ---- */

static char s_tmp[64];

static pid_t s_spawn_drafter(const char *model, const char *name, char *ep, size_t cap) {
    if (!s_tmp[0]) {
        snprintf(s_tmp, sizeof s_tmp, "/tmp/td_planned_XXXXXX");
        if (!mkdtemp(s_tmp)) abort();
    }
    snprintf(ep, cap, "ipc://%s/%s.sock", s_tmp, name);
    return td_test_spawn_worker("tandem-drafter", model, ep, NULL);
}

static void s_stop(pid_t pid) { td_test_stop(pid, SIGTERM); }

static void s_cleanup(void) {
    if (!s_tmp[0]) return;
    td_test_rmtree(s_tmp);
    s_tmp[0] = 0;
}

static int s_connect(td_pair_t *pair, const char *dir, const char *ep) {
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1, .timeout_ms = 500};
    td_err_t err = {0};
    if (td_test_pair_open_retry(pair, dir, ep, &po, 60, &err) == TD_OK) return 1;
    td_test_fail(__FILE__, __LINE__, "cannot reach the drafter at %s: %s", ep, err.msg);
    return 0;
}

#define TINY_PLANNED "models/tiny-planned"

/* A drafter worker serving model at a fresh endpoint NAME (into ep) and the pair connected to it
 * with model here too; returns its pid, or -1 (the case failed; everything stopped and removed). */
static pid_t s_spawn_connect(const char *model, const char *name, char *ep, size_t cap,
                             td_pair_t *pair) {
    pid_t pid = s_spawn_drafter(model, name, ep, cap);
    if (s_connect(pair, model, ep)) return pid;
    s_stop(pid);
    s_cleanup();
    return -1;
}

/* 1 when the bundled models/tiny-planned is there, else 0 with the case skipped. */
static int s_have_tiny_planned(void) {
    if (access(TINY_PLANNED "/config.json", R_OK) == 0) return 1;
    td_test_skip("models/tiny-planned not present");
    return 0;
}

/* Remote fill == in-process fill: same cleaned output, same counts, greedy and sampled (the
 * generator travels with the request), sparse and dense, two step ratios. */
TD_TEST(planned_two_processes_equal_one_process) {
    if (!s_have_tiny_planned()) return;
    char ep[160];
    td_pair_t pair;
    pid_t pid = s_spawn_connect(TINY_PLANNED, "planned", ep, sizeof ep, &pair);
    if (pid < 0) return;
    td_model_t *m = pair.verifier;
    td_plan_tags_t tags;
    td_err_t err = {0};
    REQUIRE(td_plan_tags_init(&tags, pair.vtok, td_model_config(m)->eos_token_id, &err) == TD_OK);
    static const char *texts[] = {
        "In the beginning God created the heaven and the earth.",
        "Now it came to pass in the days when the judges ruled, that there was a famine.",
        "Cast thy bread upon the waters: for thou shalt find it after many days.",
        "James, a servant of God and of the Lord Jesus Christ,"};
    int light = getenv("TD_TEST_LIGHT") != NULL;
    int cases = 0, with_spans = 0, remote_forwards = 0;
    for (int i = 0; i < (light ? 2 : 4); i++) {
        int32_t *ids = NULL;
        int n = 0;
        REQUIRE(td_tokenizer_encode(pair.vtok, texts[i], strlen(texts[i]), 0, &ids, &n, &err) ==
                TD_OK);
        for (int v = 0; v < (light ? 2 : 4); v++) {
            td_planned_params_t p = td_planned_params_default();
            p.max_tokens = 192;
            p.seed = 11 + (uint64_t)i;
            p.steps_ratio = v & 2 ? 0.5f : 1.0f;
            if (v & 1) p.sampling = (td_sampling_t){0.8f, 0, 0.95f};
            p.dense = v == 3;
            int32_t a[192], b[192];
            int na = 0, nb = 0;
            td_planned_stats_t sa = {0}, sb = {0};
            td_err_t ea = {0}, eb = {0};
            int ra = td_planned_generate(m, m, &tags, ids, n, &p, a, &na, NULL, NULL, &sa, &ea);
            td_remote_opts_t ro = {.session = 50 + (uint64_t)cases, .timeout_ms = 30000};
            double dsec = 0;
            int rb = td_planned_generate_via(m, pair.dc, &ro, &tags, ids, n, &p, b, &nb, &sb, &dsec,
                                             &eb);
            CHECK_MSG(ra == rb, "prompt %d variant %d: one process %d (%s), two %d (%s)", i, v, ra,
                      ea.msg, rb, eb.msg);
            cases++;
            if (ra != TD_OK || rb != TD_OK) continue;
            CHECK_EQ_INT(nb, na);
            int same = na == nb;
            for (int j = 0; same && j < na; j++) same = a[j] == b[j];
            CHECK_MSG(same, "prompt %d variant %d: two-process output differs", i, v);
            CHECK_EQ_INT(sb.critical_path, sa.critical_path);
            CHECK_EQ_INT(sb.diffusion_forwards, sa.diffusion_forwards);
            CHECK_EQ_INT(sb.spans, sa.spans);
            CHECK_EQ_INT(sb.span_steps, sa.span_steps);
            CHECK_EQ_INT(sb.plan_tokens, sa.plan_tokens);
            with_spans += sa.spans > 0;
            remote_forwards += sb.diffusion_forwards;
            if (sb.spans > 0) CHECK(dsec > 0);
        }
        free(ids);
    }
    printf("  %d cases, %d with spans filled by the drafter process (%d denoising forwards "
           "there)\n",
           cases, with_spans, remote_forwards);
    CHECK(with_spans > 0);

    /* the drafter refuses a plan whose tag ids are not its own */
    int32_t ctx[3] = {1, 2, 3}, sc[64], t6[6] = {tags.async_open,  tags.async_close, tags.promise,
                                                 tags.topic_close, tags.sync,        tags.pad};
    int units[1] = {1};
    uint64_t rng[4] = {1, 2, 3, 4};
    t6[2] = 5;
    CHECK_EQ_INT(td_remote_planned_fill(pair.dc, 7, 1, 30000, ctx, NULL, 3, units, 1, 1.0f, 0, NULL,
                                        rng, t6, 64, sc, NULL, NULL, NULL, &err),
                 TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "disagree") != NULL);
    /* and a scaffold beyond its context, clearly */
    int big[64];
    for (int k = 0; k < 64; k++) big[k] = 99;
    t6[2] = tags.promise;
    static int32_t sc_big[64 * 992];
    CHECK_EQ_INT(td_remote_planned_fill(pair.dc, 7, 2, 30000, ctx, NULL, 3, big, 64, 1.0f, 0, NULL,
                                        rng, t6, 64 * 992, sc_big, NULL, NULL, NULL, &err),
                 TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "span(s) need") != NULL);
    td_plan_tags_free(&tags);
    td_pair_close(&pair);
    s_stop(pid);
    s_cleanup();
}

/* A drafter whose checkpoint has no plan tags answers PlannedFill with a clear refusal. */
TD_TEST(planned_drafter_without_tags_refuses) {
    char dir[512], ep[160];
    snprintf(dir, sizeof dir, "%s/e2e/dream-drafter", td_test_data());
    td_pair_t pair;
    pid_t pid = s_spawn_connect(dir, "notags", ep, sizeof ep, &pair);
    if (pid < 0) return;
    td_err_t err = {0};
    int32_t ctx[3] = {1, 2, 3}, sc[64], t6[6] = {10, 11, 12, 13, 14, 15};
    int units[1] = {1};
    uint64_t rng[4] = {1, 2, 3, 4};
    CHECK_EQ_INT(td_remote_planned_fill(pair.dc, 7, 1, 30000, ctx, NULL, 3, units, 1, 1.0f, 0, NULL,
                                        rng, t6, 64, sc, NULL, NULL, NULL, &err),
                 TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "no planned-diffusion tags") != NULL);
    printf("    refused: %s\n", err.msg);
    td_pair_close(&pair);
    s_stop(pid);
    s_cleanup();
}

/* `tandem generate --method planned --drafter ENDPOINT` (planner: the bundled tiny-planned run
 * causally here) prints what the one-process run prints. */
TD_TEST(planned_two_processes_command_line) {
    if (!s_have_tiny_planned()) return;
    char ep[160], cmd[2048];
    static char out_r[65536], out_l[65536];
    pid_t pid = s_spawn_drafter(TINY_PLANNED, "cli", ep, sizeof ep);
    const char *common = "--method planned --max-tokens 192 --threads 1 --temperature 0.8 "
                         "--seed 5 --json --prompt 'And God said, Let there be light'";
    snprintf(cmd, sizeof cmd, "%s generate --drafter %s %s 2>/dev/null", td_test_bin("tandem"), ep,
             common);
    int rc = td_test_run_retry(cmd, out_r, sizeof out_r, 40);
    CHECK_MSG(rc == 0, "remote run failed: %s", out_r);
    snprintf(cmd, sizeof cmd, "%s generate --drafter %s %s 2>/dev/null", td_test_bin("tandem"),
             TINY_PLANNED, common);
    CHECK_EQ_INT(td_test_run(cmd, out_l, sizeof out_l), 0);
    td_test_check_same_tokens(out_r, out_l, 5);
    s_stop(pid);
    s_cleanup();
}

/* A plan whose spans do not fit the token budget (64 tokens: the bundled model plans 2 spans of
 * 30-40 positions for this prompt) is refused with the reason and the command falls back to plain
 * decoding: exit 0, the message on stderr, tokens in the JSON. */
TD_TEST(planned_too_long_for_the_budget_falls_back) {
    if (!s_have_tiny_planned()) return;
    static char msg[65536], js[65536];
    char common[1024];
    snprintf(common, sizeof common,
             "%s generate --method planned --drafter " TINY_PLANNED
             " --max-tokens 64 --threads 1 --temperature 0 --prompt 'In the beginning God created "
             "the heaven and the earth.'",
             td_test_bin("tandem"));
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s 2>&1 >/dev/null", common);
    CHECK_EQ_INT(td_test_run(cmd, msg, sizeof msg), 0);
    CHECK_MSG(strstr(msg, "need") && strstr(msg, "falling back to --method diffusion"),
              "stderr: %s", msg);
    snprintf(cmd, sizeof cmd, "%s --json 2>/dev/null", common);
    CHECK_EQ_INT(td_test_run(cmd, js, sizeof js), 0);
    cJSON *j = cJSON_Parse(js);
    CHECK_MSG(j != NULL, "not JSON: %s", js);
    cJSON *toks = j ? cJSON_GetObjectItem(j, "tokens") : NULL;
    CHECK(toks && cJSON_GetArraySize(toks) > 0);
    cJSON_Delete(j);
}

/* The leak this guards against: with the budget too small for the plan, `tandem generate --method
 * planned` falls back to plain diffusion on the planned checkpoint, whose decoder sampled
 * `<promise>-<topic>` into `tokens` (the text hid it: " the earth  the earth"). The fallback now
 * suppresses every plan tag, greedy and sampled; `--method diffusion` asked for explicitly is left
 * as it was and, on the same prompt and settings, still emits the tag - the control showing that
 * this prompt does reach a tag. */
TD_TEST(planned_fallback_tokens_hold_no_plan_tags) {
    if (!s_have_tiny_planned()) return;
    td_err_t err = {0};
    td_tokenizer_t *tok = td_tokenizer_load(TINY_PLANNED "/tokenizer.json", &err);
    REQUIRE(tok != NULL);
    int32_t tag_ids[TD_PLAN_MAX_TAG_IDS];
    const int n_tags = td_plan_tag_ids(tok, 0, tag_ids); /* the checkpoint's EOS is 0 */
    td_tokenizer_destroy(&tok);
    REQUIRE(n_tags == 6);
    static const char *settings[] = {"--temperature 0", "--temperature 0.8 --seed 2",
                                     "--temperature 0.8 --seed 4"};
    static char js[65536], msg[65536];
    char cmd[2048];
    int control_tags = 0;
    for (int k = 0; k < 3; k++) {
        int with_tags[2] = {0, 0}, n_tok[2] = {0, 0};
        for (int plain = 0; plain < 2; plain++) {
            snprintf(cmd, sizeof cmd,
                     "%s generate --method %s --drafter " TINY_PLANNED
                     " --max-tokens 64 --threads 1 %s --json --prompt 'In the beginning God "
                     "created the heaven and the earth.' 2>/dev/null",
                     td_test_bin("tandem"), plain ? "diffusion" : "planned", settings[k]);
            CHECK_EQ_INT(td_test_run(cmd, js, sizeof js), 0);
            cJSON *j = cJSON_Parse(js);
            CHECK_MSG(j != NULL, "not JSON: %s", js);
            cJSON *toks = j ? cJSON_GetObjectItem(j, "tokens") : NULL;
            cJSON *stats = j ? cJSON_GetObjectItem(j, "stats") : NULL;
            cJSON *meth = stats ? cJSON_GetObjectItem(stats, "method") : NULL;
            /* the planned run fell back: the stats name the method that ran */
            CHECK_MSG(cJSON_IsString(meth) && !strcmp(meth->valuestring, "diffusion"),
                      "%s: method %s", settings[k], cJSON_IsString(meth) ? meth->valuestring : "?");
            for (int i = 0; toks && i < cJSON_GetArraySize(toks); i++) {
                int32_t id = (int32_t)cJSON_GetArrayItem(toks, i)->valueint;
                with_tags[plain] += s_has_id(tag_ids, n_tags, id);
            }
            n_tok[plain] = toks ? cJSON_GetArraySize(toks) : 0;
            cJSON_Delete(j);
        }
        printf("    %s: fallback %d tokens, %d tag ids; --method diffusion %d tokens, %d tag ids\n",
               settings[k], n_tok[0], with_tags[0], n_tok[1], with_tags[1]);
        CHECK_MSG(n_tok[0] > 0, "%s: the fallback produced no tokens", settings[k]);
        CHECK_MSG(with_tags[0] == 0, "%s: the fallback emitted %d plan tag id(s)", settings[k],
                  with_tags[0]);
        control_tags += with_tags[1];
    }
    CHECK_MSG(control_tags > 0, "--method diffusion emitted no tag on these prompts: the test no "
                                "longer reproduces the leak it guards against");
    /* it was the fallback that ran (not a plan that fit) */
    snprintf(cmd, sizeof cmd,
             "%s generate --method planned --drafter " TINY_PLANNED
             " --max-tokens 64 --threads 1 --temperature 0 --prompt 'In the beginning God created "
             "the heaven and the earth.' 2>&1 >/dev/null",
             td_test_bin("tandem"));
    CHECK_EQ_INT(td_test_run(cmd, msg, sizeof msg), 0);
    CHECK_MSG(strstr(msg, "falling back to --method diffusion") != NULL, "stderr: %s", msg);
}

TD_TEST_MAIN()
