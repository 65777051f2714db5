/* test_batch_draft.c - batched drafting: td_diffusion_draft_many on the bundled diffusion drafter
 * (models/tiny-diffusion-drafter, BF16 weights: the CPU backend keeps 24 rows batch-invariant)
 * and td_dflash_draft_many on the DFlash fixture (tests/data/dflash) must give each job bitwise
 * the draft and q rows it gets alone, in the cached mode the drafter service uses, over two rounds
 * (the second reusing the slot's cached prefix), with fewer forwards than the solo runs. */
#include <stdlib.h>
#include <string.h>

#include "drafter/dflash.h"
#include "drafter/draft.h"
#include "kernels/backend.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/sampler.h"
#include "tests/tdmodel.h"
#include "tests/tdtest.h"

#define NJ 4

/* Distinct jobs: prefix lengths (the first one alone is over the 24-row bound), gammas, step
 * counts, orders, sampling settings and seeds. */
static const int s_nprefix[NJ] = {30, 5, 12, 9};
static const int s_gamma[NJ] = {8, 4, 6, 3};
static const int s_steps[NJ] = {8, 2, 3, 1};
static const td_unmask_order_t s_order[NJ] = {TD_ORDER_LEFT_TO_RIGHT, TD_ORDER_CONFIDENCE,
                                              TD_ORDER_ENTROPY, TD_ORDER_MARGIN};
static const td_sampling_t s_sp[NJ] = {
    {0.0f, 0, 1.0f}, {0.8f, 0, 0.9f}, {1.0f, 20, 1.0f}, {0.0f, 0, 1.0f}};

static void s_text(uint64_t seed, int V, int mask, int n, int32_t *out) {
    td_rng_t r;
    td_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        int t;
        do t = (int)(td_rng_next(&r) % (uint64_t)V);
        while (t == mask);
        out[i] = t;
    }
}

/* A bundled float drafter on one CPU thread; its batches are bitwise invariant up to 24 rows
 * (what the pass splitting under test keeps to). Fails the case when it cannot be loaded. */
static td_model_t *s_load_24(const char *dir, td_backend_t **be) {
    td_model_t *m = td_test_load_cpu(dir, 1, 0, be);
    if (m) CHECK_EQ_INT(td_model_invariant_rows(m), 24);
    return m;
}

