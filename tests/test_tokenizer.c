/* test_tokenizer.c - model/tokenizer.c against HF `tokenizers` reference ids.
 *
 * Fixtures come from tools/make_tokenizer_fixtures.py: two trained byte-level BPE tokenizers
 * (GPT-2 and Qwen2 flavours), each also saved with the other merge format, and expected.tsv
 * files holding what HF gives for hard strings (encode with and without special-token parsing,
 * decode with and without skipping specials). Also checks the streaming decoder, the hash and the
 * error paths. */
#include "model/tokenizer.h"
#include "tests/tdtest.h"
#include "tests/tdutf8.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *text;
    size_t text_len;
    int32_t *ids, *ids_plain;
    int n, n_plain;
    char *dec, *dec_skip;
    size_t dec_len, dec_skip_len;
} s_case_t;

static char *s_unhex(const char *h, size_t n, size_t *len) {
    char *out = malloc(n / 2 + 1);
    for (size_t i = 0; i + 1 < n + 1 && i < n; i += 2) {
        unsigned v;
        sscanf(h + i, "%2x", &v);
        out[i / 2] = (char)v;
    }
    out[n / 2] = 0;
    *len = n / 2;
    return out;
}

static int32_t *s_parse_ids(const char *s, size_t n, int *count) {
    int32_t *ids = malloc((n / 2 + 2) * sizeof *ids);
    *count = 0;
    if (n == 1 && s[0] == '-') return ids;
    char *tmp = strndup(s, n), *p = tmp, *end;
    for (;;) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        ids[(*count)++] = (int32_t)v;
        p = end;
    }
    free(tmp);
    return ids;
}

/* Reads tests/data/tokenizers/<name>/expected.tsv (or <name> itself when it ends in .tsv); returns
 * the number of cases (-1 on error). */
static int s_load_cases(const char *name, s_case_t **cases) {
    char path[512];
    /* name: a fixture directory (its expected.tsv), or a .tsv path under tokenizers/ */
    snprintf(path, sizeof path, "%s/tokenizers/%s%s", td_test_data(), name,
             strstr(name, ".tsv") ? "" : "/expected.tsv");
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t cap = 0;
    char *line = NULL;
    ssize_t len;
    int n = 0, want = -1;
    *cases = NULL;
    if ((len = getline(&line, &cap, f)) > 0) {
        const char *c = strstr(line, "cases=");
        if (strncmp(line, "# tandem-tokenizer-fixture v1 ", 30) != 0 || !c) {
            fprintf(stderr, "    %s: not a v1 fixture; rerun tools/make_tokenizer_fixtures.py\n",
                    path);
            free(line);
            fclose(f);
            return -1;
        }
        want = atoi(c + 6);
    }
    *cases = calloc((size_t)want + 1, sizeof **cases);
    while ((len = getline(&line, &cap, f)) > 0 && n < want) {
        if (line[len - 1] == '\n') line[--len] = 0;
        char *col[5];
        size_t cl[5];
        char *p = line;
        for (int k = 0; k < 5; k++) {
            char *tab = strchr(p, '\t');
            col[k] = p;
            cl[k] = tab ? (size_t)(tab - p) : strlen(p);
            p = tab ? tab + 1 : p + cl[k];
        }
        s_case_t *c = &(*cases)[n++];
        c->text = s_unhex(col[0], cl[0], &c->text_len);
        c->ids = s_parse_ids(col[1], cl[1], &c->n);
        c->ids_plain = s_parse_ids(col[2], cl[2], &c->n_plain);
        c->dec = s_unhex(col[3], cl[3], &c->dec_len);
        c->dec_skip = s_unhex(col[4], cl[4], &c->dec_skip_len);
    }
    free(line);
    fclose(f);
    return n == want ? n : -1;
}

static void s_free_cases(s_case_t *c, int n) {
    for (int i = 0; i < n; i++) {
        free(c[i].text);
        free(c[i].ids);
        free(c[i].ids_plain);
        free(c[i].dec);
        free(c[i].dec_skip);
    }
    free(c);
}

static td_tokenizer_t *s_load(const char *dir) {
    char path[512];
    td_err_t err = {0};
    snprintf(path, sizeof path, "%s/tokenizers/%s/tokenizer.json", td_test_data(), dir);
    td_tokenizer_t *tok = td_tokenizer_load(path, &err);
    if (!tok) fprintf(stderr, "    load %s: %s\n", path, err.msg);
    return tok;
}

