/* tokenizer.c - byte-level BPE: construction from plain arrays (GGUF) or tokenizer.json,
 * encoding, decoding, streaming decode.
 *
 * Both formats end in td_tokenizer_from_vocab: td_tokenizer_from_json turns a tokenizer.json into
 * a td_tok_spec_t (vocabulary by id, merges, added tokens with their flags, the pre-tokenizer as
 * explicit split steps) and the GGUF loader fills the same spec from `tokenizer.ggml.*`, naming
 * its pre-tokenizer ("smollm", "qwen2", "llama-bpe", "gpt2"), which this file maps to the steps
 * of that family's tokenizer.json.
 *
 * Encoding follows the HF `tokenizers` pipeline for the byte-level BPE family (GPT-2, Qwen2,
 * LLaMA-3, SmolLM style files):
 *   1. added tokens are split out of the raw text first (leftmost-longest match, with the
 *      lstrip / rstrip / single_word flags; special ones only when parse_special is set);
 *   2. each remaining segment is normalised (NFC/NFD/NFKC/NFKD through utf8proc, or nothing);
 *   3. the pre-tokenizer steps split it: Split(regex), Digits and ByteLevel(use_regex) through
 *      PCRE2 (UTF + UCP, JIT when available);
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

/* The regex of HF's ByteLevel pre-tokenizer (use_regex = true). */
static const char s_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* HF's Digits pre-tokenizer: individual_digits = true, and false. */
static const char s_digit_pattern[] = "\\p{N}";
static const char s_digits_pattern[] = "\\p{N}+";
/* Qwen2's tokenizer.json Split regex. */
static const char s_qwen2_pattern[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
                                      "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                                      "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/* LLaMA-3's tokenizer.json Split regex. */
static const char s_llama3_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

enum { S_ADDED = 1, S_SPECIAL = 2, S_UNUSED = 4 }; /* S_UNUSED: GGUF type 5, not hashed */

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} s_added_t;

typedef struct {
    int kind; /* td_tok_split_t */
    int literal;
    char *pattern; /* as given (hashed), NUL-terminated */
    size_t pattern_len;
    pcre2_code *re;
} s_step_t;

typedef struct {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX when empty */
    int32_t rank;
    int32_t id;
} s_merge_slot_t;

struct td_tokenizer {
    int32_t n_ids;
    /* per id (n_ids): shown piece (added content, else the vocabulary string), the vocabulary
     * string (NULL when the id has none; shares piece's memory when equal), decoded bytes, flags */
    char **piece;
    uint32_t *piece_len;
    char **vstr;
    uint32_t *vstr_len;
    char **bytes;
    uint32_t *bytes_len;
    uint8_t *flags;
    size_t max_bytes_len;
    /* model vocabulary: open addressing over ids, keyed by vstr */
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
    /* normaliser: TD_TOK_NORM_* codes and their utf8proc option sets, applied in order */
    int n_norm;
    int norm_kind[8];
    int norm_opts[8];
    int prefix_space;
    s_step_t steps[8];
    int n_steps;
    td_tok_specials_t specials;
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
        if (tok->vstr_len[id] == n && memcmp(tok->vstr[id], s, n) == 0) return id;
        i = (i + 1) & tok->vocab_mask;
    }
}

/* Inserts id under its vocabulary string; a string already present now finds id (the last one
 * wins, as in a dict built in id order). */
