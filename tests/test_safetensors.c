/* test_safetensors.c - the safetensors reader: files written by the real safetensors/transformers
 * libraries (tests/data/st, made by tools/make_st_fixtures.py) read back tensor by tensor, files
 * built here in a mkdtemp directory byte by byte (F32/F16/BF16, metadata, shards), and every
 * validation error, each of which must name the file (and the tensor where there is one). */
#include "model/safetensors.h"
#include "tests/tdtest.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* --- helpers -----------------------------------------------------------------------------------
 */

static char s_tmp[256];

static const char *s_tmpdir(void) {
    if (!s_tmp[0]) {
        snprintf(s_tmp, sizeof s_tmp, "/tmp/td_st_XXXXXX");
        if (!mkdtemp(s_tmp)) {
            perror("mkdtemp");
            exit(1);
        }
    }
    return s_tmp;
}

/* A fresh subdirectory of the temp dir; returns its path in a static buffer ring. */
static const char *s_subdir(const char *name) {
    static char bufs[8][512];
    static int k;
    char *p = bufs[k++ % 8];
    snprintf(p, 512, "%s/%s", s_tmpdir(), name);
    mkdir(p, 0700);
    return p;
}

static const char *s_path(const char *dir, const char *name) {
    static char bufs[8][1024];
    static int k;
    char *p = bufs[k++ % 8];
    snprintf(p, 1024, "%s/%s", dir, name);
    return p;
}

/* Writes 8-byte LE hlen, header text (hlen bytes of it, space padded when longer), then data. */
static void s_write_raw(const char *path, uint64_t hlen, const char *header, const void *data,
                        size_t dlen) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(hlen >> (8 * i));
    fwrite(le, 1, 8, f);
    size_t n = strlen(header);
    fwrite(header, 1, n < hlen ? n : hlen, f);
    for (size_t i = n; i < hlen; i++) fputc(' ', f);
    if (dlen) fwrite(data, 1, dlen, f);
    fclose(f);
}

static void s_write(const char *path, const char *header, const void *data, size_t dlen) {
    s_write_raw(path, strlen(header), header, data, dlen);
}

typedef struct {
    const char *name, *dtype;
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
} s_spec_t;

/* Builds a well-formed file from specs, laid out in order, header padded to 8 bytes. */
static void s_write_specs(const char *path, const s_spec_t *t, int n, const char *meta) {
    char hdr[8192];
    size_t off = 0;
    int w = snprintf(hdr, sizeof hdr, "{");
    if (meta) w += snprintf(hdr + w, sizeof hdr - w, "\"__metadata__\":%s,", meta);
    uint8_t data[4096];
    for (int i = 0; i < n; i++) {
        w += snprintf(hdr + w, sizeof hdr - w, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                      i ? "," : "", t[i].name, t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++)
            w +=
                snprintf(hdr + w, sizeof hdr - w, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        w += snprintf(hdr + w, sizeof hdr - w, "],\"data_offsets\":[%zu,%zu]}", off,
                      off + t[i].nbytes);
        memcpy(data + off, t[i].data, t[i].nbytes);
        off += t[i].nbytes;
    }
    w += snprintf(hdr + w, sizeof hdr - w, "}");
    uint64_t hlen = ((uint64_t)w + 7) / 8 * 8;
    s_write_raw(path, hlen, hdr, data, off);
}

static void s_write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

/* Opening path must fail with code, and the message must contain each non-NULL needle. */
static void s_expect_fail(const char *path, int code, const char *n1, const char *n2,
                          const char *n3) {
    td_err_t err = {0};
    td_safetensors_t *st = td_safetensors_open(path, &err);
    CHECK_MSG(st == NULL, "opening %s should fail", path);
    td_safetensors_destroy(&st);
    CHECK_EQ_INT(err.code, code);
    if (getenv("TD_TEST_VERBOSE")) printf("    [%s]\n", err.msg);
    const char *needles[3] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i])
            CHECK_MSG(strstr(err.msg, needles[i]) != NULL, "message \"%s\" lacks \"%s\"", err.msg,
                      needles[i]);
}

