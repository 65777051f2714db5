/* test_draft.c - diffusion drafting, dLLM-only decoding and AR drafting (drafter/draft.c) on the
 * tiny random-weight fixtures in tests/data/models (dream: logit shift; llada: none; qwen2: AR).
 *
 * The oracle is a straightforward re-implementation written here: every step runs the whole
 * sequence (prefix + block, masks included) through a fresh cache with bidirectional attention,
 * takes the row that predicts each block position (row p-1 under the logit shift), and applies
 * the schedule, the order and the sampler. Exact mode must reproduce it; the prefix cache is
 * approximate for a bidirectional model and is tested for what it does promise. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "drafter/draft.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "model/sampler.h"
#include "tests/tdmodel.h"
#include "tests/tdtest.h"
#include "verifier/generate.h"

typedef struct fx {
    td_backend_t *be;
    td_model_t *m;
    const td_config_t *c;
    int V;
} fx_t;

static int s_load(fx_t *f, const char *family) {
    if (!(f->m = td_test_load_fixture(family, 1, 0, &f->be))) return 0;
    f->c = td_model_config(f->m);
    f->V = f->c->n_vocab;
    return 1;
}

static void s_unload(fx_t *f) {
    td_model_destroy(&f->m);
    td_backend_destroy(&f->be);
}

static void s_prefix(const fx_t *f, uint64_t seed, int n, int32_t *out) {
    td_rng_t r;
    td_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        int t;
        do t = (int)(td_rng_next(&r) % (uint64_t)f->V);
        while (t == f->c->mask_token_id);
        out[i] = t;
    }
}

/* ---- the oracle ---- */

/* All rows of logits of seq[n] with a fresh cache, bidirectional. */
static int s_full_logits(fx_t *f, const int32_t *seq, int n, float *out) {
    td_err_t err = {0};
    td_kv_cache_t *kv = td_kv_cache_new(f->m, 1, n, &err);
    if (!kv) return -1;
    td_batch_t b = {.n = n, .tokens = seq, .attn = TD_ATTN_BIDIR};
    int rc = td_model_forward(f->m, kv, &b, out, &err);
    td_kv_cache_destroy(&kv);
    return rc;
}

static void s_softmax(const float *x, int V, float *out) {
    double mx = -INFINITY, z = 0.0;
    for (int t = 0; t < V; t++)
        if (x[t] > mx) mx = x[t];
    for (int t = 0; t < V; t++) z += exp((double)x[t] - mx);
    for (int t = 0; t < V; t++) out[t] = (float)(exp((double)x[t] - mx) / z);
}

static double s_oracle_score(td_unmask_order_t o, const td_sampling_t *sp, const float *lrow,
                             int V) {
    float d[512];
    if (sp->temperature > 0.0f)
        td_sampling_dist(sp, lrow, V, d);
    else
        s_softmax(lrow, V, d);
    double b1 = 0, b2 = 0, h = 0;
    for (int t = 0; t < V; t++) {
        if (d[t] > b1)
            b2 = b1, b1 = d[t];
        else if (d[t] > b2)
            b2 = d[t];
        if (d[t] > 0) h -= d[t] * log(d[t]);
    }
    return o == TD_ORDER_ENTROPY ? -h : o == TD_ORDER_MARGIN ? b1 - b2 : b1;
}