static int s_ids_equal(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

static void s_print_ids(const char *what, const int32_t *ids, int n) {
    fprintf(stderr, "      %s:", what);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", (int)ids[i]);
    fputc('\n', stderr);
}

/* Streams ids through td_detok and checks every step's output and the total against batch. */
static void s_check_stream(const td_tokenizer_t *tok, const int32_t *ids, int n, int skip,
                           const char *label) {
    char *batch = NULL;
    size_t blen = 0;
    td_err_t err = {0};
    if (td_tokenizer_decode(tok, ids, n, skip, &batch, &blen, &err) != TD_OK) {
        CHECK_MSG(0, "%s: decode failed: %s", label, err.msg);
        return;
    }
    td_detok_t *d = td_detok_new(tok, skip);
    REQUIRE(d);
    size_t cap = 4096, total = 0;
    char *acc = malloc(blen + 16), step[4096];
    int ok = 1;
    for (int i = 0; i < n && ok; i++) {
        int m = td_detok_push(d, ids[i], step, cap);
        if (m < 0 || !td_test_utf8_valid(step, (size_t)m) || strlen(step) > (size_t)m ||
            total + (size_t)m > blen) {
            CHECK_MSG(0, "%s: stream step %d gave %d bytes (invalid or too long)", label, i, m);
            ok = 0;
            break;
        }
        memcpy(acc + total, step, (size_t)m);
        total += (size_t)m;
    }
    if (ok) {
        int m = td_detok_flush(d, step, cap);
        CHECK(m >= 0 && total + (size_t)m <= blen);
        if (m > 0 && total + (size_t)m <= blen) memcpy(acc + total, step, (size_t)m), total += m;
        CHECK_MSG(total == blen && memcmp(acc, batch, blen) == 0,
                  "%s: streamed text differs from batch decode", label);
    }
    td_detok_destroy(&d);
    CHECK(d == NULL);
    free(acc);
    free(batch);
}

/* Runs every fixture case of `expected` against tok (named dir in messages). */
static void s_check_cases(td_tokenizer_t *tok, const char *dir, const char *expected,
                          int exact_roundtrip) {
    s_case_t *cases;
    int n = s_load_cases(expected, &cases);
    REQUIRE(n > 0);
    int bad = 0;
    for (int i = 0; i < n && bad < 10; i++) {
        s_case_t *c = &cases[i];
        td_err_t err = {0};
        int32_t *ids = NULL;
        int m = 0;
        int rc = td_tokenizer_encode(tok, c->text, c->text_len, 1, &ids, &m, &err);
        if (rc != TD_OK || !s_ids_equal(ids, m, c->ids, c->n)) {
            CHECK_MSG(0, "%s case %d: encode (specials parsed) differs from HF (rc %d %s)", dir, i,
                      rc, err.msg);
            fprintf(stderr, "      text: \"%.*s\"\n", (int)c->text_len, c->text);
            s_print_ids("ours", ids, m);
            s_print_ids("HF  ", c->ids, c->n);
            bad++;
        }
        free(ids);
        ids = NULL;
        rc = td_tokenizer_encode(tok, c->text, c->text_len, 0, &ids, &m, &err);
        if (rc != TD_OK || !s_ids_equal(ids, m, c->ids_plain, c->n_plain)) {
            CHECK_MSG(0, "%s case %d: encode (specials as text) differs from HF", dir, i);
            fprintf(stderr, "      text: \"%.*s\"\n", (int)c->text_len, c->text);
            s_print_ids("ours", ids, m);
            s_print_ids("HF  ", c->ids_plain, c->n_plain);
            bad++;
        }
        free(ids);

        char *dec = NULL;
        size_t dl = 0;
        rc = td_tokenizer_decode(tok, c->ids, c->n, 0, &dec, &dl, &err);
        CHECK_MSG(rc == TD_OK && dl == c->dec_len && memcmp(dec, c->dec, dl) == 0,
                  "%s case %d: decode differs from HF: \"%s\" vs \"%s\"", dir, i, dec, c->dec);
        /* round trip where HF's own decode gives the text back (it drops bytes a vocabulary
         * lacks when there is no unk symbol) */
        if (exact_roundtrip && c->dec_len == c->text_len &&
            memcmp(c->dec, c->text, c->dec_len) == 0)
            CHECK_MSG(dl == c->text_len && memcmp(dec, c->text, dl) == 0,
                      "%s case %d: decode(encode(x)) != x", dir, i);
        free(dec);
        rc = td_tokenizer_decode(tok, c->ids, c->n, 1, &dec, &dl, &err);
        CHECK_MSG(rc == TD_OK && dl == c->dec_skip_len && memcmp(dec, c->dec_skip, dl) == 0,
                  "%s case %d: decode(skip_special) differs from HF", dir, i);
        free(dec);
        s_check_stream(tok, c->ids, c->n, 0, dir);
        s_check_stream(tok, c->ids, c->n, 1, dir);
    }
    s_free_cases(cases, n);
}

/* Runs every fixture case of `expected` against tokenizer file `dir`. */
static void s_check_fixture(const char *dir, const char *expected, int exact_roundtrip) {
    td_tokenizer_t *tok = s_load(dir);
    REQUIRE(tok);
    s_check_cases(tok, dir, expected, exact_roundtrip);
    td_tokenizer_destroy(&tok);
    CHECK(tok == NULL);
    td_tokenizer_destroy(&tok); /* safe twice */
}

TD_TEST(gpt2_matches_hf) { s_check_fixture("gpt2", "gpt2", 1); }
TD_TEST(gpt2_string_merges_match_hf) { s_check_fixture("gpt2-strmerges", "gpt2", 1); }
TD_TEST(gpt2_ignore_merges_matches_hf) {
    s_check_fixture("gpt2-ignoremerges", "gpt2-ignoremerges", 1);
}
TD_TEST(qwen2_matches_hf) { s_check_fixture("qwen2", "qwen2", 0); }
TD_TEST(qwen2_string_merges_match_hf) { s_check_fixture("qwen2-strmerges", "qwen2", 0); }

/* NFC: decomposed input decodes to the composed text (HF does the same: the ids are those of
 * the normalised string), and both spellings encode identically. */
TD_TEST(qwen2_nfc) {
    td_tokenizer_t *tok = s_load("qwen2");
    REQUIRE(tok);
    td_err_t err = {0};
    int32_t *a = NULL, *b = NULL;
    int na = 0, nb = 0;
    const char *composed = "caf\xc3\xa9 \xc3\x85", *decomposed = "cafe\xcc\x81 A\xcc\x8a";
    CHECK_EQ_INT(td_tokenizer_encode(tok, composed, strlen(composed), 1, &a, &na, &err), TD_OK);
    CHECK_EQ_INT(td_tokenizer_encode(tok, decomposed, strlen(decomposed), 1, &b, &nb, &err), TD_OK);
    CHECK(s_ids_equal(a, na, b, nb));
    char *dec = NULL;
    size_t dl;
    CHECK_EQ_INT(td_tokenizer_decode(tok, b, nb, 0, &dec, &dl, &err), TD_OK);
    CHECK_STR(dec, composed);
    free(a);
    free(b);
    free(dec);
    /* gpt2 has no normaliser: the decomposed form round-trips as is */
    td_tokenizer_t *g = s_load("gpt2");
    REQUIRE(g);
    CHECK_EQ_INT(td_tokenizer_encode(g, decomposed, strlen(decomposed), 1, &b, &nb, &err), TD_OK);
    CHECK_EQ_INT(td_tokenizer_decode(g, b, nb, 0, &dec, &dl, &err), TD_OK);
    CHECK_STR(dec, decomposed);
    free(b);
    free(dec);
    td_tokenizer_destroy(&g);
    td_tokenizer_destroy(&tok);
}

TD_TEST(vocab_queries) {
    td_tokenizer_t *tok = s_load("qwen2");
    REQUIRE(tok);
    int32_t eot = td_tokenizer_token_id(tok, "<|endoftext|>");
    int32_t im_end = td_tokenizer_token_id(tok, "<|im_end|>");
    int32_t tool = td_tokenizer_token_id(tok, "<tool_call>");
    CHECK(eot >= 0 && im_end >= 0 && tool >= 0);
    CHECK(td_tokenizer_is_special(tok, eot));
    CHECK(td_tokenizer_is_special(tok, im_end));
    CHECK(!td_tokenizer_is_special(tok, tool));
    CHECK(td_tokenizer_is_added(tok, tool));
    CHECK_STR(td_tokenizer_piece(tok, im_end), "<|im_end|>");
    CHECK_EQ_INT(td_tokenizer_n_vocab(tok), 1123);
    CHECK(td_tokenizer_piece(tok, -1) == NULL);
    CHECK(td_tokenizer_piece(tok, td_tokenizer_n_vocab(tok)) == NULL);
    CHECK_EQ_INT(td_tokenizer_token_id(tok, "no such piece at all"), -1);
    /* space is U+0120 in the byte-level alphabet */
    int32_t sp = td_tokenizer_token_id(tok, "\xc4\xa0");
    CHECK(sp >= 0);
    size_t len = 0;
    const char *b = td_tokenizer_token_bytes(tok, sp, &len);
    CHECK(b && len == 1 && b[0] == ' ');
    CHECK(!td_tokenizer_is_special(tok, sp));
    CHECK(!td_tokenizer_is_special(tok, -5));
    td_tokenizer_destroy(&tok);
}

TD_TEST(load_directory_and_hash) {
    char dir[512];
    td_err_t err = {0};
    snprintf(dir, sizeof dir, "%s/tokenizers/gpt2", td_test_data());
    td_tokenizer_t *a = td_tokenizer_load(dir, &err);
    REQUIRE(a);
    td_tokenizer_t *b = s_load("gpt2-strmerges"), *q = s_load("qwen2"),
                   *q2 = s_load("qwen2-strmerges");
    REQUIRE(b && q && q2);
    CHECK(td_tokenizer_hash(a) == td_tokenizer_hash(b));
    CHECK(td_tokenizer_hash(q) == td_tokenizer_hash(q2));
    CHECK(td_tokenizer_hash(a) != td_tokenizer_hash(q));
    CHECK(td_tokenizer_hash(a) != 0);
    td_tokenizer_destroy(&a);
    td_tokenizer_destroy(&b);
    td_tokenizer_destroy(&q);
    td_tokenizer_destroy(&q2);
}

/* Partial characters: single-byte tokens that split a UTF-8 character, and bytes that never
 * complete one. The stream must hold back, then emit exactly what batch decode gives. */
TD_TEST(stream_partial_utf8) {
    td_tokenizer_t *tok = s_load("gpt2");
    REQUIRE(tok);
    /* byte-level pieces: 0xC3 -> U+00C3, 0xA9 -> U+00A9, 0xE4 -> U+00E4, 0xB8 -> U+00B8 */
    int32_t c3 = td_tokenizer_token_id(tok, "\xc3\x83"),
            a9 = td_tokenizer_token_id(tok, "\xc2\xa9");
    int32_t e4 = td_tokenizer_token_id(tok, "\xc3\xa4"),
            b8 = td_tokenizer_token_id(tok, "\xc2\xb8");
    int32_t A = td_tokenizer_token_id(tok, "A");
    REQUIRE(c3 >= 0 && a9 >= 0 && e4 >= 0 && b8 >= 0 && A >= 0);
    td_detok_t *d = td_detok_new(tok, 0);
    REQUIRE(d);
    char out[256];
    CHECK_EQ_INT(td_detok_push(d, c3, out, sizeof out), 0);
    CHECK_EQ_INT(td_detok_push(d, a9, out, sizeof out), 2);
    CHECK_STR(out, "\xc3\xa9");
    CHECK_EQ_INT(td_detok_push(d, e4, out, sizeof out), 0);
    CHECK_EQ_INT(td_detok_push(d, b8, out, sizeof out), 0);
    CHECK_EQ_INT(td_detok_push(d, A, out, sizeof out), 4); /* E4 B8 'A' -> U+FFFD 'A' */
    CHECK_STR(out, "\xef\xbf\xbd"
                   "A");
    CHECK_EQ_INT(td_detok_push(d, e4, out, sizeof out), 0);
    CHECK_EQ_INT(td_detok_flush(d, out, sizeof out), 3);
    CHECK_STR(out, "\xef\xbf\xbd");
    CHECK_EQ_INT(td_detok_flush(d, out, sizeof out), 0);
    CHECK(td_detok_push(d, -1, out, sizeof out) < 0);
    CHECK(td_detok_push(d, td_tokenizer_n_vocab(tok), out, sizeof out) < 0);
    td_detok_destroy(&d);
    td_detok_destroy(&d);

    const int32_t seqs[][6] = {{c3, a9, A, e4, b8, A},
                               {a9, a9, c3, c3, a9, e4},
                               {e4, b8, e4, b8, b8, A},
                               {c3, A, e4, A, b8, c3}};
    for (size_t s = 0; s < sizeof seqs / sizeof seqs[0]; s++)
        s_check_stream(tok, seqs[s], 6, 0, "synthetic");
    /* batch decode of a lone continuation byte is U+FFFD, as HF's from_utf8_lossy gives */
    char *dec = NULL;
    size_t dl;
    td_err_t err = {0};
    CHECK_EQ_INT(td_tokenizer_decode(tok, &a9, 1, 0, &dec, &dl, &err), TD_OK);
    CHECK_STR(dec, "\xef\xbf\xbd");
    free(dec);
    td_tokenizer_destroy(&tok);
}

TD_TEST(errors) {
    td_err_t err = {0};
    CHECK(td_tokenizer_load("tests/data/tokenizers/no-such-dir", &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_IO);
    CHECK(td_tokenizer_load("tests/data/tokenizers/no-such.json", &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_IO);

    const char *bad = "{\"model\": {\"type\": \"BPE\", \"vocab\": {";
    CHECK(td_tokenizer_from_json(bad, strlen(bad), &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_FORMAT);
    CHECK(td_tokenizer_from_json("", 0, &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_FORMAT);
    CHECK(td_tokenizer_from_json("[1,2]", 5, &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_FORMAT);

    const char *wp = "{\"model\": {\"type\": \"WordPiece\", \"unk_token\": \"[UNK]\", "
                     "\"vocab\": {\"[UNK]\": 0, \"a\": 1}}}";
    CHECK(td_tokenizer_from_json(wp, strlen(wp), &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "WordPiece") != NULL, "message does not name the type: %s", err.msg);
    const char *uni = "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", -1.0]]}}";
    CHECK(td_tokenizer_from_json(uni, strlen(uni), &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "Unigram") != NULL);
    const char *meta = "{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"_\"}, "
                       "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
    CHECK(td_tokenizer_from_json(meta, strlen(meta), &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "Metaspace") != NULL);
    const char *nopre = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
    CHECK(td_tokenizer_from_json(nopre, strlen(nopre), &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_UNSUPPORTED);
    const char *badmerge = "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": "
                           "\"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}";
    CHECK(td_tokenizer_from_json(badmerge, strlen(badmerge), &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_FORMAT);
    const char *sparse = "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": "
                         "\"BPE\", \"vocab\": {\"a\": 9000000}, \"merges\": []}}";
    CHECK(td_tokenizer_from_json(sparse, strlen(sparse), &err) == NULL);
    CHECK_EQ_INT(err.code, TD_ERR_FORMAT);
    const char *tiny =
        "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": "
        "\"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]}}";
    /* ByteLevel without its regex and nothing else: no splitting at all */
    const char *noregex =
        "{\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"use_regex\": false}, \"model\": "
        "{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"\u0120\": 1, \"\u0120a\": 2}, "
        "\"merges\": [\"\u0120 a\"]}}";
    td_tokenizer_t *t = td_tokenizer_from_json(noregex, strlen(noregex), &err);
    CHECK_MSG(t != NULL, "no-regex tokenizer: %s", err.msg);
    if (t) {
        int32_t *ids = NULL;
        int n = 0;
        CHECK_EQ_INT(td_tokenizer_encode(t, "a a a", 5, 1, &ids, &n, &err), TD_OK);
        CHECK(n == 3 && ids[0] == 0 && ids[1] == 2 && ids[2] == 2);
        free(ids);
        td_tokenizer_destroy(&t);
    }
    t = td_tokenizer_from_json(tiny, strlen(tiny), &err);
    CHECK_MSG(t != NULL, "tiny tokenizer: %s", err.msg);
    if (t) {
        int32_t *ids = NULL;
        int n = 0;
        CHECK_EQ_INT(td_tokenizer_encode(t, "abab c", 6, 1, &ids, &n, &err), TD_OK);
        CHECK_EQ_INT(n, 2); /* "ab" "ab", then " c" has no symbols in this vocab: dropped */
        free(ids);
        td_tokenizer_destroy(&t);
    }

    td_tokenizer_t *tok = s_load("qwen2");
    REQUIRE(tok);
    const char *invalid[] = {"abc\x80",      "\xe4\xb8",         "x\xc0\xaf",
                             "\xed\xa0\x80", "\xf5\x80\x80\x80", "ok \xf0\x9f\x98"};
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        int32_t *ids = (int32_t *)1;
        int n = 7;
        CHECK_EQ_INT(td_tokenizer_encode(tok, invalid[i], strlen(invalid[i]), 1, &ids, &n, &err),
                     TD_ERR_ARG);
        CHECK(ids == NULL && n == 0);
    }
    int32_t *ids = NULL;
    int n = -1;
    CHECK_EQ_INT(td_tokenizer_encode(tok, "", 0, 1, &ids, &n, &err), TD_OK);
    CHECK_EQ_INT(n, 0);
    free(ids);
    char *out = NULL;
    size_t len = 0;
    int32_t oob[] = {5, td_tokenizer_n_vocab(tok)};
    CHECK_EQ_INT(td_tokenizer_decode(tok, oob, 2, 0, &out, &len, &err), TD_ERR_ARG);
    CHECK(out == NULL);
    int32_t neg[] = {-1};
    CHECK_EQ_INT(td_tokenizer_decode(tok, neg, 1, 0, &out, &len, &err), TD_ERR_ARG);
    CHECK_EQ_INT(td_tokenizer_decode(tok, NULL, 0, 0, &out, &len, &err), TD_OK);
    CHECK(out && len == 0 && out[0] == 0);
    free(out);
    td_tokenizer_destroy(&tok);
}

/* A megabyte of mixed text: the round trip holds and the time is printed (not asserted). */
TD_TEST(large_input_roundtrip) {
    td_tokenizer_t *tok = s_load("qwen2");
    REQUIRE(tok);
    const char *parts[] = {"The quick brown fox jumps over the lazy dog. ",
                           "don't stop 12345 ",
                           "\n\n",
                           "caf\xc3\xa9 ",
                           "\xe4\xbd\xa0\xe5\xa5\xbd ",
                           "   \t",
                           "\xf0\x9f\x98\x80 ",
                           "It's 3.14159! ",
                           "<|im_end|>"};
    size_t cap = 1 << 20, n = 0;
    char *text = malloc(cap + 64);
    unsigned seed = 7;
    while (n < cap) {
        seed = seed * 1103515245u + 12345u;
        const char *p = parts[(seed >> 16) % (sizeof parts / sizeof parts[0])];
        size_t l = strlen(p);
        memcpy(text + n, p, l);
        n += l;
    }
    td_err_t err = {0};
    int32_t *ids = NULL;
    int m = 0;
    double t0 = td_time_now();
    CHECK_EQ_INT(td_tokenizer_encode(tok, text, n, 1, &ids, &m, &err), TD_OK);
    double t1 = td_time_now();
    char *dec = NULL;
    size_t dl = 0;
    CHECK_EQ_INT(td_tokenizer_decode(tok, ids, m, 0, &dec, &dl, &err), TD_OK);
    CHECK(dl == n && memcmp(dec, text, n) == 0);
    fprintf(stderr, "    encode %zu bytes -> %d ids in %.3f s\n", n, m, t1 - t0);
    free(dec);
    free(ids);
    free(text);
    td_tokenizer_destroy(&tok);
}

/* ---------- td_tokenizer_from_vocab ---------- */

/* A GGUF's tokenizer arrays as tools/make_gguf_tokenizer_fixtures.py dumps them (vocab.txt). */
typedef struct {
    char *data;
    char **tokens, **merges;
    int32_t *types;
    int64_t n_tokens, n_merges;
    char model[32], pre[32];
    int bos, eos, unk, pad, eot, add_bos, add_eos;
} s_dump_t;

static int s_hdr_int(const char *hdr, const char *key) {
    const char *p = strstr(hdr, key);
    return p ? atoi(p + strlen(key)) : -999;
}

static void s_hdr_str(const char *hdr, const char *key, char *out, size_t cap) {
    const char *p = strstr(hdr, key);
    out[0] = 0;
    if (!p) return;
    p += strlen(key);
    size_t n = strcspn(p, " \n");
    snprintf(out, cap, "%.*s", (int)n, p);
}

static void s_dump_free(s_dump_t *d) {
    free(d->data);
    free(d->tokens);
    free(d->merges);
    free(d->types);
    memset(d, 0, sizeof *d);
}

/* Reads tests/data/tokenizers/<name>/vocab.txt; splits its lines in place. */
static int s_dump_load(const char *name, s_dump_t *d) {
    char path[512];
    size_t len = 0;
    td_err_t err = {0};
    memset(d, 0, sizeof *d);
    snprintf(path, sizeof path, "%s/tokenizers/%s/vocab.txt", td_test_data(), name);
    if (td_read_file(path, &d->data, &len, &err) != TD_OK) {
        fprintf(stderr, "    %s\n", err.msg);
        return -1;
    }
    char *line = d->data, *nl = strchr(line, '\n');
    if (strncmp(line, "# tandem-gguf-tokenizer v1 ", 27) != 0 || !nl) return -1;
    *nl = 0;
    s_hdr_str(line, " model=", d->model, sizeof d->model);
    s_hdr_str(line, " pre=", d->pre, sizeof d->pre);
    d->n_tokens = s_hdr_int(line, " tokens=");
    d->n_merges = s_hdr_int(line, " merges=");
    d->bos = s_hdr_int(line, " bos=");
    d->eos = s_hdr_int(line, " eos=");
    d->unk = s_hdr_int(line, " unk=");
    d->pad = s_hdr_int(line, " pad=");
    d->eot = s_hdr_int(line, " eot=");
    d->add_bos = s_hdr_int(line, " add_bos=");
    d->add_eos = s_hdr_int(line, " add_eos=");
    if (d->n_tokens <= 0 || d->n_merges < 0) return -1;
    d->tokens = calloc((size_t)d->n_tokens, sizeof *d->tokens);
    d->types = calloc((size_t)d->n_tokens, sizeof *d->types);
    d->merges = calloc((size_t)d->n_merges + 1, sizeof *d->merges);
    line = nl + 1;
    for (int64_t i = 0; i < d->n_tokens + d->n_merges; i++) {
        if (line >= d->data + len || !(nl = strchr(line, '\n'))) return -1;
        *nl = 0;
        if (i < d->n_tokens) {
            char *tab = strchr(line, '\t');
            if (!tab) return -1;
            d->types[i] = atoi(line);
            d->tokens[i] = tab + 1;
        } else {
            d->merges[i - d->n_tokens] = line;
        }
        line = nl + 1;
    }
    return 0;
}

/* The spec the GGUF loader would build from the same arrays. */
static void s_dump_spec(const s_dump_t *d, td_tok_spec_t *sp) {
    td_tok_spec_init(sp);
    sp->model = d->model;
    sp->pre = d->pre;
    sp->n_tokens = d->n_tokens;
    sp->tokens = (const char *const *)d->tokens;
    sp->token_types = d->types;
    sp->n_merges = d->n_merges;
    sp->merges = (const char *const *)d->merges;
    sp->bos_id = d->bos;
    sp->eos_id = d->eos;
    sp->unk_id = d->unk;
    sp->pad_id = d->pad;
    sp->eot_id = d->eot;
    sp->add_bos = d->add_bos;
    sp->add_eos = d->add_eos;
}

static td_tokenizer_t *s_smollm2(s_dump_t *d) {
    if (s_dump_load("smollm2-gguf", d) != 0) {
        CHECK_MSG(0, "cannot read smollm2-gguf/vocab.txt (tools/make_gguf_tokenizer_fixtures.py)");
        return NULL;
    }
    td_tok_spec_t sp;
    s_dump_spec(d, &sp);
    td_err_t err = {0};
    double t0 = td_time_now();
    td_tokenizer_t *tok = td_tokenizer_from_vocab(&sp, &err);
    fprintf(stderr, "    from_vocab: %lld tokens, %lld merges in %.3f s\n", (long long)d->n_tokens,
            (long long)d->n_merges, td_time_now() - t0);
    CHECK_MSG(tok != NULL, "smollm2 from_vocab: %s", err.msg);
    return tok;
}

/* SmolLM2's GGUF tokenizer arrays against HF's ids (SmolLM2's tokenizer.json pipeline) on code,
 * numbers, unicode, whitespace runs, ChatML conversations and random vocabulary strings. */
TD_TEST(smollm2_gguf_matches_hf) {
    s_dump_t d;
    td_tokenizer_t *tok = s_smollm2(&d);
    REQUIRE(tok);
    s_check_cases(tok, "smollm2-gguf", "smollm2-gguf", 1);
    td_tokenizer_destroy(&tok);
    s_dump_free(&d);
}

/* The other pre-tokenizer names on SmolLM2's vocabulary, against HF running each family's
 * tokenizer.json pipeline (gpt2: ByteLevel; qwen2: NFC + Qwen2's Split; llama-bpe: LLaMA-3's
 * Split + ignore_merges). */
TD_TEST(named_pre_tokenizers_match_hf) {
    s_dump_t d;
    REQUIRE(s_dump_load("smollm2-gguf", &d) == 0);
    const char *names[] = {"gpt2", "qwen2", "llama-bpe"};
    for (int i = 0; i < 3; i++) {
        td_tok_spec_t sp;
        s_dump_spec(&d, &sp);
        sp.pre = names[i];
        td_err_t err = {0};
        td_tokenizer_t *tok = td_tokenizer_from_vocab(&sp, &err);
        CHECK_MSG(tok != NULL, "%s: %s", names[i], err.msg);
        if (!tok) continue;
        char file[128];
        snprintf(file, sizeof file, "smollm2-gguf/expected-pre-%s.tsv", names[i]);
        s_check_cases(tok, file, file, 1);
        td_tokenizer_destroy(&tok);
    }
    s_dump_free(&d);
}

/* An added (user-defined or control) token that is not whole UTF-8 characters would cut the text
 * in the middle of a character before the pre-tokenizer regex runs: refused at load, by id. The
 * fuzzer found this (fuzz/seeds/fuzz_tokenizer/partial-utf8-added). */
TD_TEST(added_token_must_be_utf8) {
    const char *tokens[] = {"a", "b", "\xcc", "ab", "</s>"};
    size_t lens[] = {1, 1, 1, 2, 4};
    int32_t types[] = {TD_TOK_TYPE_NORMAL, TD_TOK_TYPE_NORMAL, TD_TOK_TYPE_USER_DEFINED,
                       TD_TOK_TYPE_NORMAL, TD_TOK_TYPE_CONTROL};
    const char *merges[] = {"a b"};
    size_t mlens[] = {3};
    td_tok_spec_t sp;
    td_tok_spec_init(&sp);
    sp.model = "gpt2";
    sp.pre = "gpt2";
    sp.n_tokens = 5;
    sp.tokens = tokens;
    sp.token_lens = lens;
    sp.token_types = types;
    sp.n_merges = 1;
    sp.merges = merges;
    sp.merge_lens = mlens;
    sp.eos_id = 4;
    td_err_t err = {0};
    td_tokenizer_t *tok = td_tokenizer_from_vocab(&sp, &err);
    CHECK(tok == NULL);
    CHECK_MSG(strstr(err.msg, "added token 2 is not valid UTF-8") != NULL, "%s", err.msg);
    td_tokenizer_destroy(&tok);
    types[2] = TD_TOK_TYPE_NORMAL; /* as an ordinary token the same byte is fine */
    tok = td_tokenizer_from_vocab(&sp, &err);
    CHECK_MSG(tok != NULL, "%s", err.msg);
    td_tokenizer_destroy(&tok);
}

/* A directory without tokenizer.json: a clear error, not a read of the directory itself (fopen
 * opens one, and its ftell "size" is LONG_MAX: malloc of 2^63 bytes, caught by ASan in `tandem
 * inspect --json` of a checkpoint without a tokenizer). */
TD_TEST(directory_without_tokenizer) {
    td_err_t err = {0};
    td_tokenizer_t *tok = td_tokenizer_load("tests/data/st/gpt2-sharded", &err);
    CHECK(tok == NULL);
    CHECK_MSG(strstr(err.msg, "tokenizer.json") != NULL, "%s", err.msg);
    char *data = NULL;
    size_t len = 0;
    CHECK_EQ_INT(td_read_file("tests/data/st", &data, &len, &err), TD_ERR_IO);
    CHECK_MSG(strstr(err.msg, "not a regular file") != NULL, "%s", err.msg);
    CHECK(data == NULL);
}

TD_TEST(smollm2_gguf_vocab) {
    s_dump_t d;
    td_tokenizer_t *tok = s_smollm2(&d);
    REQUIRE(tok);
    CHECK_STR(d.pre, "smollm");
    CHECK_EQ_INT(td_tokenizer_n_vocab(tok), 49152);
    td_tok_specials_t sp;
    td_tokenizer_specials(tok, &sp);
    CHECK_EQ_INT(sp.bos_id, 1);
    CHECK_EQ_INT(sp.eos_id, 2);
    CHECK_EQ_INT(sp.unk_id, 0);
    CHECK_EQ_INT(sp.pad_id, 2);
    CHECK_EQ_INT(sp.eot_id, -1);
    CHECK_EQ_INT(sp.add_bos, 0);
    CHECK_EQ_INT(sp.add_eos, 0);
    CHECK_EQ_INT(td_tokenizer_token_id(tok, "<|im_start|>"), 1);
    CHECK_EQ_INT(td_tokenizer_token_id(tok, "<|im_end|>"), 2);
    for (int32_t id = 0; id < 17; id++) /* the 17 control tokens */
        CHECK_MSG(td_tokenizer_is_special(tok, id) && td_tokenizer_is_added(tok, id),
                  "id %d not special", id);
    CHECK(!td_tokenizer_is_special(tok, 17) && !td_tokenizer_is_added(tok, 17));
    /* digits are split one by one (SmolLM2's Digits step), and decode back */
    td_err_t err = {0};
    int32_t *ids = NULL;
    int n = 0;
    CHECK_EQ_INT(td_tokenizer_encode(tok, "x 12345", 7, 1, &ids, &n, &err), TD_OK);
    CHECK_EQ_INT(n, 7); /* "x" " " "1" "2" "3" "4" "5" */
    free(ids);
    /* the named pre-tokenizer is exactly tokenizer.json's Digits(individual) + ByteLevel */
    td_tok_spec_t s2;
    s_dump_spec(&d, &s2);
    td_tok_pre_step_t steps[2] = {
        {"\\p{N}", 0, TD_TOK_SPLIT_ISOLATED},
        {"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
         "\\s+(?!\\S)|\\s+",
         0, TD_TOK_SPLIT_ISOLATED}};
    s2.pre = NULL;
    s2.pre_steps = steps;
    s2.n_pre_steps = 2;
    td_tokenizer_t *t2 = td_tokenizer_from_vocab(&s2, &err);
    REQUIRE(t2);
    CHECK(td_tokenizer_hash(t2) == td_tokenizer_hash(tok));
    td_tokenizer_destroy(&t2);
    s2.n_pre_steps = 1; /* without the Digits step: another tokenizer */
    s2.pre_steps = steps + 1;
    t2 = td_tokenizer_from_vocab(&s2, &err);
    REQUIRE(t2);
    CHECK(td_tokenizer_hash(t2) != td_tokenizer_hash(tok));
    td_tokenizer_destroy(&t2);
    /* the special ids are not part of the identity (tokenizer.json does not hold them) */
    s_dump_spec(&d, &s2);
    s2.bos_id = s2.eos_id = s2.unk_id = s2.pad_id = -1;
    t2 = td_tokenizer_from_vocab(&s2, &err);
    REQUIRE(t2);
    CHECK(td_tokenizer_hash(t2) == td_tokenizer_hash(tok));
    td_tokenizer_destroy(&t2);
    /* one merge less is another tokenizer */
    s_dump_spec(&d, &s2);
    s2.n_merges--;
    t2 = td_tokenizer_from_vocab(&s2, &err);
    REQUIRE(t2);
    CHECK(td_tokenizer_hash(t2) != td_tokenizer_hash(tok));
    td_tokenizer_destroy(&t2);
    td_tokenizer_destroy(&tok);
    s_dump_free(&d);
}

/* A growable string for building JSON in the test. */
typedef struct {
    char *p;
    size_t n, cap;
} s_str_t;

static void s_cat(s_str_t *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = 2 * (b->n + n + 1) + 4096;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void s_cats(s_str_t *b, const char *s) { s_cat(b, s, strlen(s)); }

static void s_cat_json_str(s_str_t *b, const char *s) {
    s_cat(b, "\"", 1);
    for (; *s; s++) {
        char esc[8];
        if (*s == '"' || *s == '\\') {
            esc[0] = '\\';
            esc[1] = *s;
            s_cat(b, esc, 2);
        } else if ((unsigned char)*s < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", (unsigned char)*s);
            s_cat(b, esc, 6);
        } else {
            s_cat(b, s, 1);
        }
    }
    s_cat(b, "\"", 1);
}

/* SmolLM2 as a tokenizer.json (the shape of the one on the Hub: vocab, "a b" merges, the 17
 * specials as added tokens, Sequence[Digits, ByteLevel]) built from the GGUF arrays: the same
 * tokenizer through td_tokenizer_from_json hashes and encodes as through from_vocab. */
TD_TEST(smollm2_json_and_gguf_same_identity) {
    s_dump_t d;
    td_tokenizer_t *tok = s_smollm2(&d);
    REQUIRE(tok);
    s_str_t js = {0};
    char num[32];
    s_cats(&js, "{\"added_tokens\": [");
    int first = 1;
    for (int64_t i = 0; i < d.n_tokens; i++) {
        if (d.types[i] != TD_TOK_TYPE_CONTROL) continue;
        snprintf(num, sizeof num, "%s{\"id\": %lld, ", first ? "" : ", ", (long long)i);
        s_cats(&js, num);
        s_cats(&js, "\"content\": ");
        s_cat_json_str(&js, d.tokens[i]);
        s_cats(&js, ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
                    "\"normalized\": false, \"special\": true}");
        first = 0;
    }
    s_cats(&js, "], \"normalizer\": null, \"pre_tokenizer\": {\"type\": \"Sequence\", "
                "\"pretokenizers\": [{\"type\": \"Digits\", \"individual_digits\": true}, "
                "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, "
                "\"use_regex\": true}]}, \"model\": {\"type\": \"BPE\", \"unk_token\": "
                "null, \"vocab\": {");
    for (int64_t i = 0; i < d.n_tokens; i++) {
        if (i) s_cats(&js, ", ");
        s_cat_json_str(&js, d.tokens[i]);
        snprintf(num, sizeof num, ": %lld", (long long)i);
        s_cats(&js, num);
    }
    s_cats(&js, "}, \"merges\": [");
    for (int64_t i = 0; i < d.n_merges; i++) {
        if (i) s_cats(&js, ", ");
        s_cat_json_str(&js, d.merges[i]);
    }
    s_cats(&js, "]}}");
    td_err_t err = {0};
    double t0 = td_time_now();
    td_tokenizer_t *tj = td_tokenizer_from_json(js.p, js.n, &err);
    fprintf(stderr, "    from_json: %zu bytes of tokenizer.json in %.3f s\n", js.n,
            td_time_now() - t0);
    CHECK_MSG(tj != NULL, "smollm2 tokenizer.json: %s", err.msg);
    if (tj) {
        CHECK(td_tokenizer_hash(tj) == td_tokenizer_hash(tok));
        CHECK_EQ_INT(td_tokenizer_n_vocab(tj), td_tokenizer_n_vocab(tok));
        s_check_cases(tj, "smollm2-gguf(json)", "smollm2-gguf", 1);
        td_tokenizer_destroy(&tj);
    }
    /* SmolLM2 lacks some bytes (0x04, 0xf1, ...): a BPE unknown symbol then changes encoding,
     * and the identity */
    const char *at = strstr(js.p, "\"unk_token\": null");
    REQUIRE(at);
    s_str_t js2 = {0};
    s_cat(&js2, js.p, (size_t)(at - js.p));
    s_cats(&js2, "\"unk_token\": \"<|endoftext|>\"");
    s_cats(&js2, at + strlen("\"unk_token\": null"));
    tj = td_tokenizer_from_json(js2.p, js2.n, &err);
    REQUIRE(tj);
    CHECK(td_tokenizer_hash(tj) != td_tokenizer_hash(tok));
    int32_t *ids = NULL;
    int n = 0;
    CHECK_EQ_INT(td_tokenizer_encode(tj, "a\x04", 2, 1, &ids, &n, &err), TD_OK);
    CHECK(n == 2 && ids[1] == 0);
    free(ids);
    CHECK_EQ_INT(td_tokenizer_encode(tok, "a\x04", 2, 1, &ids, &n, &err), TD_OK);
    CHECK_EQ_INT(n, 1); /* dropped, as HF with no unk */
    free(ids);
    td_tokenizer_destroy(&tj);
    free(js2.p);
    free(js.p);
    td_tokenizer_destroy(&tok);
    s_dump_free(&d);
}

/* The existing tokenizer.json fixtures rebuilt as a GGUF converter would store them (vocabulary
 * by id with token types, "a b" merges, a named pre-tokenizer): the same ids on every fixture case
 * and the same hash as the tokenizer.json. */
static void s_check_json_as_gguf(const char *dir, const char *pre) {
    char path[512];
    char *data = NULL;
    size_t len = 0;
    td_err_t err = {0};
    snprintf(path, sizeof path, "%s/tokenizers/%s/tokenizer.json", td_test_data(), dir);
    REQUIRE(td_read_file(path, &data, &len, &err) == TD_OK);
    cJSON *root = cJSON_ParseWithLength(data, len);
    REQUIRE(root);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *e;
    int n = 0;
    cJSON_ArrayForEach(e, vocab) if (e->valueint + 1 > n) n = e->valueint + 1;
    cJSON_ArrayForEach(e, added) {
        int id = cJSON_GetObjectItemCaseSensitive(e, "id")->valueint;
        if (id + 1 > n) n = id + 1;
    }
    const char **tokens = calloc((size_t)n, sizeof *tokens);
    int32_t *types = calloc((size_t)n, sizeof *types);
    int nm = cJSON_GetArraySize(merges), k = 0, na = 0;
    char **ms = calloc((size_t)nm + 1, sizeof *ms);
    td_tok_added_t *flags = calloc((size_t)cJSON_GetArraySize(added) + 1, sizeof *flags);
    for (int i = 0; i < n; i++) types[i] = TD_TOK_TYPE_NORMAL;
    cJSON_ArrayForEach(e, vocab) tokens[e->valueint] = e->string;
    cJSON_ArrayForEach(e, merges) {
        const char *a = cJSON_IsArray(e) ? cJSON_GetArrayItem(e, 0)->valuestring : e->valuestring;
        const char *b = cJSON_IsArray(e) ? cJSON_GetArrayItem(e, 1)->valuestring : NULL;
        size_t l = strlen(a) + (b ? strlen(b) + 1 : 0) + 1;
        ms[k] = malloc(l);
        snprintf(ms[k++], l, b ? "%s %s" : "%s", a, b ? b : "");
    }
    cJSON_ArrayForEach(e, added) {
        int id = cJSON_GetObjectItemCaseSensitive(e, "id")->valueint;
        int special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special"));
        tokens[id] = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        types[id] = special ? TD_TOK_TYPE_CONTROL : TD_TOK_TYPE_USER_DEFINED;
        /* flags a GGUF token type cannot say travel as explicit added entries */
        int l = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "lstrip"));
        int r = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "rstrip"));
        int w = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "single_word"));
        if (l || r || w) flags[na++] = (td_tok_added_t){id, tokens[id], special, l, r, w, 0};
    }
    td_tok_spec_t sp;
    td_tok_spec_init(&sp);
    sp.model = "gpt2";
    sp.pre = pre;
    sp.n_tokens = n;
    sp.tokens = tokens;
    sp.token_types = types;
    sp.n_merges = k;
    sp.merges = (const char *const *)ms;
    sp.added = flags;
    sp.n_added = na;
    td_tokenizer_t *tv = td_tokenizer_from_vocab(&sp, &err);
    CHECK_MSG(tv != NULL, "%s as GGUF arrays: %s", dir, err.msg);
    td_tokenizer_t *tj = td_tokenizer_from_json(data, len, &err);
    REQUIRE(tj);
    if (tv) {
        CHECK_MSG(td_tokenizer_hash(tv) == td_tokenizer_hash(tj),
                  "%s: hash from arrays %016llx != from tokenizer.json %016llx", dir,
                  (unsigned long long)td_tokenizer_hash(tv),
                  (unsigned long long)td_tokenizer_hash(tj));
        CHECK_EQ_INT(td_tokenizer_n_vocab(tv), td_tokenizer_n_vocab(tj));
        s_check_cases(tv, dir, dir, 0);
        td_tokenizer_destroy(&tv);
    }
    td_tokenizer_destroy(&tj);
    for (int i = 0; i < k; i++) free(ms[i]);
    free(ms);
    free(flags);
    free(tokens);
    free(types);
    cJSON_Delete(root);
    free(data);
}

