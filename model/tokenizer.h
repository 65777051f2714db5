/* tokenizer.h - byte-level BPE (GPT-2, Qwen2, LLaMA-3, SmolLM flavours) from HF tokenizer.json or
 * from plain arrays (a GGUF's `tokenizer.ggml.*`), through one constructor.
 *
 * Pre-tokenizer regex through PCRE2 (JIT), NFC normalisation through utf8proc when the
 * tokenizer asks for it, added/special tokens split out before pre-tokenizing, both merge
 * formats ("a b" strings and ["a","b"] pairs). Decoding maps the byte-level alphabet back to
 * bytes; the streaming decoder never emits half a UTF-8 character. */
#ifndef TD_TOKENIZER_H
#define TD_TOKENIZER_H

#include "common/td_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_tokenizer td_tokenizer_t;

/* ---------- construction from plain arrays (any file format) ----------
 *
 * A tokenizer is described by a td_tok_spec_t; td_tokenizer_from_vocab builds it. The GGUF
 * loader fills the spec from the `tokenizer.ggml.*` keys; td_tokenizer_from_json builds the same
 * spec from a tokenizer.json, so both formats go through one constructor.
 *
 * The spec only borrows its arrays: the constructor copies what it keeps. */

/* GGUF token types (llama.cpp's `tokenizer.ggml.token_type` values). */
enum {
    TD_TOK_TYPE_NORMAL = 1,
    TD_TOK_TYPE_UNKNOWN = 2,
    TD_TOK_TYPE_CONTROL = 3,      /* becomes a special added token */
    TD_TOK_TYPE_USER_DEFINED = 4, /* becomes a non-special added token */
    TD_TOK_TYPE_UNUSED = 5,
    TD_TOK_TYPE_BYTE = 6 /* sentencepiece <0xNN> pieces: refused in a byte-level vocabulary */
};

/* Normalisers (applied to text outside added tokens, in order). */
enum { TD_TOK_NORM_NFC = 1, TD_TOK_NORM_NFD, TD_TOK_NORM_NFKC, TD_TOK_NORM_NFKD };

/* One pre-tokenizer split step: the text (each piece the previous step produced) is split at the
 * matches of pattern; ISOLATED keeps each match as a piece of its own, REMOVED drops it. */
typedef enum td_tok_split { TD_TOK_SPLIT_ISOLATED = 0, TD_TOK_SPLIT_REMOVED = 1 } td_tok_split_t;
typedef struct td_tok_pre_step {
    const char *pattern; /* HF tokenizers (Oniguruma) regex syntax, or a literal string */
    int literal;         /* 1: pattern is matched as a plain string */
    td_tok_split_t behavior;
} td_tok_pre_step_t;

/* An added token with HF's flags (tokenizer.json's added_tokens); overrides what token_types
 * says for that id. */
typedef struct td_tok_added {
    int32_t id;
    const char *content; /* NUL-terminated, non-empty */
    int special, lstrip, rstrip, single_word, normalized;
} td_tok_added_t;