/* Draft by full recomputation. step_of[gamma] receives the unmasking step of each position. */
static int s_oracle_draft(fx_t *f, const int32_t *prefix, int np, int gamma, int steps,
                          td_unmask_order_t order, const td_sampling_t *sp, td_rng_t *rng,
                          int32_t *draft, float *q, int *step_of) {
    int V = f->V, n = np + gamma, shift = f->c->logit_shift ? 1 : 0;
    int32_t seq[64];
    float *all = malloc((size_t)n * V * sizeof *all);
    int masked[64];
    memcpy(seq, prefix, (size_t)np * sizeof *seq);
    for (int j = 0; j < gamma; j++) seq[np + j] = f->c->mask_token_id, masked[j] = 1;
    if (steps > gamma) steps = gamma;
    int remaining = gamma;
    for (int s = 0; s < steps; s++) {
        int k = s == steps - 1 ? remaining : remaining / (steps - s);
        if (s_full_logits(f, seq, n, all) != TD_OK) return free(all), -1;
        for (int r = 0; r < n; r++) all[(size_t)r * V + f->c->mask_token_id] = -INFINITY;
        int pick[64] = {0};
        double sc[64];
        for (int j = 0; j < gamma; j++)
            if (masked[j]) sc[j] = s_oracle_score(order, sp, all + (size_t)(np + j - shift) * V, V);
        for (int c = 0; c < k; c++) {
            int best = -1;
            for (int j = 0; j < gamma; j++) {
                if (!masked[j] || pick[j]) continue;
                if (best < 0)
                    best = j;
                else if (order != TD_ORDER_LEFT_TO_RIGHT && sc[j] > sc[best])
                    best = j;
            }
            pick[best] = 1;
        }
        for (int j = 0; j < gamma; j++) {
            if (!pick[j]) continue;
            draft[j] = td_sample(sp, rng, all + (size_t)(np + j - shift) * V, V, q + (size_t)j * V);
            seq[np + j] = draft[j];
            masked[j] = 0;
            step_of[j] = s;
            remaining--;
        }
    }
    free(all);
    return 0;
}

static void s_check_q(const fx_t *f, const int32_t *draft, const float *q, int gamma) {
    for (int j = 0; j < gamma; j++) {
        double sum = 0;
        for (int t = 0; t < f->V; t++) sum += q[(size_t)j * f->V + t];
        CHECK_NEAR(sum, 1.0, 1e-4);
        CHECK(draft[j] >= 0 && draft[j] < f->V);
        CHECK(draft[j] != f->c->mask_token_id);
        CHECK(q[(size_t)j * f->V + draft[j]] > 0.0f);
    }
}

/* Exact mode equals the oracle for every order, several step counts and temperatures. */
static void s_exact_vs_oracle(const char *family) {
    fx_t f;
    if (!s_load(&f, family)) return;
    enum { G = 6, NP = 5 };
    const td_sampling_t sps[3] = {{0.0f, 0, 1.0f}, {0.8f, 0, 1.0f}, {1.0f, 20, 0.9f}};
    const int steps_list[4] = {1, 2, 3, G};
    int cases = 0;
    for (int o = 0; o < TD_ORDER_COUNT; o++)
        for (int si = 0; si < 3; si++)
            for (int st = 0; st < 4; st++) {
                int32_t prefix[NP], d1[G], d2[G];
                int so1[G], so2[G], nf = 0;
                float q1[G * 160], q2[G * 160];
                s_prefix(&f, 100 + o * 10 + si * 3 + st, NP, prefix);
                td_rng_t r1, r2;
                td_rng_seed(&r1, 7 + st);
                r2 = r1;
                td_err_t err = {0};
                td_draft_opts_t opts = {.exact = 1, .step_of = so1, .n_forwards = &nf};
                int rc = td_diffusion_draft_ex(f.m, NULL, 0, prefix, NP, G, steps_list[st], o,
                                               &sps[si], &r1, d1, q1, &opts, &err);
                CHECK_MSG(rc == TD_OK, "%s", err.msg);
                REQUIRE(s_oracle_draft(&f, prefix, NP, G, steps_list[st], o, &sps[si], &r2, d2, q2,
                                       so2) == 0);
                CHECK_EQ_INT(nf, steps_list[st]);
                for (int j = 0; j < G; j++) {
                    CHECK_MSG(d1[j] == d2[j], "%s order %s T=%g steps %d pos %d: %d vs oracle %d",
                              family, td_unmask_order_name(o), (double)sps[si].temperature,
                              steps_list[st], j, d1[j], d2[j]);
                    CHECK_EQ_INT(so1[j], so2[j]);
                    for (int t = 0; t < f.V; t++)
                        if (fabsf(q1[j * f.V + t] - q2[j * f.V + t]) > 1e-5f) {
                            CHECK_MSG(0, "q[%d][%d] %g vs oracle %g", j, t, (double)q1[j * f.V + t],
                                      (double)q2[j * f.V + t]);
                            break;
                        }
                }
                CHECK(memcmp(&r1, &r2, sizeof r1) == 0);
                s_check_q(&f, d1, q1, G);
                cases++;
            }
    CHECK_EQ_INT(cases, TD_ORDER_COUNT * 12);
    s_unload(&f);
}

