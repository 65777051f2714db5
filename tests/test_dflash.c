/* test_dflash.c - the DFlash drafter (drafter/dflash.c) and method `dflash`.
 *
 * The forward is checked against tools/make_dflash_fixture.py's float64 reference (a random-init
 * drafter on the bundled tiny verifier, tests/data/dflash): the context features stored there
 * (HF hidden states, bf16-rounded) go in, the logits must match to ~1e-4; the features tandem's
 * own verifier forward computes must match HF's to bf16 precision. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bridge/pair.h"
#include "drafter/dflash.h"
#include "drafter/service.h"
#include "engine/method.h"
#include "verifier/driver.h"
#include "verifier/link.h"
#include "tests/tdstats.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "protocol/wire.h"
#include "tests/tdmodel.h"
#include "tests/tdtest.h"
#include "tests/tdproc.h"

static const char *s_tiny = "models/tiny-verifier";

typedef struct fx {
    td_backend_t *be;
    td_model_t *m;
    td_dflash_t *d;
    uint64_t fp;
    char dir[512];
    cJSON *cases; /* dflash/cases.json: the reference cases */
} fx_t;

static cJSON *s_cases(void) {
    char path[1024], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/dflash/cases.json", td_test_data());
    if (td_read_file(path, &text, &len, NULL) != TD_OK) return NULL;
    cJSON *o = cJSON_ParseWithLength(text, len);
    free(text);
    return o;
}

static void s_close(fx_t *f) {
    cJSON_Delete(f->cases);
    td_dflash_destroy(&f->d);
    td_model_destroy(&f->m);
    td_backend_destroy(&f->be);
}

