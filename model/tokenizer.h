/* tokenizer.h - HF tokenizer.json byte-level BPE (GPT-2 and Qwen2 flavours).
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

/* A 64-bit FNV-1a hash of the vocabulary, merges and added tokens, identical for identical
 * tokenizers (used to refuse mismatched drafter/verifier pairs). */
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