TD_TEST(dream_exact_draft_equals_oracle) { s_exact_vs_oracle("dream"); }
TD_TEST(llada_exact_draft_equals_oracle) { s_exact_vs_oracle("llada"); }

/* The logit shift: Dream's first drafted token comes from the last prefix row, LLaDA's from its
 * own row; the fixtures are such that the two rows disagree for some prefix. */
static void s_shift(const char *family, int expect_shift) {
    fx_t f;
    if (!s_load(&f, family)) return;
    CHECK_EQ_INT(f.c->logit_shift, expect_shift);
    enum { G = 4, NP = 6 };
    int differ = 0;
    for (int it = 0; it < 10; it++) {
        int32_t prefix[NP], seq[NP + G], d[G];
        float q[G * 160], all[(NP + G) * 160];
        s_prefix(&f, 500 + it, NP, prefix);
        td_rng_t r;
        td_rng_seed(&r, 1);
        td_sampling_t sp = {0.0f, 0, 1.0f};
        td_err_t err = {0};
        REQUIRE(td_diffusion_draft(f.m, NULL, 0, prefix, NP, G, 1, TD_ORDER_LEFT_TO_RIGHT, &sp, &r,
                                   d, q, &err) == TD_OK);
        memcpy(seq, prefix, sizeof prefix);
        for (int j = 0; j < G; j++) seq[NP + j] = f.c->mask_token_id;
        REQUIRE(s_full_logits(&f, seq, NP + G, all) == TD_OK);
        for (int r2 = 0; r2 < NP + G; r2++) all[r2 * f.V + f.c->mask_token_id] = -INFINITY;
        int from_prev = td_argmax(all + (NP - 1) * f.V, f.V);
        int from_own = td_argmax(all + NP * f.V, f.V);
        CHECK_EQ_INT(d[0], expect_shift ? from_prev : from_own);
        differ += from_prev != from_own;
    }
    CHECK(differ > 0);
    s_unload(&f);
}

TD_TEST(dream_logit_shift) { s_shift("dream", 1); }
TD_TEST(llada_no_logit_shift) { s_shift("llada", 0); }

/* CONFIDENCE with one token per step unmasks the position of highest max-probability first,
 * computed here from the step-0 logits of the full sequence. */
TD_TEST(confidence_order_trace) {
    const char *fams[2] = {"dream", "llada"};
    for (int fi = 0; fi < 2; fi++) {
        fx_t f;
        if (!s_load(&f, fams[fi])) return;
        enum { G = 6, NP = 4 };
        int shift = f.c->logit_shift ? 1 : 0, not_leftmost = 0;
        for (int it = 0; it < 8; it++) {
            int32_t prefix[NP], seq[NP + G], d[G];
            int so[G];
            float all[(NP + G) * 160], sm[160];
            s_prefix(&f, 900 + it, NP, prefix);
            memcpy(seq, prefix, sizeof prefix);
            for (int j = 0; j < G; j++) seq[NP + j] = f.c->mask_token_id;
            REQUIRE(s_full_logits(&f, seq, NP + G, all) == TD_OK);
            int best = -1;
            double bc = -1;
            for (int j = 0; j < G; j++) {
                float *row = all + (NP + j - shift) * f.V;
                row[f.c->mask_token_id] = -INFINITY;
                s_softmax(row, f.V, sm);
                double c = sm[td_argmax(sm, f.V)];
                if (c > bc) bc = c, best = j;
            }
            td_rng_t r;
            td_rng_seed(&r, 3);
            td_sampling_t sp = {0.0f, 0, 1.0f};
            td_draft_opts_t opts = {.exact = 1, .step_of = so};
            td_err_t err = {0};
            REQUIRE(td_diffusion_draft_ex(f.m, NULL, 0, prefix, NP, G, G, TD_ORDER_CONFIDENCE, &sp,
                                          &r, d, NULL, &opts, &err) == TD_OK);
            int first = -1, seen[G] = {0};
            for (int j = 0; j < G; j++) {
                if (so[j] == 0) first = j;
                REQUIRE(so[j] >= 0 && so[j] < G);
                seen[so[j]]++;
            }
            for (int s = 0; s < G; s++) CHECK_EQ_INT(seen[s], 1); /* one per step */
            CHECK_EQ_INT(first, best);
            not_leftmost += best != 0;
        }
        CHECK(not_leftmost > 0); /* the check distinguishes confidence from left-to-right */
        s_unload(&f);
    }
}