/* The tiny verifier, the fixture's drafter for it, and the reference cases. */
static int s_open(fx_t *f) {
    memset(f, 0, sizeof *f);
    td_err_t err = {0};
    snprintf(f->dir, sizeof f->dir, "%s/dflash/drafter", td_test_data());
    if (!(f->m = td_test_load_cpu(s_tiny, 1, 0, &f->be))) return 0;
    if (td_checkpoint_fingerprint(s_tiny, &f->fp, &err) == TD_OK)
        f->d = td_dflash_load(f->dir, f->m, f->fp, 0, &err);
    if (f->d) f->cases = s_cases();
    if (!f->cases) {
        td_test_fail(__FILE__, __LINE__, "setup: %s",
                     f->d ? "dflash/cases.json unreadable" : err.msg);
        s_close(f);
        return 0;
    }
    return 1;
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

/* The C forward of drafter d against the reference logits under key (every case), features from
 * the fixture. */
static void s_check_cases(fx_t *f, td_dflash_t *d, const char *key) {
    const cJSON *arr = cJSON_GetObjectItem(f->cases, "cases");
    int nc = cJSON_GetArraySize(arr);
    CHECK(nc >= 3);
    const int V = td_model_config(f->m)->n_vocab, FD = td_dflash_feature_dim(d);
    for (int ci = 0; ci < nc; ci++) {
        const cJSON *cs = cJSON_GetArrayItem(arr, ci);
        const cJSON *toks = cJSON_GetObjectItem(cs, "tokens");
        int n = cJSON_GetArraySize(toks), B = cJSON_GetObjectItem(cs, "block")->valueint;
        size_t nf = 0, nl = 0;
        float *feat = s_read_f32(cJSON_GetObjectItem(cs, "features")->valuestring, &nf);
        float *want = s_read_f32(cJSON_GetObjectItem(cs, key)->valuestring, &nl);
        REQUIRE(feat && want);
        CHECK_EQ_INT(nf, (size_t)(n - 1) * FD);
        CHECK_EQ_INT(nl, (size_t)(B - 1) * V);
        td_err_t err = {0};
        td_dflash_ctx_t *cx = td_dflash_ctx_new(d, 64, &err);
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
        CHECK_MSG(maxd < 1e-4 * (1 + maxa), "%s case %d: max |diff| %g (max |logit| %g)", key, ci,
                  maxd, maxa);
        for (int i = 0; i < B - 1; i++) CHECK_EQ_INT(draft[i], td_argmax(want + (size_t)i * V, V));
        /* drafting twice gives the same (the block rows are scratch) */
        int32_t again[32];
        CHECK(td_dflash_draft(cx, anchor, B, &sp, NULL, again, NULL, NULL, &err) == TD_OK);
        CHECK(!memcmp(draft, again, (size_t)(B - 1) * sizeof *draft));
        if (getenv("TD_TEST_VERBOSE")) printf("    %s case %d: max diff %g\n", key, ci, maxd);
        free(got);
        free(feat);
        free(want);
        td_dflash_ctx_destroy(&cx);
    }
}

TD_TEST(forward_matches_reference) {
    fx_t f;
    if (!s_open(&f)) return;
    s_check_cases(&f, f.d, "logits");
    s_close(&f);
}

/* Writes dir/config.json: the fixture drafter's config with key = extra (JSON text; NULL: as
 * it is), then parses it (td_dflash_config_load's result). */
static int s_config_with(const char *dir, const char *key, const char *extra, td_dflash_config_t *c,
                         td_err_t *err) {
    char src[1024], dst[1024], *text = NULL;
    size_t len = 0;
    snprintf(src, sizeof src, "%s/dflash/drafter/config.json", td_test_data());
    if (td_read_file(src, &text, &len, err) != TD_OK) return -1;
    cJSON *o = cJSON_ParseWithLength(text, len);
    free(text);
    if (extra) cJSON_AddItemToObject(o, key, cJSON_Parse(extra));
    char *out = cJSON_Print(o);
    cJSON_Delete(o);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    FILE *fp = fopen(dst, "w");
    if (fp) fputs(out, fp), fclose(fp);
    free(out);
    return td_dflash_config_load(dir, c, err);
}

/* config "anchor_feature": true (the same weights): every block row starts as its embedding plus
 * the last context row; against the reference's logits for that variant. */
TD_TEST(anchor_feature_matches_reference) {
    fx_t f;
    if (!s_open(&f)) return;
    char dir[] = "/tmp/td_dflash_afXXXXXX", src[1200], path[1300];
    REQUIRE(mkdtemp(dir));
    td_dflash_config_t cf;
    td_err_t err = {0};
    REQUIRE(s_config_with(dir, "anchor_feature", "true", &cf, &err) == TD_OK);
    char real[1100];
    REQUIRE(realpath(f.dir, real));
    snprintf(src, sizeof src, "%s/model.safetensors", real);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    REQUIRE(symlink(src, path) == 0);
    td_dflash_t *d = td_dflash_load(dir, f.m, f.fp, 0, &err);
    CHECK_MSG(d, "%s", err.msg);
    if (d) {
        CHECK(td_dflash_config(d)->anchor_feature);
        s_check_cases(&f, d, "logits_anchor_feature");
        /* without context rows there is nothing to add: the plain drafter's block */
        td_dflash_ctx_t *c1 = td_dflash_ctx_new(d, 32, &err), *c0 = td_dflash_ctx_new(f.d, 32, &err);
        REQUIRE(c1 && c0);
        const int V = td_model_config(f.m)->n_vocab;
        float *l1 = malloc((size_t)7 * V * sizeof *l1), *l0 = malloc((size_t)7 * V * sizeof *l0);
        int32_t d1[8], d0[8];
        td_sampling_t sp = {0};
        CHECK(td_dflash_draft(c1, 42, 8, &sp, NULL, d1, NULL, l1, &err) == TD_OK);
        CHECK(td_dflash_draft(c0, 42, 8, &sp, NULL, d0, NULL, l0, &err) == TD_OK);
        CHECK(!memcmp(l1, l0, (size_t)7 * V * sizeof *l1));
        free(l1);
        free(l0);
        td_dflash_ctx_destroy(&c1);
        td_dflash_ctx_destroy(&c0);
        td_dflash_destroy(&d);
    }
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
    s_close(&f);
}

/* A drafter with a draft vocabulary (model.safetensors' draft_vocab): the listed ids get the
 * reference logits, every other id -inf, and the drafts are the argmax over the listed ids. */
TD_TEST(draft_vocab_scores_listed_ids) {
    fx_t f;
    if (!s_open(&f)) return;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/dflash/drafter-vocab", td_test_data());
    td_err_t err = {0};
    td_dflash_t *d = td_dflash_load(dir, f.m, f.fp, 0, &err);
    CHECK_MSG(d, "%s", err.msg);
    if (!d) {
        s_close(&f);
        return;
    }
    const int V = td_model_config(f.m)->n_vocab;
    const int n_sub = td_dflash_draft_vocab(d);
    CHECK(n_sub > V / 3 && n_sub < V / 2);
    CHECK_EQ_INT(td_dflash_draft_vocab(f.d), 0);
    const cJSON *arr = cJSON_GetObjectItem(f.cases, "cases");
    int changed = 0, kept = 0;
    for (int ci = 0; ci < cJSON_GetArraySize(arr); ci++) {
        const cJSON *cs = cJSON_GetArrayItem(arr, ci);
        const cJSON *toks = cJSON_GetObjectItem(cs, "tokens");
        int n = cJSON_GetArraySize(toks), B = cJSON_GetObjectItem(cs, "block")->valueint;
        size_t nf = 0, nl = 0;
        float *feat = s_read_f32(cJSON_GetObjectItem(cs, "features")->valuestring, &nf);
        float *want = s_read_f32(cJSON_GetObjectItem(cs, "logits")->valuestring, &nl);
        REQUIRE(feat && want);
        td_dflash_ctx_t *cx = td_dflash_ctx_new(d, 64, &err);
        REQUIRE(cx);
        REQUIRE(td_dflash_ctx_append(cx, feat, n - 1, &err) == TD_OK);
        float *got = malloc((size_t)(B - 1) * V * sizeof *got);
        int32_t draft[32];
        td_sampling_t sp = {0};
        REQUIRE(td_dflash_draft(cx, cJSON_GetArrayItem(toks, n - 1)->valueint, B, &sp, NULL, draft,
                                NULL, got, &err) == TD_OK);
        int listed = 0, bad = 0;
        for (int r = 0; r < B - 1; r++) {
            const float *g = got + (size_t)r * V, *w = want + (size_t)r * V;
            int best = -1;
            for (int i = 0; i < V; i++) {
                if (isinf(g[i]) && g[i] < 0) continue;
                listed += r == 0;
                if (fabs((double)g[i] - w[i]) > 1e-4 * (1 + fabs(w[i]))) bad++;
                if (best < 0 || w[i] > w[best]) best = i;
            }
            CHECK_EQ_INT(draft[r], best);
            int full = td_argmax(w, V);
            changed += best != full, kept += best == full;
        }
        CHECK_EQ_INT(listed, n_sub);
        CHECK_MSG(bad == 0, "case %d: %d listed logits differ from the reference", ci, bad);
        free(got);
        free(feat);
        free(want);
        td_dflash_ctx_destroy(&cx);
    }
    /* the fixture lists case 0's first argmax ids and two thirds of the rest are gone */
    CHECK(kept >= 3 && changed >= 3);
    td_dflash_destroy(&d);
    s_close(&f);
}

/* A malformed draft_vocab (ids out of order, an id outside the vocabulary, another dtype) is
 * refused at load with an error naming it: the fixture's drafter-vocab file with the tensor's bytes
 * or header edited in place (same lengths). */
static int s_bad_vocab(const char *dir, int how, td_model_t *m, uint64_t fp, td_err_t *err) {
    char src[1024], dst[1024], *data = NULL, *cfg = NULL;
    size_t len = 0, clen = 0;
    snprintf(src, sizeof src, "%s/dflash/drafter-vocab/model.safetensors", td_test_data());
    if (td_read_file(src, &data, &len, NULL) != TD_OK) return -1;
    snprintf(src, sizeof src, "%s/dflash/drafter-vocab/config.json", td_test_data());
    if (td_read_file(src, &cfg, &clen, NULL) != TD_OK) return -1;
    uint64_t hlen = 0;
    memcpy(&hlen, data, 8);
    cJSON *h = cJSON_ParseWithLength(data + 8, (size_t)hlen);
    const cJSON *off = cJSON_GetObjectItem(cJSON_GetObjectItem(h, "draft_vocab"), "data_offsets");
    int32_t *ids = (int32_t *)(void *)(data + 8 + hlen +
                                       (size_t)cJSON_GetArrayItem(off, 0)->valuedouble);
    const size_t n = ((size_t)cJSON_GetArrayItem(off, 1)->valuedouble -
                      (size_t)cJSON_GetArrayItem(off, 0)->valuedouble) / 4;
    cJSON_Delete(h);
    if (how == 0) { /* out of order */
        int32_t t = ids[0];
        ids[0] = ids[1], ids[1] = t;
    } else if (how == 1) { /* past the vocabulary */
        ids[n - 1] = 4096;
    } else { /* F32 instead of I32: the header entry of draft_vocab only */
        char *at = strstr(data + 8, "\"draft_vocab\"");
        char *dt = at ? strstr(at, "\"I32\"") : NULL;
        if (dt) dt[1] = 'F';
    }
    FILE *f;
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    if ((f = fopen(dst, "wb"))) fwrite(data, 1, len, f), fclose(f);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    if ((f = fopen(dst, "wb"))) fwrite(cfg, 1, clen, f), fclose(f);
    free(data);
    free(cfg);
    td_dflash_t *d = td_dflash_load(dir, m, fp, 0, err);
    int rc = d ? 0 : err->code;
    td_dflash_destroy(&d);
    return rc;
}

TD_TEST(draft_vocab_malformed_refused) {
    fx_t f;
    if (!s_open(&f)) return;
    char dir[] = "/tmp/td_dflash_bvXXXXXX", path[1100];
    REQUIRE(mkdtemp(dir));
    for (int how = 0; how < 3; how++) {
        td_err_t err = {0};
        int rc = s_bad_vocab(dir, how, f.m, f.fp, &err);
        CHECK_MSG(rc == TD_ERR_FORMAT, "case %d: load gave %d (%s)", how, rc, err.msg);
        CHECK_MSG(strstr(err.msg, "draft_vocab"), "case %d: %s", how, err.msg);
        if (getenv("TD_TEST_VERBOSE")) printf("    case %d: %s\n", how, err.msg);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
    s_close(&f);
}

/* A job that scores only rows 1..n_draft of its block gives bitwise those rows of the whole
 * block (the rows past n_draft still shape them: same block, fewer LM head rows). */
TD_TEST(n_draft_scores_leading_rows) {
    fx_t f;
    if (!s_open(&f)) return;
    const cJSON *cs = cJSON_GetArrayItem(cJSON_GetObjectItem(f.cases, "cases"), 0);
    const cJSON *toks = cJSON_GetObjectItem(cs, "tokens");
    int n = cJSON_GetArraySize(toks), B = cJSON_GetObjectItem(cs, "block")->valueint;
    const int V = td_model_config(f.m)->n_vocab;
    size_t nf = 0;
    float *feat = s_read_f32(cJSON_GetObjectItem(cs, "features")->valuestring, &nf);
    REQUIRE(feat && B >= 4);
    td_err_t err = {0};
    td_dflash_ctx_t *cx = td_dflash_ctx_new(f.d, 64, &err);
    REQUIRE(cx);
    REQUIRE(td_dflash_ctx_append(cx, feat, n - 1, &err) == TD_OK);
    int32_t anchor = cJSON_GetArrayItem(toks, n - 1)->valueint, all[32], some[32];
    float *lall = malloc((size_t)(B - 1) * V * sizeof *lall);
    td_sampling_t sp = {0};
    REQUIRE(td_dflash_draft(cx, anchor, B, &sp, NULL, all, NULL, lall, &err) == TD_OK);
    for (int k = 1; k < B; k++) {
        /* exactly k rows: a job that wrote more would overrun it (make check's ASan) */
        float *lsome = malloc((size_t)k * V * sizeof *lsome);
        td_dflash_job_t j = {.ctx = cx, .anchor = anchor, .block = B, .n_draft = k, .sp = &sp};
        j.draft = some, j.logits = lsome;
        CHECK_MSG(td_dflash_draft_many(&j, 1, &err) == TD_OK, "%s", err.msg);
        CHECK_MSG(!memcmp(some, all, (size_t)k * sizeof *all), "n_draft %d: tokens differ", k);
        CHECK_MSG(!memcmp(lsome, lall, (size_t)k * V * sizeof *lall), "n_draft %d: logits differ",
                  k);
        free(lsome);
    }
    td_dflash_job_t bad = {.ctx = cx, .anchor = anchor, .block = B, .n_draft = B, .sp = &sp};
    bad.draft = some;
    CHECK(td_dflash_draft_many(&bad, 1, &err) == TD_ERR_ARG);
    free(lall);
    free(feat);
    td_dflash_ctx_destroy(&cx);
    s_close(&f);
}

/* config.json's optional block_sizes: the blocks a drafter was trained for; a draft runs in the
 * smallest that holds it. Malformed lists are refused by name. */
TD_TEST(block_sizes) {
    char dir[] = "/tmp/td_dflash_bsXXXXXX";
    REQUIRE(mkdtemp(dir));
    td_dflash_config_t c;
    td_err_t err = {0};
    REQUIRE(s_config_with(dir, "block_sizes", NULL, &c, &err) == TD_OK); /* no list: {block_size} = {8} */
    CHECK_EQ_INT(c.n_block_sizes, 1);
    CHECK_EQ_INT(td_dflash_block_for(&c, 1), 8);
    CHECK_EQ_INT(td_dflash_block_for(&c, 7), 8);
    CHECK_EQ_INT(td_dflash_block_for(&c, 12), 13);
    REQUIRE(s_config_with(dir, "block_sizes", "[4, 8, 16]", &c, &err) == TD_OK);
    CHECK_EQ_INT(c.n_block_sizes, 3);
    const int want[17] = {0, 4, 4, 4, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16, 16, 17};
    for (int g = 1; g <= 16; g++) CHECK_EQ_INT(td_dflash_block_for(&c, g), want[g]);
    const char *bad[] = {"[8, 4]", "[1, 8]", "[]", "\"8\"", "[4, 4.5]", "[2,3,4,5,6,7,8,9,10]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_MSG(s_config_with(dir, "block_sizes", bad[i], &c, &err) == TD_ERR_FORMAT,
                  "%s accepted", bad[i]);
        CHECK_MSG(strstr(err.msg, "block_sizes"), "%s: %s", bad[i], err.msg);
    }
    /* anchor_feature: a boolean or absent */
    CHECK_EQ_INT(c.anchor_feature, 0);
    REQUIRE(s_config_with(dir, "anchor_feature", "true", &c, &err) == TD_OK);
    CHECK_EQ_INT(c.anchor_feature, 1);
    CHECK(s_config_with(dir, "anchor_feature", "1", &c, &err) == TD_ERR_FORMAT);
    CHECK_MSG(strstr(err.msg, "anchor_feature"), "%s", err.msg);
    char path[1100];
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

/* The verifier's own hidden states (td_batch_t.hidden_layers) equal the fixture's HF features to
 * bf16 rounding: the layer convention of the features matches training's. */
TD_TEST(verifier_features_match_hf) {
    fx_t f;
    if (!s_open(&f)) return;
    const cJSON *cs = cJSON_GetArrayItem(cJSON_GetObjectItem(f.cases, "cases"), 1);
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

/* ---- method dflash end to end (in-process drafter over inproc://) ---------------------------- */

static const int32_t s_prompts[3][8] = {{35, 279, 223, 41, 81, 70, 282, 67},
                                        {1000, 17, 3000, 45, 9, 2048, 77, 5},
                                        {12, 13, 14, 15, 16, 17, 18, 19}};

static int s_pair(td_pair_t *pair, const char *drafter) {
    td_err_t err = {0};
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
    char dir[512];
    snprintf(dir, sizeof dir, "%s/dflash/drafter", td_test_data());
    int rc = td_pair_open(pair, s_tiny, drafter ? drafter : dir, &po, &err);
    if (rc != TD_OK) {
        td_test_fail(__FILE__, __LINE__, "pair: %s", err.msg);
        td_pair_close(pair);
    }
    return rc == TD_OK;
}

static int s_run(td_pair_t *pair, td_method_t m, td_run_params_t *p, const int32_t *prompt, int np,
                 uint64_t session, int32_t *out, td_run_stats_t *st) {
    td_run_ctx_t c = {.verifier = pair->verifier,
                      .dc = pair->dc,
                      .hello = &pair->hello,
                      .drafter_hello = td_pair_drafter_hello(pair),
                      .session = session};
    td_err_t err = {0};
    int rc = td_method_run(m, &c, p, prompt, np, out, st, &err);
    if (rc != TD_OK) td_test_fail(__FILE__, __LINE__, "%s: %s", td_method_name(m), err.msg);
    return rc;
}

TD_TEST(greedy_equals_ar) {
    td_pair_t pair;
    if (!s_pair(&pair, NULL)) return;
    CHECK(td_hello_has_capability(td_pair_drafter_hello(&pair), "dflash"));
    CHECK_EQ_INT(td_pair_drafter_hello(&pair)->block_size, 8);
    int gammas[] = {7, 15, 3};
    long drafted = 0, accepted = 0, rounds = 0;
    /* TD_TEST_LIGHT (sanitizers): shorter generations */
    const int nt = getenv("TD_TEST_LIGHT") ? 16 : 40;
    for (int pi = 0; pi < 3; pi++) {
        td_run_params_t pa = td_run_params_default(TD_METHOD_AR);
        pa.max_tokens = nt;
        int32_t ref[64], got[64];
        td_run_stats_t sa, sd;
        REQUIRE(s_run(&pair, TD_METHOD_AR, &pa, s_prompts[pi], 8, 1, ref, &sa) == TD_OK);
        for (int gi = 0; gi < 3; gi++) {
            td_run_params_t pd = td_run_params_default(TD_METHOD_DFLASH);
            pd.max_tokens = nt;
            pd.gamma = gammas[gi];
            REQUIRE(s_run(&pair, TD_METHOD_DFLASH, &pd, s_prompts[pi], 8, 2 + gi, got, &sd) ==
                    TD_OK);
            CHECK_EQ_INT(sd.s.generated, sa.s.generated);
            CHECK_MSG(!memcmp(ref, got, (size_t)sa.s.generated * sizeof *ref),
                      "prompt %d gamma %d: dflash differs from ar", pi, gammas[gi]);
            CHECK_EQ_INT(sd.s.fallbacks, 0);
            CHECK(sd.s.rounds > 0);
            CHECK(sd.s.feature_bytes > 0);
            drafted += sd.s.drafted, accepted += sd.s.accepted, rounds += sd.s.rounds;
        }
    }
    /* the default gamma is the drafter's block size - 1 */
    td_run_params_t pd = td_run_params_default(TD_METHOD_DFLASH);
    pd.max_tokens = 8;
    int32_t got[16];
    td_run_stats_t sd;
    REQUIRE(s_run(&pair, TD_METHOD_DFLASH, &pd, s_prompts[0], 8, 9, got, &sd) == TD_OK);
    CHECK(sd.s.rounds > 0 && sd.s.drafted_by_position[6] >= 1 && sd.s.drafted_by_position[7] == 0);
    if (getenv("TD_TEST_VERBOSE"))
        printf("    random drafter: %ld of %ld drafts accepted in %ld rounds\n", accepted, drafted,
               rounds);
    td_pair_close(&pair);
}

/* Sampled output is exact: seeded 2-token generations, chi-square of the (t1, t2) joint against
 * the verifier's exact joint. Negative control (the test's power at this sample size): the same
 * histogram against the joint at another temperature must be rejected. The random drafter's
 * drafts are (nearly) always rejected, so this exercises the rejection and residual path, not
 * acceptance; greedy_equals_ar and the trained drafter cover acceptance. */
TD_TEST(sampled_exact_chisq) {
    td_pair_t pair;
    if (!s_pair(&pair, NULL)) return;
    /* TD_TEST_LIGHT (make check: sanitizers, ~20x slower): fewer, still well above the control */
    const int n_gen = getenv("TD_TEST_LIGHT") ? 120 : 2000;
    td_sampling_t sp = {.temperature = 1.0f, .top_k = 4, .top_p = 1.0f};
    td_sampling_t wrong = {.temperature = 0.6f, .top_k = 4, .top_p = 1.0f};
    int32_t t1s[16], t2s[16], w1[16], w2[16];
    double pj[17], pw[17];
    int cells = 0, wcells = 0;
    td_exact_joint2(pair.verifier, &sp, s_prompts[0], 8, t1s, t2s, pj, &cells);
    td_exact_joint2(pair.verifier, &wrong, s_prompts[0], 8, w1, w2, pw, &wcells);
    REQUIRE(cells == 16 && wcells == 16);
    long obs[17] = {0}, drafted = 0, accepted = 0;
    for (int g = 0; g < n_gen; g++) {
        td_run_params_t p = td_run_params_default(TD_METHOD_DFLASH);
        p.max_tokens = 2;
        p.gamma = 3;
        p.sampling = sp;
        p.draft_sampling = sp;
        p.dist_top_k = 2; /* small: exercises the full-row fetch */
        p.seed = (uint64_t)g * 7919u + 11;
        int32_t out[4];
        td_run_stats_t st;
        if (s_run(&pair, TD_METHOD_DFLASH, &p, s_prompts[0], 8, 100 + (uint64_t)(g % 3), out,
                  &st) != TD_OK ||
            st.s.generated != 2 || st.s.fallbacks) {
            td_test_fail(__FILE__, __LINE__, "generation %d: %d tokens, %d fallbacks (%s)", g,
                         st.s.generated, st.s.fallbacks, st.s.last_fallback);
            break;
        }
        drafted += st.s.drafted, accepted += st.s.accepted;
        int cell = cells;
        for (int i = 0; i < cells; i++)
            if (t1s[i] == out[0] && t2s[i] == out[1]) cell = i;
        obs[cell]++;
    }
    pj[cells] = 0;
    double pv = td_chisq_pvalue(obs, pj, cells + 1, n_gen, NULL);
    /* the wrong joint over the same cells */
    double pwc[17] = {0};
    for (int i = 0; i < cells; i++)
        for (int j = 0; j < wcells; j++)
            if (w1[j] == t1s[i] && w2[j] == t2s[i]) pwc[i] = pw[j];
    double pvw = td_chisq_pvalue(obs, pwc, cells + 1, n_gen, NULL);
    printf("    dflash sampled: p-value %.4f (control at T=0.6: %.2g), acceptance %.3f\n", pv, pvw,
           drafted ? (double)accepted / drafted : 0.0);
    CHECK_MSG(pv > 1e-3, "chi-square rejects exactness (p = %.3g)", pv);
    CHECK_MSG(pvw < 1e-3, "control: the test cannot tell T=0.6 from T=1 (p = %.3g)", pvw);
    /* a random-init drafter almost never agrees with the verifier: this checks that every
     * generation went through the drafter's proposals and the rejection rule (with q rows from
     * the sparse dists and fetched full rows), not that acceptance is high */
    CHECK_MSG(drafted >= n_gen, "only %ld drafts in %d generations", drafted, n_gen);
    td_pair_close(&pair);
}

/* ---- the verifier's feature bookkeeping, with drafts that get accepted ------------------------
 * A scripted drafter (a server in a thread of this test, speaking the protocol as a dflash
 * drafter) proposes the verifier's own greedy continuation with one wrong token per round at a
 * rotating index, so rounds accept 0..gamma drafts. It records every feature row it receives by
 * position and checks the invariant (feature_start == rows held, rows up to base_len + delta - 2).
 * The rows must equal a fresh forward over the final text, bf16-rounded. */

#define FK_MAXPOS 256
typedef struct fake {
    td_server_t *srv;
    volatile int stop;
    const int32_t *cont; /* the verifier's greedy continuation after the prompt */
    int n_prompt, n_cont, fdim;
    float *rows; /* [FK_MAXPOS, fdim] */
    int held, bad_invariant, requests;
    uint64_t round;
} fake_t;

static void *s_fake_serve(void *arg) {
    fake_t *f = arg;
    td_hello_t hello;
    const char *caps[] = {"dflash"};
    uint32_t layers[] = {1, 3, 5};
    td_hello_fill(&hello, TD_ROLE_DRAFTER, "fake", 4096, -1, 0, "fake", caps, 1);
    hello.n_target_layers = 3, hello.target_layers = layers, hello.block_size = 8;
    while (!f->stop) {
        td_routing_id_t from;
        td_msg_t *req = NULL;
        td_err_t err = {0};
        if (td_server_recv(f->srv, &from, &req, 50, &err) != TD_RECV_OK) continue;
        if (req->body == TD_BODY_HELLO) {
            hello.tokenizer_hash = req->hello.tokenizer_hash;
            td_server_answer_hello(f->srv, &from, &hello, &req->hello, NULL);
        } else if (req->body == TD_BODY_DRAFT_REQUEST) {
            const td_draft_request_t *r = &req->draft_request;
            int n = (int)(r->base_len + r->n_prefix_delta);
            int rows = (int)(r->n_features / ((size_t)f->fdim * 2));
            if (r->base_len == 0) f->held = 0;
            if ((int)r->feature_start != f->held || (int)r->feature_start + rows != n - 1 ||
                r->feature_type != TD_FEATURE_BF16)
                f->bad_invariant++;
            const uint8_t *b = r->features;
            for (int i = 0; i < rows && r->feature_start + i < FK_MAXPOS; i++)
                for (int j = 0; j < f->fdim; j++) {
                    size_t k = (size_t)i * f->fdim + j;
                    f->rows[(size_t)(r->feature_start + i) * f->fdim + j] =
                        td_bf16_to_f32((uint16_t)(b[2 * k] | (b[2 * k + 1] << 8)));
                }
            f->held = n - 1;
            td_msg_t env;
            td_msg_init(&env, TD_BODY_PROPOSAL, req->session_id, req->round);
            uint32_t toks[256];
            int g = (int)r->gamma, wrong = (int)(f->requests % (uint64_t)(g + 1));
            for (int j = 0; j < g; j++) {
                int c = n - f->n_prompt + j;
                toks[j] = c < f->n_cont ? (uint32_t)f->cont[c] : 1;
                if (j == wrong) toks[j] = (toks[j] + 1) % 4096; /* wrong == g: all right */
            }
            f->requests++;
            env.proposal.n_tokens = (size_t)g, env.proposal.tokens = toks;
            td_server_send(f->srv, &from, &env, NULL);
        }
        td_msg_free(&req);
    }
    return NULL;
}

TD_TEST(features_of_accepted_rows) {
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    td_model_t *v = be ? td_model_load(s_tiny, be, &err) : NULL;
    REQUIRE(v);
    const int NP = 8, NT = 40, FD = 3 * 256;
    /* the reference: ar greedy */
    td_run_params_t pa = td_run_params_default(TD_METHOD_AR);
    pa.max_tokens = NT;
    int32_t ref[64], got[64];
    td_run_stats_t sa, sd;
    td_run_ctx_t ca = {.verifier = v};
    REQUIRE(td_method_run(TD_METHOD_AR, &ca, &pa, s_prompts[1], NP, ref, &sa, &err) == TD_OK);
    fake_t f = {.cont = ref, .n_prompt = NP, .n_cont = sa.s.generated, .fdim = FD};
    f.rows = calloc((size_t)FK_MAXPOS * FD, sizeof *f.rows);
    char ep[128];
    snprintf(ep, sizeof ep, "inproc://td-fake-dflash-%d", (int)getpid());
    f.srv = td_server_new(ep, NULL, &err);
    REQUIRE(f.srv);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, s_fake_serve, &f) == 0);
    td_client_t *dc = td_client_new(ep, NULL, &err);
    td_hello_t ours;
    td_hello_fill(&ours, TD_ROLE_VERIFIER, "v", 4096, -1, 0, "v", NULL, 0);
    td_msg_t *ack = NULL;
    int rc = dc ? td_client_handshake(dc, &ours, &ack, 5000, &err) : TD_ERR;
    CHECK_MSG(rc == TD_OK, "handshake: %s", err.msg);
    if (rc == TD_OK) {
        td_run_params_t pd = td_run_params_default(TD_METHOD_DFLASH);
        pd.max_tokens = NT;
        pd.gamma = 5;
        td_run_ctx_t c = {.verifier = v,
                          .dc = dc,
                          .hello = &ours,
                          .drafter_hello = &ack->hello_ack.hello,
                          .session = 7};
        rc = td_method_run(TD_METHOD_DFLASH, &c, &pd, s_prompts[1], NP, got, &sd, &err);
        CHECK_MSG(rc == TD_OK, "dflash: %s", err.msg);
        CHECK_EQ_INT(sd.s.generated, sa.s.generated);
        CHECK(!memcmp(got, ref, (size_t)sa.s.generated * sizeof *ref));
        CHECK_EQ_INT(sd.s.fallbacks, 0);
        CHECK_EQ_INT(f.bad_invariant, 0);
        /* accepted 0..gamma per round: some rounds accepted several drafts */
        CHECK_MSG(sd.s.accepted >= sd.s.rounds, "accepted %d in %d rounds", sd.s.accepted,
                  sd.s.rounds);
        CHECK(sd.s.accepted_by_position[4] > 0);
        /* every position the drafter holds: equal to a fresh forward of the final text */
        int32_t text[128];
        memcpy(text, s_prompts[1], NP * sizeof *text);
        memcpy(text + NP, got, (size_t)sd.s.generated * sizeof *text);
        int held = f.held;
        CHECK(held >= NP + sd.s.generated - 1 - 5);
        td_kv_cache_t *kv = td_kv_cache_new(v, 1, 128, &err);
        float *want = calloc((size_t)held * FD, sizeof *want);
        int layers[] = {1, 3, 5};
        td_batch_t b = {.n = held, .tokens = text, .attn = TD_ATTN_CAUSAL};
        b.hidden_layers = layers, b.n_hidden_layers = 3, b.hidden_out = want;
        REQUIRE(td_model_forward(v, kv, &b, NULL, &err) == TD_OK);
        td_feature_round(want, (int64_t)held * FD, TD_FEATURE_BF16);
        int bad = 0, first = -1;
        for (int pI = 0; pI < held; pI++)
            for (int j = 0; j < FD; j++) {
                float a = f.rows[(size_t)pI * FD + j], w = want[(size_t)pI * FD + j];
                if (fabsf(a - w) > 1e-2f * (1 + fabsf(w))) {
                    bad++;
                    if (first < 0) first = pI;
                }
            }
        CHECK_MSG(bad == 0, "%d feature values differ (first at position %d of %d)", bad, first,
                  held);
        free(want);
        td_kv_cache_destroy(&kv);
    }
    f.stop = 1;
    pthread_join(th, NULL);
    td_msg_free(&ack);
    td_client_destroy(&dc);
    td_server_destroy(&f.srv);
    free(f.rows);
    td_model_destroy(&v);
    td_backend_destroy(&be);
}

/* ---- two processes: tandem-drafter --model <dflash dir> --target <file> over ipc:// -----------
 */

static pid_t s_spawn(const char *ep, const char *target, int any) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/dflash/drafter", td_test_data());
    const char *extra[] = {"--target", target, any ? "--dflash-any-target" : NULL, NULL};
    return td_test_spawn_worker("tandem-drafter", dir, ep, extra);
}

