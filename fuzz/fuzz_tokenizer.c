/* fuzz_tokenizer.c - libFuzzer target for model/tokenizer.c.
 *
 * The first byte picks the mode, the rest is the payload:
 *   0  encode the payload with a fixture tokenizer (specials parsed), decode, stream-decode
 *   1  the same with specials as plain text, plus a round-trip property: decoding the ids gives
 *      the input itself (no normaliser) or a text that encodes to the same ids (normaliser)
 *   2  the payload as little-endian int32 ids: batch decode must equal the streamed decode,
 *      and every streamed piece must be whole UTF-8 characters
 *   3  the payload as a tokenizer.json; when it loads, encode and decode a fixed text with it
 *   4  the payload as GGUF-style arrays for td_tokenizer_from_vocab: byte 0 picks the model and
 *      pre-tokenizer names (some refused), then NUL-separated strings: tokens (a leading byte
 *      1..7 is the token type) up to an empty string, then merges; when it builds, encode and
 *      decode a fixed text with it and check the hash is stable
 * The fixture is TD_FUZZ_TOKENIZER, default tests/data/tokenizers/qwen2/tokenizer.json (run from
 * the repository root). The round-trip property assumes the tokenizer has no non-special added
 * token with lstrip/rstrip (true of the fixtures). */
#include "tests/tdutf8.h"
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static td_tokenizer_t *s_tok;
static int s_normalizes;

static void s_fail(const char *what) {
    fprintf(stderr, "fuzz_tokenizer: %s\n", what);
    abort();
}

/* Streams ids and checks the result against batch decode. */
static void s_stream_check(const td_tokenizer_t *tok, const int32_t *ids, int n, int skip) {
    char *batch = NULL;
    size_t blen = 0;
    td_err_t err;
    int rc = td_tokenizer_decode(tok, ids, n, skip, &batch, &blen, &err);
    td_detok_t *d = td_detok_new(tok, skip);
    if (!d) s_fail("td_detok_new failed");
    char *acc = malloc(blen + 8);
    size_t total = 0, cap = 1 << 16;
    char *step = malloc(cap);
    int stream_ok = 1;
    for (int i = 0; i < n; i++) {
        int m = td_detok_push(d, ids[i], step, cap);
        if (m < 0) {
            stream_ok = 0;
            break;
        }
        if (!td_test_utf8_valid(step, (size_t)m)) s_fail("stream emitted invalid UTF-8");
        if (rc == TD_OK && total + (size_t)m > blen) s_fail("stream longer than batch");
        if (rc == TD_OK) memcpy(acc + total, step, (size_t)m);
        total += (size_t)m;
    }
    if (rc == TD_OK && !stream_ok) s_fail("batch decode ok but stream push failed");
    if (rc != TD_OK && stream_ok) s_fail("batch decode failed but stream accepted every id");
    if (rc == TD_OK) {
        int m = td_detok_flush(d, step, cap);
        if (m < 0 || total + (size_t)m > blen) s_fail("flush failed or too long");
        memcpy(acc + total, step, (size_t)m);
        total += (size_t)m;
        if (total != blen || memcmp(acc, batch, blen) != 0) s_fail("stream != batch decode");
        if (!td_test_utf8_valid(batch, blen)) s_fail("batch decode gave invalid UTF-8");
    }
    td_detok_destroy(&d);
    free(step);
    free(acc);
    free(batch);
}

/* Encodes text with and without special-token parsing and checks each encoding's stream decode. */
static void s_encode_check(const td_tokenizer_t *tok, const char *text, size_t len) {
    for (int ps = 0; ps < 2; ps++) {
        int32_t *ids = NULL;
        int n = 0;
        td_err_t err = {0};
        if (td_tokenizer_encode(tok, text, len, ps, &ids, &n, &err) == TD_OK) {
            s_stream_check(tok, ids, n, ps);
            free(ids);
        }
    }
}

static void s_encode_mode(const char *text, size_t len, int parse_special) {
    int32_t *ids = NULL;
    int n = 0;
    td_err_t err;
    int rc = td_tokenizer_encode(s_tok, text, len, parse_special, &ids, &n, &err);
    if (rc != TD_OK) {
        if (rc != TD_ERR_ARG) s_fail(err.msg);
        if (td_test_utf8_valid(text, len)) s_fail("valid UTF-8 refused");
        return;
    }
    if (!td_test_utf8_valid(text, len)) s_fail("invalid UTF-8 accepted");
    char *dec = NULL;
    size_t dl = 0;
    if (td_tokenizer_decode(s_tok, ids, n, 0, &dec, &dl, &err) != TD_OK) s_fail(err.msg);
    if (!parse_special) {
        if (!s_normalizes) {
            if (dl != len || memcmp(dec, text, len) != 0) s_fail("decode(encode(x)) != x");
        } else {
            int32_t *ids2 = NULL;
            int n2 = 0;
            if (td_tokenizer_encode(s_tok, dec, dl, 0, &ids2, &n2, &err) != TD_OK)
                s_fail("re-encoding the decoded text failed");
            if (n2 != n || (n && memcmp(ids, ids2, (size_t)n * sizeof *ids) != 0))
                s_fail("encode(decode(encode(x))) != encode(x)");
            free(ids2);
        }
    }
    s_stream_check(s_tok, ids, n, 0);
    s_stream_check(s_tok, ids, n, 1);
    free(dec);
    free(ids);
}