typedef struct td_tok_spec {
    /* "gpt2" (byte-level BPE) is the one model supported; any other ("llama" = sentencepiece,
     * "bert", "t5", ...) is refused by name with TD_ERR_UNSUPPORTED. */
    const char *model;
    /* The pre-tokenizer, exactly one of:
     *  - pre: a name as in GGUF `tokenizer.ggml.pre`; it sets the split steps, the normaliser and
     *    ignore_merges as the HF tokenizer.json of that model family does:
     *      "gpt2"                        ByteLevel's GPT-2 regex
     *      "smollm"                      Digits(individual) + the GPT-2 regex (SmolLM/SmolLM2)
     *      "qwen2"                       NFC + Qwen2's regex
     *      "llama-bpe", "llama3",
     *      "llama-v3"                    LLaMA-3's regex, ignore_merges
     *    Unknown names (and "default", which matches no HF tokenizer) are refused by name with
     *    TD_ERR_UNSUPPORTED; with a name, pre_steps, norm, prefix_space and ignore_merges must be
     *    left 0 (TD_ERR_ARG otherwise).
     *  - pre_steps[n_pre_steps] (pre == NULL, pre_steps != NULL): explicit steps (n_pre_steps
     *    may be 0: no splitting), with norm[n_norm], prefix_space (ByteLevel add_prefix_space) and
     *    ignore_merges as given.
     *  Both NULL is TD_ERR_ARG (a GGUF without tokenizer.ggml.pre must not be guessed at). */
    const char *pre;
    const td_tok_pre_step_t *pre_steps;
    int n_pre_steps;
    const int *norm; /* TD_TOK_NORM_* */
    int n_norm;
    int prefix_space;
    int ignore_merges;
    /* The vocabulary: tokens[id] for id in [0, n_tokens), strings in the byte-level alphabet
     * ("Ġthe"); NULL entries are unused ids. token_lens (may be NULL: strlen) gives byte lengths
     * for strings that are not NUL-terminated (a mmapped GGUF). token_types (may be NULL: all
     * NORMAL) holds TD_TOK_TYPE_* values; CONTROL and USER_DEFINED ids become added tokens
     * (split out of the text before pre-tokenizing, normalized = 0), CONTROL ones special. When
     * the same string appears at several ids, lookups find the last (as a dict built in order). */
    int64_t n_tokens;
    const char *const *tokens;
    const size_t *token_lens;
    const int32_t *token_types;
    /* Merges by rank: merges[i] is "left right" (split at the first space; GGUF and the string
     * form of tokenizer.json), or, when merges_right is non-NULL, merges[i] is the left and
     * merges_right[i] the right part. merge_lens / merges_right_lens may be NULL (strlen). */
    int64_t n_merges;
    const char *const *merges;
    const size_t *merge_lens;
    const char *const *merges_right;
    const size_t *merges_right_lens;
    /* Added tokens with explicit flags (tokenizer.json); may be NULL. */
    const td_tok_added_t *added;
    int n_added;
    /* Special ids, -1 when absent (td_tok_spec_init sets all to -1), reported by
     * td_tokenizer_specials; encode never adds BOS/EOS itself. unk_id is the unknown token's role
     * (GGUF `unknown_token_id`, tokenizer_config's unk_token): it does not change encoding. */
    int32_t bos_id, eos_id, unk_id, pad_id, eot_id;
    int add_bos, add_eos;
    /* The BPE model's unknown symbol (tokenizer.json model.unk_token), emitted for a byte that has
     * no vocabulary string; -1 drops such bytes, as HF does when model.unk_token is null (and as
     * transformers' GGUF tokenizer does: a GGUF loader leaves this at -1). */
    int32_t bpe_unk_id;
} td_tok_spec_t;

/* Zeroes spec and sets every special id (and bpe_unk_id) to -1. */
void td_tok_spec_init(td_tok_spec_t *spec);

/* Builds a tokenizer from spec. NULL on failure with err set: TD_ERR_UNSUPPORTED for an unknown
 * model or pre-tokenizer name (named in the message) or a regex PCRE2 cannot compile,
 * TD_ERR_FORMAT for inconsistent arrays (a merge naming a token not in the vocabulary, a token
 * type out of range, a duplicate or out-of-range added id, an empty vocabulary), TD_ERR_ARG for a
 * malformed spec, TD_ERR_NOMEM. */
td_tokenizer_t *td_tokenizer_from_vocab(const td_tok_spec_t *spec, td_err_t *err);

/* What the spec said about special ids (-1 when absent) and BOS/EOS insertion. */
typedef struct td_tok_specials {
    int32_t bos_id, eos_id, unk_id, pad_id, eot_id;
    int add_bos, add_eos;
} td_tok_specials_t;
void td_tokenizer_specials(const td_tokenizer_t *tok, td_tok_specials_t *out);

/* path: a tokenizer.json file or a directory holding one. NULL on failure (err says why). */
td_tokenizer_t *td_tokenizer_load(const char *path, td_err_t *err);
td_tokenizer_t *td_tokenizer_from_json(const char *json, size_t len, td_err_t *err);
void td_tokenizer_destroy(td_tokenizer_t **self_p);