static void s_kill(pid_t pid) { td_test_stop(pid, SIGKILL); }

/* td_pair_open against an endpoint, retrying while the worker starts. */
static int s_open_ep(td_pair_t *pair, const char *vdir, const char *ep, td_err_t *err) {
    td_pair_opts_t po = {
        .device = -1, .drafter_device = -1, .threads = 1, .timeout_ms = 500, .dflash = 1};
    for (int i = 0; i < 50; i++) {
        if (td_pair_open(pair, vdir, ep, &po, err) == TD_OK) return TD_OK;
        td_pair_close(pair);
        if (strstr(err->msg, "refused")) return TD_ERR;
        usleep(100 * 1000);
    }
    return TD_ERR;
}

typedef struct killer {
    pid_t pid;
    int n, kill_at;
} killer_t;

static int s_kill_cb(void *ud, int32_t id) {
    (void)id;
    killer_t *k = ud;
    if (++k->n == k->kill_at) s_kill(k->pid), k->pid = 0;
    return 0;
}

TD_TEST(ipc_equals_inproc_and_faults) {
    char tmp[] = "/tmp/td_dflash_XXXXXX", ep[128];
    REQUIRE(mkdtemp(tmp));
    snprintf(ep, sizeof ep, "ipc://%s/d.sock", tmp);
    pid_t pid = s_spawn(ep, s_tiny, 0);
    td_pair_t ipc, inp;
    td_err_t err = {0};
    int ok = s_open_ep(&ipc, s_tiny, ep, &err) == TD_OK;
    CHECK_MSG(ok, "ipc pair: %s", err.msg);
    if (ok && s_pair(&inp, NULL)) {
        for (int mode = 0; mode < 2; mode++) { /* greedy, then sampled with a seed */
            td_run_params_t p = td_run_params_default(TD_METHOD_DFLASH);
            p.max_tokens = 30;
            if (mode) {
                p.sampling = (td_sampling_t){.temperature = 0.9f, .top_k = 0, .top_p = 1.0f};
                p.draft_sampling = p.sampling;
                p.seed = 1234;
            }
            int32_t a[64], b[64];
            td_run_stats_t sa, sb;
            REQUIRE(s_run(&ipc, TD_METHOD_DFLASH, &p, s_prompts[2], 8, 41, a, &sa) == TD_OK);
            REQUIRE(s_run(&inp, TD_METHOD_DFLASH, &p, s_prompts[2], 8, 42, b, &sb) == TD_OK);
            CHECK_EQ_INT(sa.s.generated, sb.s.generated);
            CHECK_MSG(!memcmp(a, b, (size_t)sa.s.generated * sizeof *a),
                      "mode %d: ipc and inproc outputs differ", mode);
            CHECK_EQ_INT(sa.s.drafted, sb.s.drafted);
            CHECK_EQ_INT(sa.s.fallbacks, 0);
            CHECK(sa.s.feature_bytes == sb.s.feature_bytes && sa.s.feature_bytes > 0);
        }
        /* the drafter killed mid-generation: the rest runs as AR, output still equal to ar */
        td_run_params_t pa = td_run_params_default(TD_METHOD_AR);
        pa.max_tokens = 30;
        int32_t ref[64], got[64];
        td_run_stats_t sr, sg;
        REQUIRE(s_run(&inp, TD_METHOD_AR, &pa, s_prompts[0], 8, 1, ref, &sr) == TD_OK);
        td_run_params_t pd = td_run_params_default(TD_METHOD_DFLASH);
        pd.max_tokens = 30;
        pd.drafter_timeout_ms = 300;
        killer_t k = {.pid = pid, .kill_at = 10};
        td_run_ctx_t c = {.verifier = ipc.verifier,
                          .dc = ipc.dc,
                          .hello = &ipc.hello,
                          .drafter_hello = td_pair_drafter_hello(&ipc),
                          .session = 77,
                          .cb = s_kill_cb,
                          .ud = &k};
        REQUIRE(td_method_run(TD_METHOD_DFLASH, &c, &pd, s_prompts[0], 8, got, &sg, &err) == TD_OK);
        pid = k.pid;
        CHECK_EQ_INT(sg.s.generated, sr.s.generated);
        CHECK(!memcmp(got, ref, (size_t)sr.s.generated * sizeof *ref));
        CHECK_MSG(sg.s.fallbacks > 0, "no fallback after the drafter died");
        td_pair_close(&inp);
    }
    if (ok) td_pair_close(&ipc);
    s_kill(pid);
    CHECK(td_test_rmtree(tmp) == 0);
}