static void s_json_mode(const char *json, size_t len) {
    td_err_t err;
    td_tokenizer_t *tok = td_tokenizer_from_json(json, len, &err);
    if (!tok) return;
    static const char text[] =
        "Hello  world, don't 12345\r\n\tcafe\xcc\x81 \xe4\xb8\x96\xe7\x95\x8c "
        "\xf0\x9f\x98\x80<|endoftext|><mask> x";
    s_encode_check(tok, text, sizeof text - 1);
    int nv = td_tokenizer_n_vocab(tok);
    int32_t some[4] = {0, nv - 1, nv / 2, nv};
    s_stream_check(tok, some, 4, 0);
    (void)td_tokenizer_hash(tok);
    (void)td_tokenizer_token_id(tok, "<|endoftext|>");
    td_tokenizer_destroy(&tok);
}

static void s_vocab_mode(const char *p, size_t n) {
    static const char *const models[] = {"gpt2", "gpt2", "gpt2", "llama", "bert"};
    static const char *const pres[] = {"gpt2",   "smollm",  "qwen2",   "llama-bpe",
                                       "llama3", "default", "unknown", "llama-v3"};
    if (n < 1) return;
    td_tok_spec_t sp;
    td_tok_spec_init(&sp);
    sp.model = models[(uint8_t)p[0] % 5];
    sp.pre = pres[((uint8_t)p[0] >> 3) % 8];
    const char *tokens[256], *merges[256];
    size_t tlen[256], mlen[256];
    int32_t types[256];
    int nt = 0, nm = 0, in_merges = 0;
    size_t i = 1;
    while (i < n) {
        const char *z = memchr(p + i, 0, n - i);
        size_t len = z ? (size_t)(z - (p + i)) : n - i;
        if (!in_merges) {
            if (len == 0 || nt == 256) {
                in_merges = 1;
            } else {
                uint8_t t = (uint8_t)p[i];
                int typed = t >= 1 && t <= 7;
                types[nt] = typed ? t : 1;
                tokens[nt] = p + i + typed;
                tlen[nt++] = len - (size_t)typed;
            }
        } else if (nm < 256) {
            merges[nm] = p + i;
            mlen[nm++] = len;
        }
        i += len + 1;
    }
    sp.n_tokens = nt;
    sp.tokens = tokens;
    sp.token_lens = tlen;
    sp.token_types = types;
    sp.n_merges = nm;
    sp.merges = merges;
    sp.merge_lens = mlen;
    sp.eos_id = nt > 0 ? nt - 1 : -1;
    td_err_t err;
    td_tokenizer_t *tok = td_tokenizer_from_vocab(&sp, &err);
    if (!tok) return;
    td_tokenizer_t *again = td_tokenizer_from_vocab(&sp, &err);
    if (!again || td_tokenizer_hash(again) != td_tokenizer_hash(tok)) s_fail("hash is not stable");
    td_tokenizer_destroy(&again);
    static const char text[] = "Hello  world, don't 12345\r\n\tcafe\xcc\x81 \xe4\xb8\x96 ab<s>";
    s_encode_check(tok, text, sizeof text - 1);
    td_tokenizer_destroy(&tok);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *path = getenv("TD_FUZZ_TOKENIZER");
    if (!path || !*path) path = "tests/data/tokenizers/qwen2/tokenizer.json";
    td_err_t err;
    s_tok = td_tokenizer_load(path, &err);
    if (!s_tok) {
        fprintf(stderr,
                "fuzz_tokenizer: cannot load %s: %s (run from the repository root or set "
                "TD_FUZZ_TOKENIZER)\n",
                path, err.msg);
        exit(1);
    }
    /* NFC changes "e\u0301": the tokenizer normalises when the two spellings encode alike */
    int32_t *a = NULL, *b = NULL;
    int na = 0, nb = 0;
    td_tokenizer_encode(s_tok, "\xc3\xa9", 2, 0, &a, &na, &err);
    td_tokenizer_encode(s_tok, "e\xcc\x81", 3, 0, &b, &nb, &err);
    s_normalizes = na == nb && na > 0 && memcmp(a, b, (size_t)na * sizeof *a) == 0;
    free(a);
    free(b);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int mode = data[0] % 5;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    if (mode == 0 || mode == 1) {
        s_encode_mode(p, n, mode == 0);
    } else if (mode == 2) {
        int count = (int)(n / 4);
        int32_t *ids = malloc(((size_t)count + 1) * sizeof *ids);
        int nv = td_tokenizer_n_vocab(s_tok);
        for (int i = 0; i < count; i++) {
            uint32_t v;
            memcpy(&v, p + 4 * i, 4);
            /* mostly in range, sometimes just past either end */
            ids[i] = (v >> 24) == 0xff ? (int32_t)v : (int32_t)(v % (uint32_t)(nv + 1));
        }
        s_stream_check(s_tok, ids, count, data[0] & 4 ? 1 : 0);
        free(ids);
    } else if (mode == 3) {
        s_json_mode(p, n);
    } else {
        s_vocab_mode(p, n);
    }
    return 0;
}