static void s_vocab_insert(td_tokenizer_t *tok, int32_t id) {
    const char *s = tok->vstr[id];
    size_t n = tok->vstr_len[id];
    uint64_t i = s_mix(s_fnv(S_FNV_INIT, s, n)) & tok->vocab_mask;
    for (;;) {
        int32_t o = tok->vocab_tab[i];
        if (o < 0 || (tok->vstr_len[o] == n && memcmp(tok->vstr[o], s, n) == 0)) break;
        i = (i + 1) & tok->vocab_mask;
    }
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

/* ---------- construction ---------- */

void td_tokenizer_destroy(td_tokenizer_t **self_p) {
    if (!self_p || !*self_p) return;
    td_tokenizer_t *t = *self_p;
    for (int32_t i = 0; i < t->n_ids; i++) {
        if (t->bytes && t->bytes[i] != t->piece[i]) free(t->bytes[i]);
        if (t->vstr && t->vstr[i] != t->piece[i]) free(t->vstr[i]);
        if (t->piece) free(t->piece[i]);
    }
    free(t->piece);
    free(t->piece_len);
    free(t->vstr);
    free(t->vstr_len);
    free(t->bytes);
    free(t->bytes_len);
    free(t->flags);
    free(t->vocab_tab);
    free(t->merge_pairs);
    free(t->merge_tab);
    free(t->added); /* contents are owned by piece[] */
    for (int i = 0; i < t->n_steps; i++) {
        pcre2_code_free(t->steps[i].re);
        free(t->steps[i].pattern);
    }
    free(t);
    *self_p = NULL;
}

void td_tok_spec_init(td_tok_spec_t *spec) {
    memset(spec, 0, sizeof *spec);
    spec->bos_id = spec->eos_id = spec->unk_id = spec->pad_id = spec->eot_id = -1;
    spec->bpe_unk_id = -1;
}

static int s_add_norm(td_tokenizer_t *tok, int kind, td_err_t *err) {
    int opts;
    switch (kind) {
    case TD_TOK_NORM_NFC:
        opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
        break;
    case TD_TOK_NORM_NFD:
        opts = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
        break;
    case TD_TOK_NORM_NFKC:
        opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
        break;
    case TD_TOK_NORM_NFKD:
        opts = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
        break;
    default:
        return td_err_set(err, TD_ERR_ARG, "unknown normaliser code %d", kind);
    }
    if (tok->n_norm >= (int)(sizeof tok->norm_opts / sizeof tok->norm_opts[0]))
        return td_err_set(err, TD_ERR_UNSUPPORTED, "too many normalizers");
    tok->norm_kind[tok->n_norm] = kind;
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
    if (kind != TD_TOK_SPLIT_ISOLATED && kind != TD_TOK_SPLIT_REMOVED)
        return td_err_set(err, TD_ERR_ARG, "unknown split behavior %d", kind);
    if (!pattern) return td_err_set(err, TD_ERR_ARG, "pre-tokenizer step without a pattern");
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    char *copy = malloc(len + 1), *rewritten = NULL;
    if (!copy) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    memcpy(copy, pattern, len);
    copy[len] = 0;
    const char *src = copy;
    size_t src_len = len;
    if (!literal) {
        if (!(rewritten = s_rewrite_spaces(copy, len))) {
            free(copy);
            return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        }
        src = rewritten;
        src_len = strlen(rewritten);
    }
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, src_len, opts, &ec, &eo, NULL);
    free(rewritten);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        free(copy);
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "pre-tokenizer regex does not compile with PCRE2 at offset %zu: %s",
                          (size_t)eo, (const char *)msg);
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* interpreted matching when JIT fails */
    tok->steps[tok->n_steps++] = (s_step_t){kind, literal != 0, copy, len, re};
    return TD_OK;
}

/* The pre-tokenizers GGUF names (`tokenizer.ggml.pre`), as the tokenizer.json of each family
 * spells them: the split patterns (Isolated), the normaliser, ignore_merges. */
typedef struct {
    const char *name;
    const char *patterns[3];
    int norm;
    int ignore_merges;
} s_named_pre_t;

static const s_named_pre_t s_named_pre[] = {
    /* GPT-2: ByteLevel(use_regex) */
    {"gpt2", {s_gpt2_pattern}, 0, 0},
    /* SmolLM / SmolLM2: Sequence[Digits(individual_digits), ByteLevel(use_regex)] */
    {"smollm", {s_digit_pattern, s_gpt2_pattern}, 0, 0},
    /* Qwen2 / Qwen2.5: NFC, Sequence[Split(regex, Isolated), ByteLevel(use_regex=false)] */
    {"qwen2", {s_qwen2_pattern}, TD_TOK_NORM_NFC, 0},
    /* LLaMA 3: Sequence[Split(regex, Isolated), ByteLevel(use_regex=false)], ignore_merges */
    {"llama-bpe", {s_llama3_pattern}, 0, 1},
    {"llama3", {s_llama3_pattern}, 0, 1},
    {"llama-v3", {s_llama3_pattern}, 0, 1},
};

static int s_set_pre(td_tokenizer_t *tok, const td_tok_spec_t *spec, td_err_t *err) {
    int rc;
    if (spec->pre) {
        if (spec->n_pre_steps || spec->pre_steps || spec->n_norm || spec->prefix_space ||
            spec->ignore_merges)
            return td_err_set(err, TD_ERR_ARG,
                              "pre-tokenizer '%s' named together with explicit steps, "
                              "normalisers, prefix_space or ignore_merges",
                              spec->pre);
        const s_named_pre_t *np = NULL;
        for (size_t i = 0; i < sizeof s_named_pre / sizeof s_named_pre[0]; i++)
            if (strcmp(spec->pre, s_named_pre[i].name) == 0) np = &s_named_pre[i];
        if (!np)
            return td_err_set(err, TD_ERR_UNSUPPORTED,
                              "pre-tokenizer '%s' is not supported (known: gpt2, smollm, qwen2, "
                              "llama-bpe, llama3, llama-v3)",
                              spec->pre);
        for (int i = 0; i < 3 && np->patterns[i]; i++)
            if ((rc = s_add_regex_step(tok, np->patterns[i], strlen(np->patterns[i]), 0,
                                       TD_TOK_SPLIT_ISOLATED, err)))
                return rc;
        if (np->norm && (rc = s_add_norm(tok, np->norm, err))) return rc;
        tok->ignore_merges = np->ignore_merges;
        return TD_OK;
    }
    if (spec->n_pre_steps < 0 || (spec->n_pre_steps > 0 && !spec->pre_steps) || spec->n_norm < 0 ||
        (spec->n_norm > 0 && !spec->norm))
        return td_err_set(err, TD_ERR_ARG, "bad pre-tokenizer steps or normaliser list");
    if (!spec->pre_steps)
        return td_err_set(err, TD_ERR_ARG,
                          "no pre-tokenizer: name one (pre) or give its steps (pre_steps)");
    for (int i = 0; i < spec->n_pre_steps; i++) {
        const td_tok_pre_step_t *s = &spec->pre_steps[i];
        if (!s->pattern)
            return td_err_set(err, TD_ERR_ARG, "pre-tokenizer step %d has no pattern", i);
        if ((rc = s_add_regex_step(tok, s->pattern, strlen(s->pattern), s->literal,
                                   (int)s->behavior, err)))
            return rc;
    }
    for (int i = 0; i < spec->n_norm; i++)
        if ((rc = s_add_norm(tok, spec->norm[i], err))) return rc;
    tok->prefix_space = spec->prefix_space != 0;
    tok->ignore_merges = spec->ignore_merges != 0;
    return TD_OK;
}

