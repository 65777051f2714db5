/* test_exactness.c - the speculative methods documented as exact produce the verifier's own
 * distribution, end to end: a real drafter served over inproc:// ZeroMQ (the code path of the
 * separate worker), the real verifier loop, thousands of seeded 2-token generations, and a
 * chi-square test of the joint distribution of the first two tokens against the exact AR joint
 * p(t1) p(t2 | t1) computed from the verifier (alpha = 1e-3). Temperature 0 must reproduce AR
 * greedy decoding token for token. Models: tests/data/e2e (tiny Qwen2 verifier, a noisy AR copy
 * and a noisy Dream-style copy sharing its tokenizer). */
#include "tests/tdstats.h"
#include "tests/tdtest.h"

#include "bridge/pair.h"
#include "verifier/spec.h"

#include <stdlib.h>
#include <string.h>

#define VDIR "tests/data/e2e/qwen2-chat"
#define ARDIR "tests/data/e2e/qwen2-ar-drafter"
#define DDIR "tests/data/e2e/dream-drafter"
#define ALPHA 1e-3
#define TOPK 4

static const int32_t s_prompt[] = {35, 279, 223, 41, 81, 70, 282, 67};
#define NP ((int)(sizeof s_prompt / sizeof s_prompt[0]))

/* Exact joint of the first two tokens under the verifier's sampling distribution. */
static void s_exact_joint(td_model_t *v, const td_sampling_t *sp, int32_t *t1s, int32_t *t2s,
                          double *pj, int *n) {
    const int V = td_model_config(v)->n_vocab;
    td_err_t err = {0};
    float *logits = malloc(sizeof(float) * (size_t)V), *p1 = malloc(sizeof(float) * (size_t)V),
          *p2 = malloc(sizeof(float) * (size_t)V);
    td_kv_cache_t *kv = td_kv_cache_new(v, 1, NP + 4, &err);
    uint8_t last[NP] = {0};
    last[NP - 1] = 1;
    td_batch_t b = {.n = NP, .tokens = s_prompt, .attn = TD_ATTN_CAUSAL, .logits_for = last};
    td_model_forward(v, kv, &b, logits, &err);
    td_sampling_dist(sp, logits, V, p1);
    *n = 0;
    for (int a = 0; a < V; a++) {
        if (p1[a] <= 0) continue;
        td_kv_cache_crop(kv, 0, NP);
        int32_t tok = a;
        td_batch_t b2 = {.n = 1, .tokens = &tok, .attn = TD_ATTN_CAUSAL};
        td_model_forward(v, kv, &b2, logits, &err);
        td_sampling_dist(sp, logits, V, p2);
        for (int c = 0; c < V; c++)
            if (p2[c] > 0) t1s[*n] = a, t2s[*n] = c, pj[*n] = (double)p1[a] * p2[c], (*n)++;
    }
    td_kv_cache_destroy(&kv);
    free(logits), free(p1), free(p2);
}

/* Runs n_gen seeded 2-token generations with params p through the pair; returns the p-value. */
static double s_run(td_pair_t *pair, td_spec_params_t p, int n_gen, double *acc_rate) {
    int32_t t1s[TOPK * TOPK], t2s[TOPK * TOPK];
    double pj[TOPK * TOPK];
    int cells = 0;
    s_exact_joint(pair->verifier, &p.sampling, t1s, t2s, pj, &cells);
    long obs[TOPK * TOPK + 1] = {0};
    double expp[TOPK * TOPK + 1];
    for (int i = 0; i < cells; i++) expp[i] = pj[i];
    expp[cells] = 0; /* anything outside the support */
    long drafted = 0, accepted = 0;
    p.max_tokens = 2;
    for (int s = 0; s < n_gen; s++) {
        p.seed = (uint64_t)s * 7919u + 1;
        int32_t out[4];
        td_spec_stats_t st;
        td_err_t err = {0};
        int rc = td_spec_generate(pair->verifier, pair->dc, 1000 + (uint64_t)(s % 3), s_prompt, NP,
                                  &p, NULL, NULL, out, &st, &err);
        if (rc != TD_OK || st.generated != 2 || st.fallbacks) {
            td_test_fail(__FILE__, __LINE__,
                         "generation %d: rc %d, %d tokens, %d fallbacks (%s / %s)", s, rc,
                         st.generated, st.fallbacks, err.msg, st.last_fallback);
            return 0;
        }
        drafted += st.drafted;
        accepted += st.accepted;
        int cell = cells;
        for (int i = 0; i < cells; i++)
            if (t1s[i] == out[0] && t2s[i] == out[1]) cell = i;
        obs[cell]++;
    }
    *acc_rate = drafted ? (double)accepted / drafted : 0;
    int df = 0;
    return td_chisq_pvalue(obs, expp, cells + 1, n_gen, &df);
}

