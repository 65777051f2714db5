/* tokenizer.c - HF tokenizer.json byte-level BPE: loading, encoding, decoding, streaming decode.
 *
 * Encoding follows the HF `tokenizers` pipeline for the byte-level BPE family (GPT-2, Qwen2,
 * LLaMA-3 style files):
 *   1. added tokens are split out of the raw text first (leftmost-longest match, with the
 *      lstrip / rstrip / single_word flags; special ones only when parse_special is set);
 *   2. each remaining segment is normalised (NFC/NFD/NFKC/NFKD through utf8proc, or nothing);
 *   3. the pre-tokenizer steps split it: Split(regex) and ByteLevel(use_regex) through PCRE2
 *      (UTF + UCP, JIT when available);
 *   4. each pre-token's bytes become byte-level symbols and are merged by rank with a heap
 *      (lowest rank first, leftmost on ties: the order HF uses).
 * Vocabulary and merges live in small open-addressing hash tables. Decoding maps each id back to
 * its bytes (added tokens verbatim) and replaces invalid UTF-8 by U+FFFD per maximal subpart, as
 * Rust's from_utf8_lossy does; the streaming decoder holds back an unfinished character. */
#include "model/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <utf8proc.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TD_TOK_MAX_ID (1 << 24) /* ids beyond this are treated as a malformed file */

static const char *s_gpt2_pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum { S_ADDED = 1, S_SPECIAL = 2 };
enum { S_STEP_SPLIT_ISOLATED, S_STEP_SPLIT_REMOVED };

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} s_added_t;

typedef struct {
    int kind;
    pcre2_code *re;
} s_step_t;

typedef struct {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX when empty */
    int32_t rank;
    int32_t id;
} s_merge_slot_t;

struct td_tokenizer {
    int32_t n_ids;
    /* per id (n_ids): raw piece (vocab string or added content), its decoded bytes, flags */
    char **piece;
    uint32_t *piece_len;
    char **bytes;
    uint32_t *bytes_len;
    uint8_t *flags;
    size_t max_bytes_len;
    /* model vocabulary: open addressing over ids, keyed by piece */
    int32_t *vocab_tab;
    uint64_t vocab_mask;
    /* merges by rank, and their hash */
    int32_t n_merges;
    int32_t *merge_pairs; /* (n_merges, 2) */
    s_merge_slot_t *merge_tab;
    uint64_t merge_mask;
    int32_t byte_id[256]; /* id of the one-character piece for each byte, -1 when absent */
    int32_t byte_cp[256]; /* the byte-level alphabet: byte -> code point */
    int16_t cp_byte[324]; /* and back, -1 for code points outside it */
    int32_t unk_id;
    int ignore_merges;
    /* added tokens, longest first */
    s_added_t *added;
    int n_added;
    uint8_t added_first[256];
    /* normaliser: utf8proc option sets applied in order */
    int n_norm;
    int norm_opts[8];
    int prefix_space;
    s_step_t steps[8];
    int n_steps;
    uint64_t hash;
};

/* ---------- small helpers ---------- */

static uint64_t s_fnv(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define S_FNV_INIT 0xcbf29ce484222325ull

static uint64_t s_mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

/* The byte-level alphabet: bytes 33-126, 161-172, 174-255 are themselves, the other 68 map to
 * 256+n in ascending order (space -> U+0120). */
static void s_init_alphabet(td_tokenizer_t *tok) {
    int n = 0;
    for (int i = 0; i < 324; i++) tok->cp_byte[i] = -1;
    for (int i = 0; i < 256; i++) {
        int keep = (i >= 33 && i <= 126) || (i >= 161 && i <= 172) || (i >= 174);
        tok->byte_cp[i] = keep ? i : 256 + n++;
        tok->cp_byte[tok->byte_cp[i]] = (int16_t)i;
    }
}

enum { S_UTF8_OK, S_UTF8_BAD, S_UTF8_SHORT };

/* Looks at one character at s (n > 0 bytes left). Returns its length and sets *kind: OK (a valid
 * character), BAD (an ill-formed maximal subpart of that length, at least 1) or SHORT (all n bytes
 * are the valid start of a character that the input ends inside). */
static size_t s_utf8_step(const uint8_t *s, size_t n, int *kind) {
    uint8_t c = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c < 0x80) {
        *kind = S_UTF8_OK;
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf)
        need = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else {
        *kind = S_UTF8_BAD;
        return 1;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= n) {
            *kind = S_UTF8_SHORT;
            return n;
        }
        uint8_t lim_lo = i == 1 ? lo : 0x80, lim_hi = i == 1 ? hi : 0xbf;
        if (s[i] < lim_lo || s[i] > lim_hi) {
            *kind = S_UTF8_BAD;
            return i;
        }
    }
    *kind = S_UTF8_OK;
    return need;
}

/* Copies s to out replacing ill-formed parts by U+FFFD. When keep_tail is set, a character cut
 * off by the end of s is not written and *tail gets its length; otherwise it becomes U+FFFD.
 * out must hold 3 * n bytes. Returns bytes written. */
static size_t s_utf8_lossy(const uint8_t *s, size_t n, int keep_tail, char *out, size_t *tail) {
    size_t i = 0, o = 0;
    if (tail) *tail = 0;
    while (i < n) {
        int kind;
        size_t k = s_utf8_step(s + i, n - i, &kind);
        if (kind == S_UTF8_OK) {
            memcpy(out + o, s + i, k);
            o += k;
        } else if (kind == S_UTF8_SHORT && keep_tail) {
            if (tail) *tail = k;
            break;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
        }
        i += k;
    }
    return o;
}

/* Decodes the code point at s (valid UTF-8 assumed), returns its length. */
static int s_cp_at(const char *s, size_t n, int32_t *cp) {
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &c);
    if (k <= 0) {
        *cp = -1;
        return 1;
    }
    *cp = c;
    return (int)k;
}