/* A verifier whose weights differ by one byte has another fingerprint: the drafter refuses the
 * handshake naming both; with --dflash-any-target it accepts. */
TD_TEST(handshake_refuses_other_target) {
    char tmp[] = "/tmp/td_dflash_XXXXXX", ep[128], vdir[256], cmd[600];
    REQUIRE(mkdtemp(tmp));
    snprintf(ep, sizeof ep, "ipc://%s/d.sock", tmp);
    snprintf(vdir, sizeof vdir, "%s/v", tmp);
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp -r %s/. %s/", vdir, s_tiny, vdir);
    REQUIRE(system(cmd) == 0);
    REQUIRE(td_test_flip_byte(vdir, "model.safetensors", 3) == 0);
    uint64_t fa = 0, fb = 0;
    td_err_t err = {0};
    REQUIRE(td_checkpoint_fingerprint(s_tiny, &fa, &err) == TD_OK);
    REQUIRE(td_checkpoint_fingerprint(vdir, &fb, &err) == TD_OK);
    pid_t pid = s_spawn(ep, s_tiny, 0);
    td_pair_t pair;
    CHECK(s_open_ep(&pair, vdir, ep, &err) != TD_OK);
    char a[32], b[32];
    snprintf(a, sizeof a, "0x%016llx", (unsigned long long)fa);
    snprintf(b, sizeof b, "0x%016llx", (unsigned long long)fb);
    CHECK_MSG(strstr(err.msg, a) && strstr(err.msg, b), "refusal names both: %s", err.msg);
    s_kill(pid);
    /* in-process: refused at construction, naming both */
    td_pair_opts_t po = {.device = -1, .drafter_device = -1, .threads = 1};
    char dd[512];
    snprintf(dd, sizeof dd, "%s/dflash/drafter", td_test_data());
    CHECK(td_pair_open(&pair, vdir, dd, &po, &err) != TD_OK);
    CHECK_MSG(strstr(err.msg, a) && strstr(err.msg, b), "in-process refusal: %s", err.msg);
    td_pair_close(&pair);
    po.dflash_any_target = 1;
    CHECK_MSG(td_pair_open(&pair, vdir, dd, &po, &err) == TD_OK, "any target: %s", err.msg);
    td_pair_close(&pair);
    CHECK(td_test_rmtree(tmp) == 0);
}