/* The prefix cache: with an empty cache and one step it IS the exact computation; a prefix cached
 * by an earlier call gives the same drafts as computing it within the call; the slot ends at
 * n_prefix; and it works in a slot other than 0. */
static void s_cache(const char *family) {
    fx_t f;
    if (!s_load(&f, family)) return;
    enum { G = 6, NP = 7 };
    td_err_t err = {0};
    td_kv_cache_t *kv = td_kv_cache_new(f.m, 2, 40, &err);
    REQUIRE(kv);
    td_sampling_t sp = {0.0f, 0, 1.0f};
    for (int it = 0; it < 4; it++) {
        int32_t prefix[NP + 8], de[G], dc[G], dc2[G];
        float qe[G * 160], qc[G * 160], qc2[G * 160];
        s_prefix(&f, 1300 + it, NP + 8, prefix);
        td_rng_t r;
        td_unmask_order_t o = (td_unmask_order_t)(it % TD_ORDER_COUNT);
        /* steps 1, empty cache: equal to exact mode */
        td_kv_cache_crop(kv, 1, 0);
        td_rng_seed(&r, 11);
        REQUIRE(td_diffusion_draft(f.m, NULL, 0, prefix, NP, G, 1, o, &sp, &r, de, qe, &err) ==
                TD_OK);
        td_rng_seed(&r, 11);
        REQUIRE(td_diffusion_draft(f.m, kv, 1, prefix, NP, G, 1, o, &sp, &r, dc, qc, &err) ==
                TD_OK);
        CHECK_EQ_INT(td_kv_cache_len(kv, 1), NP);
        for (int j = 0; j < G; j++) CHECK_EQ_INT(dc[j], de[j]);
        for (int t = 0; t < G * f.V; t++)
            if (fabsf(qc[t] - qe[t]) > 1e-5f) {
                CHECK_MSG(0, "q differs at %d", t);
                break;
            }
        /* multi-step: prefix computed in this call vs cached by the previous call */
        td_kv_cache_crop(kv, 1, 0);
        td_rng_seed(&r, 12);
        REQUIRE(td_diffusion_draft(f.m, kv, 1, prefix, NP, G, 3, o, &sp, &r, dc, qc, &err) ==
                TD_OK);
        CHECK_EQ_INT(td_kv_cache_len(kv, 1), NP);
        td_rng_seed(&r, 12);
        REQUIRE(td_diffusion_draft(f.m, kv, 1, prefix, NP, G, 3, o, &sp, &r, dc2, qc2, &err) ==
                TD_OK);
        for (int j = 0; j < G; j++) CHECK_EQ_INT(dc2[j], dc[j]);
        for (int t = 0; t < G * f.V; t++)
            if (fabsf(qc2[t] - qc[t]) > 1e-4f) {
                CHECK_MSG(0, "cached-prefix q differs at %d: %g vs %g", t, (double)qc2[t],
                          (double)qc[t]);
                break;
            }
        /* a grown prefix (the verifier accepted more) and stale entries past it */
        td_rng_seed(&r, 13);
        REQUIRE(td_diffusion_draft(f.m, kv, 1, prefix, NP + 8, G, 2, o, &sp, &r, dc, qc, &err) ==
                TD_OK);
        CHECK_EQ_INT(td_kv_cache_len(kv, 1), NP + 8);
        s_check_q(&f, dc, qc, G);
        CHECK_EQ_INT(td_kv_cache_len(kv, 0), 0); /* the other slot untouched */
    }
    /* errors */
    int32_t prefix[4] = {1, 2, 3, 4}, d[40];
    td_rng_t r;
    td_rng_seed(&r, 1);
    CHECK(td_diffusion_draft(f.m, kv, 0, prefix, 4, 37, 2, 0, &sp, &r, d, NULL, &err) ==
          TD_ERR_ARG);
    CHECK(td_diffusion_draft(f.m, kv, 2, prefix, 4, 3, 2, 0, &sp, &r, d, NULL, &err) == TD_ERR_ARG);
    prefix[2] = f.V;
    CHECK(td_diffusion_draft(f.m, kv, 0, prefix, 4, 3, 2, 0, &sp, &r, d, NULL, &err) == TD_ERR_ARG);
    td_kv_cache_destroy(&kv);
    s_unload(&f);
}