/* Rust's char::is_whitespace (the Unicode White_Space property). */
static int s_is_space(int32_t c) {
    if ((c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xa0 || c == 0x1680) return 1;
    if ((c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
        c == 0x3000)
        return 1;
    return 0;
}

static int s_is_word(int32_t c) {
    if (c == '_') return 1;
    if (c < 0) return 0;
    int cat = utf8proc_category(c);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

/* The code point that ends s[0..n) (valid UTF-8). */
static int32_t s_cp_before(const char *s, size_t n) {
    if (n == 0) return -1;
    size_t i = n - 1;
    while (i > 0 && ((uint8_t)s[i] & 0xc0) == 0x80) i--;
    int32_t cp;
    s_cp_at(s + i, n - i, &cp);
    return cp;
}

/* A growable buffer of int32. */
typedef struct {
    int32_t *v;
    size_t n, cap;
} s_ivec_t;

static int s_ivec_push(s_ivec_t *a, int32_t x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return TD_ERR_NOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return TD_OK;
}

/* ---------- hash tables ---------- */

static int32_t s_vocab_find(const td_tokenizer_t *tok, const char *s, size_t n) {
    if (!tok->vocab_tab) return -1;
    uint64_t i = s_mix(s_fnv(S_FNV_INIT, s, n)) & tok->vocab_mask;
    for (;;) {
        int32_t id = tok->vocab_tab[i];
        if (id < 0) return -1;
        if (tok->piece_len[id] == n && memcmp(tok->piece[id], s, n) == 0) return id;
        i = (i + 1) & tok->vocab_mask;
    }
}

static void s_vocab_insert(td_tokenizer_t *tok, int32_t id) {
    uint64_t i = s_mix(s_fnv(S_FNV_INIT, tok->piece[id], tok->piece_len[id])) & tok->vocab_mask;
    while (tok->vocab_tab[i] >= 0) i = (i + 1) & tok->vocab_mask;
    tok->vocab_tab[i] = id;
}

static const s_merge_slot_t *s_merge_find(const td_tokenizer_t *tok, int32_t a, int32_t b) {
    if (!tok->merge_tab) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t i = s_mix(key) & tok->merge_mask;
    for (;;) {
        const s_merge_slot_t *s = &tok->merge_tab[i];
        if (s->key == UINT64_MAX) return NULL;
        if (s->key == key) return s;
        i = (i + 1) & tok->merge_mask;
    }
}

static void s_merge_insert(td_tokenizer_t *tok, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t i = s_mix(key) & tok->merge_mask;
    while (tok->merge_tab[i].key != UINT64_MAX && tok->merge_tab[i].key != key)
        i = (i + 1) & tok->merge_mask;
    tok->merge_tab[i] = (s_merge_slot_t){key, rank, id}; /* a repeated pair keeps its last rank */
}

static uint64_t s_table_size(size_t n) {
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)n + 1) cap <<= 1;
    return cap;
}

/* ---------- loading ---------- */

void td_tokenizer_destroy(td_tokenizer_t **self_p) {
    if (!self_p || !*self_p) return;
    td_tokenizer_t *t = *self_p;
    for (int32_t i = 0; i < t->n_ids; i++) {
        if (t->bytes && t->bytes[i] != t->piece[i]) free(t->bytes[i]);
        if (t->piece) free(t->piece[i]);
    }
    free(t->piece);
    free(t->piece_len);
    free(t->bytes);
    free(t->bytes_len);
    free(t->flags);
    free(t->vocab_tab);
    free(t->merge_pairs);
    free(t->merge_tab);
    free(t->added); /* contents are owned by piece[] */
    for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i].re);
    free(t);
    *self_p = NULL;
}

static int s_get_id(const cJSON *v, int32_t *id) {
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d < TD_TOK_MAX_ID) || d != (double)(int32_t)d) return 0;
    *id = (int32_t)d;
    return 1;
}

static int s_flag(const cJSON *o, const char *name, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static const char *s_type(const cJSON *o) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static int s_add_normalizer(td_tokenizer_t *tok, const cJSON *n, td_err_t *err, int depth) {
    if (!n || cJSON_IsNull(n)) return TD_OK;
    const char *type = s_type(n);
    if (!cJSON_IsObject(n) || !type)
        return td_err_set(err, TD_ERR_FORMAT, "normalizer is not an object with a type");
    int opts = -1;
    if (strcmp(type, "NFC") == 0)
        opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    else if (strcmp(type, "NFD") == 0)
        opts = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
    else if (strcmp(type, "NFKC") == 0)
        opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
    else if (strcmp(type, "NFKD") == 0)
        opts = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
    else if (strcmp(type, "Sequence") == 0 && depth < 4) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *e;
        if (!cJSON_IsArray(list))
            return td_err_set(err, TD_ERR_FORMAT, "normalizer Sequence without a normalizers list");
        cJSON_ArrayForEach(e, list) {
            int rc = s_add_normalizer(tok, e, err, depth + 1);
            if (rc) return rc;
        }
        return TD_OK;
    }
    if (opts < 0)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "normalizer '%s' is not supported (only NFC, NFD, NFKC, NFKD and "
                          "Sequences of them)",
                          type);
    if (tok->n_norm >= (int)(sizeof tok->norm_opts / sizeof tok->norm_opts[0]))
        return td_err_set(err, TD_ERR_UNSUPPORTED, "too many normalizers");
    tok->norm_opts[tok->n_norm++] = opts;
    return TD_OK;
}

/* The Unicode White_Space set, which HF's regex engine (Oniguruma) uses for \s. PCRE2's UCP \s
 * differs (it counts U+180E, and not U+0085), so \s and \S are spelled out before compiling. */
#define S_WS                                                                                       \
    "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"    \
    "\\x{205f}\\x{3000}"

/* Rewrites \s (anywhere) and \S (outside classes) of pattern into explicit classes. Returns a
 * malloc'd NUL-terminated pattern, or NULL when out of memory. */