TD_TEST(diffusion_many_equals_solo) {
    td_err_t err = {0};
    td_backend_t *be = NULL;
    td_model_t *m = s_load_24("models/tiny-diffusion-drafter", &be);
    REQUIRE(m);
    const int V = td_model_config(m)->n_vocab, mask = td_model_config(m)->mask_token_id;
    int32_t text[NJ][64];
    for (int k = 0; k < NJ; k++) s_text(100 + (uint64_t)k, V, mask, 64, text[k]);
    int32_t *dr[2][NJ];
    float *q[2][NJ];
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < NJ; k++) {
            dr[a][k] = malloc(16 * sizeof(int32_t));
            q[a][k] = malloc((size_t)16 * V * sizeof(float));
            REQUIRE(dr[a][k] && q[a][k]);
        }
    for (int nj = 1; nj <= NJ; nj++) {
        td_kv_cache_t *kv_solo = td_kv_cache_new(m, NJ, 64, &err);
        td_kv_cache_t *kv_many = td_kv_cache_new(m, NJ, 64, &err);
        REQUIRE(kv_solo && kv_many);
        for (int round = 0; round < 2; round++) {
            /* round 1: each text grew by 3 tokens (the slot keeps the old prefix) */
            const int grow = round ? 3 : 0;
            td_rng_t rs[NJ], rm[NJ];
            td_diffusion_job_t jobs[NJ];
            int fw_solo = 0, fw_many = 0, fw_job[NJ];
            td_draft_opts_t o[NJ];
            for (int k = 0; k < nj; k++) {
                const int np = s_nprefix[k] + grow;
                td_rng_seed(&rs[k], 7 + (uint64_t)k * 31 + (uint64_t)round);
                rm[k] = rs[k];
                int f = 0;
                td_draft_opts_t so = {.n_forwards = &f};
                CHECK_MSG(td_diffusion_draft_ex(m, kv_solo, k, text[k], np, s_gamma[k], s_steps[k],
                                                s_order[k], &s_sp[k], &rs[k], dr[0][k], q[0][k],
                                                &so, &err) == TD_OK,
                          "%s", err.msg);
                fw_solo += f;
                o[k] = (td_draft_opts_t){.n_forwards = &fw_job[k]};
                jobs[k] = (td_diffusion_job_t){.seq = k,
                                               .prefix = text[k],
                                               .n_prefix = np,
                                               .gamma = s_gamma[k],
                                               .steps = s_steps[k],
                                               .order = s_order[k],
                                               .sp = &s_sp[k],
                                               .rng = &rm[k],
                                               .draft = dr[1][k],
                                               .q = q[1][k],
                                               .opts = &o[k]};
            }
            CHECK_MSG(td_diffusion_draft_many(m, kv_many, jobs, nj, &fw_many, &err) == TD_OK, "%s",
                      err.msg);
            for (int k = 0; k < nj; k++) {
                const int g = s_gamma[k];
                CHECK_MSG(!memcmp(dr[0][k], dr[1][k], (size_t)g * sizeof(int32_t)),
                          "%d jobs, round %d: job %d's draft differs from its solo run", nj, round,
                          k);
                CHECK_MSG(!memcmp(q[0][k], q[1][k], (size_t)g * V * sizeof(float)),
                          "%d jobs, round %d: job %d's q differs from its solo run", nj, round, k);
                CHECK_EQ_INT(fw_job[k], s_steps[k]);
                CHECK_EQ_INT(td_kv_cache_len(kv_many, k), td_kv_cache_len(kv_solo, k));
                CHECK_EQ_INT(td_kv_cache_len(kv_many, k), s_nprefix[k] + grow);
                /* the generators advanced alike */
                CHECK(td_rng_next(&rm[k]) == td_rng_next(&rs[k]));
            }
            /* batched: fewer forwards than the solo runs (round 0: job 0's 30-row first step
             * runs alone, as it does solo) */
            if (nj >= 2) CHECK_MSG(fw_many < fw_solo, "%d vs %d forwards", fw_many, fw_solo);
            if (nj == 1) CHECK_EQ_INT(fw_many, fw_solo);
        }
        td_kv_cache_destroy(&kv_solo);
        td_kv_cache_destroy(&kv_many);
    }
    /* bad job lists */
    td_kv_cache_t *kv = td_kv_cache_new(m, 2, 64, &err);
    td_rng_t r[2];
    td_rng_seed(&r[0], 1), td_rng_seed(&r[1], 2);
    td_diffusion_job_t two[2];
    for (int k = 0; k < 2; k++)
        two[k] = (td_diffusion_job_t){.seq = 1,
                                      .prefix = text[k],
                                      .n_prefix = 5,
                                      .gamma = 3,
                                      .steps = 3,
                                      .sp = &s_sp[0],
                                      .rng = &r[k],
                                      .draft = dr[0][k]};
    CHECK(td_diffusion_draft_many(m, kv, two, 2, NULL, &err) == TD_ERR_ARG); /* slot twice */
    two[1].seq = 0;
    two[1].n_prefix = 70;
    CHECK(td_diffusion_draft_many(m, kv, two, 2, NULL, &err) == TD_ERR_ARG); /* too long */
    two[1].n_prefix = 5;
    CHECK(td_diffusion_draft_many(m, kv, two, 2, NULL, &err) == TD_OK);
    CHECK(td_diffusion_draft_many(m, kv, two, 0, NULL, &err) == TD_OK);
    td_kv_cache_destroy(&kv);
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < NJ; k++) free(dr[a][k]), free(q[a][k]);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

/* td_dflash_draft_many on the fixture drafter (block 8, F32/BF16 weights: 4 blocks are 32 rows,
 * more than one batch-invariant piece) for 1..4 contexts of different lengths and features,
 * greedy and sampled, blocks 8 and 5: each equals its td_dflash_draft alone, bitwise. */