static char *s_strndup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

static int s_added_cmp(const void *x, const void *y) {
    const s_added_t *a = x, *b = y;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* Makes id an added token with content c[0..len) (NULL: its vocabulary string) and the flags;
 * slot[id] is its index into tok->added (-1 before), so a later entry for the same id replaces
 * the earlier one. */
static int s_set_added(td_tokenizer_t *tok, int32_t *slot, int32_t id, const char *c, size_t len,
                       const td_tok_added_t *fl, td_err_t *err) {
    if (!c) {
        c = tok->vstr[id];
        len = tok->vstr_len[id];
    }
    if (!c || len == 0) return td_err_set(err, TD_ERR_FORMAT, "added token %d is empty", (int)id);
    /* Added tokens are matched in the (valid UTF-8) text before pre-tokenization; one that is not
     * whole UTF-8 characters would cut a character in two and hand the regex a broken subject. */
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t m =
            utf8proc_iterate((const utf8proc_uint8_t *)c + i, (utf8proc_ssize_t)(len - i), &cp);
        if (m <= 0)
            return td_err_set(err, TD_ERR_FORMAT,
                              "added token %d is not valid UTF-8 (byte %zu of its %zu)", (int)id, i,
                              len);
        i += (size_t)m;
    }
    if (!tok->piece[id] || tok->piece_len[id] != len || memcmp(tok->piece[id], c, len) != 0) {
        char *copy = s_strndup(c, len);
        if (!copy) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        if (tok->piece[id] != tok->vstr[id]) free(tok->piece[id]);
        tok->piece[id] = copy;
        tok->piece_len[id] = (uint32_t)len;
    }
    int k = slot[id];
    if (k < 0) k = slot[id] = tok->n_added++;
    s_added_t *a = &tok->added[k];
    a->content = tok->piece[id];
    a->len = len;
    a->id = id;
    a->special = fl->special != 0;
    a->lstrip = fl->lstrip != 0;
    a->rstrip = fl->rstrip != 0;
    a->single_word = fl->single_word != 0;
    a->normalized = fl->normalized != 0;
    tok->flags[id] = (uint8_t)(S_ADDED | (a->special ? S_SPECIAL : 0)); /* drops S_UNUSED */
    return TD_OK;
}

static int s_load_added(td_tokenizer_t *tok, const td_tok_spec_t *spec, td_err_t *err) {
    int32_t *slot = malloc((size_t)tok->n_ids * sizeof *slot);
    tok->added = calloc((size_t)tok->n_ids + 1, sizeof *tok->added);
    if (!slot || !tok->added) {
        free(slot);
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    }
    for (int32_t i = 0; i < tok->n_ids; i++) slot[i] = -1;
    int rc = TD_OK;
    for (int64_t id = 0; id < spec->n_tokens && spec->token_types && rc == TD_OK; id++) {
        int32_t t = spec->token_types[id];
        if (t != TD_TOK_TYPE_CONTROL && t != TD_TOK_TYPE_USER_DEFINED) continue;
        if (!tok->vstr[id]) {
            rc = td_err_set(err, TD_ERR_FORMAT, "token %d has type %d but no string", (int)id, t);
            break;
        }
        td_tok_added_t fl = {.special = t == TD_TOK_TYPE_CONTROL};
        rc = s_set_added(tok, slot, (int32_t)id, NULL, 0, &fl, err);
    }
    /* explicit entries override the types; the same id twice must name the same content */
    uint8_t *seen = calloc((size_t)tok->n_ids, 1);
    if (!seen && rc == TD_OK) rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
    for (int i = 0; i < spec->n_added && rc == TD_OK; i++) {
        const td_tok_added_t *a = &spec->added[i];
        if (a->id < 0 || a->id >= tok->n_ids) {
            rc = td_err_set(err, TD_ERR_FORMAT, "added token %d has id %d out of range", i,
                            (int)a->id);
            break;
        }
        if (!a->content || !a->content[0]) {
            rc = td_err_set(err, TD_ERR_FORMAT, "added token %d (id %d) has no content", i,
                            (int)a->id);
            break;
        }
        size_t len = strlen(a->content);
        if (seen[a->id] &&
            (tok->piece_len[a->id] != len || memcmp(tok->piece[a->id], a->content, len) != 0)) {
            rc = td_err_set(err, TD_ERR_FORMAT, "added token id %d is used twice", (int)a->id);
            break;
        }
        seen[a->id] = 1;
        rc = s_set_added(tok, slot, a->id, a->content, len, a, err);
    }
    free(seen);
    free(slot);
    if (rc) return rc;
    for (int i = 0; i < tok->n_added; i++) tok->added_first[(uint8_t)tok->added[i].content[0]] = 1;
    qsort(tok->added, (size_t)tok->n_added, sizeof *tok->added, s_added_cmp);
    return TD_OK;
}