TD_TEST(dream_prefix_cache) { s_cache("dream"); }
TD_TEST(llada_prefix_cache) { s_cache("llada"); }

TD_TEST(draft_seeded_reproducible) {
    fx_t f;
    if (!s_load(&f, "dream")) return;
    int32_t prefix[5], a[8], b[8];
    s_prefix(&f, 4242, 5, prefix);
    td_sampling_t sp = {0.9f, 0, 0.95f};
    td_err_t err = {0};
    td_kv_cache_t *kv = td_kv_cache_new(f.m, 1, 32, &err);
    td_rng_t r;
    td_rng_seed(&r, 99);
    REQUIRE(td_diffusion_draft(f.m, kv, 0, prefix, 5, 8, 4, TD_ORDER_ENTROPY, &sp, &r, a, NULL,
                               &err) == TD_OK);
    td_kv_cache_crop(kv, 0, 0);
    td_rng_seed(&r, 99);
    REQUIRE(td_diffusion_draft(f.m, kv, 0, prefix, 5, 8, 4, TD_ORDER_ENTROPY, &sp, &r, b, NULL,
                               &err) == TD_OK);
    CHECK(memcmp(a, b, sizeof a) == 0);
    td_rng_seed(&r, 100);
    REQUIRE(td_diffusion_draft(f.m, kv, 0, prefix, 5, 8, 4, TD_ORDER_ENTROPY, &sp, &r, b, NULL,
                               &err) == TD_OK);
    CHECK(memcmp(a, b, sizeof a) != 0); /* a different seed gives a different draft here */
    td_kv_cache_destroy(&kv);
    s_unload(&f);
}

TD_TEST(schedule_counts) {
    for (int g = 1; g <= 20; g++)
        for (int T = 1; T <= g + 2; T++) {
            int rem = g, steps = T > g ? g : T;
            for (int s = 0; s < steps; s++) {
                int k = td_draft_step_count(g, T, s, rem);
                CHECK(k >= 1);
                rem -= k;
            }
            CHECK_EQ_INT(rem, 0);
        }
    CHECK_EQ_INT(td_draft_step_count(8, 4, 0, 8), 2);
    CHECK_EQ_INT(td_draft_step_count(10, 4, 0, 10), 2); /* 10/4 -> 2, then 8/3 -> 2, 6/2, 3 */
    CHECK_EQ_INT(td_draft_step_count(10, 4, 3, 3), 3);
    CHECK_EQ_INT(td_unmask_order_parse("margin"), TD_ORDER_MARGIN);
    CHECK_EQ_INT(td_unmask_order_parse("nope"), -1);
}

/* ---- sparse forms ---- */