static char *s_rewrite_spaces(const char *p, size_t n) {
    size_t ws = strlen(S_WS), cap = n * (ws + 4) + 1, o = 0;
    char *out = malloc(cap);
    if (!out) return NULL;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[++i];
            if (e == 's' || (e == 'S' && !in_class)) {
                if (!in_class) out[o++] = '[';
                if (e == 'S') out[o++] = '^';
                memcpy(out + o, S_WS, ws);
                o += ws;
                if (!in_class) out[o++] = ']';
            } else {
                out[o++] = c;
                out[o++] = e;
            }
            continue;
        }
        out[o++] = c;
        if (!in_class && c == '[') {
            in_class = 1;
            if (i + 1 < n && p[i + 1] == '^') out[o++] = p[++i];
            if (i + 1 < n && p[i + 1] == ']') out[o++] = p[++i]; /* a leading ] is literal */
        } else if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') {
            const char *end = strstr(p + i, ":]"); /* POSIX class [:name:] */
            if (end && (size_t)(end - p) < n) {
                size_t k = (size_t)(end - p) + 2 - (i + 1);
                memcpy(out + o, p + i + 1, k);
                o += k;
                i += k;
            }
        } else if (in_class && c == ']') {
            in_class = 0;
        }
    }
    out[o] = 0;
    return out;
}

static int s_add_regex_step(td_tokenizer_t *tok, const char *pattern, size_t len, int literal,
                            int kind, td_err_t *err) {
    if (tok->n_steps >= (int)(sizeof tok->steps / sizeof tok->steps[0]))
        return td_err_set(err, TD_ERR_UNSUPPORTED, "too many pre-tokenizer steps");
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    char *rewritten = NULL;
    if (!literal) {
        if (len == PCRE2_ZERO_TERMINATED) len = strlen(pattern);
        if (!(rewritten = s_rewrite_spaces(pattern, len)))
            return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        pattern = rewritten;
        len = strlen(rewritten);
    }
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &ec, &eo, NULL);
    free(rewritten);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "pre-tokenizer regex does not compile with PCRE2 at offset %zu: %s",
                          (size_t)eo, (const char *)msg);
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* interpreted matching when JIT fails */
    tok->steps[tok->n_steps++] = (s_step_t){kind, re};
    return TD_OK;
}

static int s_add_pretok(td_tokenizer_t *tok, const cJSON *p, int *byte_level, td_err_t *err,
                        int depth) {
    const char *type = s_type(p);
    if (!cJSON_IsObject(p) || !type)
        return td_err_set(err, TD_ERR_FORMAT, "pre_tokenizer is not an object with a type");
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"), *e;
        if (!cJSON_IsArray(list))
            return td_err_set(err, TD_ERR_FORMAT, "pre_tokenizer Sequence without pretokenizers");
        cJSON_ArrayForEach(e, list) {
            int rc = s_add_pretok(tok, e, byte_level, err, depth + 1);
            if (rc) return rc;
        }
        return TD_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        if (s_flag(p, "add_prefix_space", 0)) {
            if (tok->n_steps > 0)
                return td_err_set(err, TD_ERR_UNSUPPORTED,
                                  "ByteLevel add_prefix_space after another pre-tokenizer step");
            tok->prefix_space = 1;
        }
        *byte_level = 1;
        if (s_flag(p, "use_regex", 1))
            return s_add_regex_step(tok, s_gpt2_pattern, PCRE2_ZERO_TERMINATED, 0,
                                    S_STEP_SPLIT_ISOLATED, err);
        return TD_OK;
    }
    if (strcmp(type, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        const char *b = cJSON_IsString(beh) ? beh->valuestring : "";
        int kind;
        if (strcmp(b, "Isolated") == 0)
            kind = S_STEP_SPLIT_ISOLATED;
        else if (strcmp(b, "Removed") == 0)
            kind = S_STEP_SPLIT_REMOVED;
        else
            return td_err_set(err, TD_ERR_UNSUPPORTED,
                              "Split pre-tokenizer behavior '%s' is not supported (Isolated, "
                              "Removed)",
                              b);
        if (s_flag(p, "invert", 0))
            return td_err_set(err, TD_ERR_UNSUPPORTED, "Split pre-tokenizer with invert=true");
        if (cJSON_IsString(re))
            return s_add_regex_step(tok, re->valuestring, strlen(re->valuestring), 0, kind, err);
        if (cJSON_IsString(str))
            return s_add_regex_step(tok, str->valuestring, strlen(str->valuestring), 1, kind, err);
        return td_err_set(err, TD_ERR_FORMAT, "Split pre-tokenizer without a pattern");
    }
    return td_err_set(err, TD_ERR_UNSUPPORTED,
                      "pre-tokenizer '%s' is not supported (byte-level BPE only: ByteLevel, "
                      "Split, Sequence)",
                      type);
}

/* Grows the per-id arrays so that id fits. */
static int s_reserve_id(td_tokenizer_t *tok, int32_t id, int32_t *cap) {
    if (id < *cap) return TD_OK;
    int32_t nc = *cap ? *cap : 1024;
    while (nc <= id) nc *= 2;
    char **p = realloc(tok->piece, (size_t)nc * sizeof *p);
    if (p) tok->piece = p;
    uint32_t *pl = realloc(tok->piece_len, (size_t)nc * sizeof *pl);
    if (pl) tok->piece_len = pl;
    uint8_t *f = realloc(tok->flags, (size_t)nc);
    if (f) tok->flags = f;
    if (!p || !pl || !f) return TD_ERR_NOMEM;
    for (int32_t i = *cap; i < nc; i++) {
        tok->piece[i] = NULL;
        tok->piece_len[i] = 0;
        tok->flags[i] = 0;
    }
    *cap = nc;
    return TD_OK;
}