static int s_load_merges(td_tokenizer_t *tok, const td_tok_spec_t *spec, td_err_t *err) {
    int64_t n = spec->n_merges;
    tok->merge_pairs = malloc(((size_t)n + 1) * 2 * sizeof *tok->merge_pairs);
    tok->merge_mask = s_table_size((size_t)n) - 1;
    tok->merge_tab = malloc((tok->merge_mask + 1) * sizeof *tok->merge_tab);
    if (!tok->merge_pairs || !tok->merge_tab) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i <= tok->merge_mask; i++) tok->merge_tab[i].key = UINT64_MAX;
    char *buf = NULL;
    size_t cap = 0;
    int rc = TD_OK;
    for (int64_t rank = 0; rank < n; rank++) {
        const char *a = spec->merges[rank], *b;
        size_t la, lb;
        if (!a) {
            rc = td_err_set(err, TD_ERR_FORMAT, "merge %lld is missing", (long long)rank);
            break;
        }
        size_t lm = spec->merge_lens ? spec->merge_lens[rank] : strlen(a);
        if (spec->merges_right) {
            b = spec->merges_right[rank];
            if (!b) {
                rc =
                    td_err_set(err, TD_ERR_FORMAT, "merge %lld has no right part", (long long)rank);
                break;
            }
            la = lm;
            lb = spec->merges_right_lens ? spec->merges_right_lens[rank] : strlen(b);
        } else {
            const char *sp = memchr(a, ' ', lm);
            if (!sp) {
                rc = td_err_set(err, TD_ERR_FORMAT, "merge %lld \"%.*s\" has no space",
                                (long long)rank, (int)(lm > 200 ? 200 : lm), a);
                break;
            }
            la = (size_t)(sp - a);
            b = sp + 1;
            lb = lm - la - 1;
        }
        if (la + lb + 1 > cap) {
            cap = 2 * (la + lb + 1);
            char *nb = realloc(buf, cap);
            if (!nb) {
                rc = td_err_set(err, TD_ERR_NOMEM, "out of memory");
                break;
            }
            buf = nb;
        }
        int32_t ia = s_vocab_find(tok, a, la), ib = s_vocab_find(tok, b, lb);
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int32_t ic = s_vocab_find(tok, buf, la + lb);
        if (ia < 0 || ib < 0 || ic < 0) {
            rc = td_err_set(err, TD_ERR_FORMAT,
                            "merge %lld (\"%.*s\" \"%.*s\") uses a token that is not in the "
                            "vocabulary",
                            (long long)rank, (int)(la > 200 ? 200 : la), a,
                            (int)(lb > 200 ? 200 : lb), b);
            break;
        }
        tok->merge_pairs[2 * rank] = ia;
        tok->merge_pairs[2 * rank + 1] = ib;
        s_merge_insert(tok, ia, ib, (int32_t)rank, ic);
    }
    free(buf);
    if (rc) return rc;
    tok->n_merges = (int32_t)n;
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

static uint64_t s_fnv_u32(uint64_t h, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return s_fnv(h, b, 4);
}

static uint64_t s_fnv_u8(uint64_t h, int v) {
    uint8_t b = (uint8_t)v;
    return s_fnv(h, &b, 1);
}