static const float s_f32[6] = {0.0f, 1.0f, -2.5f, 3.25f, 1e-3f, -1e6f};
static const uint16_t s_f16[4] = {0x3C00 /* 1 */, 0xC000 /* -2 */, 0x3800 /* 0.5 */,
                                  0x7BFF /* 65504 */};
static const uint16_t s_bf16[4] = {0x3F80 /* 1 */, 0xC040 /* -3 */, 0x3E80 /* 0.25 */,
                                   0x4780 /* 65536 */};

static void s_basic_specs(s_spec_t *t) {
    t[0] = (s_spec_t){"a.f32", "F32", 2, {2, 3}, s_f32, sizeof s_f32};
    t[1] = (s_spec_t){"b.f16", "F16", 1, {4}, s_f16, sizeof s_f16};
    t[2] = (s_spec_t){"c.bf16", "BF16", 3, {1, 2, 2}, s_bf16, sizeof s_bf16};
}

/* --- well-formed files -------------------------------------------------------------------------
 */

static void s_check_basic(td_safetensors_t *st) {
    CHECK_EQ_INT(td_safetensors_count(st), 3);
    CHECK_EQ_INT(td_safetensors_total_bytes(st), sizeof s_f32 + sizeof s_f16 + sizeof s_bf16);
    const td_st_tensor_t *a = td_safetensors_find(st, "a.f32");
    const td_st_tensor_t *b = td_safetensors_find(st, "b.f16");
    const td_st_tensor_t *c = td_safetensors_find(st, "c.bf16");
    REQUIRE(a && b && c);
    CHECK(td_safetensors_find(st, "a.f3") == NULL);
    CHECK(td_safetensors_find(st, "") == NULL);
    CHECK_EQ_INT(a->dtype, TD_DTYPE_F32);
    CHECK_EQ_INT(a->ndim, 2);
    CHECK_EQ_INT(a->shape[0], 2);
    CHECK_EQ_INT(a->shape[1], 3);
    CHECK_EQ_INT(a->nbytes, 24);
    CHECK(memcmp(a->data, s_f32, sizeof s_f32) == 0);
    CHECK_EQ_INT(b->dtype, TD_DTYPE_F16);
    CHECK_EQ_INT(b->ndim, 1);
    CHECK_EQ_INT(b->shape[0], 4);
    float f[4];
    td_to_f32(f, b->data, b->dtype, 4);
    CHECK_NEAR(f[0], 1.0, 0);
    CHECK_NEAR(f[1], -2.0, 0);
    CHECK_NEAR(f[2], 0.5, 0);
    CHECK_NEAR(f[3], 65504.0, 0);
    CHECK_EQ_INT(c->dtype, TD_DTYPE_BF16);
    CHECK_EQ_INT(c->ndim, 3);
    CHECK_EQ_INT(c->shape[2], 2);
    CHECK_EQ_INT(td_safetensors_n_elements(c), 4);
    td_to_f32(f, c->data, c->dtype, 4);
    CHECK_NEAR(f[0], 1.0, 0);
    CHECK_NEAR(f[1], -3.0, 0);
    CHECK_NEAR(f[2], 0.25, 0);
    CHECK_NEAR(f[3], 65536.0, 0);
    /* at() enumerates the same objects find() returns. */
    int seen = 0;
    for (int i = 0; i < td_safetensors_count(st); i++) {
        const td_st_tensor_t *t = td_safetensors_at(st, i);
        seen += t == a || t == b || t == c;
        CHECK_EQ_INT(t->file, 0);
    }
    CHECK_EQ_INT(seen, 3);
    CHECK(td_safetensors_at(st, 3) == NULL);
    CHECK(td_safetensors_at(st, -1) == NULL);
}

