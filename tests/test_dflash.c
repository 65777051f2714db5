/* test_dflash.c - the DFlash drafter (drafter/dflash.c) and method `dflash`.
 *
 * The forward is checked against tools/make_dflash_fixture.py's float64 reference (a random-init
 * drafter on the bundled tiny verifier, tests/data/dflash): the context features stored there
 * (HF hidden states, bf16-rounded) go in, the logits must match to ~1e-4; the features tandem's
 * own verifier forward computes must match HF's to bf16 precision. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "drafter/dflash.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "tests/tdtest.h"

static const char *s_tiny = "models/tiny-verifier";

typedef struct fx {
    td_backend_t *be;
    td_model_t *m;
    td_dflash_t *d;
    uint64_t fp;
    char dir[512];
} fx_t;

static int s_open(fx_t *f) {
    memset(f, 0, sizeof *f);
    td_err_t err = {0};
    snprintf(f->dir, sizeof f->dir, "%s/dflash/drafter", td_test_data());
    f->be = td_backend_cpu_new(1, 0, &err);
    if (f->be) f->m = td_model_load(s_tiny, f->be, &err);
    if (f->m && td_checkpoint_fingerprint(s_tiny, &f->fp, &err) == TD_OK)
        f->d = td_dflash_load(f->dir, f->m, f->fp, 0, &err);
    if (!f->d) {
        td_test_fail(__FILE__, __LINE__, "setup: %s", err.msg);
        td_model_destroy(&f->m);
        td_backend_destroy(&f->be);
        return 0;
    }
    return 1;
}

static void s_close(fx_t *f) {
    td_dflash_destroy(&f->d);
    td_model_destroy(&f->m);
    td_backend_destroy(&f->be);
}

static float *s_read_f32(const char *name, size_t *n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/dflash/%s", td_test_data(), name);
    char *data = NULL;
    size_t len = 0;
    if (td_read_file(path, &data, &len, NULL) != TD_OK) return NULL;
    *n = len / 4;
    float *out = malloc(len + 4);
    memcpy(out, data, len);
    free(data);
    return out;
}

static cJSON *s_cases(void) {
    char path[1024], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/dflash/cases.json", td_test_data());
    if (td_read_file(path, &text, &len, NULL) != TD_OK) return NULL;
    cJSON *o = cJSON_ParseWithLength(text, len);
    free(text);
    return o;
}

TD_TEST(config_and_target_checks) {
    fx_t f;
    if (!s_open(&f)) return;
    const td_dflash_config_t *c = td_dflash_config(f.d);
    CHECK_EQ_INT(c->n_target_layers, 3);
    CHECK_EQ_INT(c->target_layers[2], 5);
    CHECK_EQ_INT(c->block_size, 8);
    CHECK_EQ_INT(td_dflash_feature_dim(f.d), 3 * 256);
    td_err_t err = {0};
    /* another fingerprint: refused naming both, unless any_target */
    td_dflash_t *d = td_dflash_load(f.dir, f.m, f.fp ^ 0x10, 0, &err);
    CHECK(!d);
    char want[64];
    snprintf(want, sizeof want, "0x%016llx", (unsigned long long)(f.fp ^ 0x10));
    CHECK_MSG(strstr(err.msg, want) && strstr(err.msg, "fingerprints"), "msg: %s", err.msg);
    d = td_dflash_load(f.dir, f.m, f.fp ^ 0x10, 1, &err);
    CHECK(d);
    td_dflash_destroy(&d);
    /* shape mismatches are refused even with any_target */
    td_config_t t = *td_model_config(f.m);
    t.n_layer = 4;
    CHECK(td_dflash_check_target(c, &t, f.fp, 1, &err) == TD_ERR_ARG);
    CHECK_MSG(strstr(err.msg, "n_layer 6") && strstr(err.msg, "n_layer 4"), "msg: %s", err.msg);
    t = *td_model_config(f.m);
    t.n_vocab = 5000;
    CHECK(td_dflash_check_target(c, &t, f.fp, 1, &err) == TD_ERR_ARG);
    td_dflash_config_t c2 = *c;
    c2.target_layers[1] = 7;
    CHECK(td_dflash_check_target(&c2, td_model_config(f.m), f.fp, 1, &err) == TD_ERR_ARG);
    CHECK_MSG(strstr(err.msg, "1,7,5"), "msg: %s", err.msg);
    CHECK(td_dflash_check_target(c, td_model_config(f.m), f.fp, 0, &err) == TD_OK);
    /* a directory that is not a dflash drafter */
    CHECK(!td_dflash_load(s_tiny, f.m, f.fp, 1, &err));
    CHECK(strstr(err.msg, "dflash") != NULL);
    s_close(&f);
}

