/* test_model_golden.c - td_model_forward against reference logits from the real HF modules.
 *
 * tools/make_model_fixtures.py builds a tiny random checkpoint per family (tests/data/models/<name>
 * with float32 weights, <name>-bf16 with the same weights rounded to bfloat16) and records HF
 * transformers logits for six cases: causal, bidirectional, block-causal, explicit mask, a KV cache
 * filled in three chunks, and two sequences of different lengths in one batch. Every case is
 * replayed here on the fast CPU backend and on the reference (naive loop) backend; the explicit
 * case twice, with mask rows exactly as long as the sequence and padded to the cache with ones.
 *
 * Tolerances (docs/fixtures.md): float32 weights, max abs error < 1e-4. bf16 weights: against HF
 * float32 run on the bf16-rounded weights (same arithmetic as ours: bf16 weights, f32
 * activations) max abs error < 1e-3; against HF's own bf16 run (which also rounds activations)
 * max abs error <= 0.05 * max|logit| + 0.05, a loose sanity bound (measured spread <= 0.26). */
#include "kernels/backend.h"
#include "model/config.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "tests/tdtest.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define F32_TOL 1e-4
#define BF16_TIGHT_TOL 1e-3
#define BF16_LOOSE_REL 0.05
#define BF16_LOOSE_ABS 0.05
#define N_CTX 32
#define REGEN_HINT "rerun: python3 tools/make_model_fixtures.py"

static const char *s_cases[] = {"causal", "bidir", "block", "explicit", "kvchunks", "batch2"};
#define N_CASES ((int)(sizeof(s_cases) / sizeof(s_cases[0])))

/* --- fixture files -------------------------------------------------------------------------- */

typedef struct {
    int rows, vocab;
    float *data; /* [rows, vocab] */
} s_logits_t;

/* Reads a TDLOGIT1 file. Returns 0, or -1 with the reason (and a regeneration hint) in why. */
static int s_read_logits(const char *path, int want_rows, int want_vocab, s_logits_t *out,
                         char *why, size_t cap) {
    memset(out, 0, sizeof(*out));
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, cap, "cannot open %s (%s); " REGEN_HINT, path, strerror(errno));
        return -1;
    }
    char magic[8];
    uint32_t hdr[3];
    int ok = fread(magic, 1, 8, f) == 8 && fread(hdr, 4, 3, f) == 3;
    if (!ok || memcmp(magic, "TDLOGIT1", 8) != 0 || hdr[0] != 1) {
        snprintf(why, cap, "%s: bad magic or version (want TDLOGIT1 v1); " REGEN_HINT, path);
        fclose(f);
        return -1;
    }
    if ((int)hdr[1] != want_rows || (int)hdr[2] != want_vocab) {
        snprintf(why, cap, "%s: shape [%u, %u], case wants [%d, %d]; stale fixture, " REGEN_HINT,
                 path, hdr[1], hdr[2], want_rows, want_vocab);
        fclose(f);
        return -1;
    }
    size_t n = (size_t)want_rows * (size_t)want_vocab;
    out->data = malloc(n * sizeof(float));
    if (!out->data || fread(out->data, sizeof(float), n, f) != n) {
        snprintf(why, cap, "%s: truncated; " REGEN_HINT, path);
        free(out->data);
        out->data = NULL;
        fclose(f);
        return -1;
    }
    fclose(f);
    out->rows = want_rows;
    out->vocab = want_vocab;
    return 0;
}

/* One forward case as described by ref/<case>.json. */
typedef struct {
    int n, n_seq, n_vocab;
    int32_t *tokens, *pos, *seq; /* [n] */
    int n_chunks;
    int chunks[16];
    td_attn_kind_t kind;
    int block_size;
    uint8_t *mask; /* [n, n] for explicit, else NULL */
    char logits[64], logits_f32[64];
} s_case_t;

static void s_case_free(s_case_t *c) {
    free(c->tokens);
    free(c->pos);
    free(c->seq);
    free(c->mask);
    memset(c, 0, sizeof(*c));
}

static int32_t *s_int_array(const cJSON *a, int n) {
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != n) return NULL;
    int32_t *v = malloc((size_t)n * sizeof(int32_t));
    for (int i = 0; i < n; i++) v[i] = (int32_t)cJSON_GetArrayItem(a, i)->valueint;
    return v;
}