static int s_load_vocab(td_tokenizer_t *tok, const cJSON *vocab, int32_t *cap, td_err_t *err) {
    const cJSON *e;
    size_t n = 0;
    cJSON_ArrayForEach(e, vocab) {
        int32_t id;
        if (!e->string || !s_get_id(e, &id))
            return td_err_set(err, TD_ERR_FORMAT, "vocab entry \"%s\" has no valid id",
                              e->string ? e->string : "?");
        if (s_reserve_id(tok, id, cap)) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        if (tok->piece[id])
            return td_err_set(err, TD_ERR_FORMAT, "vocab id %d is used twice (\"%s\", \"%s\")",
                              (int)id, tok->piece[id], e->string);
        size_t len = strlen(e->string);
        tok->piece[id] = malloc(len + 1);
        if (!tok->piece[id]) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        memcpy(tok->piece[id], e->string, len + 1);
        tok->piece_len[id] = (uint32_t)len;
        if (id >= tok->n_ids) tok->n_ids = id + 1;
        n++;
    }
    tok->vocab_mask = s_table_size(n) - 1;
    tok->vocab_tab = malloc((tok->vocab_mask + 1) * sizeof *tok->vocab_tab);
    if (!tok->vocab_tab) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    memset(tok->vocab_tab, 0xff, (tok->vocab_mask + 1) * sizeof *tok->vocab_tab);
    for (int32_t id = 0; id < tok->n_ids; id++)
        if (tok->piece[id]) s_vocab_insert(tok, id);
    return TD_OK;
}

static int s_load_merges(td_tokenizer_t *tok, const cJSON *merges, td_err_t *err) {
    int n = cJSON_GetArraySize(merges);
    tok->merge_pairs = malloc(((size_t)n + 1) * 2 * sizeof *tok->merge_pairs);
    tok->merge_mask = s_table_size((size_t)n) - 1;
    tok->merge_tab = malloc((tok->merge_mask + 1) * sizeof *tok->merge_tab);
    if (!tok->merge_pairs || !tok->merge_tab) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i <= tok->merge_mask; i++) tok->merge_tab[i].key = UINT64_MAX;
    const cJSON *e;
    char buf[512];
    int rank = 0;
    cJSON_ArrayForEach(e, merges) {
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp)
                return td_err_set(err, TD_ERR_FORMAT, "merge %d \"%s\" has no space", rank,
                                  e->valuestring);
            a = e->valuestring;
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring;
            b = cJSON_GetArrayItem(e, 1)->valuestring;
            la = strlen(a);
            lb = strlen(b);
        } else {
            return td_err_set(err, TD_ERR_FORMAT, "merge %d is neither \"a b\" nor [\"a\",\"b\"]",
                              rank);
        }
        int32_t ia = s_vocab_find(tok, a, la), ib = s_vocab_find(tok, b, lb);
        if (la + lb >= sizeof buf)
            return td_err_set(err, TD_ERR_FORMAT, "merge %d is too long", rank);
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int32_t ic = s_vocab_find(tok, buf, la + lb);
        if (ia < 0 || ib < 0 || ic < 0)
            return td_err_set(err, TD_ERR_FORMAT,
                              "merge %d (\"%.*s\" \"%.*s\") uses a token "
                              "that is not in the vocabulary",
                              rank, (int)la, a, (int)lb, b);
        tok->merge_pairs[2 * rank] = ia;
        tok->merge_pairs[2 * rank + 1] = ib;
        s_merge_insert(tok, ia, ib, rank, ic);
        rank++;
    }
    tok->n_merges = rank;
    return TD_OK;
}

static int s_added_cmp(const void *x, const void *y) {
    const s_added_t *a = x, *b = y;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int s_load_added(td_tokenizer_t *tok, const cJSON *list, int32_t *cap, td_err_t *err) {
    int n = cJSON_GetArraySize(list);
    tok->added = calloc((size_t)n + 1, sizeof *tok->added);
    if (!tok->added) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
        int32_t id;
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsObject(e) || !s_get_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) ||
            !cJSON_IsString(c) || !c->valuestring[0])
            return td_err_set(err, TD_ERR_FORMAT,
                              "added_tokens entry %d needs an id and a non-empty content",
                              tok->n_added);
        size_t len = strlen(c->valuestring);
        if (s_reserve_id(tok, id, cap)) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        if (!(tok->flags[id] & S_ADDED)) { /* content replaces a vocab piece of the same id */
            char *copy = malloc(len + 1);
            if (!copy) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
            memcpy(copy, c->valuestring, len + 1);
            free(tok->piece[id]);
            tok->piece[id] = copy;
            tok->piece_len[id] = (uint32_t)len;
        } else if (tok->piece_len[id] != len || memcmp(tok->piece[id], c->valuestring, len)) {
            return td_err_set(err, TD_ERR_FORMAT, "added token id %d is used twice", (int)id);
        }
        s_added_t *a = &tok->added[tok->n_added++];
        a->content = tok->piece[id];
        a->len = len;
        a->id = id;
        a->special = s_flag(e, "special", 0);
        a->lstrip = s_flag(e, "lstrip", 0);
        a->rstrip = s_flag(e, "rstrip", 0);
        a->single_word = s_flag(e, "single_word", 0);
        a->normalized = s_flag(e, "normalized", !a->special);
        tok->flags[id] |= S_ADDED | (a->special ? S_SPECIAL : 0);
        tok->added_first[(uint8_t)a->content[0]] = 1;
        if (id >= tok->n_ids) tok->n_ids = id + 1;
    }
    qsort(tok->added, (size_t)tok->n_added, sizeof *tok->added, s_added_cmp);
    return TD_OK;
}

/* The bytes each id decodes to: added tokens verbatim, vocab pieces through the byte-level
 * alphabet (a piece with a character outside it decodes to its own bytes, as HF does). */