/* Feature payloads the drafter must refuse, each changing nothing: a size that is not whole rows
 * (ERROR_MALFORMED), rows that do not reach the text's end (ERROR_MALFORMED), a feature_start
 * other than the rows it holds (ERROR_OUT_OF_ORDER); then a good request still works. */
TD_TEST(malformed_features_refused) {
    td_pair_t pair;
    if (!s_pair(&pair, NULL)) return;
    td_client_t *dc = pair.dc;
    const int FD = 3 * 256;
    float *feat = calloc((size_t)16 * FD, sizeof *feat);
    int32_t text[8];
    memcpy(text, s_prompts[0], sizeof text);
    struct {
        int base, n_delta, rows, start, cut, code;
    } cases[] = {
        {0, 8, 7, 0, 2, TD_PERR_MALFORMED},    /* 2 bytes short */
        {0, 8, 6, 0, 0, TD_PERR_MALFORMED},    /* a row missing */
        {0, 8, 7, 1, 0, TD_PERR_OUT_OF_ORDER}, /* starts at 1, holds none */
        {0, 8, 7, 0, 0, 0},                    /* good */
        {8, 0, 0, 7, 0, 0},                    /* nothing new: fine */
        {8, 0, 1, 6, 0, TD_PERR_OUT_OF_ORDER}, /* rewrites a held row */
    };
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        td_draft_args_t a = {.session = 555,
                             .round = (uint64_t)i + 1,
                             .base_len = cases[i].base,
                             .delta = text + cases[i].base,
                             .n_delta = cases[i].n_delta,
                             .gamma = 3,
                             .steps = 1,
                             .top_p = 1,
                             .features = feat,
                             .feature_rows = cases[i].rows,
                             .feature_dim = FD,
                             .feature_start = cases[i].start,
                             .feature_type = TD_FEATURE_BF16};
        td_err_t err = {0};
        if (cases[i].cut) { /* a payload that is not whole rows: one value fewer */
            a.feature_rows = 1;
            a.feature_dim = cases[i].rows * FD - 1;
        }
        REQUIRE(td_client_send_draft_request(dc, &a, &err) == TD_OK);
        td_msg_t *ans = NULL;
        for (;;) {
            REQUIRE(td_client_recv(dc, &ans, 5000, &err) == TD_RECV_OK);
            if (ans->body != TD_BODY_HEARTBEAT) break;
            td_msg_free(&ans);
        }
        if (cases[i].code) {
            CHECK_MSG(ans->body == TD_BODY_ERROR && ans->error.code == cases[i].code,
                      "case %d: expected error %d, got %s", i, cases[i].code,
                      td_msg_body_name(ans->body));
        } else {
            CHECK_MSG(ans->body == TD_BODY_PROPOSAL, "case %d: got %s (%s)", i,
                      td_msg_body_name(ans->body),
                      ans->body == TD_BODY_ERROR ? ans->error.message : "");
        }
        td_msg_free(&ans);
    }
    free(feat);
    td_pair_close(&pair);
}