static int s_case_load(const char *refdir, const char *name, s_case_t *c) {
    memset(c, 0, sizeof(*c));
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.json", refdir, name);
    char *text = NULL;
    size_t len = 0;
    td_err_t err = {0};
    if (td_read_file(path, &text, &len, &err) != TD_OK) {
        td_test_fail(__FILE__, __LINE__, "%s; " REGEN_HINT, err.msg);
        return -1;
    }
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *tok = cJSON_GetObjectItem(j, "tokens");
    if (!j || !cJSON_IsArray(tok)) {
        td_test_fail(__FILE__, __LINE__, "%s: malformed; " REGEN_HINT, path);
        cJSON_Delete(j);
        return -1;
    }
    c->n = cJSON_GetArraySize(tok);
    c->tokens = s_int_array(tok, c->n);
    c->pos = s_int_array(cJSON_GetObjectItem(j, "pos"), c->n);
    c->seq = s_int_array(cJSON_GetObjectItem(j, "seq"), c->n);
    c->n_seq = cJSON_GetObjectItem(j, "n_seq")->valueint;
    c->n_vocab = cJSON_GetObjectItem(j, "n_vocab")->valueint;
    c->block_size = cJSON_GetObjectItem(j, "block_size")->valueint;
    const cJSON *ch = cJSON_GetObjectItem(j, "chunks");
    c->n_chunks = cJSON_GetArraySize(ch);
    int sum = 0;
    for (int i = 0; i < c->n_chunks && i < 16; i++) {
        c->chunks[i] = cJSON_GetArrayItem(ch, i)->valueint;
        sum += c->chunks[i];
    }
    const char *kind = cJSON_GetStringValue(cJSON_GetObjectItem(j, "kind"));
    c->kind = !kind                           ? (td_attn_kind_t)-1
              : strcmp(kind, "causal") == 0   ? TD_ATTN_CAUSAL
              : strcmp(kind, "bidir") == 0    ? TD_ATTN_BIDIR
              : strcmp(kind, "block") == 0    ? TD_ATTN_BLOCK_CAUSAL
              : strcmp(kind, "explicit") == 0 ? TD_ATTN_EXPLICIT
                                              : (td_attn_kind_t)-1;
    const cJSON *mask = cJSON_GetObjectItem(j, "mask");
    if (c->kind == TD_ATTN_EXPLICIT && cJSON_IsArray(mask) && cJSON_GetArraySize(mask) == c->n) {
        c->mask = calloc((size_t)c->n * c->n, 1);
        for (int r = 0; r < c->n; r++) {
            const cJSON *row = cJSON_GetArrayItem(mask, r);
            for (int k = 0; k < c->n && k < cJSON_GetArraySize(row); k++)
                c->mask[r * c->n + k] = cJSON_GetArrayItem(row, k)->valueint != 0;
        }
    }
    const char *lg = cJSON_GetStringValue(cJSON_GetObjectItem(j, "logits"));
    const char *lf = cJSON_GetStringValue(cJSON_GetObjectItem(j, "logits_f32"));
    snprintf(c->logits, sizeof c->logits, "%s", lg ? lg : "");
    snprintf(c->logits_f32, sizeof c->logits_f32, "%s", lf ? lf : "");
    cJSON_Delete(j);
    if (!c->tokens || !c->pos || !c->seq || (int)c->kind < 0 || sum != c->n || c->n_chunks > 16 ||
        (c->kind == TD_ATTN_EXPLICIT && !c->mask) || !c->logits[0]) {
        td_test_fail(__FILE__, __LINE__, "%s: missing or inconsistent fields; " REGEN_HINT, path);
        s_case_free(c);
        return -1;
    }
    return 0;
}

/* --- replay ------------------------------------------------------------------------------- */

/* Runs the case through td_model_forward (one fresh cache, one forward per chunk) and returns
 * the logits [n, n_vocab] (malloc'd), or NULL after failing the test case. Explicit masks are
 * passed with rows of mask_stride entries: the fixture's n (exactly the length the sequence
 * reaches) or more, the extra entries set to 1 (they lie beyond the sequence and must be ignored).
 */
static float *s_replay(td_model_t *m, const s_case_t *c, int mask_stride, const char *tag) {
    td_err_t err = {0};
    td_kv_cache_t *kv = td_kv_cache_new(m, c->n_seq, N_CTX, &err);
    if (!kv) {
        td_test_fail(__FILE__, __LINE__, "%s: td_kv_cache_new: %s", tag, err.msg);
        return NULL;
    }
    int nv = td_model_config(m)->n_vocab;
    float *out = malloc((size_t)c->n * nv * sizeof(float));
    uint8_t *mask = NULL;
    if (c->mask) {
        mask = malloc((size_t)c->n * mask_stride);
        memset(mask, 1, (size_t)c->n * mask_stride);
        for (int r = 0; r < c->n; r++)
            memcpy(mask + (size_t)r * mask_stride, c->mask + (size_t)r * c->n, c->n);
    }
    int start = 0;
    for (int k = 0; k < c->n_chunks; k++) {
        td_batch_t b = {0};
        b.n = c->chunks[k];
        b.tokens = c->tokens + start;
        b.pos = c->pos + start;
        b.seq = c->seq + start;
        b.attn = c->kind;
        b.block_size = c->block_size;
        if (mask) {
            b.mask = mask + (size_t)start * mask_stride;
            b.mask_stride = mask_stride;
        }
        int rc = td_model_forward(m, kv, &b, out + (size_t)start * nv, &err);
        if (rc != TD_OK) {
            td_test_fail(__FILE__, __LINE__, "%s: td_model_forward chunk %d: %s", tag, k, err.msg);
            free(out);
            free(mask);
            td_kv_cache_destroy(&kv);
            return NULL;
        }
        start += b.n;
    }
    /* Every sequence's cache length is its largest position + 1. */
    for (int s = 0; s < c->n_seq; s++) {
        int want = 0;
        for (int i = 0; i < c->n; i++)
            if (c->seq[i] == s && c->pos[i] + 1 > want) want = c->pos[i] + 1;
        CHECK_MSG(td_kv_cache_len(kv, s) == want, "%s: kv len(seq %d) = %d, expected %d", tag, s,
                  td_kv_cache_len(kv, s), want);
    }
    free(mask);
    td_kv_cache_destroy(&kv);
    return out;
}

static double s_max_abs(const float *a, const float *b, size_t n, double *ref_max) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= e)) e = d; /* NaN propagates as a failure */
        if (fabs(b[i]) > r) r = fabs(b[i]);
    }
    if (ref_max) *ref_max = r;
    return e;
}