/* The identity documented at td_tokenizer_hash in tokenizer.h: keep the two in step. */
static void s_compute_hash(td_tokenizer_t *tok) {
    uint64_t h = s_fnv(S_FNV_INIT, "td-tok-v2", 9);
    h = s_fnv(h, "pre", 3);
    h = s_fnv_u8(h, tok->ignore_merges);
    h = s_fnv_u8(h, tok->prefix_space);
    h = s_fnv_u32(h, (uint32_t)tok->n_norm);
    for (int i = 0; i < tok->n_norm; i++) h = s_fnv_u32(h, (uint32_t)tok->norm_kind[i]);
    h = s_fnv_u32(h, (uint32_t)tok->n_steps);
    for (int i = 0; i < tok->n_steps; i++) {
        const s_step_t *s = &tok->steps[i];
        h = s_fnv_u8(h, s->kind);
        h = s_fnv_u8(h, s->literal);
        h = s_fnv_u32(h, (uint32_t)s->pattern_len);
        h = s_fnv(h, s->pattern, s->pattern_len);
    }
    h = s_fnv(h, "vocab", 5);
    for (int32_t id = 0; id < tok->n_ids; id++) {
        if (!tok->vstr[id] || (tok->flags[id] & (S_ADDED | S_UNUSED))) continue;
        h = s_fnv_u32(h, (uint32_t)id);
        h = s_fnv_u32(h, tok->vstr_len[id]);
        h = s_fnv(h, tok->vstr[id], tok->vstr_len[id]);
    }
    h = s_fnv(h, "merges", 6);
    h = s_fnv_u32(h, (uint32_t)tok->n_merges);
    for (int64_t i = 0; i < 2 * (int64_t)tok->n_merges; i++)
        h = s_fnv_u32(h, (uint32_t)tok->merge_pairs[i]);
    h = s_fnv(h, "added", 5);
    h = s_fnv_u32(h, (uint32_t)tok->n_added);
    for (int i = 0; i < tok->n_added; i++) { /* sorted by length, then id */
        const s_added_t *a = &tok->added[i];
        h = s_fnv_u32(h, (uint32_t)a->id);
        h = s_fnv_u8(h, a->special);
        h = s_fnv_u8(h, a->lstrip);
        h = s_fnv_u8(h, a->rstrip);
        h = s_fnv_u8(h, a->single_word);
        h = s_fnv_u32(h, (uint32_t)a->len);
        h = s_fnv(h, a->content, a->len);
    }
    int complete = 1;
    for (int b = 0; b < 256; b++) /* bytes valid UTF-8 never holds cannot need unk */
        if (b != 0xc0 && b != 0xc1 && b < 0xf5) complete &= tok->byte_id[b] >= 0;
    if (!complete) {
        h = s_fnv(h, "unk", 3);
        h = s_fnv_u32(h, tok->unk_id < 0 ? 0xffffffffu : (uint32_t)tok->unk_id);
    }
    tok->hash = h;
}

static int s_build(td_tokenizer_t *tok, const td_tok_spec_t *spec, td_err_t *err) {
    int rc;
    if (!spec->model) return td_err_set(err, TD_ERR_ARG, "tokenizer spec names no model");
    if (strcmp(spec->model, "gpt2") != 0)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "tokenizer model '%s' is not supported (only 'gpt2': byte-level BPE)",
                          spec->model);
    if (spec->n_tokens < 0 || spec->n_tokens > TD_TOK_MAX_ID || (spec->n_tokens && !spec->tokens))
        return td_err_set(err, TD_ERR_FORMAT, "bad vocabulary size %lld",
                          (long long)spec->n_tokens);
    if (spec->n_merges < 0 || spec->n_merges > INT32_MAX / 2 || (spec->n_merges && !spec->merges))
        return td_err_set(err, TD_ERR_FORMAT, "bad merge count %lld", (long long)spec->n_merges);
    if (spec->n_added < 0 || (spec->n_added && !spec->added))
        return td_err_set(err, TD_ERR_ARG, "bad added token list");
    if ((rc = s_set_pre(tok, spec, err))) return rc;

    /* ids: the vocabulary, and added ids past it (dense enough that the per-id arrays stay
     * proportional to the input) */
    int64_t n_ids = spec->n_tokens;
    for (int i = 0; i < spec->n_added; i++) {
        int32_t id = spec->added[i].id;
        if (id < 0 || id >= TD_TOK_MAX_ID)
            return td_err_set(err, TD_ERR_FORMAT, "added token %d has id %d out of range", i,
                              (int)id);
        if (id >= n_ids) n_ids = (int64_t)id + 1;
    }
    if (n_ids > 2 * (spec->n_tokens + spec->n_added) + 1024)
        return td_err_set(err, TD_ERR_FORMAT,
                          "token ids are too sparse (max id %lld for %lld tokens)",
                          (long long)n_ids - 1, (long long)(spec->n_tokens + spec->n_added));
    if (n_ids == 0) return td_err_set(err, TD_ERR_FORMAT, "empty vocabulary");
    size_t nn = (size_t)n_ids;
    tok->piece = calloc(nn, sizeof *tok->piece);
    tok->piece_len = calloc(nn, sizeof *tok->piece_len);
    tok->vstr = calloc(nn, sizeof *tok->vstr);
    tok->vstr_len = calloc(nn, sizeof *tok->vstr_len);
    tok->flags = calloc(nn, 1);
    if (!tok->piece || !tok->piece_len || !tok->vstr || !tok->vstr_len || !tok->flags)
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    tok->n_ids = (int32_t)n_ids;

    size_t count = 0;
    for (int64_t id = 0; id < spec->n_tokens; id++) {
        const char *s = spec->tokens[id];
        if (spec->token_types) {
            int32_t t = spec->token_types[id];
            if (t < TD_TOK_TYPE_NORMAL || t > TD_TOK_TYPE_BYTE)
                return td_err_set(err, TD_ERR_FORMAT, "token %lld has type %d (not 1..6)",
                                  (long long)id, (int)t);
            if (t == TD_TOK_TYPE_BYTE)
                return td_err_set(err, TD_ERR_UNSUPPORTED,
                                  "token %lld is a sentencepiece byte token (type 6), which a "
                                  "byte-level BPE vocabulary does not have",
                                  (long long)id);
        }
        if (!s) continue;
        size_t len = spec->token_lens ? spec->token_lens[id] : strlen(s);
        if (len > UINT32_MAX / 2)
            return td_err_set(err, TD_ERR_FORMAT, "token %lld is too long", (long long)id);
        if (!(tok->vstr[id] = s_strndup(s, len)))
            return td_err_set(err, TD_ERR_NOMEM, "out of memory");
        tok->vstr_len[id] = (uint32_t)len;
        if (spec->token_types && spec->token_types[id] == TD_TOK_TYPE_UNUSED)
            tok->flags[id] = S_UNUSED;
        tok->piece[id] = tok->vstr[id];
        tok->piece_len[id] = (uint32_t)len;
        count++;
    }
    tok->vocab_mask = s_table_size(count) - 1;
    tok->vocab_tab = malloc((tok->vocab_mask + 1) * sizeof *tok->vocab_tab);
    if (!tok->vocab_tab) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    memset(tok->vocab_tab, 0xff, (tok->vocab_mask + 1) * sizeof *tok->vocab_tab);
    for (int32_t id = 0; id < tok->n_ids; id++)
        if (tok->vstr[id]) s_vocab_insert(tok, id);

    if ((rc = s_load_added(tok, spec, err))) return rc;
    if ((rc = s_load_merges(tok, spec, err))) return rc;
    s_init_alphabet(tok);
    for (int b = 0; b < 256; b++) {
        char s[4];
        int n = (int)utf8proc_encode_char(tok->byte_cp[b], (utf8proc_uint8_t *)s);
        tok->byte_id[b] = s_vocab_find(tok, s, (size_t)n);
    }
    const int32_t ids[6] = {spec->bos_id, spec->eos_id, spec->unk_id,
                            spec->pad_id, spec->eot_id, spec->bpe_unk_id};
    static const char *const names[6] = {"bos", "eos", "unk", "pad", "eot", "BPE unk"};
    for (int i = 0; i < 6; i++)
        if (ids[i] < -1 || ids[i] >= tok->n_ids || (ids[i] >= 0 && !tok->piece[ids[i]]))
            return td_err_set(err, TD_ERR_FORMAT, "%s token id %d is not a token", names[i],
                              (int)ids[i]);
    tok->specials =
        (td_tok_specials_t){spec->bos_id, spec->eos_id,       spec->unk_id,      spec->pad_id,
                            spec->eot_id, spec->add_bos != 0, spec->add_eos != 0};
    tok->unk_id = spec->bpe_unk_id;
    if (s_build_bytes(tok)) return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    s_compute_hash(tok);
    return TD_OK;
}