static int s_build_bytes(td_tokenizer_t *tok) {
    tok->bytes = calloc((size_t)tok->n_ids + 1, sizeof *tok->bytes);
    tok->bytes_len = calloc((size_t)tok->n_ids + 1, sizeof *tok->bytes_len);
    if (!tok->bytes || !tok->bytes_len) return TD_ERR_NOMEM;
    for (int32_t id = 0; id < tok->n_ids; id++) {
        const char *p = tok->piece[id];
        size_t n = tok->piece_len[id];
        if (!p || (tok->flags[id] & S_ADDED)) {
            tok->bytes[id] = tok->piece[id];
            tok->bytes_len[id] = (uint32_t)n;
        } else {
            char *b = malloc(n + 1);
            if (!b) return TD_ERR_NOMEM;
            size_t o = 0, i = 0;
            int ok = 1;
            while (i < n) {
                int32_t cp;
                i += (size_t)s_cp_at(p + i, n - i, &cp);
                int v = cp >= 0 && cp < 324 ? tok->cp_byte[cp] : -1;
                if (v < 0) {
                    ok = 0;
                    break;
                }
                b[o++] = (char)v;
            }
            if (!ok) {
                memcpy(b, p, n);
                o = n;
            }
            b[o] = 0;
            tok->bytes[id] = b;
            tok->bytes_len[id] = (uint32_t)o;
        }
        if (tok->bytes_len[id] > tok->max_bytes_len) tok->max_bytes_len = tok->bytes_len[id];
    }
    return TD_OK;
}

static void s_compute_hash(td_tokenizer_t *tok) {
    uint64_t h = S_FNV_INIT;
    h = s_fnv(h, "vocab", 5);
    for (int32_t id = 0; id < tok->n_ids; id++) {
        if (!tok->piece[id] || (tok->flags[id] & S_ADDED)) continue;
        uint32_t len = tok->piece_len[id];
        h = s_fnv(h, &id, sizeof id);
        h = s_fnv(h, &len, sizeof len);
        h = s_fnv(h, tok->piece[id], len);
    }
    h = s_fnv(h, "merges", 6);
    h = s_fnv(h, tok->merge_pairs, (size_t)tok->n_merges * 2 * sizeof *tok->merge_pairs);
    h = s_fnv(h, "added", 5);
    for (int i = 0; i < tok->n_added; i++) { /* sorted by length, then id */
        const s_added_t *a = &tok->added[i];
        int32_t id = a->id;
        uint8_t fl[5] = {(uint8_t)a->special, (uint8_t)a->lstrip, (uint8_t)a->rstrip,
                         (uint8_t)a->single_word, (uint8_t)a->normalized};
        uint32_t len = (uint32_t)a->len;
        h = s_fnv(h, &id, sizeof id);
        h = s_fnv(h, fl, sizeof fl);
        h = s_fnv(h, &len, sizeof len);
        h = s_fnv(h, a->content, len);
    }
    tok->hash = h;
}

static int s_load_json(td_tokenizer_t *tok, const cJSON *root, td_err_t *err) {
    if (!cJSON_IsObject(root)) return td_err_set(err, TD_ERR_FORMAT, "not a JSON object");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return td_err_set(err, TD_ERR_FORMAT, "no \"model\" object");
    const char *type = s_type(model);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!type) type = cJSON_IsArray(merges) ? "BPE" : cJSON_IsArray(vocab) ? "Unigram" : "?";
    if (strcmp(type, "BPE") != 0)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "tokenizer model type '%s' is not supported (only byte-level BPE)", type);
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return td_err_set(err, TD_ERR_FORMAT, "BPE model needs a vocab object and a merges list");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
    if (cJSON_IsString(v) && v->valuestring[0])
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "BPE continuing_subword_prefix is not supported");
    v = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
    if (cJSON_IsString(v) && v->valuestring[0])
        return td_err_set(err, TD_ERR_UNSUPPORTED, "BPE end_of_word_suffix is not supported");
    tok->ignore_merges = s_flag(model, "ignore_merges", 0);

    int byte_level = 0, rc;
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (pre && !cJSON_IsNull(pre) && (rc = s_add_pretok(tok, pre, &byte_level, err, 0))) return rc;
    if (!byte_level)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "BPE tokenizer without a ByteLevel pre-tokenizer (%s) is not supported "
                          "(only byte-level BPE)",
                          pre && s_type(pre) ? s_type(pre) : "none");
    if ((rc = s_add_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err, 0)))
        return rc;

    /* ids must be dense enough that the per-id arrays stay proportional to the file */
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *e;
    int32_t cap = 0, max_id = -1, id;
    size_t count = 0;
    cJSON_ArrayForEach(e, vocab) {
        if (s_get_id(e, &id) && id > max_id) max_id = id;
        count++;
    }
    if (cJSON_IsArray(added)) {
        cJSON_ArrayForEach(e, added) {
            if (s_get_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) && id > max_id)
                max_id = id;
            count++;
        }
    }
    if ((size_t)max_id + 1 > 2 * count + 1024)
        return td_err_set(err, TD_ERR_FORMAT, "token ids are too sparse (max id %d for %zu tokens)",
                          (int)max_id, count);
    s_init_alphabet(tok);
    if (max_id >= 0 && s_reserve_id(tok, max_id, &cap))
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    if ((rc = s_load_vocab(tok, vocab, &cap, err))) return rc;
    if ((rc = s_load_merges(tok, merges, err))) return rc;
    if (added && !cJSON_IsNull(added)) {
        if (!cJSON_IsArray(added)) return td_err_set(err, TD_ERR_FORMAT, "added_tokens not a list");
        if ((rc = s_load_added(tok, added, &cap, err))) return rc;
    }
    if (tok->n_ids == 0) return td_err_set(err, TD_ERR_FORMAT, "empty vocabulary");
    for (int b = 0; b < 256; b++) {
        char s[4];
        int cp = tok->byte_cp[b];
        int n = (int)utf8proc_encode_char(cp, (utf8proc_uint8_t *)s);
        tok->byte_id[b] = s_vocab_find(tok, s, (size_t)n);
    }
    tok->unk_id = -1;
    v = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (cJSON_IsString(v)) tok->unk_id = td_tokenizer_token_id(tok, v->valuestring);
    if (s_build_bytes(tok)) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    s_compute_hash(tok);
    return TD_OK;
}

td_tokenizer_t *td_tokenizer_from_json(const char *json, size_t len, td_err_t *err) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= json && at <= json + len ? (long)(at - json) : -1;
        td_err_set(err, TD_ERR_FORMAT, "tokenizer.json is not valid JSON (near byte %ld)", off);
        return NULL;
    }
    td_tokenizer_t *tok = calloc(1, sizeof *tok);
    if (!tok) {
        cJSON_Delete(root);
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    int rc = s_load_json(tok, root, err);
    cJSON_Delete(root);
    if (rc) {
        td_tokenizer_destroy(&tok);
        return NULL;
    }
    return tok;
}