TD_TEST(single_file_by_path_and_dir) {
    const char *d = s_subdir("single");
    s_spec_t t[3];
    s_basic_specs(t);
    s_write_specs(s_path(d, "model.safetensors"), t, 3, "{\"format\":\"pt\",\"k\":\"v\"}");
    td_err_t err = {0};
    td_safetensors_t *st = td_safetensors_open(s_path(d, "model.safetensors"), &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    REQUIRE(st);
    s_check_basic(st);
    CHECK_STR(td_safetensors_metadata(st, "format"), "pt");
    CHECK_STR(td_safetensors_metadata(st, "k"), "v");
    CHECK(td_safetensors_metadata(st, "absent") == NULL);
    CHECK_EQ_INT(td_safetensors_n_metadata(st), 2);
    CHECK_EQ_INT(td_safetensors_n_files(st), 1);
    CHECK(strstr(td_safetensors_file_path(st, 0), "model.safetensors") != NULL);
    td_safetensors_destroy(&st);
    CHECK(st == NULL);
    td_safetensors_destroy(&st); /* safe twice */

    st = td_safetensors_open(d, &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    REQUIRE(st);
    s_check_basic(st);
    td_safetensors_destroy(&st);
}

TD_TEST(from_memory_matches_file) {
    const char *d = s_subdir("mem");
    s_spec_t t[3];
    s_basic_specs(t);
    s_write_specs(s_path(d, "x.safetensors"), t, 3, NULL);
    char *buf = NULL;
    size_t len = 0;
    td_err_t err = {0};
    REQUIRE(td_read_file(s_path(d, "x.safetensors"), &buf, &len, &err) == TD_OK);
    td_safetensors_t *st = td_safetensors_from_memory(buf, len, "image", &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    if (st) {
        s_check_basic(st);
        /* zero-copy: data points into the caller's buffer */
        const td_st_tensor_t *a = td_safetensors_find(st, "a.f32");
        CHECK((const char *)a->data >= buf && (const char *)a->data < buf + len);
        CHECK_EQ_INT(td_safetensors_n_metadata(st), 0);
    }
    td_safetensors_destroy(&st);
    /* A truncated image names the given name. */
    st = td_safetensors_from_memory(buf, len - 1, "image", &err);
    CHECK(st == NULL);
    CHECK(strstr(err.msg, "image") && strstr(err.msg, "c.bf16") && strstr(err.msg, "truncated"));
    st = td_safetensors_from_memory(buf, 3, "image", &err);
    CHECK(st == NULL && strstr(err.msg, "image"));
    free(buf);
}

TD_TEST(scalar_and_empty_tensors_and_padding) {
    const char *d = s_subdir("scalar");
    int64_t seven = 7;
    /* a scalar, two zero-size tensors at the same offset (legal), header padded with spaces */
    s_write(s_path(d, "model.safetensors"),
            "{\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
            "\"e1\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[8,8]},"
            "\"e2\":{\"dtype\":\"F16\",\"shape\":[3,0],\"data_offsets\":[8,8]}}      ",
            &seven, 8);
    td_err_t err = {0};
    td_safetensors_t *st = td_safetensors_open(d, &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    REQUIRE(st);
    const td_st_tensor_t *s = td_safetensors_find(st, "s");
    REQUIRE(s);
    CHECK_EQ_INT(s->ndim, 0);
    CHECK_EQ_INT(td_safetensors_n_elements(s), 1);
    int64_t v;
    memcpy(&v, s->data, 8); /* header not padded: data may be unaligned */
    CHECK_EQ_INT(v, 7);
    const td_st_tensor_t *e = td_safetensors_find(st, "e1");
    REQUIRE(e);
    CHECK_EQ_INT(e->nbytes, 0);
    CHECK_EQ_INT(td_safetensors_n_elements(e), 0);
    td_safetensors_destroy(&st);
}

TD_TEST(many_tensors_lookup) {
    /* 1000 tensors: every name must be found, and map to its own data. */
    enum { N = 1000 };
    static char hdr[N * 96 + 16];
    static int32_t data[N];
    int w = snprintf(hdr, sizeof hdr, "{");
    for (int i = 0; i < N; i++) {
        data[i] = i * 7 + 1;
        w += snprintf(hdr + w, sizeof hdr - w,
                      "%s\"model.layers.%d.w\":{\"dtype\":\"I32\",\"shape\":[1],"
                      "\"data_offsets\":[%d,%d]}",
                      i ? "," : "", i, 4 * (N - 1 - i), 4 * (N - i)); /* reversed layout */
    }
    snprintf(hdr + w, sizeof hdr - w, "}");
    static int32_t rev[N];
    for (int i = 0; i < N; i++) rev[N - 1 - i] = data[i];
    const char *d = s_subdir("many");
    s_write(s_path(d, "model.safetensors"), hdr, rev, sizeof rev);
    td_err_t err = {0};
    td_safetensors_t *st = td_safetensors_open(d, &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    REQUIRE(st);
    CHECK_EQ_INT(td_safetensors_count(st), N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.w", i);
        const td_st_tensor_t *t = td_safetensors_find(st, name);
        int32_t v = -1;
        if (t) memcpy(&v, t->data, 4);
        if (!t || strcmp(t->name, name) || v != data[i]) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(td_safetensors_find(st, "model.layers.1000.w") == NULL);
    td_safetensors_destroy(&st);
}

/* Two shards and an index; shard 2 also holds a tensor the map does not list. */
static const char *s_make_sharded(const char *name) {
    const char *d = s_subdir(name);
    s_spec_t t[3];
    s_basic_specs(t);
    s_write_specs(s_path(d, "model-00001-of-00002.safetensors"), t, 2, "{\"format\":\"pt\"}");
    s_spec_t t2[2] = {t[2], {"extra", "F32", 1, {2}, s_f32, 8}};
    s_write_specs(s_path(d, "model-00002-of-00002.safetensors"), t2, 2, NULL);
    s_write_text(s_path(d, "model.safetensors.index.json"),
                 "{\"metadata\":{\"total_size\":48},\"weight_map\":{"
                 "\"a.f32\":\"model-00001-of-00002.safetensors\","
                 "\"c.bf16\":\"model-00002-of-00002.safetensors\","
                 "\"b.f16\":\"model-00001-of-00002.safetensors\"}}");
    return d;
}

TD_TEST(sharded_index) {
    const char *d = s_make_sharded("sharded");
    td_err_t err = {0};
    for (int how = 0; how < 2; how++) {
        td_safetensors_t *st =
            td_safetensors_open(how ? s_path(d, "model.safetensors.index.json") : d, &err);
        CHECK_MSG(st != NULL, "%s", err.msg);
        if (!st) continue;
        CHECK_EQ_INT(td_safetensors_n_files(st), 2);
        CHECK_EQ_INT(td_safetensors_count(st), 4);
        const td_st_tensor_t *a = td_safetensors_find(st, "a.f32");
        const td_st_tensor_t *c = td_safetensors_find(st, "c.bf16");
        const td_st_tensor_t *x = td_safetensors_find(st, "extra");
        if (a && c && x) {
            CHECK(strstr(td_safetensors_file_path(st, a->file), "model-00001-of-00002"));
            CHECK(strstr(td_safetensors_file_path(st, c->file), "model-00002-of-00002"));
            CHECK_EQ_INT(x->file, c->file);
            CHECK(memcmp(c->data, s_bf16, sizeof s_bf16) == 0);
            CHECK(memcmp(x->data, s_f32, 8) == 0);
            CHECK(memcmp(a->data, s_f32, sizeof s_f32) == 0);
        } else {
            CHECK(!"tensor missing");
        }
        CHECK_STR(td_safetensors_metadata(st, "format"), "pt");
        td_safetensors_destroy(&st);
    }
}

TD_TEST(directory_prefers_single_file) {
    const char *d = s_make_sharded("both");
    s_spec_t t = {"only", "F32", 1, {1}, s_f32, 4};
    s_write_specs(s_path(d, "model.safetensors"), &t, 1, NULL);
    td_err_t err = {0};
    td_safetensors_t *st = td_safetensors_open(d, &err);
    REQUIRE(st);
    CHECK_EQ_INT(td_safetensors_count(st), 1);
    CHECK(td_safetensors_find(st, "only") != NULL);
    td_safetensors_destroy(&st);
}

/* Real files: written by safetensors.torch.save_file and transformers' save_pretrained. */
static void s_check_expected(const char *set, int want_files) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/st/%s", td_test_data(), set);
    snprintf(path, sizeof path, "%s/expected.txt", dir);
    FILE *f = fopen(path, "r");
    CHECK_MSG(f != NULL, "missing %s (run tools/make_st_fixtures.py)", path);
    if (!f) return;
    td_err_t err = {0};
    td_safetensors_t *st = td_safetensors_open(dir, &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    if (!st) {
        fclose(f);
        return;
    }
    CHECK_EQ_INT(td_safetensors_n_files(st), want_files);
    char line[1024];
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        char name[256], dtype[16], file[256];
        int ndim, pos;
        if (sscanf(line, "%255s %15s %d%n", name, dtype, &ndim, &pos) != 3) continue;
        lines++;
        const td_st_tensor_t *t = td_safetensors_find(st, name);
        CHECK_MSG(t != NULL, "%s: tensor %s not found", set, name);
        if (!t) continue;
        CHECK_STR(td_dtype_name(t->dtype), dtype);
        CHECK_EQ_INT(t->ndim, ndim);
        char *p = line + pos;
        for (int i = 0; i < ndim; i++) {
            long long v = strtoll(p, &p, 10);
            CHECK_EQ_INT(t->shape[i], v);
        }
        double want;
        if (sscanf(p, "%255s %lf", file, &want) != 2) {
            CHECK(!"bad expected line");
            continue;
        }
        const char *fp = td_safetensors_file_path(st, t->file);
        size_t fl = strlen(fp), nl = strlen(file);
        CHECK_MSG(fl >= nl && strcmp(fp + fl - nl, file) == 0, "%s in %s, expected %s", name, fp,
                  file);
        int64_t n = td_safetensors_n_elements(t);
        double sum = 0;
        if (t->dtype == TD_DTYPE_I64) {
            for (int64_t i = 0; i < n; i++) sum += (double)((const int64_t *)t->data)[i];
        } else {
            float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
            td_to_f32(v, t->data, t->dtype, n);
            for (int64_t i = 0; i < n; i++) sum += v[i];
            free(v);
        }
        CHECK_MSG(fabs(sum - want) <= 1e-5 * (1 + fabs(want)), "%s: sum %.9g, expected %.9g", name,
                  sum, want);
    }
    fclose(f);
    CHECK_EQ_INT(td_safetensors_count(st), lines);
    td_safetensors_destroy(&st);
}

TD_TEST(reference_files_single) {
    s_check_expected("single", 1);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/st/single", td_test_data());
    td_safetensors_t *st = td_safetensors_open(dir, NULL);
    REQUIRE(st);
    CHECK_STR(td_safetensors_metadata(st, "note"), "tandem fixture");
    CHECK_STR(td_safetensors_metadata(st, "format"), "pt");
    td_safetensors_destroy(&st);
}

TD_TEST(reference_files_sharded) { s_check_expected("gpt2-sharded", 6); }
TD_TEST(reference_files_qwen2) { s_check_expected("qwen2-tiny", 1); }

/* --- errors ------------------------------------------------------------------------------------
 */

TD_TEST(error_truncated_file) {
    const char *d = s_subdir("trunc");
    s_spec_t t[3];
    s_basic_specs(t);
    const char *p = s_path(d, "model.safetensors");
    s_write_specs(p, t, 3, NULL);
    struct stat sb;
    REQUIRE(stat(p, &sb) == 0);
    REQUIRE(truncate(p, sb.st_size - 3) == 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'c.bf16'", "truncated");
    s_expect_fail(d, TD_ERR_FORMAT, "model.safetensors", "'c.bf16'", "truncated");
}

TD_TEST(error_header_larger_than_file) {
    const char *d = s_subdir("hdrbig");
    const char *p = s_path(d, "big.safetensors");
    s_write_raw(p, 1000, "{}", NULL, 0); /* writes 1000 header bytes */
    REQUIRE(truncate(p, 8 + 500) == 0);
    s_expect_fail(p, TD_ERR_FORMAT, "big.safetensors", "header size 1000", "larger than the file");
    /* fewer than 8 bytes */
    p = s_path(d, "tiny.safetensors");
    s_write_text(p, "abc");
    s_expect_fail(p, TD_ERR_FORMAT, "tiny.safetensors", "too short", NULL);
    /* header size over the 100 MB limit (sparse file, so it costs no disk) */
    p = s_path(d, "huge.safetensors");
    uint64_t hl = 100ull * 1024 * 1024 + 1;
    s_write_raw(p, 0, "", NULL, 0);
    FILE *f = fopen(p, "r+b");
    REQUIRE(f);
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(hl >> (8 * i));
    fwrite(le, 1, 8, f);
    fclose(f);
    REQUIRE(truncate(p, (off_t)(8 + hl)) == 0);
    s_expect_fail(p, TD_ERR_FORMAT, "huge.safetensors", "100 MB", NULL);
}

TD_TEST(error_bad_json) {
    const char *d = s_subdir("badjson");
    const char *p = s_path(d, "model.safetensors");
    s_write(p, "{\"a\":{\"dtype\":\"F32\",", NULL, 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "not valid JSON", NULL);
    s_write(p, "[1,2]", NULL, 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "not a JSON object", NULL);
    s_write(p, "{} xx", NULL, 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "trailing", NULL);
    s_write(p, "{\"__metadata__\":{\"n\":3}}", NULL, 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "__metadata__", "'n'");
    s_write(p, "{\"w\":[1]}", NULL, 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'w'", "not an object");
    s_write(p, "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,0]}}", NULL, 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'w'", "shape");
    s_write(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[0]}}", NULL, 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'w'", "data_offsets");
    s_write(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,2,3,4,5,6,7,8,9],\"data_offsets\":[0,0]}}",
            NULL, 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'w'", "dimensions");
}

TD_TEST(error_bad_dtype) {
    const char *d = s_subdir("baddtype");
    const char *p = s_path(d, "model.safetensors");
    float x = 1;
    s_write(p, "{\"w.q\":{\"dtype\":\"F13\",\"shape\":[1],\"data_offsets\":[0,4]}}", &x, 4);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'w.q'", "'F13'");
    s_write(p, "{\"w.q\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", &x, 4);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'w.q'", "dtype");
}

TD_TEST(error_shape_offset_mismatch) {
    const char *d = s_subdir("mismatch");
    const char *p = s_path(d, "model.safetensors");
    uint8_t z[64] = {0};
    s_write(p, "{\"m.w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", z, 20);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'m.w'", "24 bytes");
    s_write(p, "{\"m.w\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,24]}}", z, 24);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'m.w'", "shape[1]");
    s_write(p, "{\"m.w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,10]}}", z, 10);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'m.w'", "shape[0]");
    s_write(p, "{\"m.w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", z, 8);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'m.w'", "[8, 0]");
    /* element count overflowing 64 bits must not wrap around to a small size */
    s_write(p,
            "{\"m.w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],"
            "\"data_offsets\":[0,0]}}",
            z, 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'m.w'", "64 bits");
    s_write(p,
            "{\"m.w\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],"
            "\"data_offsets\":[0,0]}}",
            z, 0);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'m.w'", NULL);
}

TD_TEST(error_overlapping_ranges) {
    const char *d = s_subdir("overlap");
    const char *p = s_path(d, "model.safetensors");
    uint8_t z[64] = {0};
    s_write(p,
            "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
            "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
            z, 20);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'y'", "'x'");
    /* overlap hidden behind a zero-size tensor and a short one in between */
    s_write(p,
            "{\"big\":{\"dtype\":\"U8\",\"shape\":[32],\"data_offsets\":[0,32]},"
            "\"mid\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]},"
            "\"in\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[10,12]}}",
            z, 32);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'in'", "'big'");
    /* same name twice */
    s_write(p,
            "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
            "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
            z, 2);
    s_expect_fail(p, TD_ERR_FORMAT, "model.safetensors", "'x'", "twice");
}

TD_TEST(error_missing_shard) {
    const char *d = s_make_sharded("noshard");
    REQUIRE(unlink(s_path(d, "model-00002-of-00002.safetensors")) == 0);
    s_expect_fail(d, TD_ERR_IO, "model-00002-of-00002.safetensors", "'c.bf16'", "missing");
}

TD_TEST(error_tensor_missing_from_shard) {
    const char *d = s_make_sharded("notinshard");
    s_write_text(s_path(d, "model.safetensors.index.json"),
                 "{\"weight_map\":{\"a.f32\":\"model-00001-of-00002.safetensors\","
                 "\"ghost\":\"model-00002-of-00002.safetensors\"}}");
    s_expect_fail(d, TD_ERR_FORMAT, "'ghost'", "model-00002-of-00002.safetensors", NULL);
    /* listed in the wrong shard */
    s_write_text(s_path(d, "model.safetensors.index.json"),
                 "{\"weight_map\":{\"a.f32\":\"model-00002-of-00002.safetensors\","
                 "\"b.f16\":\"model-00001-of-00002.safetensors\"}}");
    s_expect_fail(d, TD_ERR_FORMAT, "'a.f32'", "model-00002-of-00002.safetensors", NULL);
    /* a bad shard is named */
    s_write_text(s_path(d, "model.safetensors.index.json"),
                 "{\"weight_map\":{\"a.f32\":\"model-00001-of-00002.safetensors\","
                 "\"q\":\"bad.safetensors\"}}");
    s_write(s_path(d, "bad.safetensors"), "{\"q\":", NULL, 0);
    s_expect_fail(d, TD_ERR_FORMAT, "bad.safetensors", "JSON", NULL);
    /* a tensor in two shards */
    s_spec_t t = {"a.f32", "F32", 1, {1}, s_f32, 4};
    s_write_specs(s_path(d, "dup.safetensors"), &t, 1, NULL);
    s_write_text(s_path(d, "model.safetensors.index.json"),
                 "{\"weight_map\":{\"a.f32\":\"model-00001-of-00002.safetensors\","
                 "\"b.f16\":\"dup.safetensors\"}}");
    s_expect_fail(d, TD_ERR_FORMAT, "'a.f32'", "dup.safetensors", "model-00001-of-00002");
    /* index problems */
    s_write_text(s_path(d, "model.safetensors.index.json"), "{\"metadata\":{}}");
    s_expect_fail(d, TD_ERR_FORMAT, "model.safetensors.index.json", "weight_map", NULL);
    s_write_text(s_path(d, "model.safetensors.index.json"), "{\"weight_map\":{\"a\":");
    s_expect_fail(d, TD_ERR_FORMAT, "model.safetensors.index.json", "JSON", NULL);
    s_write_text(s_path(d, "model.safetensors.index.json"),
                 "{\"weight_map\":{\"a.f32\":\"../../etc/x.safetensors\"}}");
    s_expect_fail(d, TD_ERR_FORMAT, "model.safetensors.index.json", "'a.f32'", NULL);
}

TD_TEST(error_no_checkpoint) {
    const char *d = s_subdir("empty");
    s_expect_fail(d, TD_ERR_IO, d, "model.safetensors", "model.safetensors.index.json");
    s_expect_fail(s_path(d, "nope.safetensors"), TD_ERR_IO, "nope.safetensors", NULL, NULL);
    td_err_t err = {0};
    CHECK(td_safetensors_open("", &err) == NULL);
}

/* --- tandem inspect ----------------------------------------------------------------------------
 */

/* build/bin/tandem beside this test binary (build/tests/test_safetensors), or NULL. */
static const char *s_tandem_bin(void) {
    static char path[1024];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
    if (n <= 0) return NULL;
    path[n] = 0;
    for (int up = 0; up < 2; up++) {
        char *s = strrchr(path, '/');
        if (!s) return NULL;
        *s = 0;
    }
    strcat(path, "/bin/tandem");
    return access(path, X_OK) == 0 ? path : NULL;
}

TD_TEST(inspect_command) {
    const char *bin = s_tandem_bin();
    if (!bin) {
        td_test_skip("no bin/tandem beside the test binary");
        return;
    }
    static char out[1 << 16];
    char cmd[2048];
    /* transformers wrote total_parameters / total_size into the index: the reference counts */
    snprintf(cmd, sizeof cmd, "%s inspect %s/st/gpt2-sharded --json --tensors 2>&1", bin,
             td_test_data());
    int rc = td_test_run(cmd, out, sizeof out);
    CHECK_EQ_INT(rc, 0);
    cJSON *j = cJSON_Parse(out);
    CHECK_MSG(j != NULL, "not JSON: %.200s", out);
    if (j) {
        CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(j, "arch")), "gpt2");
        CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(j, "n_params")), 2144);
        const cJSON *mem = cJSON_GetObjectItem(j, "memory");
        CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(mem, "weight_bytes")), 8576);
        /* 2 (k, v) x 2 layers x 2 kv heads x head_dim 4 x 4 bytes */
        CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(mem, "kv_bytes_per_token")), 128);
        CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(mem, "context")), 16);
        CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(mem, "kv_bytes_context")), 2048);
        CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(j, "files")), 6);
        CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(j, "tensors")), 28);
        const cJSON *f32 = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "dtypes"), "F32");
        CHECK_EQ_INT(cJSON_GetNumberValue(cJSON_GetObjectItem(f32, "bytes")), 8576);
        cJSON_Delete(j);
    }
    snprintf(cmd, sizeof cmd, "%s inspect %s/st/qwen2-tiny --tensors --ctx 10 2>&1", bin,
             td_test_data());
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 0);
    CHECK(strstr(out, "qwen2 (Qwen2ForCausalLM"));
    CHECK(strstr(out, "parameters     2640 "));
    CHECK(strstr(out, "640 bytes (640 B) for 10 tokens")); /* 2 x 1 x 2 x 4 x 4 x 10 */
    CHECK(strstr(out, "model.layers.0.self_attn.q_proj.bias"));
    snprintf(cmd, sizeof cmd, "%s inspect %s/st/single 2>&1", bin, td_test_data());
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 1); /* no config.json */
    CHECK(strstr(out, "config.json"));
    snprintf(cmd, sizeof cmd, "%s inspect 2>&1", bin);
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 2);
    snprintf(cmd, sizeof cmd, "%s inspect --bogus x 2>&1", bin);
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 2);
    snprintf(cmd, sizeof cmd, "%s inspect --help 2>&1", bin);
    CHECK_EQ_INT(td_test_run(cmd, out, sizeof out), 0);
    CHECK(strstr(out, "--tensors") && strstr(out, "--json"));
}

/* Removes the temp dir (best effort) after all cases. */
__attribute__((destructor)) static void s_cleanup(void) {
    if (s_tmp[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_tmp);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", s_tmp);
    }
}

TD_TEST_MAIN()