TD_TEST(gpt2_json_vs_vocab) { s_check_json_as_gguf("gpt2", "gpt2"); }
TD_TEST(qwen2_json_vs_vocab) { s_check_json_as_gguf("qwen2", "qwen2"); }

/* Models and pre-tokenizers we do not implement are refused by name, never guessed. */
TD_TEST(from_vocab_refusals) {
    const char *tokens[] = {"a", "b", "ab", "<s>", "Ġ"};
    int32_t types[] = {1, 1, 1, 3, 1};
    const char *merges[] = {"a b"};
    td_tok_spec_t sp;
    td_err_t err = {0};
    td_tokenizer_t *t;
#define SPEC()                                                                                     \
    do {                                                                                           \
        td_tok_spec_init(&sp);                                                                     \
        sp.model = "gpt2";                                                                         \
        sp.pre = "gpt2";                                                                           \
        sp.n_tokens = 5;                                                                           \
        sp.tokens = tokens;                                                                        \
        sp.token_types = types;                                                                    \
        sp.n_merges = 1;                                                                           \
        sp.merges = merges;                                                                        \
    } while (0)
    SPEC();
    t = td_tokenizer_from_vocab(&sp, &err);
    REQUIRE(t);
    CHECK(td_tokenizer_is_special(t, 3));
    int32_t *ids = NULL;
    int n = 0;
    CHECK_EQ_INT(td_tokenizer_encode(t, "ab<s>ab", 7, 1, &ids, &n, &err), TD_OK);
    CHECK_EQ_INT(n, 3);
    CHECK(n == 3 && ids[0] == 2 && ids[1] == 3 && ids[2] == 2);
    free(ids);
    td_tokenizer_destroy(&t);

    const char *models[] = {"llama", "bert", "t5", "GPT2", ""};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        SPEC();
        sp.model = models[i];
        CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL);
        CHECK_EQ_INT(err.code, TD_ERR_UNSUPPORTED);
        char want[64];
        snprintf(want, sizeof want, "'%s'", models[i]);
        CHECK_MSG(strstr(err.msg, want) != NULL, "message does not name %s: %s", want, err.msg);
    }
    const char *pres[] = {"default", "falcon", "deepseek-llm", "SMOLLM", "", "starcoder"};
    for (size_t i = 0; i < sizeof pres / sizeof pres[0]; i++) {
        SPEC();
        sp.pre = pres[i];
        CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL);
        CHECK_EQ_INT(err.code, TD_ERR_UNSUPPORTED);
        char want[64];
        snprintf(want, sizeof want, "'%s'", pres[i]);
        CHECK_MSG(strstr(err.msg, want) != NULL, "message does not name %s: %s", want, err.msg);
    }
    const char *known[] = {"gpt2", "smollm", "qwen2", "llama-bpe", "llama3", "llama-v3"};
    uint64_t h[6];
    for (size_t i = 0; i < 6; i++) {
        SPEC();
        sp.pre = known[i];
        t = td_tokenizer_from_vocab(&sp, &err);
        CHECK_MSG(t != NULL, "%s: %s", known[i], err.msg);
        h[i] = t ? td_tokenizer_hash(t) : 0;
        td_tokenizer_destroy(&t);
    }
    CHECK(h[0] != h[1] && h[0] != h[2] && h[0] != h[3] && h[1] != h[2] && h[2] != h[3]);
    CHECK(h[3] == h[4] && h[4] == h[5]); /* three names of one pre-tokenizer */

    SPEC();
    sp.model = NULL;
    CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL && err.code == TD_ERR_ARG);
    CHECK(td_tokenizer_from_vocab(NULL, &err) == NULL && err.code == TD_ERR_ARG);
    SPEC();
    sp.pre = NULL; /* neither a name nor steps */
    CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL && err.code == TD_ERR_ARG);
    SPEC();
    sp.ignore_merges = 1; /* a name already says */
    CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL && err.code == TD_ERR_ARG);
    SPEC();
    int32_t bad_types[] = {1, 1, 1, 7, 1};
    sp.token_types = bad_types;
    CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL && err.code == TD_ERR_FORMAT);
    int32_t byte_types[] = {1, 1, 1, 6, 1};
    sp.token_types = byte_types;
    CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL && err.code == TD_ERR_UNSUPPORTED);
    SPEC();
    const char *bad_merges[] = {"a c"};
    sp.merges = bad_merges;
    CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL && err.code == TD_ERR_FORMAT);
    const char *nospace[] = {"ab"};
    sp.merges = nospace;
    CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL && err.code == TD_ERR_FORMAT);
    SPEC();
    sp.eos_id = 5;
    CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL && err.code == TD_ERR_FORMAT);
    SPEC();
    td_tok_added_t far = {1 << 23, "<far>", 1, 0, 0, 0, 0};
    sp.added = &far;
    sp.n_added = 1;
    CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL && err.code == TD_ERR_FORMAT);
    SPEC();
    td_tok_added_t twice[2] = {{5, "<x>", 1, 0, 0, 0, 0}, {5, "<y>", 1, 0, 0, 0, 0}};
    sp.added = twice;
    sp.n_added = 2;
    CHECK(td_tokenizer_from_vocab(&sp, &err) == NULL && err.code == TD_ERR_FORMAT);

    /* lengths instead of NUL terminators (a mmapped GGUF), and a repeated string: the last id
     * wins, as in llama.cpp's and HF's maps */
    SPEC();
    const char *raw[] = {"aXX", "bYY", "abZ", "<s>", "ĠQ"};
    size_t lens[] = {1, 1, 2, 3, 2};
    const char *rm[] = {"a b???"};
    size_t rml[] = {3};
    sp.tokens = raw;
    sp.token_lens = lens;
    sp.merges = rm;
    sp.merge_lens = rml;
    t = td_tokenizer_from_vocab(&sp, &err);
    CHECK_MSG(t != NULL, "lengths: %s", err.msg);
    if (t) {
        CHECK_EQ_INT(td_tokenizer_token_id(t, "ab"), 2);
        SPEC();
        td_tokenizer_t *t0 = td_tokenizer_from_vocab(&sp, &err);
        REQUIRE(t0);
        CHECK(td_tokenizer_hash(t0) == td_tokenizer_hash(t));
        td_tokenizer_destroy(&t0);
        td_tokenizer_destroy(&t);
    }
    /* llama-bpe (LLaMA 3) sets ignore_merges: a pre-token that is a whole vocabulary entry is
     * one token even where the merges would stop short of it */
    const char *im_tok[] = {"a", "b", "c", "ab", "bc", "abc"};
    const char *im_merges[] = {"a b", "b c"};
    const char *im_pres[] = {"gpt2", "llama-bpe", "llama3"};
    int im_want[] = {2, 1, 1};
    for (int i = 0; i < 3; i++) {
        td_tok_spec_init(&sp);
        sp.model = "gpt2";
        sp.pre = im_pres[i];
        sp.n_tokens = 6;
        sp.tokens = im_tok;
        sp.n_merges = 2;
        sp.merges = im_merges;
        t = td_tokenizer_from_vocab(&sp, &err);
        REQUIRE(t);
        CHECK_EQ_INT(td_tokenizer_encode(t, "abc", 3, 1, &ids, &n, &err), TD_OK);
        CHECK_MSG(n == im_want[i], "%s: \"abc\" gave %d tokens, want %d", im_pres[i], n,
                  im_want[i]);
        free(ids);
        td_tokenizer_destroy(&t);
    }

    /* a GGUF's padding of the vocabulary (UNUSED "[PADn]" entries) is not part of the identity;
     * the same strings as NORMAL tokens are */
    SPEC();
    t = td_tokenizer_from_vocab(&sp, &err);
    REQUIRE(t);
    const char *padded[] = {"a", "b", "ab", "<s>", "Ġ", "[PAD5]", "[PAD6]"};
    int32_t pad_types[] = {1, 1, 1, 3, 1, 5, 5};
    sp.tokens = padded;
    sp.token_types = pad_types;
    sp.n_tokens = 7;
    td_tokenizer_t *tp = td_tokenizer_from_vocab(&sp, &err);
    REQUIRE(tp);
    CHECK_EQ_INT(td_tokenizer_n_vocab(tp), 7);
    CHECK(td_tokenizer_hash(tp) == td_tokenizer_hash(t));
    td_tokenizer_destroy(&tp);
    pad_types[5] = pad_types[6] = 1;
    tp = td_tokenizer_from_vocab(&sp, &err);
    REQUIRE(tp);
    CHECK(td_tokenizer_hash(tp) != td_tokenizer_hash(t));
    td_tokenizer_destroy(&tp);
    td_tokenizer_destroy(&t);

    SPEC();
    const char *dup[] = {"a", "b", "ab", "<s>", "a"};
    sp.tokens = dup;
    t = td_tokenizer_from_vocab(&sp, &err);
    REQUIRE(t);
    CHECK_EQ_INT(td_tokenizer_token_id(t, "a"), 4);
    td_tokenizer_destroy(&t);