td_tokenizer_t *td_tokenizer_load(const char *path, td_err_t *err) {
    char file[4096];
    size_t n = strlen(path);
    if (n >= 5 && strcmp(path + n - 5, ".json") == 0)
        snprintf(file, sizeof file, "%s", path);
    else
        td_path_join(file, sizeof file, path, "tokenizer.json");
    char *data = NULL;
    size_t len = 0;
    if (td_read_file(file, &data, &len, err)) {
        /* a path that is a file not named *.json */
        if (td_read_file(path, &data, &len, NULL)) return NULL;
        snprintf(file, sizeof file, "%s", path);
    }
    td_tokenizer_t *tok = td_tokenizer_from_json(data, len, err);
    free(data);
    if (!tok) td_err_prefix(err, "%s", file);
    return tok;
}

/* ---------- queries ---------- */

int td_tokenizer_n_vocab(const td_tokenizer_t *tok) { return tok->n_ids; }

const char *td_tokenizer_piece(const td_tokenizer_t *tok, int32_t id) {
    return id >= 0 && id < tok->n_ids ? tok->piece[id] : NULL;
}

const char *td_tokenizer_token_bytes(const td_tokenizer_t *tok, int32_t id, size_t *len) {
    if (id < 0 || id >= tok->n_ids || !tok->piece[id]) return NULL;
    if (len) *len = tok->bytes_len[id];
    return tok->bytes[id];
}

int32_t td_tokenizer_token_id(const td_tokenizer_t *tok, const char *piece) {
    size_t n = strlen(piece);
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && memcmp(tok->added[i].content, piece, n) == 0)
            return tok->added[i].id;
    return s_vocab_find(tok, piece, n);
}

int td_tokenizer_is_special(const td_tokenizer_t *tok, int32_t id) {
    return id >= 0 && id < tok->n_ids && (tok->flags[id] & S_SPECIAL) != 0;
}

int td_tokenizer_is_added(const td_tokenizer_t *tok, int32_t id) {
    return id >= 0 && id < tok->n_ids && (tok->flags[id] & S_ADDED) != 0;
}

uint64_t td_tokenizer_hash(const td_tokenizer_t *tok) { return tok->hash; }

/* ---------- encoding ---------- */

typedef struct {
    int32_t rank, left, right;
} s_heap_t;

typedef struct {
    const td_tokenizer_t *tok;
    s_ivec_t *out;
    pcre2_match_data *md;
    /* bpe scratch */
    int32_t *sym, *prev, *next;
    s_heap_t *heap;
    size_t cap;
    char *word;
    size_t word_cap;
    /* pre-token ranges (start, len) pairs */
    size_t *ranges[2];
    size_t nranges[2], rcap[2];
} s_enc_t;