TD_TEST(topk_forms) {
    td_rng_t g;
    td_rng_seed(&g, 5);
    for (int it = 0; it < 2000; it++) {
        int n = 1 + (int)(td_rng_next(&g) % 12), k = (int)(td_rng_next(&g) % 14);
        float p[12], lg[12], vals[14], bound, rest;
        int32_t ids[14];
        double sum = 0;
        for (int i = 0; i < n; i++) {
            p[i] = td_rng_uniform(&g) < 0.3 ? 0.0f : (float)floor(td_rng_uniform(&g) * 4) + 1;
            lg[i] = (float)floor(td_rng_uniform(&g) * 5) - 2;
            sum += p[i];
        }
        if (sum == 0) p[0] = 1, sum = 1;
        for (int i = 0; i < n; i++) p[i] = (float)(p[i] / sum);
        int m = td_dist_topk(p, n, k, ids, vals, &rest);
        int support = 0;
        for (int i = 0; i < n; i++) support += p[i] > 0;
        CHECK_EQ_INT(m, k < support ? k : support);
        double listed = 0;
        for (int i = 0; i < m; i++) {
            CHECK(vals[i] == p[ids[i]] && vals[i] > 0);
            if (i > 0)
                CHECK(vals[i] < vals[i - 1] || (vals[i] == vals[i - 1] && ids[i] > ids[i - 1]));
            listed += vals[i];
            /* nothing left out ranks above a listed one */
            for (int t = 0; t < n; t++) {
                int in = 0;
                for (int u = 0; u < m; u++) in |= ids[u] == t;
                if (!in) CHECK(p[t] < vals[i] || (p[t] == vals[i] && t > ids[i]));
            }
        }
        CHECK_NEAR(rest, 1.0 - listed, 1e-6);
        if (m == support) CHECK(rest == 0.0f);
        m = td_logits_topk(lg, n, k, ids, vals, &bound);
        CHECK_EQ_INT(m, k < n ? k : n);
        float mx = -INFINITY;
        for (int t = 0; t < n; t++) {
            int in = 0;
            for (int u = 0; u < m; u++) in |= ids[u] == t;
            if (!in && lg[t] > mx) mx = lg[t];
        }
        CHECK(bound == mx);
        for (int i = 0; i < m; i++) CHECK(vals[i] == lg[ids[i]] && vals[i] >= bound);
    }
}

/* ---- dLLM-only decoding ---- */

/* Oracle: blocks of B, one token per step by max softmax probability (greedy), full recompute. */
static int s_oracle_generate(fx_t *f, const int32_t *prompt, int np, int max_tokens, int B,
                             int32_t *out) {
    int shift = f->c->logit_shift ? 1 : 0, cur = np;
    int32_t seq[64];
    float *all = malloc((size_t)64 * f->V * sizeof *all), sm[160];
    memcpy(seq, prompt, (size_t)np * sizeof *seq);
    while (cur < np + max_tokens) {
        int g = np + max_tokens - cur < B ? np + max_tokens - cur : B;
        for (int j = 0; j < g; j++) seq[cur + j] = f->c->mask_token_id;
        for (int s = 0; s < g; s++) {
            s_full_logits(f, seq, cur + g, all);
            int best = -1, bt = -1;
            double bc = -1;
            for (int j = 0; j < g; j++) {
                if (seq[cur + j] != f->c->mask_token_id) continue;
                float *row = all + (size_t)(cur + j - shift) * f->V;
                row[f->c->mask_token_id] = -INFINITY;
                s_softmax(row, f->V, sm);
                int a = td_argmax(row, f->V);
                if (sm[a] > bc) bc = sm[a], best = j, bt = a;
            }
            seq[cur + best] = bt;
        }
        cur += g;
    }
    memcpy(out, seq + np, (size_t)max_tokens * sizeof *out);
    free(all);
    return 0;
}