/* Compares out against refdir/file; tol = abs + rel * max|ref|. Returns the max abs error. */
static double s_compare(const float *out, const s_case_t *c, const char *refdir, const char *file,
                        double abs_tol, double rel_tol, const char *tag, const char *what) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", refdir, file);
    s_logits_t ref;
    char why[1200];
    if (s_read_logits(path, c->n, c->n_vocab, &ref, why, sizeof why) != 0) {
        td_test_fail(__FILE__, __LINE__, "%s", why);
        return INFINITY;
    }
    double rmax = 0;
    double e = s_max_abs(out, ref.data, (size_t)c->n * c->n_vocab, &rmax);
    double tol = abs_tol + rel_tol * rmax;
    printf("    %-34s %-10s max|err| %.3g (tol %.3g, max|logit| %.2f)\n", tag, what, e, tol, rmax);
    CHECK_MSG(e <= tol, "%s vs %s: max abs error %.4g > tol %.4g", tag, what, e, tol);
    free(ref.data);
    return e;
}

typedef struct {
    const char *dir;
    td_arch_t arch;
    int tied, diffusion;
} s_family_t;

static const s_family_t s_families[] = {
    {"qwen2", TD_ARCH_QWEN2, 1, 0},         {"qwen2-untied", TD_ARCH_QWEN2, 0, 0},
    {"qwen2-sharded", TD_ARCH_QWEN2, 1, 0}, {"llama", TD_ARCH_LLAMA, 0, 0},
    {"dream", TD_ARCH_DREAM, 0, 1},         {"llada", TD_ARCH_LLADA, 0, 1},
    {"gpt2", TD_ARCH_GPT2, 1, 0},           {"diffugpt", TD_ARCH_DIFFUGPT, 1, 1},
};
#define N_FAMILIES ((int)(sizeof(s_families) / sizeof(s_families[0])))

/* Loads <family>[-bf16] on a CPU backend (fast or reference) and replays every case. */
static void s_run_family(const s_family_t *fam, int bf16, int reference) {
    char dir[512], refdir[600], tag[128];
    snprintf(dir, sizeof dir, "%s/models/%s%s", td_test_data(), fam->dir, bf16 ? "-bf16" : "");
    snprintf(refdir, sizeof refdir, "%s/ref", dir);
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, reference, &err);
    if (!be) {
        td_test_fail(__FILE__, __LINE__, "td_backend_cpu_new: %s", err.msg);
        return;
    }
    td_model_t *m = td_model_load(dir, be, &err);
    if (!m) {
        td_test_fail(__FILE__, __LINE__, "td_model_load(%s): %s (" REGEN_HINT " if stale)", dir,
                     err.msg);
        td_backend_destroy(&be);
        return;
    }
    const td_config_t *cfg = td_model_config(m);
    CHECK_MSG(cfg->arch == fam->arch, "%s: arch %s, expected %s", dir, td_arch_name(cfg->arch),
              td_arch_name(fam->arch));
    CHECK_EQ_INT(cfg->tie_embeddings, fam->tied);
    CHECK_EQ_INT(cfg->is_diffusion, fam->diffusion);
    CHECK_EQ_INT(td_model_dtype(m), bf16 ? TD_DTYPE_BF16 : TD_DTYPE_F32);
    for (int k = 0; k < N_CASES; k++) {
        s_case_t c;
        if (s_case_load(refdir, s_cases[k], &c) != 0) continue;
        snprintf(tag, sizeof tag, "%s%s %s %s", fam->dir, bf16 ? "-bf16" : "",
                 reference ? "cpu-ref" : "cpu", s_cases[k]);
        if (c.n_vocab != cfg->n_vocab) {
            td_test_fail(__FILE__, __LINE__, "%s: fixture n_vocab %d, model %d; " REGEN_HINT, tag,
                         c.n_vocab, cfg->n_vocab);
            s_case_free(&c);
            continue;
        }
        for (int pass = 0; pass < (c.mask ? 2 : 1); pass++) {
            int stride = pass == 0 ? c.n : N_CTX;
            char tag2[160];
            snprintf(tag2, sizeof tag2, "%s%s", tag, pass ? "/stride" : "");
            float *out = s_replay(m, &c, stride, tag2);
            if (!out) continue;
            if (!bf16) {
                s_compare(out, &c, refdir, c.logits, F32_TOL, 0, tag2, "hf-f32");
            } else {
                if (!c.logits_f32[0])
                    td_test_fail(__FILE__, __LINE__, "%s: no logits_f32; " REGEN_HINT, tag2);
                else
                    s_compare(out, &c, refdir, c.logits_f32, BF16_TIGHT_TOL, 0, tag2, "hf-f32/w16");
                s_compare(out, &c, refdir, c.logits, BF16_LOOSE_ABS, BF16_LOOSE_REL, tag2,
                          "hf-bf16");
            }
            free(out);
        }
        s_case_free(&c);
    }
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

static void s_run_all(const char *name) {
    for (int i = 0; i < N_FAMILIES; i++) {
        if (strcmp(s_families[i].dir, name) != 0) continue;
        s_run_family(&s_families[i], 0, 0);
        s_run_family(&s_families[i], 0, 1);
        if (strcmp(name, "qwen2-sharded") == 0) return; /* no bf16 copy of the sharded set */
        s_run_family(&s_families[i], 1, 0);
        s_run_family(&s_families[i], 1, 1);
        return;
    }
    td_test_fail(__FILE__, __LINE__, "unknown family %s", name);
}

TD_TEST(golden_qwen2) { s_run_all("qwen2"); }
TD_TEST(golden_qwen2_untied) { s_run_all("qwen2-untied"); }
TD_TEST(golden_qwen2_sharded) { s_run_all("qwen2-sharded"); }
TD_TEST(golden_llama) { s_run_all("llama"); }
TD_TEST(golden_dream) { s_run_all("dream"); }
TD_TEST(golden_llada) { s_run_all("llada"); }
TD_TEST(golden_gpt2) { s_run_all("gpt2"); }
TD_TEST(golden_diffugpt) { s_run_all("diffugpt"); }