static int s_heap_less(const s_heap_t *a, const s_heap_t *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void s_heap_push(s_heap_t *h, size_t *n, s_heap_t x) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!s_heap_less(&x, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static s_heap_t s_heap_pop(s_heap_t *h, size_t *n) {
    s_heap_t top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && s_heap_less(&h[c + 1], &h[c])) c++;
        if (!s_heap_less(&h[c], &x)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = x;
    return top;
}

static int s_enc_reserve(s_enc_t *e, size_t n) {
    if (n <= e->cap) return TD_OK;
    size_t cap = e->cap ? e->cap : 64;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(e->sym, cap * sizeof *a);
    if (a) e->sym = a;
    int32_t *b = realloc(e->prev, cap * sizeof *b);
    if (b) e->prev = b;
    int32_t *c = realloc(e->next, cap * sizeof *c);
    if (c) e->next = c;
    s_heap_t *h = realloc(e->heap, 3 * cap * sizeof *h);
    if (h) e->heap = h;
    if (!a || !b || !c || !h) return TD_ERR_NOMEM;
    e->cap = cap;
    return TD_OK;
}

static void s_push_pair(s_enc_t *e, size_t *nh, int32_t l) {
    int32_t r = e->next[l];
    if (r < 0) return;
    const s_merge_slot_t *m = s_merge_find(e->tok, e->sym[l], e->sym[r]);
    if (m) s_heap_push(e->heap, nh, (s_heap_t){m->rank, l, r});
}

/* BPE over one pre-token's bytes; appends the ids to e->out. */
static int s_bpe(s_enc_t *e, const char *s, size_t n) {
    const td_tokenizer_t *tok = e->tok;
    if (tok->ignore_merges) {
        if (e->word_cap < 2 * n + 1) {
            char *w = realloc(e->word, 2 * n + 1);
            if (!w) return TD_ERR_NOMEM;
            e->word = w;
            e->word_cap = 2 * n + 1;
        }
        size_t o = 0;
        for (size_t i = 0; i < n; i++)
            o += (size_t)utf8proc_encode_char(tok->byte_cp[(uint8_t)s[i]],
                                              (utf8proc_uint8_t *)e->word + o);
        int32_t id = s_vocab_find(tok, e->word, o);
        if (id >= 0) return s_ivec_push(e->out, id);
    }
    if (s_enc_reserve(e, n)) return TD_ERR_NOMEM;
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = tok->byte_id[(uint8_t)s[i]];
        if (id < 0) id = tok->unk_id;
        if (id < 0) continue; /* no such symbol and no unk: HF drops it */
        e->sym[m] = id;
        e->prev[m] = m - 1;
        e->next[m] = m + 1;
        m++;
    }
    if (m == 0) return TD_OK;
    e->next[m - 1] = -1;
    size_t nh = 0;
    for (int32_t i = 0; i + 1 < m; i++) s_push_pair(e, &nh, i);
    while (nh) {
        s_heap_t top = s_heap_pop(e->heap, &nh);
        int32_t l = top.left, r = top.right;
        if (e->sym[l] < 0 || e->sym[r] < 0 || e->next[l] != r) continue;
        const s_merge_slot_t *mg = s_merge_find(tok, e->sym[l], e->sym[r]);
        if (!mg || mg->rank != top.rank) continue;
        e->sym[l] = mg->id;
        e->sym[r] = -1;
        e->next[l] = e->next[r];
        if (e->next[r] >= 0) e->prev[e->next[r]] = l;
        if (e->prev[l] >= 0) s_push_pair(e, &nh, e->prev[l]);
        s_push_pair(e, &nh, l);
    }
    for (int32_t i = 0; i >= 0; i = e->next[i])
        if (s_ivec_push(e->out, e->sym[i])) return TD_ERR_NOMEM;
    return TD_OK;
}

static int s_range_push(s_enc_t *e, int k, size_t start, size_t len) {
    if (len == 0) return TD_OK;
    if (e->nranges[k] + 2 > e->rcap[k]) {
        size_t cap = e->rcap[k] ? e->rcap[k] * 2 : 256;
        size_t *r = realloc(e->ranges[k], cap * sizeof *r);
        if (!r) return TD_ERR_NOMEM;
        e->ranges[k] = r;
        e->rcap[k] = cap;
    }
    e->ranges[k][e->nranges[k]++] = start;
    e->ranges[k][e->nranges[k]++] = len;
    return TD_OK;
}

/* Splits buf[start, start+len) by step into ranges[k]. */
static int s_split(s_enc_t *e, const s_step_t *step, const char *buf, size_t start, size_t len,
                   int k, td_err_t *err) {
    const char *subj = buf + start;
    size_t pos = 0, gap = 0;
    while (pos < len) {
        int rc = pcre2_match(step->re, (PCRE2_SPTR)subj, len, pos, PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(step->re, (PCRE2_SPTR)subj, len, pos,
                             PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, e->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return td_err_set(err, TD_ERR, "pre-tokenizer regex failed: %s", (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* empty match: step over one character */
            int kind;
            pos = ms + s_utf8_step((const uint8_t *)subj + ms, len - ms, &kind);
            continue;
        }
        if (s_range_push(e, k, start + gap, ms - gap)) return TD_ERR_NOMEM;
        if (step->kind == S_STEP_SPLIT_ISOLATED && s_range_push(e, k, start + ms, me - ms))
            return TD_ERR_NOMEM;
        pos = gap = me;
    }
    if (s_range_push(e, k, start + gap, len - gap)) return TD_ERR_NOMEM;
    return TD_OK;
}

/* Normalises, pre-tokenizes and BPE-encodes one segment that holds no added token. */
static int s_encode_segment(s_enc_t *e, const char *s, size_t n, td_err_t *err) {
    const td_tokenizer_t *tok = e->tok;
    char *norm = NULL;
    const char *buf = s;
    int rc = TD_OK;
    int ascii = 1;
    for (size_t i = 0; i < n && ascii; i++) ascii = (uint8_t)s[i] < 0x80;
    if (!ascii && tok->n_norm) {
        for (int i = 0; i < tok->n_norm; i++) {
            utf8proc_uint8_t *dst = NULL;
            utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)buf, (utf8proc_ssize_t)n,
                                              &dst, (utf8proc_option_t)tok->norm_opts[i]);
            if (m < 0) {
                free(norm);
                return td_err_set(err, TD_ERR_ARG, "normalization failed: %s", utf8proc_errmsg(m));
            }
            free(norm);
            norm = (char *)dst;
            buf = norm;
            n = (size_t)m;
        }
    }
    if (tok->prefix_space && n > 0 && buf[0] != ' ') {
        char *p = malloc(n + 2);
        if (!p) {
            free(norm);
            return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        }
        p[0] = ' ';
        memcpy(p + 1, buf, n);
        free(norm);
        norm = p;
        buf = p;
        n++;
    }
    int cur = 0;
    e->nranges[0] = e->nranges[1] = 0;
    if (s_range_push(e, 0, 0, n)) rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
    for (int st = 0; st < tok->n_steps && rc == TD_OK; st++) {
        int nxt = 1 - cur;
        e->nranges[nxt] = 0;
        for (size_t r = 0; r < e->nranges[cur] && rc == TD_OK; r += 2)
            rc = s_split(e, &tok->steps[st], buf, e->ranges[cur][r], e->ranges[cur][r + 1], nxt,
                         err);
        cur = nxt;
    }
    for (size_t r = 0; r < e->nranges[cur] && rc == TD_OK; r += 2)
        if (s_bpe(e, buf + e->ranges[cur][r], e->ranges[cur][r + 1]))
            rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
    free(norm);
    return rc;
}

/* Finds the first added token in s[from, n) that applies; sets its match span (after lstrip /
 * rstrip) and returns its index into tok->added, or -1. */
static int s_find_added(const td_tokenizer_t *tok, const char *s, size_t n, size_t from,
                        size_t floor, int parse_special, size_t *ms, size_t *me) {
    for (size_t i = from; i < n; i++) {
        if (!tok->added_first[(uint8_t)s[i]]) continue;
        for (int k = 0; k < tok->n_added; k++) {
            const s_added_t *a = &tok->added[k];
            if (a->len > n - i || memcmp(s + i, a->content, a->len) != 0) continue;
            /* leftmost-longest: this is the match here; it may still be skipped */
            size_t st = i, en = i + a->len;
            int skip = a->special && !parse_special;
            if (!skip && a->single_word) {
                int32_t after;
                s_cp_at(s + en, n - en, &after);
                if ((st > 0 && s_is_word(s_cp_before(s, st))) || (en < n && s_is_word(after)))
                    skip = 1;
            }
            if (skip) {
                i = en - 1;
                break;
            }
            if (a->lstrip) {
                while (st > floor) {
                    int32_t cp = s_cp_before(s, st);
                    if (!s_is_space(cp)) break;
                    char tmp[4];
                    st -= (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)tmp);
                }
            }
            if (a->rstrip) {
                while (en < n) {
                    int32_t cp;
                    int k2 = s_cp_at(s + en, n - en, &cp);
                    if (!s_is_space(cp)) break;
                    en += (size_t)k2;
                }
            }
            *ms = st;
            *me = en;
            return k;
        }
    }
    return -1;
}

static void s_enc_free(s_enc_t *e) {
    free(e->sym);
    free(e->prev);
    free(e->next);
    free(e->heap);
    free(e->word);
    free(e->ranges[0]);
    free(e->ranges[1]);
    pcre2_match_data_free(e->md);
}

int td_tokenizer_encode(const td_tokenizer_t *tok, const char *text, size_t len, int parse_special,
                        int32_t **ids, int *n, td_err_t *err) {
    *ids = NULL;
    *n = 0;
    if (!text && len) return td_err_set(err, TD_ERR_ARG, "text is NULL");
    if (len > (size_t)INT_MAX / 2) return td_err_set(err, TD_ERR_ARG, "text too long");
    for (size_t i = 0; i < len;) {
        int kind;
        size_t k = s_utf8_step((const uint8_t *)text + i, len - i, &kind);
        if (kind != S_UTF8_OK)
            return td_err_set(err, TD_ERR_ARG, "text is not valid UTF-8 (byte %zu: 0x%02x)", i,
                              (uint8_t)text[i]);
        i += k;
    }
    s_ivec_t out = {0};
    s_enc_t e = {.tok = tok, .out = &out};
    e.md = pcre2_match_data_create(4, NULL);
    if (!e.md) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    int rc = TD_OK;
    size_t pos = 0;
    while (pos <= len && rc == TD_OK) {
        size_t ms = len, me = len;
        int k = tok->n_added ? s_find_added(tok, text, len, pos, pos, parse_special, &ms, &me) : -1;
        if (ms > pos) rc = s_encode_segment(&e, text + pos, ms - pos, err);
        if (k < 0 || rc) break;
        if (s_ivec_push(&out, tok->added[k].id))
            rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
        pos = me;
    }
    s_enc_free(&e);
    if (rc) {
        free(out.v);
        return rc;
    }
    if (out.n > (size_t)INT_MAX) {
        free(out.v);
        return td_err_set(err, TD_ERR_ARG, "too many tokens");
    }
    *ids = out.v ? out.v : malloc(sizeof(int32_t));
    if (!*ids) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    *n = (int)out.n;
    return TD_OK;
}

/* ---------- decoding ---------- */

int td_tokenizer_decode(const td_tokenizer_t *tok, const int32_t *ids, int n, int skip_special,
                        char **out, size_t *len, td_err_t *err) {
    *out = NULL;
    if (len) *len = 0;
    if (n < 0 || (n > 0 && !ids)) return td_err_set(err, TD_ERR_ARG, "bad id list");
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_ids)
            return td_err_set(err, TD_ERR_ARG, "token id %d at position %d is out of range [0, %d)",
                              (int)ids[i], i, (int)tok->n_ids);
        if (skip_special && (tok->flags[ids[i]] & S_SPECIAL)) continue;
        total += tok->bytes_len[ids[i]];
    }
    char *raw = malloc(total + 1), *res = malloc(3 * total + 1);
    if (!raw || !res) {
        free(raw);
        free(res);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        if (skip_special && (tok->flags[ids[i]] & S_SPECIAL)) continue;
        if (tok->bytes_len[ids[i]]) memcpy(raw + o, tok->bytes[ids[i]], tok->bytes_len[ids[i]]);
        o += tok->bytes_len[ids[i]];
    }
    size_t m = s_utf8_lossy((const uint8_t *)raw, o, 0, res, NULL);
    free(raw);
    res[m] = 0;
    *out = res;
    if (len) *len = m;
    return TD_OK;
}