static td_spec_params_t s_params(td_method_t m, td_verify_t v, int order, int steps) {
    td_spec_params_t p = td_spec_params_default(m);
    p.sampling = (td_sampling_t){.temperature = 1.0f, .top_k = TOPK, .top_p = 1.0f};
    p.draft_sampling = p.sampling;
    p.gamma = 3;
    p.steps = steps;
    p.order = order;
    p.verify = v;
    p.dist_top_k = 2; /* small on purpose: exercises the full-row fetch */
    return p;
}

static void s_check(const char *dname, td_spec_params_t p, const char *label) {
    td_pair_t pair;
    td_err_t err = {0};
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
    int rc = td_pair_open(&pair, VDIR, dname, &po, &err);
    CHECK_MSG(rc == TD_OK, "pair: %s", err.msg);
    if (rc == TD_OK) {
        double acc = 0;
        double pv = s_run(&pair, p, 6000, &acc);
        printf("    %-44s p-value %.4f, acceptance %.3f\n", label, pv, acc);
        CHECK_MSG(pv > ALPHA, "%s: chi-square rejects exactness (p = %.3g)", label, pv);
        CHECK_MSG(acc > 0.05, "%s: acceptance %.3f too low for the test to exercise acceptance",
                  label, acc);
    }
    td_pair_close(&pair);
}

TD_TEST(spec_ar_rejection_is_exact) {
    s_check(ARDIR, s_params(TD_METHOD_SPEC_AR, TD_VERIFY_REJECTION, 0, 1), "spec-ar rejection");
}
TD_TEST(specdiff_rejection_left_to_right_is_exact) {
    s_check(DDIR, s_params(TD_METHOD_SPECDIFF, TD_VERIFY_REJECTION, 0, 3),
            "specdiff rejection l2r steps=gamma");
}
TD_TEST(specdiff_rejection_one_step_is_exact) {
    s_check(DDIR, s_params(TD_METHOD_SPECDIFF, TD_VERIFY_REJECTION, 1, 1),
            "specdiff rejection confidence steps=1");
}
TD_TEST(specdiff_match_any_order_is_exact) {
    s_check(DDIR, s_params(TD_METHOD_SPECDIFF, TD_VERIFY_MATCH, 1, 2),
            "specdiff match confidence steps=2");
    s_check(DDIR, s_params(TD_METHOD_SPECDIFF, TD_VERIFY_MATCH, 3, 3),
            "specdiff match margin steps=3");
}

/* A deliberately wrong target shows the test has power: generations at temperature 1.3 compared
 * with the joint at temperature 1.0 must be rejected. */
TD_TEST(test_detects_a_wrong_distribution) {
    td_pair_t pair;
    td_err_t err = {0};
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
    REQUIRE(td_pair_open(&pair, VDIR, ARDIR, &po, &err) == TD_OK);
    td_spec_params_t p = s_params(TD_METHOD_SPEC_AR, TD_VERIFY_REJECTION, 0, 1);
    int32_t t1s[TOPK * TOPK], t2s[TOPK * TOPK];
    double pj[TOPK * TOPK + 1];
    int cells = 0;
    s_exact_joint(pair.verifier, &p.sampling, t1s, t2s, pj, &cells);
    p.sampling.temperature = 1.3f;
    long obs[TOPK * TOPK + 1] = {0};
    p.max_tokens = 2;
    for (int s = 0; s < 6000; s++) {
        p.seed = (uint64_t)s + 1;
        int32_t out[4];
        td_spec_stats_t st;
        REQUIRE(td_spec_generate(pair.verifier, pair.dc, 7, s_prompt, NP, &p, NULL, NULL, out, &st,
                                 &err) == TD_OK);
        int cell = cells;
        for (int i = 0; i < cells; i++)
            if (t1s[i] == out[0] && t2s[i] == out[1]) cell = i;
        obs[cell]++;
    }
    pj[cells] = 0;
    double pv = td_chisq_pvalue(obs, pj, cells + 1, 6000, NULL);
    printf("    wrong temperature: p-value %.3g (must be rejected)\n", pv);
    CHECK(pv < ALPHA);
    td_pair_close(&pair);
}