/* The reader itself must reject stale or foreign files (else a golden test could pass on junk). */
TD_TEST(logits_header_checked) {
    char path[] = "/tmp/td_golden_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    REQUIRE(f);
    const struct {
        const char *magic;
        uint32_t hdr[3];
        int rows, vocab;
        const char *expect;
    } v[] = {
        {"TDLOGIT1", {1, 1, 4}, 1, 4, NULL},    {"TDLOGIT1", {2, 1, 4}, 1, 4, "version"},
        {"TDLOGITX", {1, 1, 4}, 1, 4, "magic"}, {"TDLOGIT1", {1, 1, 4}, 2, 4, "stale"},
        {"TDLOGIT1", {1, 1, 4}, 1, 5, "stale"},
    };
    fclose(f);
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        f = fopen(path, "wb");
        REQUIRE(f);
        float row[4] = {1, 2, 3, 4};
        fwrite(v[i].magic, 1, 8, f);
        fwrite(v[i].hdr, 4, 3, f);
        fwrite(row, 4, 4, f);
        fclose(f);
        s_logits_t l;
        char why[1200] = "";
        int rc = s_read_logits(path, v[i].rows, v[i].vocab, &l, why, sizeof why);
        if (!v[i].expect) {
            CHECK(rc == 0 && l.data && l.data[3] == 4.0f);
        } else {
            CHECK(rc != 0);
            CHECK_MSG(strstr(why, v[i].expect) && strstr(why, "make_model_fixtures.py"),
                      "reason \"%s\" lacks \"%s\" or the regeneration hint", why, v[i].expect);
        }
        free(l.data);
    }
    unlink(path);
}

/* --- argument errors ------------------------------------------------------------------------ */

TD_TEST(forward_rejects_bad_args) {
    char dir[512], refdir[600];
    snprintf(dir, sizeof dir, "%s/models/qwen2", td_test_data());
    snprintf(refdir, sizeof refdir, "%s/ref", dir);
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, 0, &err);
    REQUIRE(be);
    td_model_t *m = td_model_load(dir, be, &err);
    if (!m) td_test_fail(__FILE__, __LINE__, "load: %s", err.msg);
    s_case_t c;
    if (!m || s_case_load(refdir, "kvchunks", &c) != 0) {
        td_model_destroy(&m);
        td_backend_destroy(&be);
        return;
    }
    const int nv = td_model_config(m)->n_vocab, n_ctx = c.n; /* cache exactly as long as the case */
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, n_ctx, &err);
    REQUIRE(kv);
    float *out = calloc((size_t)(c.n + 4) * nv, sizeof(float));
    const int first = c.chunks[0];
    td_batch_t b = {.n = first, .tokens = c.tokens, .pos = c.pos, .attn = TD_ATTN_CAUSAL};
    REQUIRE(td_model_forward(m, kv, &b, out, &err) == TD_OK);
    CHECK_EQ_INT(td_kv_cache_len(kv, 0), first);

    /* Each bad batch appends at positions first.. with one thing wrong. */
    int32_t tok[16], pos[16], seq[16] = {0};
    const int nb = n_ctx - first + 1; /* positions first .. n_ctx: the last one is out of range */
    REQUIRE(nb <= 16);
    for (int i = 0; i < nb; i++) {
        tok[i] = c.tokens[(first + i) % c.n];
        pos[i] = first + i;
    }
    struct {
        const char *what;
        int n, tok_i, tok_v, pos_i, pos_v, seq_i, seq_v;
    } bad[] = {
        {"token id == n_vocab", 3, 2, nv, -1, 0, -1, 0},
        {"token id -1", 3, 0, -1, -1, 0, -1, 0},
        {"token id huge", 1, 0, 0x7fffffff, -1, 0, -1, 0},
        {"position == n_ctx", nb, -1, 0, -1, 0, -1, 0},
        {"position n_ctx + 5", 2, -1, 0, 1, n_ctx + 5, -1, 0},
        {"position -1", 2, -1, 0, 0, -1, -1, 0},
        {"position leaves a hole", 1, -1, 0, 0, first + 2, -1, 0},
        {"sequence slot 1 of 1", 2, -1, 0, -1, 0, 1, 1},
        {"sequence slot -1", 2, -1, 0, -1, 0, 0, -1},
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        int32_t t2[16], p2[16], s2[16];
        memcpy(t2, tok, sizeof tok);
        memcpy(p2, pos, sizeof pos);
        memcpy(s2, seq, sizeof seq);
        if (bad[k].tok_i >= 0) t2[bad[k].tok_i] = bad[k].tok_v;
        if (bad[k].pos_i >= 0) p2[bad[k].pos_i] = bad[k].pos_v;
        if (bad[k].seq_i >= 0) s2[bad[k].seq_i] = bad[k].seq_v;
        td_batch_t bb = {.n = bad[k].n, .tokens = t2, .pos = p2, .seq = s2, .attn = TD_ATTN_CAUSAL};
        td_err_t e2 = {0};
        int rc = td_model_forward(m, kv, &bb, out + (size_t)first * nv, &e2);
        CHECK_MSG(rc == TD_ERR_ARG, "%s: rc %d, expected TD_ERR_ARG", bad[k].what, rc);
        CHECK_MSG(e2.msg[0] != 0, "%s: no error message", bad[k].what);
        CHECK_MSG(td_kv_cache_len(kv, 0) == first, "%s: kv len %d changed from %d", bad[k].what,
                  td_kv_cache_len(kv, 0), first);
        printf("    %-24s -> %d: %s\n", bad[k].what, rc, e2.msg);
    }

    /* Explicit masks: missing, or rows shorter than the length the sequence reaches. */
    {
        uint8_t ones[16 * 16];
        memset(ones, 1, sizeof ones);
        struct {
            const char *what;
            const uint8_t *mask;
            int64_t stride;
        } bm[] = {{"explicit mask NULL", NULL, 16}, {"explicit stride too short", ones, first + 1}};
        for (size_t k = 0; k < sizeof(bm) / sizeof(bm[0]); k++) {
            td_batch_t bb = {.n = 2,
                             .tokens = tok,
                             .pos = pos,
                             .attn = TD_ATTN_EXPLICIT,
                             .mask = bm[k].mask,
                             .mask_stride = bm[k].stride};
            td_err_t e2 = {0};
            int rc = td_model_forward(m, kv, &bb, out + (size_t)first * nv, &e2);
            CHECK_MSG(rc == TD_ERR_ARG, "%s: rc %d, expected TD_ERR_ARG", bm[k].what, rc);
            CHECK_MSG(td_kv_cache_len(kv, 0) == first, "%s: kv len %d changed from %d", bm[k].what,
                      td_kv_cache_len(kv, 0), first);
            printf("    %-24s -> %d: %s\n", bm[k].what, rc, e2.msg);
        }
    }

    /* The cache is intact: the remaining chunks still reproduce the HF logits. */
    int start = first;
    for (int k = 1; k < c.n_chunks; k++) {
        td_batch_t bc = {.n = c.chunks[k],
                         .tokens = c.tokens + start,
                         .pos = c.pos + start,
                         .attn = TD_ATTN_CAUSAL};
        CHECK(td_model_forward(m, kv, &bc, out + (size_t)start * nv, &err) == TD_OK);
        start += c.chunks[k];
    }
    CHECK_EQ_INT(td_kv_cache_len(kv, 0), c.n);
    s_compare(out, &c, refdir, c.logits, F32_TOL, 0, "qwen2 cpu after rejected batches", "hf-f32");
    free(out);
    s_case_free(&c);
    td_kv_cache_destroy(&kv);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