/* The C forward against the reference logits, features from the fixture. */
TD_TEST(forward_matches_reference) {
    fx_t f;
    if (!s_open(&f)) return;
    cJSON *cases = s_cases();
    REQUIRE(cases);
    const cJSON *arr = cJSON_GetObjectItem(cases, "cases");
    int nc = cJSON_GetArraySize(arr);
    CHECK(nc >= 3);
    const int V = td_model_config(f.m)->n_vocab, FD = td_dflash_feature_dim(f.d);
    for (int ci = 0; ci < nc; ci++) {
        const cJSON *cs = cJSON_GetArrayItem(arr, ci);
        const cJSON *toks = cJSON_GetObjectItem(cs, "tokens");
        int n = cJSON_GetArraySize(toks), B = cJSON_GetObjectItem(cs, "block")->valueint;
        size_t nf = 0, nl = 0;
        float *feat = s_read_f32(cJSON_GetObjectItem(cs, "features")->valuestring, &nf);
        float *want = s_read_f32(cJSON_GetObjectItem(cs, "logits")->valuestring, &nl);
        REQUIRE(feat && want);
        CHECK_EQ_INT(nf, (size_t)(n - 1) * FD);
        CHECK_EQ_INT(nl, (size_t)(B - 1) * V);
        td_err_t err = {0};
        td_dflash_ctx_t *cx = td_dflash_ctx_new(f.d, 64, &err);
        REQUIRE(cx);
        /* append in two pieces: the cache must not care */
        int half = (n - 1) / 2;
        CHECK(td_dflash_ctx_append(cx, feat, half, &err) == TD_OK);
        CHECK(td_dflash_ctx_append(cx, feat + (size_t)half * FD, n - 1 - half, &err) == TD_OK);
        CHECK_EQ_INT(td_dflash_ctx_len(cx), n - 1);
        int32_t draft[32];
        float *got = malloc((size_t)(B - 1) * V * sizeof *got);
        td_sampling_t sp = {0};
        int32_t anchor = cJSON_GetArrayItem(toks, n - 1)->valueint;
        CHECK_MSG(td_dflash_draft(cx, anchor, B, &sp, NULL, draft, NULL, got, &err) == TD_OK, "%s",
                  err.msg);
        double maxd = 0, maxa = 0;
        for (size_t i = 0; i < nl; i++) {
            double dd = fabs((double)got[i] - want[i]);
            if (dd > maxd) maxd = dd;
            if (fabs(want[i]) > maxa) maxa = fabs(want[i]);
        }
        CHECK_MSG(maxd < 1e-4 * (1 + maxa), "case %d: max |diff| %g (max |logit| %g)", ci, maxd,
                  maxa);
        for (int i = 0; i < B - 1; i++) CHECK_EQ_INT(draft[i], td_argmax(want + (size_t)i * V, V));
        /* drafting twice gives the same (the block rows are scratch) */
        int32_t again[32];
        CHECK(td_dflash_draft(cx, anchor, B, &sp, NULL, again, NULL, NULL, &err) == TD_OK);
        CHECK(!memcmp(draft, again, (size_t)(B - 1) * sizeof *draft));
        if (getenv("TD_TEST_VERBOSE")) printf("    case %d: max diff %g\n", ci, maxd);
        free(got);
        free(feat);
        free(want);
        td_dflash_ctx_destroy(&cx);
    }
    cJSON_Delete(cases);
    s_close(&f);
}