/* The wire rules of the new fields (td_wire_validate). */
TD_TEST(wire_validation) {
    Tandem__Envelope env;
    Tandem__DraftRequest r;
    Tandem__Sampling smp = TANDEM__SAMPLING__INIT;
    td_wire_draft_request_init(&env, &r, 9, 1);
    uint32_t delta[4] = {1, 2, 3, 4};
    uint8_t feat[6] = {0};
    r.n_prefix_delta = 4, r.prefix_delta = delta, r.gamma = 3, r.steps = 1, r.sampling = &smp;
    smp.top_p = 1;
    r.features.data = feat, r.features.len = 6;
    r.feature_type = TANDEM__FEATURE_TYPE__FEATURE_BF16;
    td_err_t err = {0};
    CHECK(td_wire_validate(&env, NULL, &err) == TD_OK);
    r.features.len = 5; /* not 16-bit values */
    CHECK(td_wire_validate(&env, NULL, &err) == TD_ERR_FORMAT);
    r.features.len = 6;
    r.feature_type = (Tandem__FeatureType)7;
    CHECK(td_wire_validate(&env, NULL, &err) == TD_ERR_FORMAT);
    r.feature_type = TANDEM__FEATURE_TYPE__FEATURE_NONE; /* bytes without a type */
    CHECK(td_wire_validate(&env, NULL, &err) == TD_ERR_FORMAT);
    r.feature_type = TANDEM__FEATURE_TYPE__FEATURE_F16;
    r.feature_start = 5; /* past the text of 4 tokens */
    CHECK(td_wire_validate(&env, NULL, &err) == TD_ERR_FORMAT);
    r.feature_start = 2;
    CHECK(td_wire_validate(&env, NULL, &err) == TD_OK);
    /* Hello: layer ids and block size */
    Tandem__Envelope he;
    Tandem__Hello h;
    td_wire_hello_init(&he, &h);
    td_wire_hello_fill(&h, TANDEM__ROLE__ROLE_DRAFTER, "d", 100, -1, 1, "t", NULL, 0);
    uint32_t layers[2] = {1, 0};
    h.n_target_layers = 2, h.target_layers = layers;
    CHECK(td_wire_validate(&he, NULL, &err) == TD_ERR_FORMAT); /* layer 0 */
    layers[1] = 3;
    CHECK(td_wire_validate(&he, NULL, &err) == TD_OK);
    h.block_size = 100000;
    CHECK(td_wire_validate(&he, NULL, &err) == TD_ERR_FORMAT);
    /* fingerprints: a shared value pairs, disjoint lists are refused naming both */
    h.block_size = 8;
    Tandem__Hello v;
    tandem__hello__init(&v);
    td_wire_hello_fill(&v, TANDEM__ROLE__ROLE_VERIFIER, "v", 100, -1, 1, "t", NULL, 0);
    uint64_t fd[2] = {0x1111, 0x2222}, fv[1] = {0x2222};
    h.n_target_fingerprints = 2, h.target_fingerprints = fd;
    v.n_target_fingerprints = 1, v.target_fingerprints = fv;
    CHECK(td_wire_hello_compatible(&h, &v, NULL, &err) == TD_OK);
    fv[0] = 0x3333;
    CHECK(td_wire_hello_compatible(&h, &v, NULL, &err) == TD_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "0x0000000000003333") && strstr(err.msg, "0x0000000000001111"), "%s",
              err.msg);
    v.n_target_fingerprints = 0; /* a verifier that lists none (not asked for dflash) */
    CHECK(td_wire_hello_compatible(&h, &v, NULL, &err) == TD_OK);
}