/* --- broken checkpoints --------------------------------------------------------------------- */

static int s_copy_file(const char *src, const char *dst) {
    char *data = NULL;
    size_t len = 0;
    if (td_read_file(src, &data, &len, NULL) != TD_OK) return -1;
    FILE *f = fopen(dst, "wb");
    int ok = f && fwrite(data, 1, len, f) == len;
    if (f) fclose(f);
    free(data);
    return ok ? 0 : -1;
}

typedef struct {
    const char *name;
    size_t begin, end;
} s_span_t;

static int s_span_cmp(const void *a, const void *b) {
    const s_span_t *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Rewrites src (a safetensors file) into dst: drops tensor `drop` (data removed, offsets packed)
 * and/or gives tensor `reshape` the shape {d0, d1} or the dtype `dtype` (same byte size). */
static int s_rewrite_safetensors(const char *src, const char *dst, const char *drop,
                                 const char *reshape, int d0, int d1, const char *dtype) {
    char *data = NULL;
    size_t len = 0;
    if (td_read_file(src, &data, &len, NULL) != TD_OK || len < 8) return -1;
    uint64_t hlen = 0;
    memcpy(&hlen, data, 8);
    if (8 + hlen > len) {
        free(data);
        return -1;
    }
    cJSON *h = cJSON_ParseWithLength(data + 8, (size_t)hlen);
    const char *payload = data + 8 + hlen;
    if (!h) {
        free(data);
        return -1;
    }
    if (drop) cJSON_DeleteItemFromObjectCaseSensitive(h, drop);
    if (reshape) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(h, reshape);
        if (!t) {
            cJSON_Delete(h);
            free(data);
            return -1;
        }
        if (d0 > 0) {
            int dims[2] = {d0, d1};
            cJSON_ReplaceItemInObjectCaseSensitive(t, "shape", cJSON_CreateIntArray(dims, 2));
        }
        if (dtype) cJSON_ReplaceItemInObjectCaseSensitive(t, "dtype", cJSON_CreateString(dtype));
    }
    /* Pack the remaining tensors' data in their original order. */
    s_span_t spans[512];
    int ns = 0;
    for (cJSON *it = h->child; it && ns < 512; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) continue;
        cJSON *off = cJSON_GetObjectItem(it, "data_offsets");
        spans[ns].name = it->string;
        spans[ns].begin = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        spans[ns].end = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        ns++;
    }
    qsort(spans, (size_t)ns, sizeof spans[0], s_span_cmp);
    size_t total = 0;
    for (int i = 0; i < ns; i++) total += spans[i].end - spans[i].begin;
    char *body = malloc(total ? total : 1);
    size_t at = 0;
    for (int i = 0; i < ns; i++) {
        size_t n = spans[i].end - spans[i].begin;
        memcpy(body + at, payload + spans[i].begin, n);
        double offs[2] = {(double)at, (double)(at + n)};
        cJSON *t = cJSON_GetObjectItemCaseSensitive(h, spans[i].name);
        cJSON_ReplaceItemInObjectCaseSensitive(t, "data_offsets", cJSON_CreateDoubleArray(offs, 2));
        at += n;
    }
    char *hs = cJSON_PrintUnformatted(h);
    size_t hn = strlen(hs);
    size_t padded = (hn + 7) / 8 * 8; /* keep the data 8-byte aligned, as writers do */
    FILE *f = fopen(dst, "wb");
    int ok = f != NULL;
    if (ok) {
        uint64_t hl = padded;
        ok = fwrite(&hl, 8, 1, f) == 1 && fwrite(hs, 1, hn, f) == hn;
        for (size_t i = hn; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
        ok = ok && fwrite(body, 1, total, f) == total;
        fclose(f);
    }
    free(hs);
    free(body);
    cJSON_Delete(h);
    free(data);
    return ok ? 0 : -1;
}