/* The verifier's own hidden states (td_batch_t.hidden_layers) equal the fixture's HF features to
 * bf16 rounding: the layer convention of the features matches training's. */
TD_TEST(verifier_features_match_hf) {
    fx_t f;
    if (!s_open(&f)) return;
    cJSON *cases = s_cases();
    REQUIRE(cases);
    const cJSON *cs = cJSON_GetArrayItem(cJSON_GetObjectItem(cases, "cases"), 1);
    const cJSON *toks = cJSON_GetObjectItem(cs, "tokens");
    int n = cJSON_GetArraySize(toks), FD = td_dflash_feature_dim(f.d);
    size_t nf = 0;
    float *want = s_read_f32(cJSON_GetObjectItem(cs, "features")->valuestring, &nf);
    REQUIRE(want);
    int32_t ids[64];
    for (int i = 0; i < n - 1; i++) ids[i] = cJSON_GetArrayItem(toks, i)->valueint;
    td_err_t err = {0};
    td_kv_cache_t *kv = td_kv_cache_new(f.m, 1, 64, &err);
    REQUIRE(kv);
    const td_dflash_config_t *c = td_dflash_config(f.d);
    float *got = calloc((size_t)(n - 1) * FD, sizeof *got);
    td_batch_t b = {.n = n - 1,
                    .tokens = ids,
                    .attn = TD_ATTN_CAUSAL,
                    .hidden_layers = c->target_layers,
                    .n_hidden_layers = c->n_target_layers,
                    .hidden_out = got};
    REQUIRE(td_model_forward(f.m, kv, &b, NULL, &err) == TD_OK);
    td_feature_round(got, (int64_t)(n - 1) * FD, TD_FEATURE_BF16);
    int bad = 0;
    for (size_t i = 0; i < nf; i++)
        if (fabs(got[i] - want[i]) > 1e-2 * (1 + fabs(want[i]))) bad++;
    CHECK_MSG(bad == 0, "%d of %zu feature values differ from HF's beyond bf16 rounding", bad, nf);
    free(got);
    free(want);
    td_kv_cache_destroy(&kv);
    cJSON_Delete(cases);
    s_close(&f);
}

TD_TEST(context_overflow_refused) {
    fx_t f;
    if (!s_open(&f)) return;
    td_err_t err = {0};
    CHECK(!td_dflash_ctx_new(f.d, 4, &err)); /* smaller than a block */
    td_dflash_ctx_t *cx = td_dflash_ctx_new(f.d, 16, &err);
    REQUIRE(cx);
    float *feat = calloc((size_t)16 * td_dflash_feature_dim(f.d), sizeof *feat);
    CHECK(td_dflash_ctx_append(cx, feat, 9, &err) == TD_ERR_ARG); /* 9 + block 8 > 16 */
    CHECK_EQ_INT(td_dflash_ctx_len(cx), 0);
    CHECK(td_dflash_ctx_append(cx, feat, 8, &err) == TD_OK);
    int32_t draft[16];
    td_sampling_t sp = {0};
    CHECK(td_dflash_draft(cx, 1, 9, &sp, NULL, draft, NULL, NULL, &err) == TD_ERR_ARG);
    CHECK(td_dflash_draft(cx, 1, 8, &sp, NULL, draft, NULL, NULL, &err) == TD_OK);
    free(feat);
    td_dflash_ctx_destroy(&cx);
    s_close(&f);
}

TD_TEST(feature_round) {
    float x[3] = {1.0f + 1.0f / 1024, 3.14159265f, -2.5e-3f};
    td_feature_round(x, 3, TD_FEATURE_BF16);
    CHECK(x[0] == 1.0f);
    CHECK(x[1] == 3.140625f);
    float y[1] = {1.0f + 1.0f / 4096};
    td_feature_round(y, 1, TD_FEATURE_F16);
    CHECK(y[0] == 1.0f);
}

TD_TEST_MAIN()