#undef SPEC
}

/* ---------- the real GGUF, when present ---------- */

/* A bounds-checked cursor over a GGUF header (just enough to reach the tokenizer arrays). */
typedef struct {
    const uint8_t *p, *end;
    int bad;
} s_gguf_cur_t;

static uint64_t s_gguf_u(s_gguf_cur_t *c, int n) {
    if (c->bad || (size_t)(c->end - c->p) < (size_t)n) {
        c->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)c->p[i] << (8 * i);
    c->p += n;
    return v;
}

static const char *s_gguf_str(s_gguf_cur_t *c, size_t *len) {
    uint64_t n = s_gguf_u(c, 8);
    if (c->bad || (uint64_t)(c->end - c->p) < n) {
        c->bad = 1;
        return NULL;
    }
    const char *s = (const char *)c->p;
    c->p += n;
    *len = (size_t)n;
    return s;
}

static const int s_gguf_size[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* Reads the arrays of the GGUF at path into sp (strings point into the mapping, with lengths:
 * not NUL-terminated, as a GGUF loader would pass them). Returns 0, or -1 on a malformed file. */
typedef struct {
    const char **tokens, **merges;
    size_t *tlen, *mlen;
    int32_t *types;
    char model[32], pre[32];
} s_gguf_tok_t;

static int s_gguf_read(const uint8_t *data, size_t size, td_tok_spec_t *sp, s_gguf_tok_t *g) {
    s_gguf_cur_t c = {data, data + size, 0};
    if (size < 24 || memcmp(data, "GGUF", 4) != 0) return -1;
    c.p += 4;
    uint32_t version = (uint32_t)s_gguf_u(&c, 4);
    if (version < 2 || version > 3) return -1;
    s_gguf_u(&c, 8); /* tensors */
    uint64_t n_kv = s_gguf_u(&c, 8);
    td_tok_spec_init(sp);
    for (uint64_t k = 0; k < n_kv && !c.bad; k++) {
        size_t kl = 0;
        const char *key = s_gguf_str(&c, &kl);
        uint32_t type = (uint32_t)s_gguf_u(&c, 4);
        if (c.bad || type > 12) return -1;
#define KEY(name) (kl == strlen(name) && memcmp(key, name, kl) == 0)
        if (type == 9) {
            uint32_t et = (uint32_t)s_gguf_u(&c, 4);
            uint64_t n = s_gguf_u(&c, 8);
            if (c.bad || et > 12 || et == 9 || n > size) return -1;
            int tok = KEY("tokenizer.ggml.tokens"), mer = KEY("tokenizer.ggml.merges");
            int typ = KEY("tokenizer.ggml.token_type");
            if (tok) {
                g->tokens = calloc(n + 1, sizeof *g->tokens);
                g->tlen = calloc(n + 1, sizeof *g->tlen);
                sp->n_tokens = (int64_t)n;
            } else if (mer) {
                g->merges = calloc(n + 1, sizeof *g->merges);
                g->mlen = calloc(n + 1, sizeof *g->mlen);
                sp->n_merges = (int64_t)n;
            } else if (typ) {
                g->types = calloc(n + 1, sizeof *g->types);
            }
            for (uint64_t i = 0; i < n && !c.bad; i++) {
                if (et == 8) {
                    size_t l = 0;
                    const char *str = s_gguf_str(&c, &l);
                    if (tok) g->tokens[i] = str, g->tlen[i] = l;
                    if (mer) g->merges[i] = str, g->mlen[i] = l;
                } else {
                    uint64_t v = s_gguf_u(&c, s_gguf_size[et]);
                    if (typ) g->types[i] = (int32_t)v;
                }
            }
        } else if (type == 8) {
            size_t l = 0;
            const char *str = s_gguf_str(&c, &l);
            if (KEY("tokenizer.ggml.model"))
                snprintf(g->model, sizeof g->model, "%.*s", (int)l, str);
            if (KEY("tokenizer.ggml.pre")) snprintf(g->pre, sizeof g->pre, "%.*s", (int)l, str);
        } else {
            uint64_t v = s_gguf_u(&c, s_gguf_size[type]);
            if (KEY("tokenizer.ggml.bos_token_id")) sp->bos_id = (int32_t)v;
            if (KEY("tokenizer.ggml.eos_token_id")) sp->eos_id = (int32_t)v;
            if (KEY("tokenizer.ggml.unknown_token_id")) sp->unk_id = (int32_t)v;
            if (KEY("tokenizer.ggml.padding_token_id")) sp->pad_id = (int32_t)v;
            if (KEY("tokenizer.ggml.eot_token_id")) sp->eot_id = (int32_t)v;
            if (KEY("tokenizer.ggml.add_bos_token")) sp->add_bos = (int)v;
            if (KEY("tokenizer.ggml.add_eos_token")) sp->add_eos = (int)v;
        }
#undef KEY
    }
    if (c.bad || !g->tokens || !g->merges || !g->types) return -1;
    sp->model = g->model;
    sp->pre = g->pre;
    sp->tokens = g->tokens;
    sp->token_lens = g->tlen;
    sp->token_types = g->types;
    sp->merges = g->merges;
    sp->merge_lens = g->mlen;
    return 0;
}

/* The committed vocab.txt is the real model's tokenizer: built from the GGUF itself (strings
 * straight from the file, by length), it hashes and encodes the same. Skips without the model
 * (models/smollm2/, fetched by the project's model script; TD_SMOLLM2_GGUF overrides). */
TD_TEST(smollm2_real_gguf_arrays) {
    const char *path = getenv("TD_SMOLLM2_GGUF");
    if (!path || !*path) path = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        char why[600];
        snprintf(why, sizeof why, "%s not present (fetch the real model first)", path);
        td_test_skip(why);
        return;
    }
    struct stat st;
    REQUIRE(fstat(fd, &st) == 0 && st.st_size > 0);
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    REQUIRE(map != MAP_FAILED);
    td_tok_spec_t sp;
    s_gguf_tok_t g;
    memset(&g, 0, sizeof g);
    CHECK_MSG(s_gguf_read(map, (size_t)st.st_size, &sp, &g) == 0, "%s: malformed GGUF", path);
    td_err_t err = {0};
    td_tokenizer_t *real = g.tokens ? td_tokenizer_from_vocab(&sp, &err) : NULL;
    CHECK_MSG(real != NULL, "%s: %s", path, err.msg);
    s_dump_t d;
    td_tokenizer_t *dump = s_smollm2(&d);
    if (real && dump) {
        CHECK(td_tokenizer_hash(real) == td_tokenizer_hash(dump));
        CHECK_EQ_INT(td_tokenizer_n_vocab(real), td_tokenizer_n_vocab(dump));
        td_tok_specials_t a, b;
        td_tokenizer_specials(real, &a);
        td_tokenizer_specials(dump, &b);
        CHECK(memcmp(&a, &b, sizeof a) == 0);
        s_check_cases(real, "smollm2 (real GGUF)", "smollm2-gguf", 1);
    }
    td_tokenizer_destroy(&real);
    td_tokenizer_destroy(&dump);
    s_dump_free(&d);
    free(g.tokens);
    free(g.tlen);
    free(g.merges);
    free(g.mlen);
    free(g.types);
    munmap(map, (size_t)st.st_size);
}

TD_TEST_MAIN()