/* Copies the qwen2 fixture into a temp dir with its safetensors rewritten by
 * s_rewrite_safetensors (drop, reshape, d0, d1, dtype), loads it on a one-thread CPU backend (*be)
 * and removes the copy; returns the model, or NULL with the error in *err. */
static td_model_t *s_load_rewritten(td_backend_t **be, const char *drop, const char *reshape,
                                    int d0, int d1, const char *dtype, td_err_t *err) {
    char tmp[] = "/tmp/td_golden_ckpt_XXXXXX";
    *be = td_backend_cpu_new(1, 0, err);
    if (!*be) return NULL;
    if (!mkdtemp(tmp)) {
        td_test_fail(__FILE__, __LINE__, "mkdtemp failed");
        return NULL;
    }
    char src[600], dst[600], cfg_src[600], cfg_dst[600];
    snprintf(src, sizeof src, "%s/models/qwen2/model.safetensors", td_test_data());
    snprintf(cfg_src, sizeof cfg_src, "%s/models/qwen2/config.json", td_test_data());
    snprintf(dst, sizeof dst, "%s/model.safetensors", tmp);
    snprintf(cfg_dst, sizeof cfg_dst, "%s/config.json", tmp);
    CHECK(s_copy_file(cfg_src, cfg_dst) == 0);
    CHECK(s_rewrite_safetensors(src, dst, drop, reshape, d0, d1, dtype) == 0);
    td_model_t *m = td_model_load(tmp, *be, err);
    unlink(dst);
    unlink(cfg_dst);
    rmdir(tmp);
    return m;
}

/* The qwen2 fixture with one tensor broken: checks the load fails and names the tensor. */
static void s_check_broken(const char *what, const char *drop, const char *reshape, int d0, int d1,
                           const char *dtype, const char *expect_name) {
    td_err_t err = {0};
    td_backend_t *be = NULL;
    td_model_t *m = s_load_rewritten(&be, drop, reshape, d0, d1, dtype, &err);
    CHECK_MSG(m == NULL, "%s: td_model_load succeeded", what);
    CHECK_MSG(err.code < 0, "%s: no error code", what);
    CHECK_MSG(strstr(err.msg, expect_name) != NULL, "%s: message does not name %s: \"%s\"", what,
              expect_name, err.msg);
    printf("    %-22s -> %s\n", what, err.msg);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

TD_TEST(load_rejects_broken_checkpoint) {
    /* An unmodified rewrite must load: proves the rewriter itself is sound. */
    {
        td_err_t err = {0};
        td_backend_t *be = NULL;
        td_model_t *m = s_load_rewritten(&be, NULL, NULL, 0, 0, NULL, &err);
        CHECK_MSG(m != NULL, "rewritten intact checkpoint failed to load: %s", err.msg);
        td_model_destroy(&m);
        td_backend_destroy(&be);
    }
    s_check_broken("missing tensor", "model.layers.1.mlp.down_proj.weight", NULL, 0, 0, NULL,
                   "model.layers.1.mlp.down_proj.weight");
    s_check_broken("missing bias", "model.layers.0.self_attn.k_proj.bias", NULL, 0, 0, NULL,
                   "model.layers.0.self_attn.k_proj.bias");
    s_check_broken("transposed shape", NULL, "model.layers.0.self_attn.k_proj.weight", 64, 32, NULL,
                   "model.layers.0.self_attn.k_proj.weight");
    s_check_broken("wrong rows", NULL, "model.embed_tokens.weight", 128, 80, NULL,
                   "model.embed_tokens.weight");
    s_check_broken("integer dtype", NULL, "model.layers.1.self_attn.o_proj.weight", 0, 0, "I32",
                   "model.layers.1.self_attn.o_proj.weight");
}

/* A verification pass computes what AR steps compute, bitwise: after a shared prompt, the block's
 * tokens fed one at a time give the same logits as the block in one causal pass (the CPU skinny
 * kernels sum in an order that does not depend on the batch; attention and norms work per row),
 * for blocks of 5, 8 and 9 (both kernel shapes) in f32 and bf16. */
static void s_block_vs_steps(const char *name, int nb) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", td_test_data(), name);
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(2, 0, &err);
    REQUIRE(be);
    td_model_t *m = td_model_load(dir, be, &err);
    CHECK_MSG(m != NULL, "%s: %s", name, err.msg);
    if (!m) {
        td_backend_destroy(&be);
        return;
    }
    const int V = td_model_config(m)->n_vocab;
    td_kv_cache_t *a = td_kv_cache_new(m, 1, 64, &err), *b = td_kv_cache_new(m, 1, 64, &err);
    REQUIRE(a && b);
    int32_t prompt[6], toks[16];
    for (int i = 0; i < 6; i++) prompt[i] = (i * 37 + 11) % V;
    for (int i = 0; i < nb; i++) toks[i] = (i * 53 + 7) % V;
    float *la = malloc(sizeof(float) * (size_t)(nb * V)),
          *lb = malloc(sizeof(float) * (size_t)(nb * V));
    uint8_t none[6] = {0};
    td_batch_t pb = {.n = 6, .tokens = prompt, .attn = TD_ATTN_CAUSAL, .logits_for = none};
    CHECK_EQ_INT(td_model_forward(m, a, &pb, NULL, &err), TD_OK);
    CHECK_EQ_INT(td_model_forward(m, b, &pb, NULL, &err), TD_OK);
    for (int i = 0; i < nb; i++) {
        td_batch_t one = {.n = 1, .tokens = &toks[i], .attn = TD_ATTN_CAUSAL};
        CHECK_EQ_INT(td_model_forward(m, a, &one, la + (size_t)i * V, &err), TD_OK);
    }
    td_batch_t blk = {.n = nb, .tokens = toks, .attn = TD_ATTN_CAUSAL};
    CHECK_EQ_INT(td_model_forward(m, b, &blk, lb, &err), TD_OK);
    CHECK_MSG(!memcmp(la, lb, sizeof(float) * (size_t)(nb * V)),
              "%s: %d single-token steps and one %d-token pass give different logits", name, nb,
              nb);
    free(la), free(lb);
    td_kv_cache_destroy(&a);
    td_kv_cache_destroy(&b);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

TD_TEST(verification_pass_bitwise_equals_ar_steps) {
    const char *names[] = {"qwen2", "qwen2-bf16", "llama-bf16"};
    const int blocks[] = {5, 8, 9};
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 3; j++) s_block_vs_steps(names[k], blocks[j]);
}