/* Number of ids (max id + 1 over the vocabulary and the added tokens). */
int td_tokenizer_n_vocab(const td_tokenizer_t *tok);
/* The raw vocabulary string of an id (byte-level alphabet, e.g. "Ġthe"), NULL if out of range. */
const char *td_tokenizer_piece(const td_tokenizer_t *tok, int32_t id);
/* Id of an exact vocabulary or added-token string, -1 when absent. */
int32_t td_tokenizer_token_id(const td_tokenizer_t *tok, const char *piece);
int td_tokenizer_is_special(const td_tokenizer_t *tok, int32_t id);
/* 1 when id is an added token (special or not), else 0. */
int td_tokenizer_is_added(const td_tokenizer_t *tok, int32_t id);
/* The bytes id decodes to on its own (added tokens verbatim; may be part of a UTF-8 character,
 * not NUL-terminated in general), length in *len; NULL when id is out of range or unused. */
const char *td_tokenizer_token_bytes(const td_tokenizer_t *tok, int32_t id, size_t *len);

/* Encodes text (len bytes, UTF-8; invalid UTF-8 is an error). When parse_special is 0, special
 * added tokens appearing in the text are encoded as plain text. On success *ids is malloc'd
 * (caller frees) and *n set. */
int td_tokenizer_encode(const td_tokenizer_t *tok, const char *text, size_t len, int parse_special,
                        int32_t **ids, int *n, td_err_t *err);

/* Decodes ids to UTF-8 bytes (malloc'd, NUL-terminated, *len excludes the NUL). Ids out of range
 * give TD_ERR_ARG. When skip_special is set, special added tokens are left out. */
int td_tokenizer_decode(const td_tokenizer_t *tok, const int32_t *ids, int n, int skip_special,
                        char **out, size_t *len, td_err_t *err);

/* The tokenizer's identity, used by the protocol handshake (Hello.tokenizer_hash) to refuse a
 * drafter/verifier pair whose tokenizers differ. It is computed from what decides encoding and
 * decoding, never from the bytes of a file, so the same tokenizer read from tokenizer.json and
 * from a GGUF hashes equal, on any machine (all integers hashed as little-endian). It is the
 * 64-bit FNV-1a, in this order, of:
 *   "td-tok-v2";
 *   "pre": ignore_merges, prefix_space (u8 each); the normalisers (u32 count, then each
 *     TD_TOK_NORM_* as u32); the split steps (u32 count, then per step behavior, literal (u8 each),
 *     pattern length (u32) and the pattern text as written: a named pre-tokenizer hashes as the
 *     steps it stands for, e.g. "smollm" as tokenizer.json's Digits(individual) + ByteLevel);
 *   "vocab": for each id in order that has a vocabulary string and is neither an added token nor
 *     of type UNUSED: id (u32), length (u32), the string;
 *   "merges": the merge count (u32), then each merge's left and right ids (u32) by rank;
 *   "added": the count (u32), then per added token sorted by (length desc, id): id (u32),
 *     special, lstrip, rstrip, single_word (u8 each), length (u32), the content;
 *   "unk": the BPE unknown symbol's id (bpe_unk_id; u32, 0xffffffff for none), only when some
 *     byte that valid UTF-8 can hold (not C0, C1, F5-FF) has no vocabulary string (otherwise it
 *     can never be emitted).
 * Not hashed: the number of ids and UNUSED tokens (a GGUF converter pads the vocabulary to the
 * embedding size with "[PAD151665]"-like UNUSED entries that no text encodes to; checkpoints pad
 * differently, and the protocol allows vocabulary sizes to differ); the BOS/EOS/UNK/PAD/EOT roles
 * and add_bos/add_eos (tokenizer.json does not hold them; they belong to the model config), the
 * added tokens' `normalized` flag (tandem matches added tokens on the raw text either way),
 * decoders. */
uint64_t td_tokenizer_hash(const td_tokenizer_t *tok);

/* Streaming decoder: push ids one at a time, get back only complete UTF-8 characters. */
typedef struct td_detok td_detok_t;
td_detok_t *td_detok_new(const td_tokenizer_t *tok, int skip_special);
void td_detok_destroy(td_detok_t **self_p);
/* Appends the text that became complete to out (cap bytes incl. NUL); returns bytes written or a
 * negative TD_ERR_*. cap >= 64 + longest piece is always enough. */
int td_detok_push(td_detok_t *d, int32_t id, char *out, size_t cap);
/* Emits what is left (incomplete bytes as U+FFFD). */
int td_detok_flush(td_detok_t *d, char *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