td_tokenizer_t *td_tokenizer_from_vocab(const td_tok_spec_t *spec, td_err_t *err) {
    if (!spec) {
        td_err_set(err, TD_ERR_ARG, "tokenizer spec is NULL");
        return NULL;
    }
    td_tokenizer_t *tok = calloc(1, sizeof *tok);
    if (!tok) {
        td_err_set(err, TD_ERR_NOMEM, "out of memory");
        return NULL;
    }
    if (s_build(tok, spec, err)) {
        td_tokenizer_destroy(&tok);
        return NULL;
    }
    return tok;
}

void td_tokenizer_specials(const td_tokenizer_t *tok, td_tok_specials_t *out) {
    *out = tok->specials;
}

/* ---------- tokenizer.json -> spec ---------- */

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

/* What a tokenizer.json says, borrowed from the cJSON tree (valid while it lives). */
typedef struct {
    td_tok_spec_t spec;
    td_tok_pre_step_t steps[8];
    int norm[8];
    int byte_level;
    const char **tokens;
    const char **left, **right;
    size_t *left_len, *right_len;
    td_tok_added_t *added;
} s_json_spec_t;

static void s_json_spec_free(s_json_spec_t *j) {
    free(j->tokens);
    free(j->left);
    free(j->right);
    free(j->left_len);
    free(j->right_len);
    free(j->added);
}

static int s_json_norm(s_json_spec_t *j, const cJSON *n, td_err_t *err, int depth) {
    if (!n || cJSON_IsNull(n)) return TD_OK;
    const char *type = s_type(n);
    if (!cJSON_IsObject(n) || !type)
        return td_err_set(err, TD_ERR_FORMAT, "normalizer is not an object with a type");
    int kind = 0;
    if (strcmp(type, "NFC") == 0)
        kind = TD_TOK_NORM_NFC;
    else if (strcmp(type, "NFD") == 0)
        kind = TD_TOK_NORM_NFD;
    else if (strcmp(type, "NFKC") == 0)
        kind = TD_TOK_NORM_NFKC;
    else if (strcmp(type, "NFKD") == 0)
        kind = TD_TOK_NORM_NFKD;
    else if (strcmp(type, "Sequence") == 0 && depth < 4) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *e;
        if (!cJSON_IsArray(list))
            return td_err_set(err, TD_ERR_FORMAT, "normalizer Sequence without a normalizers list");
        cJSON_ArrayForEach(e, list) {
            int rc = s_json_norm(j, e, err, depth + 1);
            if (rc) return rc;
        }
        return TD_OK;
    }
    if (!kind)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "normalizer '%s' is not supported (only NFC, NFD, NFKC, NFKD and "
                          "Sequences of them)",
                          type);
    if (j->spec.n_norm >= (int)(sizeof j->norm / sizeof j->norm[0]))
        return td_err_set(err, TD_ERR_UNSUPPORTED, "too many normalizers");
    j->norm[j->spec.n_norm++] = kind;
    return TD_OK;
}