/* The commands: generate --method dflash in-process equals ar; bench runs a dflash row. */
/* `tandem generate --method ar` on the tiny verifier for the prompt the CLI cases use, parsed
 * (its --json output in out); NULL when it failed. */
static cJSON *s_ar_json(char *out, size_t cap) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s generate --verifier %s --method ar --prompt 'And God said' --max-tokens 16 "
             "--threads 1 --json 2>/dev/null",
             td_test_bin("tandem"), s_tiny);
    return td_test_run(cmd, out, cap) == 0 ? cJSON_Parse(out) : NULL;
}

TD_TEST(cli_generate_and_bench) {
    char cmd[2048], a[8192], b[8192];
    snprintf(cmd, sizeof cmd,
             "%s generate --verifier %s --drafter %s/dflash/drafter --prompt 'And God said' "
             "--max-tokens 16 --threads 1 --json 2>/dev/null",
             td_test_bin("tandem"), s_tiny, td_test_data());
    CHECK(td_test_run(cmd, a, sizeof a) == 0);
    cJSON *ja = cJSON_Parse(a), *jb = s_ar_json(b, sizeof b);
    REQUIRE(ja && jb);
    CHECK_STR(cJSON_GetObjectItem(ja, "text")->valuestring,
              cJSON_GetObjectItem(jb, "text")->valuestring);
    cJSON_Delete(ja), cJSON_Delete(jb);
    char tmp[] = "/tmp/td_dflash_XXXXXX";
    REQUIRE(mkdtemp(tmp));
    snprintf(cmd, sizeof cmd,
             "printf 'And God said\n' > %s/p.txt && %s bench --methods ar,dflash "
             "--dflash-drafter %s/dflash/drafter --gamma 7 --prompts %s/p.txt --max-tokens 8 "
             "--threads 1 --out %s/b 2>/dev/null && cat %s/b.csv && rm -rf %s",
             tmp, td_test_bin("tandem"), td_test_data(), tmp, tmp, tmp, tmp);
    CHECK(td_test_run(cmd, a, sizeof a) == 0);
    CHECK_MSG(strstr(a, "dflash"), "no dflash row: %.500s", a);
    /* an in-process DFlash drafter cannot sit on another device than the verifier it borrows from
     */
    snprintf(cmd, sizeof cmd,
             "%s generate --verifier %s --drafter %s/dflash/drafter --drafter-device 0 "
             "--prompt 'And God said' --max-tokens 4 2>&1",
             td_test_bin("tandem"), s_tiny, td_test_data());
    CHECK(td_test_run(cmd, a, sizeof a) != 0);
    CHECK_MSG(strstr(a, "runs on the verifier's device"), "no clear refusal: %.300s", a);
}