static void s_generate(const char *family) {
    fx_t f;
    if (!s_load(&f, family)) return;
    int32_t prompt[5], out[64], ref[64], out2[64];
    s_prefix(&f, 77, 5, prompt);
    td_err_t err = {0};
    td_diffusion_params_t p = td_diffusion_params_default();
    p.max_tokens = 20;
    p.block_size = 8;
    p.threshold = 2.0f; /* one token per step */
    p.stop_at_eos = 0;
    p.exact = 1;
    td_diffusion_stats_t st;
    REQUIRE(td_diffusion_generate(f.m, prompt, 5, &p, out, &st, &err) == TD_OK);
    REQUIRE(s_oracle_generate(&f, prompt, 5, 20, 8, ref) == 0);
    CHECK_EQ_INT(st.generated, 20);
    CHECK_EQ_INT(st.forwards, 20);
    CHECK_EQ_INT(st.blocks, 3);
    for (int i = 0; i < 20; i++) CHECK_EQ_INT(out[i], ref[i]);
    /* a stop id ends generation at its first occurrence (kept), the text before it unchanged */
    int32_t stop_id = out[13];
    int first = 13;
    for (int i = 0; i < 13; i++)
        if (out[i] == stop_id) {
            first = i;
            break;
        }
    p.stop_ids = &stop_id;
    p.n_stop = 1;
    REQUIRE(td_diffusion_generate(f.m, prompt, 5, &p, out2, &st, &err) == TD_OK);
    CHECK_EQ_INT(st.generated, first + 1);
    CHECK_EQ_INT(st.stopped_at_stop_id, 1);
    for (int i = 0; i <= first && i < st.generated; i++) CHECK_EQ_INT(out2[i], out[i]);
    /* threshold 0: a whole block per step */
    p.n_stop = 0;
    p.threshold = 0.0f;
    REQUIRE(td_diffusion_generate(f.m, prompt, 5, &p, out2, &st, &err) == TD_OK);
    CHECK_EQ_INT(st.forwards, 3);
    /* defaults with the prefix cache, sampling: terminates, fills every mask, reproducible,
     * capped by the model's context */
    p = td_diffusion_params_default();
    p.max_tokens = 100;
    p.sampling = (td_sampling_t){0.8f, 0, 0.95f};
    p.seed = 5;
    p.stop_at_eos = 0;
    REQUIRE(td_diffusion_generate(f.m, prompt, 5, &p, out, &st, &err) == TD_OK);
    CHECK_EQ_INT(st.generated, f.c->n_ctx_train - 5);
    CHECK(st.forwards >= 2 && st.forwards <= st.generated);
    for (int i = 0; i < st.generated; i++) CHECK(out[i] != f.c->mask_token_id && out[i] >= 0);
    int n1 = st.generated;
    REQUIRE(td_diffusion_generate(f.m, prompt, 5, &p, out2, &st, &err) == TD_OK);
    CHECK_EQ_INT(st.generated, n1);
    CHECK(memcmp(out, out2, (size_t)n1 * sizeof *out) == 0);
    s_unload(&f);
}

TD_TEST(dream_diffusion_generate) { s_generate("dream"); }
TD_TEST(llada_diffusion_generate) { s_generate("llada"); }

/* ---- AR drafts ---- */

TD_TEST(ar_draft_matches_ar_decoding) {
    fx_t f;
    if (!s_load(&f, "qwen2")) return;
    int32_t prompt[6], d[5], ref[5];
    float q[5 * 512];
    REQUIRE(f.V <= 512);
    s_prefix(&f, 31, 6, prompt);
    td_err_t err = {0};
    td_kv_cache_t *kv = td_kv_cache_new(f.m, 2, 32, &err);
    const td_sampling_t sps[2] = {{0.0f, 0, 1.0f}, {0.8f, 0, 0.9f}};
    for (int si = 0; si < 2; si++) {
        td_gen_params_t gp = {.max_tokens = 5, .sampling = sps[si], .seed = 21};
        td_gen_stats_t gs;
        REQUIRE(td_generate_ar(f.m, prompt, 6, &gp, NULL, NULL, ref, &gs, &err) == TD_OK);
        for (int pass = 0; pass < 2; pass++) { /* pass 1: the prefix (and stale draft) cached */
            td_rng_t r;
            td_rng_seed(&r, 21);
            REQUIRE(td_ar_draft(f.m, kv, 1, prompt, 6, 5, &sps[si], &r, d, q, &err) == TD_OK);
            CHECK_EQ_INT(td_kv_cache_len(kv, 1), 6 + 4);
            for (int j = 0; j < 5; j++) CHECK_EQ_INT(d[j], ref[j]);
            s_check_q(&f, d, q, 5);
        }
        td_kv_cache_crop(kv, 1, 0);
    }
    CHECK(td_ar_draft(f.m, kv, 0, prompt, 6, 40, &sps[0], &(td_rng_t){{1, 2, 3, 4}}, d, NULL,
                      &err) == TD_ERR_ARG);
    td_kv_cache_destroy(&kv);
    /* the wrong kind of model for each drafter */
    td_rng_t r;
    td_rng_seed(&r, 1);
    CHECK(td_diffusion_draft(f.m, NULL, 0, prompt, 6, 3, 1, 0, &sps[0], &r, d, NULL, &err) ==
          TD_ERR_ARG);
    s_unload(&f);
    fx_t g;
    if (!s_load(&g, "dream")) return;
    CHECK(td_ar_draft(g.m, NULL, 0, prompt, 6, 3, &sps[0], &r, d, NULL, &err) == TD_ERR_ARG);
    s_unload(&g);
}

TD_TEST_MAIN()