static int s_json_step(s_json_spec_t *j, const char *pattern, int literal, td_tok_split_t kind,
                       td_err_t *err) {
    if (j->spec.n_pre_steps >= (int)(sizeof j->steps / sizeof j->steps[0]))
        return td_err_set(err, TD_ERR_UNSUPPORTED, "too many pre-tokenizer steps");
    j->steps[j->spec.n_pre_steps++] = (td_tok_pre_step_t){pattern, literal, kind};
    return TD_OK;
}

static int s_json_pretok(s_json_spec_t *j, const cJSON *p, td_err_t *err, int depth) {
    const char *type = s_type(p);
    if (!cJSON_IsObject(p) || !type)
        return td_err_set(err, TD_ERR_FORMAT, "pre_tokenizer is not an object with a type");
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"), *e;
        if (!cJSON_IsArray(list))
            return td_err_set(err, TD_ERR_FORMAT, "pre_tokenizer Sequence without pretokenizers");
        cJSON_ArrayForEach(e, list) {
            int rc = s_json_pretok(j, e, err, depth + 1);
            if (rc) return rc;
        }
        return TD_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        if (s_flag(p, "add_prefix_space", 0)) {
            if (j->spec.n_pre_steps > 0)
                return td_err_set(err, TD_ERR_UNSUPPORTED,
                                  "ByteLevel add_prefix_space after another pre-tokenizer step");
            j->spec.prefix_space = 1;
        }
        j->byte_level = 1;
        if (s_flag(p, "use_regex", 1))
            return s_json_step(j, s_gpt2_pattern, 0, TD_TOK_SPLIT_ISOLATED, err);
        return TD_OK;
    }
    if (strcmp(type, "Digits") == 0) /* splits at Unicode numerals, as Rust's is_numeric */
        return s_json_step(j,
                           s_flag(p, "individual_digits", 0) ? s_digit_pattern : s_digits_pattern,
                           0, TD_TOK_SPLIT_ISOLATED, err);
    if (strcmp(type, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        const char *b = cJSON_IsString(beh) ? beh->valuestring : "";
        td_tok_split_t kind;
        if (strcmp(b, "Isolated") == 0)
            kind = TD_TOK_SPLIT_ISOLATED;
        else if (strcmp(b, "Removed") == 0)
            kind = TD_TOK_SPLIT_REMOVED;
        else
            return td_err_set(err, TD_ERR_UNSUPPORTED,
                              "Split pre-tokenizer behavior '%s' is not supported (Isolated, "
                              "Removed)",
                              b);
        if (s_flag(p, "invert", 0))
            return td_err_set(err, TD_ERR_UNSUPPORTED, "Split pre-tokenizer with invert=true");
        if (cJSON_IsString(re)) return s_json_step(j, re->valuestring, 0, kind, err);
        if (cJSON_IsString(str)) return s_json_step(j, str->valuestring, 1, kind, err);
        return td_err_set(err, TD_ERR_FORMAT, "Split pre-tokenizer without a pattern");
    }
    return td_err_set(err, TD_ERR_UNSUPPORTED,
                      "pre-tokenizer '%s' is not supported (byte-level BPE only: ByteLevel, "
                      "Split, Digits, Sequence)",
                      type);
}