/* Temperature 0: every method documented exact reproduces AR greedy decoding token for token. */
TD_TEST(greedy_equals_ar_greedy) {
    td_err_t err = {0};
    const char *drafters[] = {ARDIR, DDIR, DDIR, DDIR};
    const td_method_t methods[] = {TD_METHOD_SPEC_AR, TD_METHOD_SPECDIFF, TD_METHOD_SPECDIFF,
                                   TD_METHOD_SPECDIFF};
    const int orders[] = {0, 0, 1, 2};
    for (int k = 0; k < 4; k++) {
        td_pair_t pair;
        td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
        REQUIRE(td_pair_open(&pair, VDIR, drafters[k], &po, &err) == TD_OK);
        for (int plen = 2; plen <= NP; plen += 3) {
            int32_t ar[40], sp[40];
            td_gen_params_t gp = {.max_tokens = 40, .sampling = {0, 0, 1}};
            td_gen_stats_t gs;
            REQUIRE(td_generate_ar(pair.verifier, s_prompt, plen, &gp, NULL, NULL, ar, &gs, &err) ==
                    TD_OK);
            td_spec_params_t p = s_params(methods[k], TD_VERIFY_REJECTION, orders[k], 2);
            p.sampling = p.draft_sampling = (td_sampling_t){0, 0, 1};
            p.gamma = 5;
            p.max_tokens = 40;
            td_spec_stats_t st;
            REQUIRE(td_spec_generate(pair.verifier, pair.dc, 55, s_prompt, plen, &p, NULL, NULL, sp,
                                     &st, &err) == TD_OK);
            CHECK_EQ_INT(st.generated, gs.generated);
            int same = 1;
            for (int i = 0; i < gs.generated && i < st.generated; i++) same &= ar[i] == sp[i];
            CHECK_MSG(same, "%s order %d prompt %d: greedy speculative output differs from AR",
                      td_method_name(methods[k]), orders[k], plen);
            CHECK(st.rounds > 0 && st.fallbacks == 0);
        }
        td_pair_close(&pair);
    }
}

/* Pre-drafting changes timing only: with the same seed the output is identical with and without
 * it, at temperature 0 and when sampling; with the verifier as its own drafter (every draft
 * accepted) pre-drafts are actually used. */
TD_TEST(predraft_changes_no_output) {
    const char *drafters[] = {ARDIR, VDIR};
    for (int k = 0; k < 2; k++)
        for (int temp = 0; temp < 2; temp++) {
            int32_t outs[2][48];
            td_spec_stats_t sts[2];
            for (int pd = 0; pd < 2; pd++) {
                td_pair_t pair;
                td_err_t err = {0};
                td_pair_opts_t po = {
                    .device = -1, .drafter_device = -1, .threads = 1, .predraft = pd};
                REQUIRE(td_pair_open(&pair, VDIR, drafters[k], &po, &err) == TD_OK);
                td_spec_params_t p = s_params(TD_METHOD_SPEC_AR, TD_VERIFY_REJECTION, 0, 1);
                if (!temp) p.sampling = p.draft_sampling = (td_sampling_t){0, 0, 1};
                p.gamma = 4;
                p.max_tokens = 48;
                p.seed = 99;
                p.hello = &pair.hello;
                REQUIRE(td_spec_generate(pair.verifier, pair.dc, 77, s_prompt, NP, &p, NULL, NULL,
                                         outs[pd], &sts[pd], &err) == TD_OK);
                td_pair_close(&pair);
            }
            CHECK_EQ_INT(sts[0].generated, sts[1].generated);
            CHECK_MSG(!memcmp(outs[0], outs[1], sizeof(int32_t) * (size_t)sts[0].generated),
                      "drafter %s, temperature %d: pre-drafting changed the output", drafters[k],
                      temp);
            CHECK_EQ_INT(sts[0].predrafted, 0);
            printf("    drafter %-32s T=%d: %d rounds, %d pre-drafted\n", drafters[k], temp,
                   sts[1].rounds, sts[1].predrafted);
            if (k == 1 && temp == 0) CHECK(sts[1].predrafted > 0);
        }
}

TD_TEST_MAIN()