/* --- the open model API: hidden states out, embeddings in ------------------------------------ */

/* Hidden states (td_batch_t.hidden_layers) against HF's output_hidden_states
 * (tools/make_hidden_fixtures.py: L = 0 embeddings, L = 1..n_layer each layer's output before
 * the final norm), for every row and for a subset of rows with the layers asked out of order and
 * one twice; on the fast and the reference CPU backend. */
static void s_hidden_vs_hf(const char *name, int reference) {
    char dir[512], path[700];
    snprintf(dir, sizeof dir, "%s/models/%s", td_test_data(), name);
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(1, reference, &err);
    td_model_t *m = be ? td_model_load(dir, be, &err) : NULL;
    if (!m) {
        td_test_fail(__FILE__, __LINE__, "%s: %s", dir, err.msg);
        td_backend_destroy(&be);
        return;
    }
    const td_config_t *cfg = td_model_config(m);
    const int C = cfg->n_embd, NL = cfg->n_layer + 1;
    s_case_t c;
    char refdir[600];
    snprintf(refdir, sizeof refdir, "%s/ref", dir);
    if (s_case_load(refdir, "causal", &c) != 0) {
        td_model_destroy(&m);
        td_backend_destroy(&be);
        return;
    }
    snprintf(path, sizeof path, "%s/hidden.bin", refdir);
    s_logits_t ref;
    char why[1200];
    if (s_read_logits(path, c.n * NL, C, &ref, why, sizeof why) != 0) {
        td_test_fail(__FILE__, __LINE__, "%s (rerun: python3 tools/make_hidden_fixtures.py)", why);
        s_case_free(&c);
        td_model_destroy(&m);
        td_backend_destroy(&be);
        return;
    }
    const int n = c.n;
    int *all = malloc(sizeof(int) * (size_t)NL);
    for (int L = 0; L < NL; L++) all[L] = L;
    float *hid = malloc(sizeof(float) * (size_t)n * NL * C),
          *logits = malloc(sizeof(float) * (size_t)n * cfg->n_vocab);
    /* 1: every row, every layer boundary */
    td_kv_cache_t *kv = td_kv_cache_new(m, 1, N_CTX, &err);
    REQUIRE(kv);
    td_batch_t b = {.n = n,
                    .tokens = c.tokens,
                    .attn = TD_ATTN_CAUSAL,
                    .hidden_layers = all,
                    .n_hidden_layers = NL,
                    .hidden_out = hid};
    CHECK_EQ_INT(td_model_forward(m, kv, &b, logits, &err), TD_OK);
    double rmax = 0, e = s_max_abs(hid, ref.data, (size_t)n * NL * C, &rmax);
    printf("    %-10s %-8s hidden states L=0..%d: max|err| %.3g (max|h| %.2f)\n", name,
           reference ? "cpu-ref" : "cpu", NL - 1, e, rmax);
    CHECK_MSG(e <= F32_TOL * (1 + rmax), "%s: hidden states differ from HF by %.3g", name, e);
    /* the logits are unchanged by asking for hidden states */
    {
        s_logits_t lref;
        snprintf(path, sizeof path, "%s/%s", refdir, c.logits);
        REQUIRE(s_read_logits(path, n, cfg->n_vocab, &lref, why, sizeof why) == 0);
        double lmax = 0, le = s_max_abs(logits, lref.data, (size_t)n * cfg->n_vocab, &lmax);
        CHECK_MSG(le <= F32_TOL, "%s: logits with hidden states differ from HF by %.3g", name, le);
        free(lref.data);
    }
    td_kv_cache_destroy(&kv);
    /* 2: rows 1, 5 and n-1 only; layers {n_layer, 0, n_layer, 1}; no logits */
    uint8_t pick[64] = {0};
    pick[1] = pick[5] = pick[n - 1] = 1;
    const int rows[3] = {1, 5, n - 1};
    int ask[4] = {NL - 1, 0, NL - 1, 1};
    float *h2 = malloc(sizeof(float) * 3 * 4 * (size_t)C);
    kv = td_kv_cache_new(m, 1, N_CTX, &err);
    td_batch_t b2 = {.n = n,
                     .tokens = c.tokens,
                     .attn = TD_ATTN_CAUSAL,
                     .logits_for = pick,
                     .hidden_layers = ask,
                     .n_hidden_layers = 4,
                     .hidden_out = h2};
    CHECK_EQ_INT(td_model_forward(m, kv, &b2, NULL, &err), TD_OK);
    double e2 = 0;
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 4; k++) {
            double d = s_max_abs(h2 + ((size_t)i * 4 + k) * C,
                                 ref.data + ((size_t)rows[i] * NL + ask[k]) * C, (size_t)C, NULL);
            if (!(d <= e2)) e2 = d;
        }
    CHECK_MSG(e2 <= F32_TOL * (1 + rmax), "%s: selected rows' hidden states off by %.3g", name, e2);
    /* 3: refused before touching the cache: a layer beyond n_layer, hidden_out missing */
    int bad = NL;
    td_batch_t b3 = {.n = 1,
                     .tokens = c.tokens,
                     .attn = TD_ATTN_CAUSAL,
                     .hidden_layers = &bad,
                     .n_hidden_layers = 1,
                     .hidden_out = h2};
    int len = td_kv_cache_len(kv, 0);
    CHECK_EQ_INT(td_model_forward(m, kv, &b3, NULL, &err), TD_ERR_ARG);
    b3.hidden_layers = all, b3.hidden_out = NULL;
    CHECK_EQ_INT(td_model_forward(m, kv, &b3, NULL, &err), TD_ERR_ARG);
    b3.hidden_out = h2, b3.tokens = NULL;
    CHECK_EQ_INT(td_model_forward(m, kv, &b3, NULL, &err), TD_ERR_ARG);
    CHECK_EQ_INT(td_kv_cache_len(kv, 0), len);
    td_kv_cache_destroy(&kv);
    free(h2);
    free(all);
    free(hid);
    free(logits);
    free(ref.data);
    s_case_free(&c);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