struct td_detok {
    const td_tokenizer_t *tok;
    int skip_special;
    size_t npend;
    uint8_t *buf; /* pending bytes then the new token's bytes */
    char *tmp;    /* 3x buf */
};

td_detok_t *td_detok_new(const td_tokenizer_t *tok, int skip_special) {
    td_detok_t *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->tok = tok;
    d->skip_special = skip_special;
    d->buf = malloc(tok->max_bytes_len + 8);
    d->tmp = malloc(3 * (tok->max_bytes_len + 8));
    if (!d->buf || !d->tmp) td_detok_destroy(&d);
    return d;
}

void td_detok_destroy(td_detok_t **self_p) {
    if (!self_p || !*self_p) return;
    free((*self_p)->buf);
    free((*self_p)->tmp);
    free(*self_p);
    *self_p = NULL;
}

int td_detok_push(td_detok_t *d, int32_t id, char *out, size_t cap) {
    const td_tokenizer_t *tok = d->tok;
    if (!out || cap == 0) return TD_ERR_ARG;
    if (id < 0 || id >= tok->n_ids) return TD_ERR_ARG;
    out[0] = 0;
    if (d->skip_special && (tok->flags[id] & S_SPECIAL)) return 0;
    size_t n = d->npend + tok->bytes_len[id];
    if (tok->bytes_len[id]) memcpy(d->buf + d->npend, tok->bytes[id], tok->bytes_len[id]);
    size_t tail = 0;
    size_t m = s_utf8_lossy(d->buf, n, 1, d->tmp, &tail);
    if (m + 1 > cap) return TD_ERR_ARG; /* nothing consumed: the caller may retry bigger */
    memcpy(out, d->tmp, m);
    out[m] = 0;
    memmove(d->buf, d->buf + n - tail, tail);
    d->npend = tail;
    return (int)m;
}

int td_detok_flush(td_detok_t *d, char *out, size_t cap) {
    if (!out || cap == 0) return TD_ERR_ARG;
    out[0] = 0;
    if (!d->npend) return 0;
    if (cap < 4) return TD_ERR_ARG;
    size_t m = s_utf8_lossy(d->buf, d->npend, 0, out, NULL);
    out[m] = 0;
    d->npend = 0;
    return (int)m;
}