static int s_json_spec(s_json_spec_t *j, const cJSON *root, td_err_t *err) {
    td_tok_spec_t *sp = &j->spec;
    td_tok_spec_init(sp);
    sp->model = "gpt2";
    sp->pre_steps = j->steps;
    sp->norm = j->norm;
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
    sp->ignore_merges = s_flag(model, "ignore_merges", 0);

    int rc;
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (pre && !cJSON_IsNull(pre) && (rc = s_json_pretok(j, pre, err, 0))) return rc;
    if (!j->byte_level)
        return td_err_set(err, TD_ERR_UNSUPPORTED,
                          "BPE tokenizer without a ByteLevel pre-tokenizer (%s) is not supported "
                          "(only byte-level BPE)",
                          pre && s_type(pre) ? s_type(pre) : "none");
    if ((rc = s_json_norm(j, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err, 0)))
        return rc;

    /* ids must be dense enough that the per-id arrays stay proportional to the file */
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *e;
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        return td_err_set(err, TD_ERR_FORMAT, "added_tokens not a list");
    int32_t max_id = -1, id = 0;
    size_t count = 0;
    cJSON_ArrayForEach(e, vocab) {
        if (!e->string || !s_get_id(e, &id))
            return td_err_set(err, TD_ERR_FORMAT, "vocab entry \"%s\" has no valid id",
                              e->string ? e->string : "?");
        if (id > max_id) max_id = id;
        count++;
    }
    int n_added = cJSON_IsArray(added) ? cJSON_GetArraySize(added) : 0;
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

    int32_t n_vocab = 0;
    cJSON_ArrayForEach(e, vocab) {
        s_get_id(e, &id);
        if (id >= n_vocab) n_vocab = id + 1;
    }
    int n_merges = cJSON_GetArraySize(merges);
    j->tokens = calloc((size_t)n_vocab + 1, sizeof *j->tokens);
    j->left = calloc((size_t)n_merges + 1, sizeof *j->left);
    j->right = calloc((size_t)n_merges + 1, sizeof *j->right);
    j->left_len = calloc((size_t)n_merges + 1, sizeof *j->left_len);
    j->right_len = calloc((size_t)n_merges + 1, sizeof *j->right_len);
    j->added = calloc((size_t)n_added + 1, sizeof *j->added);
    if (!j->tokens || !j->left || !j->right || !j->left_len || !j->right_len || !j->added)
        return td_err_set(err, TD_ERR_NOMEM, "out of memory");
    cJSON_ArrayForEach(e, vocab) {
        s_get_id(e, &id);
        if (j->tokens[id])
            return td_err_set(err, TD_ERR_FORMAT, "vocab id %d is used twice (\"%s\", \"%s\")",
                              (int)id, j->tokens[id], e->string);
        j->tokens[id] = e->string;
    }
    sp->n_tokens = n_vocab;
    sp->tokens = j->tokens;

    int rank = 0;
    cJSON_ArrayForEach(e, merges) {
        if (cJSON_IsString(e)) {
            const char *s = e->valuestring, *spc = strchr(s, ' ');
            if (!spc)
                return td_err_set(err, TD_ERR_FORMAT, "merge %d \"%s\" has no space", rank, s);
            j->left[rank] = s;
            j->left_len[rank] = (size_t)(spc - s);
            j->right[rank] = spc + 1;
            j->right_len[rank] = strlen(spc + 1);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            j->left[rank] = cJSON_GetArrayItem(e, 0)->valuestring;
            j->right[rank] = cJSON_GetArrayItem(e, 1)->valuestring;
            j->left_len[rank] = strlen(j->left[rank]);
            j->right_len[rank] = strlen(j->right[rank]);
        } else {
            return td_err_set(err, TD_ERR_FORMAT, "merge %d is neither \"a b\" nor [\"a\",\"b\"]",
                              rank);
        }
        rank++;
    }
    sp->n_merges = rank;
    sp->merges = j->left;
    sp->merge_lens = j->left_len;
    sp->merges_right = j->right;
    sp->merges_right_lens = j->right_len;

    int k = 0;
    if (cJSON_IsArray(added)) {
        cJSON_ArrayForEach(e, added) {
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
            td_tok_added_t *a = &j->added[k];
            if (!cJSON_IsObject(e) ||
                !s_get_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &a->id) ||
                !cJSON_IsString(c) || !c->valuestring[0])
                return td_err_set(err, TD_ERR_FORMAT,
                                  "added_tokens entry %d needs an id and a non-empty content", k);
            a->content = c->valuestring;
            a->special = s_flag(e, "special", 0);
            a->lstrip = s_flag(e, "lstrip", 0);
            a->rstrip = s_flag(e, "rstrip", 0);
            a->single_word = s_flag(e, "single_word", 0);
            a->normalized = s_flag(e, "normalized", !a->special);
            k++;
        }
    }
    sp->added = j->added;
    sp->n_added = k;

    v = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (cJSON_IsString(v)) { /* an added token of that content, else the vocabulary's */
        for (int i = 0; i < k && sp->bpe_unk_id < 0; i++)
            if (strcmp(j->added[i].content, v->valuestring) == 0) sp->bpe_unk_id = j->added[i].id;
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(vocab, v->valuestring);
        if (sp->bpe_unk_id < 0 && u) s_get_id(u, &sp->bpe_unk_id);
        sp->unk_id = sp->bpe_unk_id;
    }
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
    s_json_spec_t j;
    memset(&j, 0, sizeof j);
    td_tokenizer_t *tok = NULL;
    if (s_json_spec(&j, root, err) == TD_OK) tok = td_tokenizer_from_vocab(&j.spec, err);
    s_json_spec_free(&j);
    cJSON_Delete(root);
    return tok;
}

td_tokenizer_t *td_tokenizer_load(const char *path, td_err_t *err) {
    char file[4096];
    td_path_json(file, sizeof file, path, "tokenizer.json");
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
        if (step->kind == TD_TOK_SPLIT_ISOLATED && s_range_push(e, k, start + ms, me - ms))
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