TD_TEST(hidden_states_match_hf) {
    const char *names[] = {"qwen2", "llama", "gpt2"};
    for (int i = 0; i < 3; i++) {
        s_hidden_vs_hf(names[i], 0);
        s_hidden_vs_hf(names[i], 1);
    }
}

/* Input embeddings instead of token ids (td_batch_t.embd): given the token embedding rows of some
 * ids (read from the checkpoint), the forward reproduces the forward of those ids bit for bit
 * (logits and hidden states, KV cache included: a later token-id step continues the same way);
 * GPT-2 still adds its position embeddings. tokens may be NULL. */
static void s_embd_equals_tokens(const char *name, const char *embd_tensor) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/%s", td_test_data(), name);
    td_err_t err = {0};
    td_backend_t *be = td_backend_cpu_new(2, 0, &err);
    td_model_t *m = be ? td_model_load(dir, be, &err) : NULL;
    td_safetensors_t *st = td_safetensors_open(dir, &err);
    REQUIRE(m && st);
    const td_st_tensor_t *t = td_safetensors_find(st, embd_tensor);
    REQUIRE(t && t->dtype == TD_DTYPE_F32);
    const td_config_t *cfg = td_model_config(m);
    const int C = cfg->n_embd, V = cfg->n_vocab, NL = cfg->n_layer + 1;
    REQUIRE(t->shape[0] == V && t->shape[1] == C);
    enum { N = 9 };
    int32_t ids[N + 1];
    for (int i = 0; i <= N; i++) ids[i] = (int32_t)((i * 37 + 11) % V);
    float *emb = malloc(sizeof(float) * N * (size_t)C);
    for (int i = 0; i < N; i++)
        memcpy(emb + (size_t)i * C, (const float *)t->data + (size_t)ids[i] * C,
               sizeof(float) * (size_t)C);
    int layers[2] = {0, NL - 1};
    float *la = malloc(sizeof(float) * (size_t)(N + 1) * V),
          *lb = malloc(sizeof(float) * (size_t)(N + 1) * V);
    float *ha = malloc(sizeof(float) * N * 2 * (size_t)C),
          *hb = malloc(sizeof(float) * N * 2 * (size_t)C);
    td_kv_cache_t *ka = td_kv_cache_new(m, 1, N_CTX, &err),
                  *kb = td_kv_cache_new(m, 1, N_CTX, &err);
    td_batch_t a = {.n = N,
                    .tokens = ids,
                    .attn = TD_ATTN_CAUSAL,
                    .hidden_layers = layers,
                    .n_hidden_layers = 2,
                    .hidden_out = ha};
    td_batch_t b = a; /* the same batch given as embeddings */
    b.tokens = NULL;
    b.embd = emb;
    b.hidden_out = hb;
    CHECK_EQ_INT(td_model_forward(m, ka, &a, la, &err), TD_OK);
    CHECK_EQ_INT(td_model_forward(m, kb, &b, lb, &err), TD_OK);
    CHECK_MSG(!memcmp(la, lb, sizeof(float) * N * (size_t)V), "%s: logits differ", name);
    CHECK_MSG(!memcmp(ha, hb, sizeof(float) * N * 2 * (size_t)C), "%s: hidden states differ", name);
    /* the caches agree: one more token by id on each */
    td_batch_t a1 = {.n = 1, .tokens = ids + N, .attn = TD_ATTN_CAUSAL};
    CHECK_EQ_INT(td_model_forward(m, ka, &a1, la, &err), TD_OK);
    CHECK_EQ_INT(td_model_forward(m, kb, &a1, lb, &err), TD_OK);
    CHECK_MSG(!memcmp(la, lb, sizeof(float) * (size_t)V), "%s: caches differ", name);
    /* other embeddings give other logits (the input is really used) */
    for (int i = 0; i < C; i++) emb[i] += 0.5f;
    td_kv_cache_crop(kb, 0, 0);
    CHECK_EQ_INT(td_model_forward(m, kb, &b, lb, &err), TD_OK);
    CHECK(memcmp(la, lb, sizeof(float) * (size_t)V) != 0);
    printf("    %s: embeddings in == token ids in (logits, hidden states, cache)\n", name);
    td_kv_cache_destroy(&ka);
    td_kv_cache_destroy(&kb);
    free(emb), free(la), free(lb), free(ha), free(hb);
    td_safetensors_destroy(&st);
    td_model_destroy(&m);
    td_backend_destroy(&be);
}

TD_TEST(embeddings_as_input_equal_token_ids) {
    s_embd_equals_tokens("qwen2", "model.embed_tokens.weight");
    s_embd_equals_tokens("gpt2", "transformer.wte.weight");
}

TD_TEST_MAIN()