/* A verifier worker (tandem-verifier) with a DFlash drafter serves dflash to a client that names
 * only the worker's endpoint (the text equals ar's), and refuses another speculative method with a
 * message that names what it serves. */
TD_TEST(verifier_worker_serves_dflash) {
    char dir[] = "/tmp/td_dfw_XXXXXX", cmd[4096], a[8192], b[8192];
    REQUIRE(mkdtemp(dir));
    snprintf(cmd, sizeof cmd,
             "%s --model %s --drafter %s/dflash/drafter --bind ipc://%s/w.sock --threads 1 "
             "--parallel 2 2>%s/w.log & P=$!; "
             "for i in $(seq 100); do [ -S %s/w.sock ] && break; sleep 0.1; done; "
             "%s generate --verifier ipc://%s/w.sock --method dflash --prompt 'And God said' "
             "--max-tokens 16 --json 2>%s/g.err; R=$?; "
             "%s generate --verifier ipc://%s/w.sock --method specdiff --prompt 'And God said' "
             "--max-tokens 4 >/dev/null 2>%s/s.err; S=$?; kill $P; wait $P; "
             "[ $R = 0 ] && [ $S != 0 ] && grep -q \"serves ar and dflash\" %s/s.err",
             td_test_bin("tandem-verifier"), s_tiny, td_test_data(), dir, dir, dir,
             td_test_bin("tandem"), dir, dir, td_test_bin("tandem"), dir, dir, dir);
    CHECK_MSG(td_test_run(cmd, a, sizeof a) == 0, "worker run failed: %.400s", a);
    cJSON *ja = cJSON_Parse(a), *jb = s_ar_json(b, sizeof b);
    REQUIRE(ja && jb);
    const cJSON *st = cJSON_GetObjectItem(ja, "stats");
    CHECK_STR(cJSON_GetObjectItem(st, "method")->valuestring, "dflash");
    CHECK(cJSON_GetObjectItem(st, "rounds")->valueint > 0);
    CHECK_STR(cJSON_GetObjectItem(ja, "text")->valuestring,
              cJSON_GetObjectItem(jb, "text")->valuestring);
    cJSON_Delete(ja), cJSON_Delete(jb);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

/* Three dflash sessions in one driver through one link (the server's set-up): the in-process
 * drafter drafts the requests that arrive together in one batched forward (its counter moves),
 * and every session equals its solo run: the greedy ones ar's tokens, the sampled one its own
 * solo dflash run, token for token and in acceptance. */
TD_TEST(sessions_batched_equal_solo) {
    td_pair_t pair;
    if (!s_pair(&pair, NULL)) return;
    const td_hello_t *h = td_pair_drafter_hello(&pair);
    int layers[64];
    for (size_t i = 0; i < h->n_target_layers; i++) layers[i] = (int)h->target_layers[i];
    const int nt = getenv("TD_TEST_LIGHT") ? 16 : 32, gammas[3] = {7, 3, 5};
    td_spec_params_t ps[3];
    td_session_opts_t so[3];
    int32_t solo[3][64];
    td_spec_stats_t ss[3];
    td_err_t err = {0};
    for (int i = 0; i < 3; i++) {
        ps[i] = td_spec_params_default(TD_METHOD_DFLASH);
        ps[i].max_tokens = nt;
        ps[i].gamma = gammas[i];
        ps[i].seed = 11 + (uint64_t)i;
        ps[i].hello = &pair.hello;
        if (i == 1) ps[i].sampling = ps[i].draft_sampling = (td_sampling_t){1.0f, 8, 1.0f};
        so[i] = (td_session_opts_t){.method = TD_METHOD_DFLASH,
                                    .params = &ps[i],
                                    .session_id = 700 + (uint64_t)i,
                                    .prompt = s_prompts[i],
                                    .n_prompt = 8,
                                    .feature_layers = layers,
                                    .n_feature_layers = (int)h->n_target_layers};
        td_link_t *l1 = td_link_new(pair.dc, &pair.hello, &err);
        REQUIRE(l1);
        so[i].link = l1;
        CHECK_MSG(td_driver_generate(pair.verifier, &so[i], solo[i], &ss[i], &err) == TD_OK, "%s",
                  err.msg);
        td_link_destroy(&l1);
        if (i != 1) { /* greedy: ar's tokens */
            td_run_params_t pa = td_run_params_default(TD_METHOD_AR);
            pa.max_tokens = nt;
            int32_t ref[64];
            td_run_stats_t sa;
            REQUIRE(s_run(&pair, TD_METHOD_AR, &pa, s_prompts[i], 8, 1, ref, &sa) == TD_OK);
            CHECK_EQ_INT(ss[i].generated, sa.s.generated);
            CHECK(!memcmp(ref, solo[i], (size_t)sa.s.generated * sizeof *ref));
        }
    }
    td_link_t *link = td_link_new(pair.dc, &pair.hello, &err);
    td_driver_t *d = td_driver_new(pair.verifier, 3, 128, &err);
    REQUIRE(link && d);
    td_session_t *s[3];
    const long b0 = td_drafter_service_batched_forwards(pair.svc);
    for (int i = 0; i < 3; i++) {
        so[i].link = link;
        so[i].session_id = 800 + (uint64_t)i;
        REQUIRE((s[i] = td_session_new(pair.verifier, &so[i], &err)));
        REQUIRE(td_driver_submit(d, s[i], &err) == TD_OK);
    }
    CHECK_EQ_INT(td_driver_run(d, &err), TD_OK);
    const long batched = td_drafter_service_batched_forwards(pair.svc) - b0;
    CHECK_MSG(batched > 0, "the dflash drafter never batched");
    for (int i = 0; i < 3; i++) {
        int n = 0;
        const int32_t *toks = td_session_tokens(s[i], &n);
        CHECK_EQ_INT(td_session_status(s[i], &err), TD_OK);
        CHECK_EQ_INT(n, ss[i].generated);
        CHECK_MSG(n == ss[i].generated && !memcmp(toks, solo[i], (size_t)n * sizeof *toks),
                  "session %d in a batch differs from its solo run", i);
        CHECK_EQ_INT(td_session_stats(s[i])->rounds, ss[i].rounds);
        CHECK_EQ_INT(td_session_stats(s[i])->accepted, ss[i].accepted);
        CHECK_EQ_INT(td_session_stats(s[i])->fallbacks, 0);
        td_session_destroy(&s[i]);
    }
    if (getenv("TD_TEST_VERBOSE")) printf("    3 dflash sessions: %ld batched drafts\n", batched);
    td_driver_destroy(&d);
    td_link_destroy(&link);
    td_pair_close(&pair);
}

TD_TEST_MAIN()