TD_TEST(dflash_many_equals_solo) {
    td_err_t err = {0};
    char dir[512];
    snprintf(dir, sizeof dir, "%s/dflash/drafter", td_test_data());
    const char *vdir = "models/tiny-verifier";
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    REQUIRE(be);
    td_model_t *m = td_model_load(vdir, be, &err);
    uint64_t fp = 0;
    td_dflash_t *d = m && td_checkpoint_fingerprint(vdir, &fp, &err) == TD_OK
                         ? td_dflash_load(dir, m, fp, 0, &err)
                         : NULL;
    if (!d) td_test_fail(__FILE__, __LINE__, "setup: %s", err.msg);
    REQUIRE(d);
    const int V = td_model_config(m)->n_vocab, FD = td_dflash_feature_dim(d);
    const int ctx_rows[NJ] = {11, 3, 20, 7}, blocks[NJ] = {8, 5, 8, 8};
    const td_sampling_t sps[NJ] = {
        {0.0f, 0, 1.0f}, {0.9f, 0, 0.95f}, {1.0f, 0, 1.0f}, {0.0f, 0, 1.0f}};
    float *feat = malloc((size_t)32 * FD * sizeof *feat);
    REQUIRE(feat);
    td_dflash_ctx_t *cs[NJ], *cm[NJ];
    int32_t dr[2][NJ][8];
    float *q[2][NJ];
    for (int k = 0; k < NJ; k++) {
        td_rng_t r;
        td_rng_seed(&r, 40 + (uint64_t)k);
        for (int i = 0; i < ctx_rows[k] * FD; i++)
            feat[i] = (float)((double)(td_rng_next(&r) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
        cs[k] = td_dflash_ctx_new(d, 64, &err);
        cm[k] = td_dflash_ctx_new(d, 64, &err);
        REQUIRE(cs[k] && cm[k]);
        CHECK(td_dflash_ctx_append(cs[k], feat, ctx_rows[k], &err) == TD_OK);
        CHECK(td_dflash_ctx_append(cm[k], feat, ctx_rows[k], &err) == TD_OK);
        for (int a = 0; a < 2; a++) REQUIRE((q[a][k] = malloc((size_t)7 * V * sizeof(float))));
    }
    for (int nj = 1; nj <= NJ; nj++) {
        td_dflash_job_t jobs[NJ];
        td_rng_t rs[NJ], rm[NJ];
        for (int k = 0; k < nj; k++) {
            td_rng_seed(&rs[k], 90 + (uint64_t)k + (uint64_t)nj);
            rm[k] = rs[k];
            const int32_t anchor = 5 + 7 * k;
            CHECK(td_dflash_draft(cs[k], anchor, blocks[k], &sps[k], &rs[k], dr[0][k], q[0][k],
                                  NULL, &err) == TD_OK);
            jobs[k] = (td_dflash_job_t){.ctx = cm[k], .anchor = anchor, .block = blocks[k]};
            jobs[k].sp = &sps[k], jobs[k].rng = &rm[k], jobs[k].draft = dr[1][k],
            jobs[k].q = q[1][k];
        }
        CHECK_MSG(td_dflash_draft_many(jobs, nj, &err) == TD_OK, "%s", err.msg);
        for (int k = 0; k < nj; k++) {
            const int g = blocks[k] - 1;
            CHECK_MSG(!memcmp(dr[0][k], dr[1][k], (size_t)g * sizeof(int32_t)),
                      "%d blocks: block %d's draft differs from its solo run", nj, k);
            CHECK_MSG(!memcmp(q[0][k], q[1][k], (size_t)g * V * sizeof(float)),
                      "%d blocks: block %d's q differs from its solo run", nj, k);
            CHECK(td_rng_next(&rm[k]) == td_rng_next(&rs[k]));
            CHECK_EQ_INT(td_dflash_ctx_len(cm[k]), ctx_rows[k]);
        }
    }
    /* one context twice, a block past the context: refused */
    td_dflash_job_t bad[2] = {
        {.ctx = cm[0], .anchor = 1, .block = 8, .sp = &sps[0], .draft = dr[1][0]},
        {.ctx = cm[0], .anchor = 1, .block = 8, .sp = &sps[0], .draft = dr[1][1]}};
    CHECK(td_dflash_draft_many(bad, 2, &err) == TD_ERR_ARG);
    bad[1].ctx = cm[1];
    bad[1].block = 62;
    CHECK(td_dflash_draft_many(bad, 2, &err) == TD_ERR_ARG);
    for (int k = 0; k < NJ; k++) {
        td_dflash_ctx_destroy(&cs[k]);
        td_dflash_ctx_destroy(&cm[k]);
        free(q[0][k]), free(q[1][k]);
    }
    free(feat);
    td_dflash_destroy(&d);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

/* td_ar_draft_many on the bundled AR drafter (BF16: 24 rows batch-invariant): four fresh slots
 * with prefixes of 12-20 tokens put 60 rows into the first step, more than one pass holds; each
 * job's draft and q still equal td_ar_draft alone, bitwise, and a second round on the cached
 * prefixes too. */
TD_TEST(ar_many_over_one_pass_equals_solo) {
    td_err_t err = {0};
    td_backend_t *be = NULL;
    td_model_t *m = s_load_24("models/tiny-ar-drafter", &be);
    REQUIRE(m);
    const int V = td_model_config(m)->n_vocab;
    const int np[NJ] = {20, 12, 16, 12}, gam[NJ] = {5, 3, 6, 4};
    int32_t text[NJ][64], dr[2][NJ][8];
    float *q[2][NJ];
    for (int k = 0; k < NJ; k++) {
        s_text(300 + (uint64_t)k, V, -1, 64, text[k]);
        for (int a = 0; a < 2; a++) REQUIRE((q[a][k] = malloc((size_t)8 * V * sizeof(float))));
    }
    td_kv_cache_t *kv[2] = {td_kv_cache_new(m, NJ, 64, &err), td_kv_cache_new(m, NJ, 64, &err)};
    REQUIRE(kv[0] && kv[1]);
    for (int round = 0; round < 2; round++) {
        td_rng_t rs[NJ], rm[NJ];
        td_ar_job_t jobs[NJ];
        for (int k = 0; k < NJ; k++) {
            td_rng_seed(&rs[k], 5 + (uint64_t)k);
            rm[k] = rs[k];
            const int n = np[k] + 4 * round;
            CHECK(td_ar_draft(m, kv[0], k, text[k], n, gam[k], &s_sp[k], &rs[k], dr[0][k], q[0][k],
                              &err) == TD_OK);
            jobs[k] = (td_ar_job_t){.seq = k,
                                    .prefix = text[k],
                                    .n_prefix = n,
                                    .gamma = gam[k],
                                    .sp = &s_sp[k],
                                    .rng = &rm[k],
                                    .draft = dr[1][k],
                                    .q = q[1][k]};
        }
        CHECK_MSG(td_ar_draft_many(m, kv[1], jobs, NJ, &err) == TD_OK, "%s", err.msg);
        for (int k = 0; k < NJ; k++) {
            CHECK_MSG(!memcmp(dr[0][k], dr[1][k], (size_t)gam[k] * sizeof(int32_t)),
                      "round %d: AR job %d's draft differs from its solo run", round, k);
            CHECK_MSG(!memcmp(q[0][k], q[1][k], (size_t)gam[k] * V * sizeof(float)),
                      "round %d: AR job %d's q differs from its solo run", round, k);
            CHECK_EQ_INT(td_kv_cache_len(kv[1], k), td_kv_cache_len(kv[0], k));
        }
    }
    for (int k = 0; k < NJ; k++) free(q[0][k]), free(q[1][k]);
    td_kv_cache_destroy(&kv[0]);
    td_kv_cache_destroy(&kv[1]);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

TD_TEST_MAIN()
